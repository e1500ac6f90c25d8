"""FID / KID stage: the anonymized probes of each method against the originals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faceveil.errors import ConfigError, InputError
from faceveil.evaluate.context import Context


def fid_stage(ctx: Context, methods: list[Any], folders: dict[str, Path], results: dict[str, Any]) -> None:
    """Adds ``fid`` to each method's results; a feature network that is not available is a note."""
    from faceveil.evaluate.methods import read_pixels
    from faceveil.evaluate.metrics import fid_kid

    cfg = ctx.cfg.metrics.fid
    if not cfg.feature.startswith("inception"):
        ctx.notes.note(f"FID/KID use the feature network {cfg.feature!r}, not InceptionV3: not comparable to published FIDs")
    for m in methods:
        ids = [i for i in ctx.probes if (folders[m.name] / f"{i}.png").is_file()]
        try:
            results[m.name]["fid"] = fid_kid(
                [ctx.faces[i].image for i in ids], [read_pixels(folders[m.name] / f"{i}.png") for i in ids],
                cfg.feature, cfg.kid_subset, ctx.device,
            )  # fmt: skip
        except (ConfigError, InputError) as exc:
            ctx.notes.note(f"FID/KID not computed: {exc}")
            return
        warning = results[m.name]["fid"].pop("warning", None)
        if warning:
            ctx.notes.note(warning)
