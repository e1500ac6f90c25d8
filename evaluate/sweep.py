"""Classic baselines over strengths: keep each at its best privacy setting, and say what the others gave."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _privacy_key(result: dict[str, Any], judge: str) -> tuple[float, float]:
    """Lower is more private: the anonymized TAR, then the identity cosine to the original (for a
    distance recognizer, minus the distance)."""

    def num(x: Any) -> float:
        try:
            f = float(x)
        except (TypeError, ValueError):
            return math.inf
        return math.inf if math.isnan(f) else f

    tar = (((result.get("verification") or {}).get(judge) or {}).get("anonymized") or {}).get("tar")
    anon = result.get("anonymized") or {}
    dist = ((anon.get("id_dist") or {}).get(judge) or {}).get("mean")
    if dist is not None:
        return num(tar), -num(dist) if num(dist) != math.inf else math.inf
    return num(tar), num(((anon.get("id_cos") or {}).get(judge) or {}).get("mean"))


def keep_strongest(methods: list[Any], results: dict[str, Any], plots: dict[str, Any], folders: dict[str, Path],
                   judge: str) -> tuple[list[Any], dict[str, Any]]:
    """Collapse each swept family (methods with a ``strength``) to its most private member, renamed to the
    family's name, in place in ``results`` / ``plots`` / ``folders``. Returns the methods and, per family
    swept over more than one strength, every strength's headline numbers and the one kept."""
    families: dict[str, list[Any]] = {}
    for m in methods:
        if getattr(m, "strength", None) is not None:
            families.setdefault(m.family, []).append(m)
    sweeps: dict[str, Any] = {}
    kept = {}
    for family, members in families.items():
        scored = [m for m in members if m.name in results]
        if not scored:
            continue
        best = min(scored, key=lambda m: _privacy_key(results[m.name], judge))
        if len(members) > 1:
            sweeps[family] = {
                "judge": judge,
                "kept": best.strength,
                "strengths": [
                    {"strength": m.strength, "label": m.label, "tar": _privacy_key(results[m.name], judge)[0],
                     "id_cos": (((results[m.name].get("anonymized") or {}).get("id_cos") or {}).get(judge) or {}).get("mean"),
                     "psnr": ((results[m.name].get("anonymized") or {}).get("psnr") or {}).get("mean"),
                     "id_dist": {k: v.get("mean") for k, v in ((results[m.name].get("anonymized") or {}).get("id_dist") or {}).items()}}
                    for m in scored
                ],
            }  # fmt: skip
        kept[family] = best
    out = []
    for m in methods:
        family = getattr(m, "family", None)
        if getattr(m, "strength", None) is None:
            out.append(m)
        elif kept.get(family) is m:
            old = m.name
            m.name = family
            results[family], plots[family], folders[family] = results.pop(old), plots.pop(old), folders.pop(old)
            out.append(m)
        else:
            results.pop(m.name, None), plots.pop(m.name, None), folders.pop(m.name, None)
    # Keep the configured order of methods in the results.
    order = [m.name for m in out]
    for name in [k for k in results if k not in order]:
        results.pop(name)
    reordered = {name: results[name] for name in order if name in results}
    results.clear()
    results.update(reordered)
    return out, sweeps
