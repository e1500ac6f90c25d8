"""Run-directory checkpoints: atomic, rotated, resumable.

``RUN_DIR/checkpoints/step-000500/`` holds what ``accelerator.save_state`` writes
(optimizer, LR scheduler, every process's RNG states; with FSDP / DeepSpeed their
own sharded model files) except the frozen UNet weights, plus:

- ``adapter/pytorch_lora_weights.safetensors``: the LoRA weights in diffusers' format
  (also what ``faceveil export`` publishes);
- ``train_state.json``: step, micro-batches consumed (the data position), images seen.

A checkpoint is written to ``.tmp-step-XXXXXX``, its files fsynced, and renamed when
complete, so a crash never leaves a half checkpoint under a real name. A checkpoint
of the same step that already exists is first renamed aside (``.old-step-XXXXXX``),
the new one renamed in, and only then the old one deleted: at every moment one
complete checkpoint of that step exists under one of the two names (a left-over
``.old-`` folder whose real name is missing is renamed back on the next save). Only
the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from faceveil.jsonfile import load_json_object
from faceveil.errors import ConfigError, InputError

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
    """A checkpoint's training state; an unreadable or corrupt file is an :class:`InputError` naming it."""
    path = Path(ckpt) / TRAIN_STATE
    state = load_json_object(path, "checkpoint training state")
    for key in ("step", "batches", "images"):
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 0:
            raise InputError(f"{path}: corrupt training state, {key!r} is missing or not a non-negative integer")
    return state


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


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then the folders (deepest first), so a rename publishes durable data."""
    dirs = []
    for dirpath, _, filenames in os.walk(folder):
        dirs.append(Path(dirpath))
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in reversed(dirs):
        _fsync_dir(d)


def _restore_or_drop_old(root: Path) -> None:
    """``.old-step-N`` folders: deleted when ``step-N`` exists, renamed back when it does not (a crash mid-swap)."""
    for old in root.glob(".old-step-*"):
        real = root / old.name[len(".old-"):]
        if real.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, real)


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
        _fsync_tree(tmp)
        _restore_or_drop_old(root)
        aside = root / f".old-{final.name}"
        if final.exists():
            os.replace(final, aside)  # the old checkpoint stays complete under another name until the new one is in
        os.replace(tmp, final)
        _fsync_dir(root)
        shutil.rmtree(aside, ignore_errors=True)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
