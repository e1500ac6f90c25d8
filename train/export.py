"""``faceveil export RUN_DIR -o OUT``: a self-describing adapter folder, and the loader for it.

An export folder holds:

- ``pytorch_lora_weights.safetensors``: the LoRA weights in diffusers' format (see
  :mod:`faceveil.train.lora`); ``pipe.load_lora_weights(OUT)`` loads them into a
  ``StableDiffusionInpaintPipeline``;
- ``faceveil.json``: the manifest: base backbone spec, LoRA settings and the file's
  SHA-256, the scheme / steps / transform settings anonymization must use, image size,
  training summary and the measured validation numbers;
- ``prompt_embeds.safetensors``: the empty-prompt embedding of the base (cross-attention
  UNets), so no text encoder is needed at run time;
- ``config.yaml``: the training config that produced the weights;
- ``README.md``: the model card (see :mod:`faceveil.train.model_card`);
- ``unet/`` (``--merge``): the UNet with the adapter merged, ``save_pretrained`` format.

``faceveil.models.backbones.load_backbone(OUT)`` finds ``faceveil.json`` and calls
:func:`load_export` (registered below), so ``faceveil anonymize/recover --backbone OUT``
use an export. The loaded backbone's ``spec`` is the export folder's absolute path and its
``adapter_hash`` the SHA-256 of the weights file, which anonymized files record.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from faceveil import __version__
from faceveil.jsonfile import load_json_object
from faceveil.errors import ConfigError, InputError
from faceveil.models.backbones import EXPORT_MANIFEST, Backbone, file_sha256, load_backbone, load_prompt_embeds, read_manifest, register_export_loader

EXPORT_FORMAT = "faceveil-export"
EXPORT_VERSION = 1
PROMPT_EMBEDS = "prompt_embeds.safetensors"


def _val_at(run_dir: Path, step: Any) -> dict[str, Any]:
    """The validation record of ``step`` (the exported checkpoint's) in metrics.jsonl, or {} when none was made.

    Never another step's: those numbers describe other weights. (A step validated twice -- a run resumed
    from an earlier checkpoint -- gives the last record, the one that belongs to the weights saved last.)
    """
    from faceveil.train.loop import METRICS_FILE, read_jsonl

    path = run_dir / METRICS_FILE
    try:
        records = read_jsonl(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: unreadable metrics log ({exc})") from None
    val: dict[str, Any] = {}
    for rec in records:
        if isinstance(rec, dict) and rec.get("step") == step and any(k.startswith("val/") for k in rec):
            val = rec
    return val


def _read_eval_json(path: Path) -> Any:
    return load_json_object(path, "--eval-json (a 'faceveil evaluate' metrics.json)")


def _check_output(run_dir: Path, out: Path, overwrite: bool) -> None:
    """Refuse an -o that would overwrite the run or anything that is not an export folder."""
    r, o = run_dir.resolve(), out.resolve()
    if o == r or o in r.parents or r in o.parents:
        what = "is" if o == r else ("contains" if o in r.parents else "is inside")
        raise InputError(f"{out}: the export folder {what} the run directory {run_dir}; choose an -o outside it")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(f"{out}: exists and is not a folder; choose another -o")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out}: exists and is not empty; use --overwrite or another -o")
        if not (out / EXPORT_MANIFEST).is_file():
            raise InputError(f"{out}: not a faceveil export folder (no {EXPORT_MANIFEST}); --overwrite only replaces "
                             "an earlier export, choose another -o")


def _data_summary(shards: str, image_size: int) -> dict[str, Any]:
    from faceveil.train.config_schema import SAMPLE_SHARDS
    from faceveil.train.loop import sample_shards_dir

    out: dict[str, Any] = {"shards": shards}
    folder = sample_shards_dir(image_size) if shards == SAMPLE_SHARDS else Path(shards)
    index = folder / "index.json"
    if index.is_file():
        try:
            doc = json.loads(index.read_text())
            out.update({k: doc[k] for k in ("samples", "photos", "faces_found") if k in doc})
            if isinstance(doc.get("labels"), list):
                out["identities"] = len(doc["labels"])
        except (OSError, ValueError):
            pass
    if shards == SAMPLE_SHARDS:
        out["description"] = ("faceveil's bundled sample set: faces detected and aligned from photos shipped in installed "
                              "packages (skimage astronaut, matplotlib Grace Hopper, insightface t1), with mirrored copies")
    return out


def export_run(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], checkpoint: str = "latest",
               merge: bool = False, eval_json: str | os.PathLike[str] | None = None, overwrite: bool = False) -> Path:
    """Write an export folder from a run's checkpoint (atomically: a temp folder renamed at the end)."""
    from faceveil.train.checkpointing import ADAPTER_DIR, read_train_state, resolve_checkpoint
    from faceveil.train.config_schema import load_train_config
    from faceveil.train.lora import LORA_WEIGHTS, read_lora_file
    from faceveil.train.loop import CONFIG_FILE, FINAL_FILE
    from faceveil.train.model_card import evaluation_metrics, render_model_card

    run_dir, out = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    weights = ckpt / ADAPTER_DIR / LORA_WEIGHTS
    cfg_path = ckpt / CONFIG_FILE if (ckpt / CONFIG_FILE).is_file() else run_dir / CONFIG_FILE
    cfg = load_train_config(cfg_path)
    _check_output(run_dir, out, overwrite)
    _, lora_meta = read_lora_file(weights)
    state = read_train_state(ckpt)
    final: dict[str, Any] = {}
    if (run_dir / FINAL_FILE).is_file():
        try:
            final = json.loads((run_dir / FINAL_FILE).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{run_dir / FINAL_FILE}: unreadable run summary ({exc})") from None
        if not isinstance(final, dict) or final.get("step") != state.get("step"):
            final = {}  # the summary of a segment that ended at another step: not these weights'
    evaluation = evaluation_metrics(_read_eval_json(Path(eval_json))) if eval_json else None
    base = load_backbone(cfg.model.backbone, local_files_only=cfg.model.local_files_only)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(weights, tmp / LORA_WEIGHTS)
        shutil.copyfile(cfg_path, tmp / "config.yaml")
        if base.prompt_embeds is not None:
            from safetensors.torch import save_file

            save_file({"prompt_embeds": base.prompt_embeds.detach().float().cpu().contiguous()}, str(tmp / PROMPT_EMBEDS))
        manifest = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "faceveil_version": __version__,
            "base": {"spec": cfg.model.backbone, "name": base.name, "resolved": base.spec},
            "lora": {
                "file": LORA_WEIGHTS,
                "sha256": file_sha256(tmp / LORA_WEIGHTS),
                "rank": cfg.lora.rank,
                "alpha": cfg.lora.alpha,
                "target_modules": (lora_meta or {}).get("target_modules", sorted({*cfg.lora.targets, *cfg.lora.conv_targets})),
            },
            "settings": {"scheme": cfg.anonymize.scheme, "steps": cfg.anonymize.steps, "transform": cfg.anonymize.transform},
            "image_size": cfg.data.image_size,
            "prompt_embeds": PROMPT_EMBEDS if base.prompt_embeds is not None else None,
            "training": {
                # Evaluation scores only the faces training held out (faceveil.data.splits.held_out).
                "val_holdout": cfg.data.val_holdout,
                "checkpoint": ckpt.name,
                "step": state.get("step"),
                "images_seen": state.get("images"),
                "world_size": state.get("world_size"),
                "identity_network": cfg.model.identity,
                "data": _data_summary(cfg.data.shards, cfg.data.image_size),
            },
            "metrics": _val_at(run_dir, state.get("step")),
            "evaluation": evaluation,
            "merged_unet": "unet" if merge else None,
        }
        if merge:
            _write_merged(base, tmp / LORA_WEIGHTS, tmp / "unet")
        (tmp / "README.md").write_text(render_model_card(manifest, cfg, final))
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(strict_json(manifest), indent=2, allow_nan=False) + "\n")
        _publishable_modes(tmp)
        _check_output(run_dir, out, overwrite)  # again: nothing may have appeared there meanwhile
        aside = None
        if out.is_dir() and any(out.iterdir()):
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, aside / out.name)  # the earlier export, kept whole until the new one is in place
        try:
            os.replace(tmp, out)
        except BaseException:
            if aside is not None and not out.exists():
                os.replace(aside / out.name, out)  # put the earlier export back
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def strict_json(o: Any) -> Any:
    """JSON-safe copy: non-finite floats become the strings "inf", "-inf", "nan" (strict JSON has no Infinity)."""
    import math

    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {str(k): strict_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [strict_json(v) for v in o]
    if o is None or isinstance(o, (str, int, float, bool)):
        return o
    return str(o)


def _publishable_modes(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; an export is meant to be shared (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [folder, *folder.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _write_merged(base: Backbone, weights: Path, folder: Path) -> None:
    from faceveil.train.lora import load_lora

    unet = base.unet
    load_lora(unet, weights)
    if hasattr(unet, "fuse_lora"):
        unet.fuse_lora()
        unet.unload_lora()
    else:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in unet.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
        _strip_lora(unet)
    unet.save_pretrained(folder)


def _strip_lora(model) -> None:  # noqa: ANN001
    """Replace merged peft layers by their base layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())


def load_export(path: str | os.PathLike[str]) -> Backbone:
    """The base backbone of an export with its LoRA adapter applied (frozen, eval mode)."""
    import torch

    from faceveil.train.lora import load_lora

    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest.get("format") != EXPORT_FORMAT:
        raise InputError(f"{folder}: {EXPORT_MANIFEST} is not a faceveil export manifest")
    if manifest.get("version") != EXPORT_VERSION:
        raise InputError(f"{folder}: export version {manifest.get('version')} is not supported (this is {EXPORT_VERSION})")
    weights = folder / manifest["lora"]["file"]
    if not weights.is_file():
        raise InputError(f"{weights}: missing from the export")
    digest = file_sha256(weights)
    if manifest["lora"].get("sha256") not in (None, digest):
        raise InputError(f"{weights}: does not match the SHA-256 in {EXPORT_MANIFEST} (modified or corrupt)")
    embeds_file = folder / PROMPT_EMBEDS
    embeds = None
    if embeds_file.is_file():
        embeds = load_prompt_embeds(embeds_file)
    base_spec = manifest["base"]["spec"]
    if (Path(base_spec) / EXPORT_MANIFEST).is_file():
        raise ConfigError(f"{folder}: its base {base_spec} is itself an export; stacked exports are not supported")
    backbone = load_backbone(base_spec, prompt_embeds=embeds)
    load_lora(backbone.unet, weights)
    backbone.unet.eval()
    backbone.unet.requires_grad_(False)
    if embeds is not None:
        backbone.prompt_embeds = embeds.to(device=backbone.device, dtype=backbone.prompt_embeds.dtype
                                           if backbone.prompt_embeds is not None else torch.float32)
    backbone.spec = str(folder.resolve())
    backbone.adapter_hash = digest
    backbone.extra = dict(backbone.extra, export=manifest, settings=dict(manifest.get("settings") or {}),
                          base_spec=base_spec)
    return backbone


register_export_loader(load_export)
