"""The run directory's own files (``config.yaml``, ``metrics.jsonl``, ``final.json``) and the metrics log.

Not for: checkpoints (:mod:`faceveil.train.checkpointing`) or tensorboard (accelerate's tracker).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
CONFIG_FILE = "config.yaml"


def metric_name(key: str) -> str:
    """Tensorboard tag of a VeilModel output: the losses under loss/, diagnostics under train/."""
    if key == "loss":
        return "loss/total"
    return f"loss/{key}" if key in ("identity", "wrong_key", "prior", "perceptual") else f"train/{key}"


def _json_default(o: Any) -> Any:
    return str(o)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
