"""Run an evaluation: ``python -m faceveil.evaluate.run --config configs/eval/NAME.yaml [key=value ...]``.

Also ``faceveil evaluate --config ...``. The run folder (``output``) receives:

- ``metrics.json``: every number, per method;
- ``report.md``: the tables, methods side by side, and the figures;
- ``figures/*.png``: image grids, similarity histograms, ROC curves, diversity, security;
- ``config.yaml``: the resolved config;
- ``cache/``: per-image work (aligned faces, anonymized files, per-image metric rows and
  embeddings, security and diversity results). A re-run with the same settings skips
  what is there, so an interrupted run resumes; changed settings get new cache folders.

Steps: load faces and pairs; clean embeddings and detections; for each method, anonymize
to files, measure the anonymized image, recover it from the saved file (untouched, JPEG,
metadata stripped) and measure that; then FID/KID, verification (TAR at FAR with the
threshold of clean pairs), rank-1, diversity, the security suite, the nonce scan, and the
report.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceveil.errors import ConfigError, FaceveilError, InputError
from faceveil.evaluate.config import EvalConfig, digest, load_eval_config
from faceveil.evaluate.faces import EvalFace, Notes, load_faces, warn
from faceveil.evaluate.jsonio import clean_json, read_json, write_json
from faceveil.evaluate.pairs import Pair, gallery_and_probes, pairs_from_labels, read_lfw_pairs, resolve_pairs

VARIANT_LABELS = {"file": "untouched file", "stripped": "metadata stripped"}
ROW_VERSION = 3  # bump when what a cached row / section holds changes: old caches are then not reused


def variant_label(v: str) -> str:
    return VARIANT_LABELS.get(v, f"JPEG q{v[4:]}" if v.startswith("jpeg") else v)


# --------------------------------------------------------------------------- small helpers


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from faceveil.data.images import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None


def chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), max(1, n))]


def bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0, leave=False)


# --------------------------------------------------------------------------- context


@dataclass
class CleanInfo:
    emb: dict[str, np.ndarray] = field(default_factory=dict)
    box: np.ndarray | None = None  # dlib detection on the crop
    lm68: np.ndarray | None = None
    lm5: np.ndarray | None = None


@dataclass
class Context:
    cfg: EvalConfig
    out: Path
    notes: Notes
    faces: dict[str, EvalFace]
    probes: list[str]
    refs: list[str]
    pairs: list[Pair]
    judges: list[Any]
    clean: dict[str, CleanInfo]
    lpips: Any
    detector: Any
    key: Any
    device: Any
    dtype: Any


def resolve_key(cfg: EvalConfig, out: Path, notes: Notes):  # -> SecretKey
    from faceveil.keys import SecretKey, load_key, save_key

    if cfg.key:
        return load_key(cfg.key)
    path = out / "eval.key"
    if path.is_file():
        return load_key(path)
    key = SecretKey.generate()
    save_key(key, path)
    notes.note(f"no key given: generated a throw-away evaluation key {path} (fingerprint {key.fingerprint})")
    return key


# --------------------------------------------------------------------------- clean stage


def clean_stage(faces: dict[str, EvalFace], ids: list[str], judges: list[Any], detector: Any, folder: Path, progress: bool) -> dict[str, CleanInfo]:
    """Embeddings of every clean face with every judge, and dlib's detection on each crop."""
    out: dict[str, CleanInfo] = {}
    todo = []
    for fid in ids:
        data = load_npz(folder / f"{fid}.npz")
        if data is not None and all(f"emb|{j.name}" in data for j in judges):
            info = CleanInfo({j.name: data[f"emb|{j.name}"] for j in judges})
            if "box" in data:
                info.box, info.lm68, info.lm5 = data["box"], data["lm68"], data["lm5"]
            out[fid] = info
        else:
            todo.append(fid)
    pb = bar(len(todo), "clean faces", progress)
    for batch in chunks(todo, 16):
        fs = [faces[f] for f in batch]
        embs = {j.name: j.embed([f.image for f in fs], fs).numpy() for j in judges}
        for k, f in enumerate(fs):
            info = CleanInfo({name: e[k] for name, e in embs.items()})
            found = detector.detect(f.image)
            arrays = {f"emb|{n}": e for n, e in info.emb.items()}
            if found:
                best = max(found, key=lambda x: x.area)
                info.box, info.lm68, info.lm5 = best.bbox, best.landmarks, best.landmarks5
                arrays.update(box=info.box, lm68=info.lm68, lm5=info.lm5)
            save_npz(folder / f"{f.id}.npz", arrays)
            out[f.id] = info
        pb.update(len(batch))
    pb.close()
    return out


# --------------------------------------------------------------------------- per-method rows


def detect_on(detector: Any, image: np.ndarray, ref: CleanInfo) -> tuple[bool, float]:
    """(the face is found where the original's was, landmark drift in inter-ocular units)."""
    from faceveil.evaluate.metrics import box_iou, landmark_drift

    found = detector.detect(image)
    if not found:
        return False, math.nan
    if ref.box is None:
        return True, math.nan
    best = max(found, key=lambda f: box_iou(f.bbox, ref.box))
    if box_iou(best.bbox, ref.box) < 0.3:
        return False, math.nan
    if ref.lm68 is None or best.landmarks.shape != ref.lm68.shape:
        return True, math.nan
    return True, landmark_drift(best.landmarks, ref.lm68, ref.lm5)


def image_metrics(
    ctx: Context, images: list[np.ndarray], faces: list[EvalFace], prefix: str, arrays: dict[str, np.ndarray],
    inputs: list[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """PSNR / SSIM / LPIPS and identity cosine against the originals; the largest change outside the
    face mask against ``inputs`` (what the method was given; default the originals)."""
    from faceveil.evaluate.metrics import outside_mask_change, psnr, ssim

    originals = [f.image for f in faces]
    p, s, lp = psnr(images, originals), ssim(images, originals), ctx.lpips(images, originals)
    rows = []
    embs = {j.name: j.embed(images, faces).numpy() for j in ctx.judges}
    for k, f in enumerate(faces):
        id_cos, id_dist = {}, {}
        for j in ctx.judges:
            e, o = torch.from_numpy(embs[j.name][k])[None], torch.from_numpy(ctx.clean[f.id].emb[j.name])[None]
            id_cos[j.name] = float(j.cosine(e, o)[0])
            if j.is_distance:
                id_dist[j.name] = -float(j.similarity(e, o)[0])
            arrays.setdefault(f.id, {})[f"{prefix}|{j.name}"] = embs[j.name][k]
        rows.append(
            {
                "psnr": float(p[k]),
                "ssim": float(s[k]),
                "lpips": float(lp[k]),
                "outside_max_abs": outside_mask_change(images[k], f.image if inputs is None else inputs[k], f.mask),
                "id_cos": id_cos,
                "id_dist": id_dist,
            }
        )
    return rows


def process_method(ctx: Context, method: Any, variants: list[str]) -> tuple[dict[str, dict], dict[str, dict[str, np.ndarray]], Path]:
    """Anonymize every probe to a file, recover it from the file's variants, measure; cached per image."""
    from faceveil.evaluate.methods import degrade, read_pixels

    tag = digest(method.tag(), variants, ctx.cfg.metrics.recognizers, ctx.cfg.metrics.lpips, ctx.cfg.metrics.detector_upsample, ROW_VERSION)
    folder = ctx.out / "cache" / f"{method.name}-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    embs: dict[str, dict[str, np.ndarray]] = {}
    todo = []
    for fid in ctx.probes:
        row, arr = read_json(folder / f"{fid}.json"), load_npz(folder / f"{fid}.npz")
        if row is not None and arr is not None:
            rows[fid], embs[fid] = row, arr
        else:
            todo.append(fid)
    if todo:
        pb = bar(len(todo), method.name, ctx.cfg.progress)
        for batch_ids in chunks(todo, ctx.cfg.batch_size):
            faces = [ctx.faces[i] for i in batch_ids]
            paths = [folder / f"{i}.png" for i in batch_ids]
            try:
                missing = [k for k, p in enumerate(paths) if not p.is_file()]
                if missing:
                    method.anonymize_files([faces[k] for k in missing], [paths[k] for k in missing])
                anon = [read_pixels(p) for p in paths]
                arrays: dict[str, dict[str, np.ndarray]] = {}
                anon_rows = image_metrics(ctx, anon, faces, "anon", arrays)
                new_rows = []
                for k, f in enumerate(faces):
                    detected, drift = detect_on(ctx.detector, anon[k], ctx.clean[f.id])
                    new_rows.append({"id": f.id, "anon": {**anon_rows[k], "detected": detected, "drift": drift}, "recovery": {}})
                if method.recoverable:
                    done: dict[str, Any] = {}
                    x = torch.from_numpy(np.stack([f.image for f in faces])).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
                    with torch.no_grad():
                        z0 = method.backbone.encode(x).float().cpu()
                    for v in variants:
                        if v == "stripped" and method.name == "published" and "file" in done:
                            recs = done["file"]  # the published files carry no metadata: identical pixels
                        else:
                            pixels = [degrade(p, v) for p in paths]
                            recs = method.recover(faces, paths, v, pixels)
                        done[v] = recs
                        rec_rows = image_metrics(ctx, [r.image for r in recs], faces, f"rec:{v}", arrays, inputs=[degrade(p, v) for p in paths])
                        for k, r in enumerate(recs):
                            rr = rec_rows[k]
                            if r.latent is not None:
                                rr["latent_err"] = float((r.latent.float() - z0[k]).norm() / z0[k].norm().clamp_min(1e-12))
                            rr.update({kk: vv for kk, vv in r.extra.items()})
                            new_rows[k]["recovery"][v] = rr
                    from faceveil.data.images import save_image

                    for k, r in enumerate(done.get("file", [])):
                        save_image(folder / f"{batch_ids[k]}.rec.png", r.image)
                for k, f in enumerate(faces):
                    save_npz(folder / f"{f.id}.npz", arrays[f.id])
                    write_json(folder / f"{f.id}.json", new_rows[k])
                    rows[f.id], embs[f.id] = new_rows[k], arrays[f.id]
            except (FaceveilError, ValueError, RuntimeError, OSError) as exc:
                for f in faces:
                    ctx.notes.bad_input(f.source or f.id, f"{method.name}: {exc}")
            pb.update(len(batch_ids))
        pb.close()
    return rows, embs, folder


# --------------------------------------------------------------------------- aggregation


def _nan_to_neg_inf(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).copy()
    x[np.isnan(x)] = -np.inf
    return x


@dataclass
class Scores:
    genuine: np.ndarray
    impostor: np.ndarray


def pair_scores(pairs: Sequence[Pair], ref_emb: dict[str, np.ndarray], probe_emb: dict[str, np.ndarray], similarity: Any) -> Scores | None:
    """Scores of every pair whose two embeddings exist: ``similarity(ref, probe)`` of the reference's
    embedding and the probe's (clean, anonymized or recovered). NaN (no face) scores become -inf:
    never accepted. None when either kind of pair is missing."""
    g, i = [], []
    for p in pairs:
        if p.ref not in ref_emb or p.probe not in probe_emb:
            continue
        a, b = torch.as_tensor(ref_emb[p.ref])[None], torch.as_tensor(probe_emb[p.probe])[None]
        (g if p.same else i).append(float(similarity(a, b)[0]))
    if not g or not i:
        return None
    return Scores(_nan_to_neg_inf(np.array(g)), _nan_to_neg_inf(np.array(i)))


def _clean_emb(ctx: Context, judge: Any) -> dict[str, np.ndarray]:
    return {fid: info.emb[judge.name] for fid, info in ctx.clean.items()}


def verification(ctx: Context, judge: Any, conditions: dict[str, dict[str, np.ndarray] | None]) -> tuple[dict[str, Any], dict[str, Scores]]:
    from faceveil.evaluate.verification import roc_auc, tar_far, threshold_at_far

    clean_emb = _clean_emb(ctx, judge)
    clean = pair_scores(ctx.pairs, clean_emb, clean_emb, judge.similarity)
    if clean is None:
        return {}, {}
    thr = threshold_at_far(clean.impostor, ctx.cfg.pairs.far)
    out: dict[str, Any] = {"threshold": thr, "far_target": ctx.cfg.pairs.far}
    scores: dict[str, Scores] = {}
    for name, emb in {"clean": None, **conditions}.items():
        sc = clean if emb is None else pair_scores(ctx.pairs, clean_emb, emb, judge.similarity)
        if sc is None:
            continue
        tar, far = tar_far(sc.genuine, sc.impostor, thr)
        out[name] = {"tar": tar, "far": far, "auc": roc_auc(sc.genuine, sc.impostor), "n_genuine": len(sc.genuine), "n_impostor": len(sc.impostor)}
        scores[name] = sc
    return out, scores


def rank1_for(ctx: Context, judge: Any, probe_emb: dict[str, np.ndarray] | None) -> float:
    from faceveil.evaluate.metrics import rank1

    labels = {fid: ctx.faces[fid].label for fid in ctx.faces}
    gallery, probes = gallery_and_probes(ctx.pairs, labels)
    probes = [p for p in probes if p in ctx.clean and (probe_emb is None or p in probe_emb)]
    if not gallery or not probes:
        return math.nan
    g = torch.from_numpy(np.stack([ctx.clean[i].emb[judge.name] for i in gallery]))
    p = torch.from_numpy(np.stack([ctx.clean[i].emb[judge.name] if probe_emb is None else probe_emb[i] for i in probes]))
    return rank1(judge.similarity_matrix(p, g), [labels[i] for i in gallery], [labels[i] for i in probes])


def distance_summaries(judges: list[Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Distance recognizers (dlib) in their own units: the distance to the original, and the share of
    faces still matched at the recognizer's own threshold (dlib: same person below 0.6)."""
    from faceveil.evaluate.metrics import summary

    out: dict[str, Any] = {"id_dist": {}, "id_matched": {}}
    for j in judges:
        if not j.is_distance:
            continue
        d = np.array([r.get("id_dist", {}).get(j.name, math.nan) for r in rows], dtype=np.float64)
        out["id_dist"][j.name] = {**summary(d), "threshold": j.threshold}
        if j.threshold is not None and np.isfinite(d).any():
            out["id_matched"][j.name] = float(np.mean(d[np.isfinite(d)] < j.threshold))
    return out


def aggregate_method(ctx: Context, method: Any, rows: dict[str, dict], embs: dict[str, dict[str, np.ndarray]], variants: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    from faceveil.evaluate.metrics import summary

    ids = [i for i in ctx.probes if i in rows]
    anon = [rows[i]["anon"] for i in ids]
    res: dict[str, Any] = {"label": method.label, "n": len(ids), "recoverable": method.recoverable}
    res["anonymized"] = {
        "psnr": summary([r["psnr"] for r in anon]),
        "ssim": summary([r["ssim"] for r in anon]),
        "lpips": summary([r["lpips"] for r in anon]),
        "outside_unchanged": float(np.mean([r["outside_max_abs"] == 0 for r in anon])) if anon else math.nan,
        "outside_max_abs": max([r["outside_max_abs"] for r in anon], default=0),
        "detection_rate": float(np.mean([bool(r["detected"]) for r in anon])) if anon else math.nan,
        "landmark_drift": summary([r["drift"] if r["drift"] is not None else math.nan for r in anon]),
        "id_cos": {j.name: summary([r["id_cos"][j.name] for r in anon]) for j in ctx.judges},
        **distance_summaries(ctx.judges, anon),
    }
    plots: dict[str, Any] = {"id_cos": {j.name: [r["id_cos"][j.name] for r in anon] for j in ctx.judges}, "scores": {}}
    if method.recoverable:
        rec: dict[str, Any] = {}
        for v in variants:
            rr = [rows[i]["recovery"][v] for i in ids if v in rows[i].get("recovery", {})]
            if not rr:
                continue
            rec[v] = {
                "psnr": summary([r["psnr"] for r in rr]),
                "ssim": summary([r["ssim"] for r in rr]),
                "lpips": summary([r["lpips"] for r in rr]),
                "latent_err": summary([r.get("latent_err", math.nan) for r in rr]),
                "exact": float(np.mean([math.isinf(r["psnr"]) for r in rr])),
                "outside_unchanged": float(np.mean([r["outside_max_abs"] == 0 for r in rr])),
                "id_cos": {j.name: summary([r["id_cos"][j.name] for r in rr]) for j in ctx.judges},
                **distance_summaries(ctx.judges, rr),
            }
            if any("mask_found" in r for r in rr):
                rec[v]["mask_redetected"] = float(np.mean([bool(r.get("mask_found")) for r in rr]))
        res["recovery"] = rec
    res["verification"], res["rank1"] = {}, {}
    for j in ctx.judges:
        conds: dict[str, dict[str, np.ndarray] | None] = {"anonymized": {i: embs[i][f"anon|{j.name}"] for i in ids}}
        if method.recoverable:
            for v in variants:
                key = f"rec:{v}|{j.name}"
                conds[f"recovered:{v}"] = {i: embs[i][key] for i in ids if key in embs[i]}
        ver, scores = verification(ctx, j, conds)
        if ver:
            res["verification"][j.name] = ver
            plots["scores"][j.name] = scores
        r1 = {"anonymized": rank1_for(ctx, j, conds["anonymized"])}
        if method.recoverable and "recovered:file" in conds:
            r1["recovered:file"] = rank1_for(ctx, j, conds["recovered:file"])
        res["rank1"][j.name] = r1
    return res, plots


# --------------------------------------------------------------------------- diversity


def run_diversity(ctx: Context, methods: list[Any]) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
    from faceveil.data.images import save_image
    from faceveil.evaluate.methods import OursMethod, PublishedMethod, read_pixels
    from faceveil.evaluate.metrics import pairwise_mean, psnr
    from faceveil.keys import SecretKey

    cfg = ctx.cfg.diversity
    n = cfg.keys
    faces = [ctx.faces[i] for i in ctx.probes[: cfg.faces]]
    results: dict[str, Any] = {"faces": [f.id for f in faces], "keys": n}
    images_out: dict[str, list[np.ndarray]] = {}
    for m in methods:
        tag = digest(m.tag(), n, [f.id for f in faces], ctx.cfg.metrics.recognizers, ctx.cfg.metrics.lpips, ROW_VERSION)
        folder = ctx.out / "cache" / f"diversity-{m.name}-{tag}"
        cached = read_json(folder / "result.json")
        if cached is not None:
            results[m.name] = cached
            images_out[m.name] = [read_pixels(p) for p in sorted(folder.glob("f0-*.png"))]
            continue
        per_face = []
        for fi, face in enumerate(faces):
            if isinstance(m, OursMethod):
                imgs = [m.anonymizer.anonymize([face.image], [face.mask], SecretKey.generate())[0].image for _ in range(n)]
            elif isinstance(m, PublishedMethod):
                rng = np.random.default_rng(m.seed)
                seeds = [int(s) for s in rng.choice(2**32, size=n, replace=False)]
                imgs = [m.scheme.anonymize([face.image], [face.mask], s)[0] for s in seeds]
            else:
                one = m.impl.apply(face.image, face.mask)  # no key: every run is the same image
                imgs = [one] * n
            for k, img in enumerate(imgs):
                save_image(folder / f"f{fi}-{k:02d}.png", img)
            row: dict[str, Any] = {"pairwise_id_cos": {}, "id_cos_to_original": {}}
            like = [face] * n
            for j in ctx.judges:
                e = j.embed(imgs, like)
                sims = j.cosine(e[:, None, :], e[None, :, :])
                row["pairwise_id_cos"][j.name] = pairwise_mean(sims)
                o = torch.from_numpy(ctx.clean[face.id].emb[j.name])[None]
                row["id_cos_to_original"][j.name] = float(np.nanmean(j.cosine(e, o).numpy()))
            iu = [(a, b) for a in range(n) for b in range(a + 1, n)]
            row["pairwise_lpips"] = float(np.mean(ctx.lpips([imgs[a] for a, _ in iu], [imgs[b] for _, b in iu])))
            pp = psnr([imgs[a] for a, _ in iu], [imgs[b] for _, b in iu])
            row["pairwise_psnr"] = float(np.mean(pp[np.isfinite(pp)])) if np.isfinite(pp).any() else math.inf
            per_face.append(row)
            if fi == 0:
                images_out[m.name] = imgs
        agg: dict[str, Any] = {
            "pairwise_id_cos": {j.name: float(np.nanmean([r["pairwise_id_cos"][j.name] for r in per_face])) for j in ctx.judges},
            "id_cos_to_original": {j.name: float(np.nanmean([r["id_cos_to_original"][j.name] for r in per_face])) for j in ctx.judges},
            "pairwise_lpips": float(np.mean([r["pairwise_lpips"] for r in per_face])),
            "pairwise_psnr": float(np.mean([r["pairwise_psnr"] for r in per_face])),
            "keyed": isinstance(m, (OursMethod, PublishedMethod)),
        }
        write_json(folder / "result.json", agg)
        results[m.name] = agg
    return results, images_out


# --------------------------------------------------------------------------- methods


def build_methods(cfg: EvalConfig, key: Any, notes: Notes, device: Any, dtype: Any) -> list[Any]:
    from faceveil.evaluate.baselines import BlackBoxMethod, BlurMethod, PixelateMethod
    from faceveil.evaluate.exports import adapter_settings
    from faceveil.evaluate.methods import ObfuscationMethod, OursMethod, PublishedMethod
    from faceveil.models.backbones import load_backbone
    from faceveil.models.pipeline import Settings

    backbones: dict[str, Any] = {}

    def backbone(spec: str) -> Any:
        if spec not in backbones:
            backbones[spec] = load_backbone(spec, device=device, dtype=dtype)
        return backbones[spec]

    def settings() -> Settings:
        kwargs = dict(scheme=cfg.model.scheme, steps=cfg.model.steps, transform=cfg.model.transform)
        if "residual" in Settings.__dataclass_fields__:
            kwargs["residual"] = cfg.model.residual
        return Settings(**kwargs)

    methods: list[Any] = []
    for name in cfg.methods:
        if name == "ours":
            methods.append(OursMethod("ours", "faceveil (base weights)", backbone(cfg.model.backbone), settings(), key))
        elif name == "ours-adapters":
            if not cfg.model.adapter:
                notes.note("method ours-adapters skipped: no export folder with trained adapters (model.adapter)")
                continue
            adapted = backbone(cfg.model.adapter)
            methods.append(OursMethod("ours-adapters", "faceveil (trained adapters)", adapted, adapter_settings(cfg, adapted, notes), key))
        elif name == "published":
            methods.append(
                PublishedMethod(
                    backbone(cfg.published.backbone or cfg.model.backbone), cfg.published.steps or cfg.model.steps, cfg.published.seed,
                    cfg.published.mask_fallback, cfg.metrics.detector_upsample,
                )
            )  # fmt: skip
        elif name == "blur":
            methods += [ObfuscationMethod(BlurMethod(s), f"Gaussian blur (sigma {s:g} x side)", s) for s in cfg.baselines.blur_sigma]
        elif name == "pixelate":
            methods += [ObfuscationMethod(PixelateMethod(b), f"pixelation ({b} blocks across)", b) for b in cfg.baselines.pixel_blocks]
        elif name == "blackbox":
            methods.append(ObfuscationMethod(BlackBoxMethod(cfg.baselines.box_value), "black box"))
    return methods


# --------------------------------------------------------------------------- the run


def select_faces(cfg: EvalConfig, faces: list[EvalFace], specs: list | None, notes: Notes) -> tuple[dict[str, EvalFace], list[Pair], list[str], list[str]]:
    """Faces by id, pairs, probes (anonymized) and references (clean only)."""
    by_id = {f.id: f for f in faces}
    if specs is not None:
        rel = {f.relpath: f.id for f in faces if f.relpath}
        pairs, missing = resolve_pairs(specs, rel)
        if missing:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
            notes.note(f"{len(missing)} photos named in the pairs file are not among the usable faces ({shown}); their pairs are left out")
    elif cfg.pairs.synthetic == "labels":
        pairs = pairs_from_labels([(f.id, f.label) for f in faces], cfg.pairs.max_impostors)
    else:
        pairs = []
    if specs is None and cfg.pairs.synthetic == "labels" and not any(p.same for p in pairs):
        notes.note("no identity has two faces: no verification pairs; TAR and rank-1 are not measured")
        pairs = []
    if pairs:
        probes = list(dict.fromkeys(p.probe for p in pairs))
    else:
        probes = [f.id for f in faces]
    if cfg.data.limit is not None:
        probes = probes[: cfg.data.limit]
        keep = set(probes)
        pairs = [p for p in pairs if p.probe in keep]
    refs = [i for i in dict.fromkeys(p.ref for p in pairs) if i not in set(probes)]
    return by_id, pairs, probes, refs


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Run the whole evaluation of ``cfg``; returns what ``metrics.json`` holds."""
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: EvalConfig) -> dict[str, Any]:
    from faceveil.cli.common import quiet_libraries, resolve_device, resolve_dtype
    from faceveil.data.detect_dlib import DlibDetector
    from faceveil.evaluate.judges import headline_judge, load_judges
    from faceveil.evaluate.metrics import Lpips

    from faceveil.evaluate.exports import apply_training_size

    t_start = time.perf_counter()
    quiet_libraries()
    notes = Notes()
    cfg = copy.deepcopy(cfg)
    apply_training_size(cfg, notes)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    from faceveil.config import dump_config
    from faceveil.data.images import atomic_write

    config_text = dump_config(cfg)
    atomic_write(out / "config.yaml", lambda tmp: tmp.write_text(config_text))
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    key = resolve_key(cfg, out, notes)

    specs = read_lfw_pairs(cfg.pairs.file, warn=notes.note) if cfg.pairs.file else None
    wanted = None
    if specs is not None and cfg.data.only_pairs and cfg.data.source in ("folder", "aligned"):
        wanted = {s.first for s in specs} | {s.second for s in specs}
    face_dir = out / "cache" / f"faces-{digest(cfg.data, sorted(wanted) if wanted else None)}"
    faces = load_faces(cfg.data, face_dir, notes, wanted, cfg.progress)
    by_id, pairs, probes, refs = select_faces(cfg, faces, specs, notes)

    judges = load_judges(cfg.metrics.recognizers, notes, cfg.metrics.skip_unavailable, device=str(device))
    if not judges:
        raise ConfigError("no recognizer could be loaded (metrics.recognizers)")
    lpips_metric = Lpips(cfg.metrics.lpips.net, cfg.metrics.lpips.backbone, device)
    if not lpips_metric.standard:
        notes.note("LPIPS runs with a random backbone (metrics.lpips.backbone=random): a smoke-test number, not comparable to published LPIPS")
    detector = DlibDetector(upsample=cfg.metrics.detector_upsample)
    clean_dir = out / "cache" / f"clean-{digest(face_dir.name, cfg.metrics.recognizers, cfg.metrics.detector_upsample)}"
    clean = clean_stage(by_id, list(dict.fromkeys(probes + refs)), judges, detector, clean_dir, cfg.progress)
    ctx = Context(cfg, out, notes, by_id, probes, refs, pairs, judges, clean, lpips_metric, detector, key, device, dtype)

    methods = build_methods(cfg, key, notes, device, dtype)
    variants = ["file", *(f"jpeg{q}" for q in cfg.metrics.jpeg_qualities), *(["stripped"] if cfg.metrics.stripped else [])]
    results: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    folders: dict[str, Path] = {}
    for m in methods:
        rows, embs, folder = process_method(ctx, m, variants)
        folders[m.name] = folder
        results[m.name], plots[m.name] = aggregate_method(ctx, m, rows, embs, variants)
    from faceveil.evaluate.sweep import keep_strongest

    methods, sweeps = keep_strongest(methods, results, plots, folders, headline_judge(judges).name)

    # FID / KID of the anonymized probes against the originals.
    if cfg.metrics.fid.enabled:
        from faceveil.evaluate.methods import read_pixels
        from faceveil.evaluate.metrics import fid_kid

        if cfg.metrics.fid.feature != "inception" and not cfg.metrics.fid.feature.startswith("inception"):
            notes.note(f"FID/KID use the feature network {cfg.metrics.fid.feature!r}, not InceptionV3: not comparable to published FIDs")
        for m in methods:
            ids = [i for i in probes if (folders[m.name] / f"{i}.png").is_file()]
            try:
                results[m.name]["fid"] = fid_kid(
                    [by_id[i].image for i in ids], [read_pixels(folders[m.name] / f"{i}.png") for i in ids],
                    cfg.metrics.fid.feature, cfg.metrics.fid.kid_subset, device,
                )  # fmt: skip
            except (ConfigError, InputError) as exc:
                notes.note(f"FID/KID not computed: {exc}")
                break
            warning = results[m.name]["fid"].pop("warning", None)
            if warning and warning not in notes.messages:
                notes.note(warning)

    clean_summary = clean_results(ctx)

    diversity, div_images = ({}, {})
    if cfg.diversity.enabled:
        if cfg.progress:
            warn(f"diversity: {cfg.diversity.faces} face(s) under {cfg.diversity.keys} keys per method")
        diversity, div_images = run_diversity(ctx, methods)

    security: dict[str, Any] = {}
    sec_images: dict[str, Any] = {}
    if cfg.security.enabled:
        if cfg.progress:
            warn(f"security suite on {min(cfg.security.images, len(probes))} target images")
        security, sec_images = security_stage(ctx, methods, folders)

    # Nonce scan over faceveil's own files of this run.
    from faceveil.evaluate.nonces import scan_nonces

    nonce_scan = {m.name: scan_nonces([folders[m.name]]).to_dict() for m in methods if m.name.startswith("ours")}

    metrics = {
        "name": cfg.name,
        "config": json.loads(json.dumps(_asdict(cfg), default=str)),
        "data": {"faces": len(faces), "probes": len(probes), "references": len(refs), "pairs": len(pairs),
                 "genuine_pairs": sum(p.same for p in pairs), "impostor_pairs": sum(not p.same for p in pairs),
                 "skipped_inputs": len(notes.skipped_inputs)},
        "recognizers": [j.name for j in judges],
        "headline_recognizer": headline_judge(judges).name,
        "variants": variants,
        "clean": clean_summary,
        "methods": results,
        "sweeps": sweeps,
        "diversity": diversity,
        "security": security,
        "nonce_scan": nonce_scan,
        "notes": notes.messages,
        "skipped_inputs": notes.skipped_inputs,
        "seconds": round(time.perf_counter() - t_start, 1),
        "key_fingerprint": key.fingerprint,
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    metrics = clean_json(metrics, strict=True)
    write_json(out / "metrics.json", metrics, strict=True)

    from faceveil.evaluate import report

    figures: dict[str, str] = {}
    if cfg.figures:
        figures = report.make_figures(ctx, methods, folders, plots, div_images, security, sec_images, out / "figures")
    report_text = report.render(metrics, figures)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(report_text))
    return metrics


def _asdict(cfg: Any) -> Any:
    from dataclasses import asdict

    return asdict(cfg)


def clean_results(ctx: Context) -> dict[str, Any]:
    """Clean-pair verification, rank-1 and detection rate on the original probes."""
    from faceveil.evaluate.verification import roc_auc

    out: dict[str, Any] = {"verification": {}, "rank1": {}}
    for j in ctx.judges:
        emb = _clean_emb(ctx, j)
        sc = pair_scores(ctx.pairs, emb, emb, j.similarity)
        if sc is not None:
            from faceveil.evaluate.verification import tar_at_far

            r = tar_at_far(sc.genuine, sc.impostor, ctx.cfg.pairs.far)
            out["verification"][j.name] = {"tar": r.tar, "far": r.far, "threshold": r.threshold, "auc": roc_auc(sc.genuine, sc.impostor),
                                           "n_genuine": r.n_genuine, "n_impostor": r.n_impostor}  # fmt: skip
            if j.is_distance and j.threshold is not None:  # at the recognizer's own threshold, not one fitted here
                out["verification"][j.name]["native"] = {
                    "threshold": j.threshold, "tar": float(np.mean(-sc.genuine < j.threshold)),
                    "far": float(np.mean(-sc.impostor < j.threshold)),
                }
        out["rank1"][j.name] = rank1_for(ctx, j, None)
    found = [ctx.clean[i].box is not None for i in ctx.probes if i in ctx.clean]
    out["detection_rate"] = float(np.mean(found)) if found else math.nan
    return out


def security_stage(ctx: Context, methods: list[Any], folders: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    from faceveil.evaluate.security import run_security

    ours = next((m for m in methods if m.name == "ours"), None)
    published = next((m for m in methods if m.name == "published"), None)
    if ours is None and published is None:
        ctx.notes.note("security suite skipped: it needs method ours or published")
        return {}, {}
    needed = [folders[m.name] for m in (ours, published) if m is not None]
    usable = [i for i in ctx.probes if all((f / f"{i}.png").is_file() for f in needed)]
    targets = [ctx.faces[i] for i in usable[: ctx.cfg.security.images]]
    target_labels = {f.label for f in targets if f.label}
    pool = [i for i in dict.fromkeys(ctx.probes + ctx.refs) if i not in {t.id for t in targets}]
    reference = [ctx.faces[i] for i in pool if not ctx.faces[i].label or ctx.faces[i].label not in target_labels][: max(2, ctx.cfg.security.images)]
    tag = digest(
        ours.tag() if ours else None, published.tag() if published else None, [t.id for t in targets], [r.id for r in reference],
        ctx.cfg.security, ctx.cfg.metrics.recognizers, ROW_VERSION,
    )  # fmt: skip
    folder = ctx.out / "cache" / f"security-{tag}"
    cached = read_json(folder / "result.json")
    if cached is not None:
        return cached, {}
    res, images = run_security(
        ctx.cfg.security, ours, published, targets, reference,
        [folders["ours"] / f"{t.id}.png" for t in targets] if ours else None,
        [folders["published"] / f"{t.id}.png" for t in targets] if published else None,
        ctx.judges, ctx.notes, folder,
    )  # fmt: skip
    write_json(folder / "result.json", res)
    return res, images


# --------------------------------------------------------------------------- entry point


def build_parser(prog: str = "python -m faceveil.evaluate.run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate anonymization, recovery, security and utility against baselines.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="evaluation config (YAML), e.g. configs/eval/tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. output=runs/x data.limit=4")


def resolve_config_path(path: str) -> str:
    """A config path as given; a bare file name (no folder part, e.g. ``tiny.yaml``) that is not
    a file here is the packaged config of that name, so it works from any folder once faceveil is
    installed. Any other path that does not exist is a ``ConfigError`` (never silently another file)."""
    if Path(path).is_file():
        return path
    if Path(path).name == path:
        from importlib import resources

        packaged = resources.files("faceveil.configs").joinpath("eval", path)
        if packaged.is_file():
            return str(packaged)
        raise ConfigError(f"no such config file: {path} (neither here nor among the packaged configs/eval/*.yaml)")
    raise ConfigError(f"no such config file: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_from_args(args.config, args.overrides)


def run_from_args(config: str, overrides: Sequence[str]) -> int:
    try:
        cfg = load_eval_config(resolve_config_path(config), list(overrides))
        metrics = run_evaluation(cfg)
    except FaceveilError as exc:
        print(f"faceveil evaluate: error: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.output)
    print(f"faceveil evaluate: {metrics['data']['probes']} faces, {len(metrics['methods'])} methods, {metrics['seconds']} s -> "
          f"{out / 'report.md'}, {out / 'metrics.json'}", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
