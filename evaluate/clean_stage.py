"""Clean stage: every clean face's embeddings and detection (cached), and the clean-pair baselines."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from faceveil.evaluate.context import CleanInfo, Context, bar, chunks, load_npz, save_npz
from faceveil.evaluate.faces import EvalFace
from faceveil.evaluate.scoring import clean_embeddings, pair_scores, rank1_for


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


def clean_results(ctx: Context) -> dict[str, Any]:
    """Clean-pair verification, rank-1 and detection rate on the original probes."""
    from faceveil.evaluate.verification import roc_auc

    out: dict[str, Any] = {"verification": {}, "rank1": {}}
    for j in ctx.judges:
        emb = clean_embeddings(ctx, j)
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


