"""The pieces of a version 2 file: records, the public description, the header's MAC and pixel hash."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceveil.fileformat.v1 import canonical as v1_canonical
from faceveil.keys import SecretKey
from faceveil.models.pipeline import Veiled
from faceveil.models.settings import Settings

FORMAT = "faceveil"
VERSION = 2
HEADER_CHUNK = b"fvHd"
DATA_CHUNK = b"fvDt"
FACE_PURPOSE = "face-record"
PHOTO_PURPOSE = "photo-record"
MAX_HEADER_BYTES = 1 << 20
MAX_FACES = 1024
CHUNKS = frozenset({HEADER_CHUNK, DATA_CHUNK})


@dataclass
class FaceRecord:
    """What the key holder needs to recover one face (sealed in the file)."""

    nonce: bytes
    mask: np.ndarray  # (h, w) bool, the face mask on the crop
    state: torch.Tensor | None = None  # (S, C, h', w') exact clean-end state
    sealed_residual: bytes | None = None
    affine: np.ndarray | None = None  # (2, 3) float64 photo -> crop; None when the image is the crop
    check: str = ""  # per-file key check value (filled on write and read)


@dataclass
class FileInfo:
    """The public description shared by a file's faces."""

    backbone: str
    settings: Settings
    compute: dict[str, str] = field(default_factory=dict)
    adapter_hash: str | None = None
    adapter_name: str | None = None

    @classmethod
    def of(cls, v: Veiled) -> FileInfo:
        return cls(v.backbone, v.settings, dict(v.compute), v.adapter_hash, v.adapter_name)


@dataclass
class VeiledFile:
    path: Path
    header: dict[str, Any]
    info: FileInfo
    image: np.ndarray | None
    records: list[FaceRecord]  # opened records; empty without the key
    photo_extra: dict[str, np.ndarray] | None = None
    authenticated: bool | None = None
    pixels_intact: bool | None = None
    bypassed: list[str] = field(default_factory=list)  # what ``force`` let through


def canonical(header: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in header.items() if k != "mac"}, sort_keys=True, separators=(",", ":")).encode()


def header_authentic(header: dict[str, Any], key: SecretKey) -> bool:
    """Whether a public header (version 1 or 2, e.g. from ``faceveil inspect``) verifies under ``key``."""
    body = v1_canonical(header) if header.get("version") == 1 else canonical(header)
    return hmac.compare_digest(key.mac(body), str(header.get("mac", "")))


def pixels_sha256(image: np.ndarray) -> str:
    h = hashlib.sha256(b"faceveil/v2/pixels\0" + "x".join(map(str, image.shape)).encode() + b"\0")
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- writing


def escape(value: object) -> str:
    """An untrusted value for printing: one line, control characters escaped, length capped."""
    text = str(value)
    out = text.encode("unicode_escape").decode("ascii")
    return out if len(out) <= 200 else out[:200] + "..."


def file_info(header: dict[str, Any]) -> FileInfo:
    adapter = header.get("adapter") or {}
    if not isinstance(adapter, dict):
        raise ValueError("adapter must be an object")
    settings = Settings(str(header["scheme"]), int(header["steps"]), str(header["transform"]), bool(header.get("residual", True)))
    compute = header.get("compute") or {}
    if not isinstance(compute, dict):
        raise ValueError("compute must be an object")
    return FileInfo(str(header["backbone"]), settings, {str(k): str(v) for k, v in compute.items()},
                    adapter.get("sha256"), adapter.get("name"))
