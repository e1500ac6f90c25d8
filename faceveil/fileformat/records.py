"""The pieces of a version 2 file: records, the public description, the header's MAC and pixel hash."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceveil.fileformat.v1 import canonical as v1_canonical
from faceveil.fileformat.v3 import SealedFace
from faceveil.keys import SecretKey, tags_equal
from faceveil.models.pipeline import Veiled
from faceveil.models.settings import Settings

FORMAT = "faceveil"
VERSION = 3  # the version written; 1 and 2 are still read
FACE_PURPOSE = "face-record"
PHOTO_PURPOSE = "photo-record"
MAX_HEADER_BYTES = 1 << 20
MAX_FACES = 1024
V1_MAX_PIXELS = 2048 * 2048  # version 1 held aligned crops; bounds what --allow-v1 decodes


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
    base_sha256: str | None = None  # a hash of the base weights themselves (version 3)

    @classmethod
    def of(cls, v: Veiled) -> FileInfo:
        return cls(v.backbone, v.settings, dict(v.compute), v.adapter_hash, v.adapter_name, v.base_sha256)


def model_description(info: FileInfo, base_sha256: str | None = None) -> dict[str, Any]:
    """What a version 3 file seals about the model that drew its faces (never a local path)."""
    s = info.settings
    return {
        "backbone": info.backbone,
        "base_sha256": base_sha256 or info.base_sha256,
        "adapter": None if info.adapter_hash is None else {"name": info.adapter_name, "sha256": info.adapter_hash},
        "scheme": s.scheme, "steps": s.steps, "transform": s.transform,
        "compute": dict(info.compute),
    }


def info_from_model(model: dict[str, Any] | None) -> FileInfo | None:
    """The :class:`FileInfo` a version 3 file's sealed model description gives, None when it has none."""
    if not model:
        return None
    try:
        adapter = model.get("adapter") or {}
        settings = Settings(str(model["scheme"]), int(model["steps"]), str(model["transform"]))
        base = model.get("base_sha256")
        return FileInfo(str(model["backbone"]), settings, {str(k): str(v) for k, v in (model.get("compute") or {}).items()},
                        adapter.get("sha256"), adapter.get("name"), base if isinstance(base, str) else None)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


@dataclass
class VeiledFile:
    """An anonymized file as read: version 1 and 2 files carry ``records`` to replay through the
    model; version 3 files carry ``faces`` with their original pixels, and ``original``, the
    photo they restore (checked against the sealed digest: ``exact``)."""

    path: Path
    header: dict[str, Any]
    info: FileInfo | None
    image: np.ndarray | None
    records: list[FaceRecord]  # opened version 1/2 records; empty without the key
    photo_extra: dict[str, np.ndarray] | None = None
    authenticated: bool | None = None
    pixels_intact: bool | None = None
    bypassed: list[str] = field(default_factory=list)  # what ``force`` let through
    faces: list[SealedFace] = field(default_factory=list)  # version 3, opened
    original: np.ndarray | None = None  # version 3: the restored original photo
    exact: bool | None = None  # version 3: ``original`` matches the sealed digest
    model: dict[str, Any] | None = None  # version 3: the sealed description of the model used
    original_file: bytes | None = None  # version 3 with --keep-original-file: the input file's bytes
    original_suffix: str | None = None

    @property
    def version(self) -> int:
        return int(self.header.get("version", 0))

    @property
    def face_count(self) -> int:
        return len(self.header.get("faces") or [])


def canonical(header: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in header.items() if k != "mac"}, sort_keys=True, separators=(",", ":")).encode()


def header_authentic(header: dict[str, Any], key: SecretKey) -> bool:
    """Whether a public header (version 1 or 2, e.g. from ``faceveil inspect``) verifies under ``key``."""
    body = v1_canonical(header) if header.get("version") == 1 else canonical(header)
    return tags_equal(key.mac(body), header.get("mac", ""))


# --------------------------------------------------------------------------- writing


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
