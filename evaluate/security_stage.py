"""Security stage: the attacks of :mod:`faceveil.evaluate.security` on ours and the published method (cached)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faceveil.evaluate.config import digest
from faceveil.evaluate.context import ROW_VERSION, Context
from faceveil.evaluate.jsonio import read_json, write_json


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
