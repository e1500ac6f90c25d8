"""Method stage: anonymize every probe to a file, recover it from the file's variants, measure (cached per image)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceveil.errors import FaceveilError
from faceveil.evaluate.config import digest
from faceveil.evaluate.context import ROW_VERSION, CleanInfo, Context, bar, chunks, load_npz, save_npz
from faceveil.evaluate.faces import EvalFace
from faceveil.evaluate.jsonio import read_json, write_json


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


