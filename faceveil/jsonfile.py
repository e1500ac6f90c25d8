"""Reading JSON from untrusted bytes and files: bounded depth, no duplicate keys, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from faceveil.errors import InputError

MAX_DEPTH = 32


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            # Two readers could pick different values for one name; a signed header must mean one thing.
            raise ValueError(f"duplicate key {k[:40]!r}")
        out[k] = v
    return out


def _depth_ok(doc: Any, max_depth: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return False
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return True


def parse_json(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted input. Raises ValueError (never RecursionError) for invalid JSON,
    a key given twice in one object, or nesting deeper than ``max_depth``."""
    try:
        doc = json.loads(raw, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if not _depth_ok(doc, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    return doc


def load_json_object(path: str | os.PathLike[str], what: str, max_bytes: int = 16 << 20) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` names the file's role in error messages."""
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            raise InputError(f"{path}: {what}: larger than {max_bytes} bytes")
        doc = parse_json(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path}: {what}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: {what}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"{path}: {what}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: {what}: expected a JSON object")
    return doc
