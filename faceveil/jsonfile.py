"""Reading a JSON object from a file, with one-line errors that name the file and the reason."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from faceveil.errors import InputError


def load_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` names the file's role in error messages."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: {what}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: {what}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: {what}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: {what}: expected a JSON object")
    return doc
