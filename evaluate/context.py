"""What every evaluation stage shares: the run context, per-image cache files, small helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceveil.evaluate.config import EvalConfig
from faceveil.evaluate.faces import EvalFace, Notes
from faceveil.evaluate.pairs import Pair

VARIANT_LABELS = {"file": "untouched file", "stripped": "metadata stripped"}

ROW_VERSION = 3  # bump when what a cached row / section holds changes: old caches are then not reused


def variant_label(v: str) -> str:
    return VARIANT_LABELS.get(v, f"JPEG q{v[4:]}" if v.startswith("jpeg") else v)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from faceveil.data.images import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None


def chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), max(1, n))]


def bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0, leave=False)


@dataclass
class CleanInfo:
    emb: dict[str, np.ndarray] = field(default_factory=dict)
    box: np.ndarray | None = None  # dlib detection on the crop
    lm68: np.ndarray | None = None
    lm5: np.ndarray | None = None


@dataclass
class Context:
    cfg: EvalConfig
    out: Path
    notes: Notes
    faces: dict[str, EvalFace]
    probes: list[str]
    refs: list[str]
    pairs: list[Pair]
    judges: list[Any]
    clean: dict[str, CleanInfo]
    lpips: Any
    detector: Any
    key: Any
    device: Any
    dtype: Any


def resolve_key(cfg: EvalConfig, out: Path, notes: Notes):  # -> SecretKey
    from faceveil.keys import SecretKey, load_key, save_key

    if cfg.key:
        return load_key(cfg.key)
    path = out / "eval.key"
    if path.is_file():
        return load_key(path)
    key = SecretKey.generate()
    save_key(key, path)
    notes.note(f"no key given: generated a throw-away evaluation key {path} (fingerprint {key.fingerprint})")
    return key


