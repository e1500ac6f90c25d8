"""The held-out split: which faces training never sees, by identity, the same in training and evaluation."""

from __future__ import annotations

import hashlib
from typing import Any


def identity_group(sample: dict[str, Any]) -> str:
    """What a face is held out by: its identity label, else its source photo, else its sample key."""
    return str(sample.get("label") or sample.get("source") or sample.get("key") or sample.get("__key__", ""))


def held_out(sample: dict[str, Any], fraction: float) -> bool:
    """Whether a face belongs to the validation split: a fixed hash of its identity group below ``fraction``."""
    digest = hashlib.sha256(b"faceveil/holdout\0" + identity_group(sample).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
