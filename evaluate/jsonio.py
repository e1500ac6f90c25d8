"""The evaluation's JSON helpers, one set used everywhere in ``faceveil.evaluate``.

- :func:`clean_json`: a JSON-able copy (numpy and torch values, paths); with ``strict``
  (what ``metrics.json`` holds) NaN becomes ``null`` and +-inf ``"inf"``/``"-inf"``;
- :func:`write_json`: written atomically (readers never see a partial file);
- :func:`read_json`: the parsed file, or ``None`` when it is missing or unreadable.

Cache files (per-image rows, sections) are written non-strict, so NaN and inf survive a
round trip; ``metrics.json`` is strict JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def clean_json(o: Any, strict: bool = True) -> Any:
    """A JSON-able copy of ``o``; ``strict``: NaN -> null, +-inf -> "inf"/"-inf"."""
    if isinstance(o, dict):
        return {str(k): clean_json(v, strict) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v, strict) for v in o]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        if strict and math.isnan(f):
            return None
        if strict and math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(o, np.ndarray):
        return clean_json(o.tolist(), strict)
    if isinstance(o, Path):
        return str(o)
    if type(o).__module__.startswith("torch") and hasattr(o, "tolist"):
        return clean_json(o.tolist(), strict)
    if o is None or isinstance(o, (str, int)):
        return o
    raise TypeError(f"not JSON-able: {type(o)}")


def dumps(data: Any, strict: bool = False) -> str:
    return json.dumps(clean_json(data, strict), indent=1, allow_nan=not strict)


def write_json(path: str | Path, data: Any, strict: bool = False) -> Path:
    """Write ``data`` as JSON, atomically; ``strict``: strict JSON (see :func:`clean_json`)."""
    from faceveil.data.images import atomic_write

    text = dumps(data, strict) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | Path) -> Any | None:
    """The parsed JSON file, or ``None`` if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
