"""Run-directory checkpoints: atomic, rotated, resumable.

``RUN_DIR/checkpoints/step-000500/`` holds what ``accelerator.save_state`` writes
(optimizer, LR scheduler, every process's RNG states; with FSDP / DeepSpeed their
own sharded model files) except the frozen UNet weights, plus:

- ``adapter/pytorch_lora_weights.safetensors``: the LoRA weights in diffusers' format
  (also what ``faceveil export`` publishes);
- ``train_state.json``: step, micro-batches consumed (the data position), images seen.

A checkpoint is written to ``.tmp-step-XXXXXX`` and renamed when complete, so a
crash never leaves a half checkpoint under a real name; only the newest
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from faceveil.errors import ConfigError

CHECKPOINTS = "checkpoints"
TRAIN_STATE = "train_state.json"
ADAPTER_DIR = "adapter"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / TRAIN_STATE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_checkpoint(run_dir: str | os.PathLike[str], which: str) -> Path:
    """``latest``, ``step-000500`` / ``500``, or a checkpoint folder path."""
    if which == "latest":
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise ConfigError(f"{Path(run_dir) / CHECKPOINTS}: no checkpoint to resume from")
        return ckpts[-1]
    path = Path(which)
    if (path / TRAIN_STATE).is_file():
        return path
    name = checkpoint_name(int(which)) if which.isdigit() else which
    path = Path(run_dir) / CHECKPOINTS / name
    if not (path / TRAIN_STATE).is_file():
        raise ConfigError(f"{path}: no such checkpoint")
    return path


def resolve_resume(run_dir: str | os.PathLike[str], which: str | None) -> Path | None:
    """The checkpoint to resume from: None (start fresh), ``auto`` (the latest if there is one: for jobs
    that a scheduler may requeue), or anything :func:`resolve_checkpoint` takes."""
    if which is None:
        return None
    if which == "auto":
        ckpts = list_checkpoints(run_dir)
        return ckpts[-1] if ckpts else None
    return resolve_checkpoint(run_dir, which)


def read_train_state(ckpt: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(ckpt) / TRAIN_STATE).read_text())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(accelerator, run_dir: str | os.PathLike[str], step: int, state: dict[str, Any],  # noqa: ANN001
                    write_adapter, keep: int) -> Path:
    """Collective: every process calls it. ``write_adapter(folder)`` runs on the main process."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_adapter(tmp / ADAPTER_DIR)
        (tmp / TRAIN_STATE).write_text(json.dumps(dict(state, step=step), indent=2) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
