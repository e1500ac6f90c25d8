"""What an adapter export recorded wins over the eval config: its image size and its anonymize settings.

Adapters are trained at one resolution with one scheme / step count / key transform; evaluating them
otherwise measures images that the export never makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faceveil.evaluate.config import EvalConfig
from faceveil.evaluate.faces import Notes

# Resolutions the pretrained layouts were trained at (tiny is random: any size).
NATIVE_SIZE = {"sd2-inpaint": 512, "ldm-ffhq": 256}


def adapter_manifest(cfg: EvalConfig) -> dict[str, Any] | None:
    """The manifest of ``model.adapter`` when ``ours-adapters`` runs and the folder is an export."""
    from faceveil.models.backbones import EXPORT_MANIFEST, read_manifest

    if "ours-adapters" not in cfg.methods or not cfg.model.adapter:
        return None
    if not (Path(cfg.model.adapter) / EXPORT_MANIFEST).is_file():
        return None
    return read_manifest(cfg.model.adapter)


def apply_training_size(cfg: EvalConfig, notes: Notes) -> None:
    """Set ``data.size`` to the export's recorded training size; note a base backbone run off its own."""
    manifest = adapter_manifest(cfg)
    size = (manifest or {}).get("image_size")
    if isinstance(size, int) and size > 0:
        if size != cfg.data.size:
            notes.note(f"data.size {cfg.data.size} -> {size}: the adapters in {cfg.model.adapter} were trained at {size} px")
            cfg.data.size = size
        return
    for key, spec in (("model.backbone", cfg.model.backbone), ("published.backbone", cfg.published.backbone)):
        native = NATIVE_SIZE.get((spec or "").partition(":")[0])
        if native and native != cfg.data.size and not (spec or "").partition(":")[2].startswith("random"):
            notes.note(f"{key} {spec} was trained at {native} px but runs at data.size {cfg.data.size} px")


def adapter_settings(cfg: EvalConfig, backbone: Any, notes: Notes):  # -> Settings
    """The export's recorded scheme / steps / transform (model.* fills what it does not record)."""
    from faceveil.models.pipeline import Settings

    recorded = (backbone.extra or {}).get("settings") or {}
    chosen = {"scheme": recorded.get("scheme", cfg.model.scheme), "steps": int(recorded.get("steps", cfg.model.steps)),
              "transform": recorded.get("transform", cfg.model.transform)}  # fmt: skip
    configured = {"scheme": cfg.model.scheme, "steps": cfg.model.steps, "transform": cfg.model.transform}
    if chosen != configured:
        shown = ", ".join(f"{k} {chosen[k]}" for k in chosen if chosen[k] != configured[k])
        notes.note(f"ours-adapters runs with the export's recorded settings ({shown}), not model.*")
    return Settings(**chosen, residual=cfg.model.residual)
