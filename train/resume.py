"""What a resumed run takes from its checkpoint's ``train_state.json`` besides the step counters.

The data-stream mode (replay or reseed) and the run's training-key seed. Not for: the
checkpoint layout and finding one to resume (:mod:`faceveil.train.checkpointing`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from faceveil.errors import InputError
from faceveil.train.config_schema import TrainConfig

logger = logging.getLogger("faceveil.train")

KEY_SEED_STATE = "key_seed"


def data_resume_mode(cfg: TrainConfig, state: dict[str, Any], world: int, ckpt: Path, main: bool) -> str:
    """``data.resume``, or ``reseed`` when the checkpoint's world size or data.num_workers differ from this run's
    (the stream is split by process and worker: replaying it would not reproduce the saved position)."""
    differ = []
    saved_world = state.get("world_size")
    if saved_world is not None and int(saved_world) != world:
        differ.append(f"world size {saved_world} -> {world}")
    saved_workers = state.get("num_workers")
    if saved_workers is not None and int(saved_workers) != cfg.data.num_workers:
        differ.append(f"data.num_workers {saved_workers} -> {cfg.data.num_workers}")
    if not differ:
        return cfg.data.resume
    if main:
        logger.warning("resuming %s with %s: the data stream is split by process and worker, so this continuation "
                       "is NOT equivalent to an uninterrupted run%s", ckpt, ", ".join(differ),
                       "; data.resume switched from skip to reseed (a fresh stream seeded by the step)"
                       if cfg.data.resume == "skip" else "")
    return "reseed"


def saved_key_seed(state: dict[str, Any], ckpt: Path) -> int | None:
    raw = state.get(KEY_SEED_STATE)
    if raw is None:
        return None
    try:
        return int(str(raw), 16)
    except ValueError:
        raise InputError(f"{ckpt / 'train_state.json'}: corrupt training state, {KEY_SEED_STATE!r} is not hex") from None
