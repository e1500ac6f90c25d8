"""Diversity stage: one face under many keys per method; how far apart the anonymizations are."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from faceveil.evaluate.config import digest
from faceveil.evaluate.context import ROW_VERSION, Context
from faceveil.evaluate.jsonio import read_json, write_json


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
