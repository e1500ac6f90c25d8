"""Scoring: pair scores, verification (TAR at the clean pairs' FAR threshold), rank-1, and each method's summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from faceveil.evaluate.context import Context
from faceveil.evaluate.pairs import Pair, gallery_and_probes


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


def clean_embeddings(ctx: Context, judge: Any) -> dict[str, np.ndarray]:
    return {fid: info.emb[judge.name] for fid, info in ctx.clean.items()}


def verification(ctx: Context, judge: Any, conditions: dict[str, dict[str, np.ndarray] | None]) -> tuple[dict[str, Any], dict[str, Scores]]:
    from faceveil.evaluate.verification import roc_auc, tar_far, threshold_at_far

    clean_emb = clean_embeddings(ctx, judge)
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


