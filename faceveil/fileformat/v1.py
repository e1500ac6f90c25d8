"""Reading version 1 files (kept so older files still recover; nothing writes them any more).

Version 1 kept the mask and the exact latent state in the clear (``fvDt``: zlib'd
safetensors with ``mask``, ``state``, ``residual_sealed``) and the key's global
fingerprint in the header. Both link files to their originals and to their
publisher; version 2 seals them (see :mod:`faceveil.fileformat`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as st_load

from faceveil.errors import FormatError, TamperedError
from faceveil.keys import SecretKey
from faceveil.models.inversion import LATTICE
from faceveil.models.pipeline import Veiled
from faceveil.models.settings import Settings

VERSION = 1
INSPECT_FIELDS = frozenset({"mask_fraction", "has_latents"})


def _escape(value: object) -> str:
    return str(value).encode("unicode_escape").decode("ascii")[:200]


def canonical(header: dict[str, Any]) -> bytes:
    body = {k: v for k, v in header.items() if k != "mac" and k not in INSPECT_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def background_sha256(image: np.ndarray, mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image[~mask]).tobytes()).hexdigest()


def decode_state(arr: np.ndarray, encoding: str) -> torch.Tensor:
    t = torch.from_numpy(arr.copy())
    if encoding.startswith("lattice"):
        return t.double() * LATTICE
    if encoding == "float32":
        return t.float()
    raise FormatError(f"unknown latent encoding {encoding!r}")


def veiled_from_v1_header(header: dict[str, Any], image: np.ndarray, mask: np.ndarray, state: torch.Tensor | None) -> Veiled:
    settings = Settings(
        scheme=header["scheme"],
        steps=int(header["steps"]),
        transform=header["transform"],
        residual=bool(header.get("sealed_residual", False)),
    )
    if list(header.get("image_size", image.shape[:2])) != list(image.shape[:2]):
        raise ValueError(f"it describes a {header['image_size']} image, not {list(image.shape[:2])}")
    return Veiled(
        image=image,
        mask=mask,
        nonce=bytes.fromhex(header["nonce"]),
        settings=settings,
        key_check="",
        key_fingerprint=str(header["key_fingerprint"]),
        backbone=str(header["backbone"]),
        adapter_hash=header.get("adapter_hash"),
        state=state,
        compute=dict(header.get("compute") or {}),
    )


def read_v1(path: Path, header: dict[str, Any], payload: bytes, image_loader, key: SecretKey | None, allow_unverified: bool) -> Veiled:
    """A version 1 file: payload hash and MAC first, then a bounded inflate, then the pixels."""
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise TamperedError(f"{path}: faceveil payload does not match its header")
    authentic = None if key is None else hmac.compare_digest(key.mac(canonical(header)), str(header.get("mac", "")))
    if authentic is False and not allow_unverified:
        what = "was modified" if key.fingerprint == header.get("key_fingerprint") else "does not verify under this key"
        raise TamperedError(f"{path}: faceveil metadata {what} (authentication failed)")
    try:
        h, w = (int(v) for v in header["image_size"])
        inflater = zlib.decompressobj()
        # Bound the inflated size by the image: mask (1 byte a pixel), lattice state (under 1) and
        # residual (6) fit in 8 bytes a pixel.
        raw = inflater.decompress(payload, 8 * h * w + (1 << 20))
        if inflater.unconsumed_tail:
            raise ValueError("payload larger than its image allows")
        arrays = st_load(raw)
    except Exception:  # noqa: BLE001
        raise FormatError(f"{path}: faceveil payload is corrupt") from None
    image = image_loader(h, w)
    mask = arrays["mask"].astype(bool)
    if mask.shape != image.shape[:2]:
        raise FormatError(f"{path}: stored mask does not match the image size")
    try:
        state = decode_state(arrays["state"], header["state_encoding"]) if "state" in arrays else None
        v = veiled_from_v1_header(header, image, mask, state)
    except KeyError as exc:
        raise FormatError(f"{path}: faceveil header lacks the field {_escape(exc.args[0])}") from None
    except (TypeError, ValueError, FormatError) as exc:
        raise FormatError(f"{path}: faceveil header is invalid: {_escape(exc)}") from None
    if "residual_sealed" in arrays:
        v.sealed_residual = arrays["residual_sealed"].tobytes()
    v.authenticated = authentic
    v.background_intact = header.get("background_sha256") in (None, background_sha256(image, mask))
    return v
