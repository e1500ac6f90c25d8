"""The anonymized PNG: pixels plus faceveil's own ancillary chunks.

Chunks (private, ancillary, so viewers ignore them and keep the image):
- ``fvHd``: UTF-8 JSON header: format, version, backbone and adapter hash,
  scheme, steps, key transform, nonce, key fingerprint, shapes, the payload's
  SHA-256 and an HMAC tag under the key over all of it;
- ``fvDt``: zlib-compressed safetensors with ``mask`` (H, W) uint8, ``state``
  (the exact clean-end latents: int32 lattice counts for ``exact``, float32 otherwise)
  and ``residual_sealed`` (the autoencoder residual, encrypted under the key).

Nothing in either chunk is secret; the residual is ciphertext.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from faceveil import __version__
from faceveil.data.images import atomic_write, to_rgb_array
from faceveil.errors import FormatError, InputError
from faceveil.keys import SecretKey
from faceveil.models.inversion import LATTICE
from faceveil.models.pipeline import Veiled
from faceveil.models.settings import Settings

FORMAT = "faceveil"
VERSION = 1
HEADER_CHUNK = b"fvHd"
DATA_CHUNK = b"fvDt"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


# Fields ``faceveil inspect`` adds for people; not part of the authenticated header.
INSPECT_FIELDS = frozenset({"mask_fraction", "has_latents"})


def _canonical(header: dict[str, Any]) -> bytes:
    body = {k: v for k, v in header.items() if k != "mac" and k not in INSPECT_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def header_authentic(header: dict[str, Any], key: SecretKey) -> bool:
    """Whether the header's MAC verifies under ``key`` (False for a wrong key or edited metadata)."""
    return hmac.compare_digest(key.mac(_canonical(header)), str(header.get("mac", "")))


def background_sha256(image: np.ndarray, mask: np.ndarray) -> str:
    """Hash of the pixels outside the mask: the inpainting conditioning depends on them."""
    return hashlib.sha256(np.ascontiguousarray(image[~mask]).tobytes()).hexdigest()


def _encode_state(state: torch.Tensor, scheme: str) -> tuple[np.ndarray, str]:
    if scheme == "exact":
        counts = torch.round(state.double() / LATTICE)
        if counts.abs().max() < 2**31:
            return counts.to(torch.int32).numpy(), "lattice-int32"
        return counts.to(torch.int64).numpy(), "lattice-int64"
    return state.float().numpy(), "float32"


def _decode_state(arr: np.ndarray, encoding: str) -> torch.Tensor:
    t = torch.from_numpy(arr.copy())
    if encoding.startswith("lattice"):
        return t.double() * LATTICE
    if encoding == "float32":
        return t.float()
    raise FormatError(f"unknown latent encoding {encoding!r}")


def public_header(v: Veiled) -> dict[str, Any]:
    """Everything recovery needs that is not secret and not an array."""
    h, w = v.mask.shape
    return {
        "format": FORMAT,
        "version": VERSION,
        "faceveil_version": __version__,
        "backbone": v.backbone,
        "adapter_hash": v.adapter_hash,
        "scheme": v.settings.scheme,
        "steps": v.settings.steps,
        "transform": v.settings.transform,
        "nonce": v.nonce.hex(),
        "key_fingerprint": v.key_fingerprint,
        "image_size": [h, w],
        "compute": dict(v.compute),
        "background_sha256": background_sha256(v.image, v.mask),
    }


def encode_veiled(v: Veiled, key: SecretKey) -> tuple[dict[str, Any], bytes]:
    """Header (with MAC) and compressed payload for one anonymized image."""
    header = public_header(v)
    arrays = {"mask": v.mask.astype(np.uint8)}
    if v.state is not None:
        arrays["state"], header["state_encoding"] = _encode_state(v.state, v.settings.scheme)
        header["state_shape"] = list(v.state.shape)
    header["sealed_residual"] = v.sealed_residual is not None
    if v.sealed_residual is not None:
        arrays["residual_sealed"] = np.frombuffer(v.sealed_residual, dtype=np.uint8)
    payload = zlib.compress(st_save(arrays), 9)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    header["mac"] = key.mac(_canonical(header))
    return header, payload


def write_veiled(path: str | os.PathLike[str], v: Veiled, key: SecretKey) -> Path:
    """Atomically write an anonymized PNG with its faceveil chunks."""
    if Path(path).suffix.lower() != ".png":
        raise InputError(f"{path}: anonymized files are PNG; use a .png name")
    header, payload = encode_veiled(v, key)
    info = PngImagePlugin.PngInfo()
    info.add(HEADER_CHUNK, json.dumps(header).encode())
    info.add(DATA_CHUNK, payload)
    img = Image.fromarray(v.image)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG", pnginfo=info))


def read_chunks(path: str | os.PathLike[str]) -> dict[bytes, bytes]:
    """The faceveil chunks of a PNG (empty if it has none, e.g. stripped or not a PNG)."""
    data = Path(path).read_bytes()
    if not data.startswith(_PNG_SIG):
        return {}
    out: dict[bytes, bytes] = {}
    pos = len(_PNG_SIG)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise FormatError(f"{path}: truncated PNG chunk {ctype!r}")
        if ctype in (HEADER_CHUNK, DATA_CHUNK):
            if struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF) != crc:
                raise FormatError(f"{path}: faceveil chunk {ctype.decode()} is corrupt (CRC mismatch)")
            out[ctype] = body
        if ctype == b"IEND":
            break
        pos += 12 + length
    return out


def read_header(path: str | os.PathLike[str], chunks: dict[bytes, bytes] | None = None) -> dict[str, Any] | None:
    """The public JSON header, or None when the file carries no faceveil metadata.

    ``chunks`` (from :func:`read_chunks`) spares reading the file again.
    """
    chunks = read_chunks(path) if chunks is None else chunks
    if HEADER_CHUNK not in chunks:
        return None
    try:
        header = json.loads(chunks[HEADER_CHUNK])
    except ValueError:
        raise FormatError(f"{path}: faceveil header is not valid JSON") from None
    if header.get("format") != FORMAT:
        raise FormatError(f"{path}: not a faceveil header")
    if header.get("version") != VERSION:
        raise FormatError(f"{path}: faceveil format version {header.get('version')} is not supported (this is {VERSION})")
    return header


def veiled_from_header(header: dict[str, Any], image: np.ndarray, mask: np.ndarray, state: torch.Tensor | None) -> Veiled:
    """A :class:`Veiled` from a header (e.g. the JSON ``faceveil inspect`` printed) and pixels."""
    try:
        settings = Settings(
            scheme=header["scheme"],
            steps=int(header["steps"]),
            transform=header["transform"],
            residual=bool(header.get("sealed_residual", False)),
        )
        nonce = bytes.fromhex(header["nonce"])
        if list(header.get("image_size", image.shape[:2])) != list(image.shape[:2]):
            raise ValueError(f"it describes a {header['image_size']} image, not {list(image.shape[:2])}")
        return Veiled(
            image=image,
            mask=mask,
            nonce=nonce,
            settings=settings,
            key_fingerprint=str(header["key_fingerprint"]),
            backbone=str(header["backbone"]),
            adapter_hash=header.get("adapter_hash"),
            state=state,
            compute=dict(header.get("compute") or {}),
        )
    except KeyError as exc:
        raise FormatError(f"faceveil header lacks the field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise FormatError(f"faceveil header is invalid: {exc}") from None


def read_veiled(path: str | os.PathLike[str], key: SecretKey | None = None, allow_unverified: bool = False) -> Veiled:
    """Read an anonymized PNG written by :func:`write_veiled`.

    With ``key``, the header's MAC is checked: a failure (edited metadata, or a
    wrong key) raises :class:`FormatError` unless ``allow_unverified``, which
    instead sets ``Veiled.authenticated = False``. Raises :class:`FormatError`
    when the file has no faceveil metadata.
    """
    path = Path(path)
    chunks = read_chunks(path)
    header = read_header(path, chunks)
    if header is None or DATA_CHUNK not in chunks:
        raise FormatError(f"{path}: no faceveil metadata (stripped or re-encoded?)")
    payload = chunks[DATA_CHUNK]
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise FormatError(f"{path}: faceveil payload does not match its header")
    authentic = None if key is None else header_authentic(header, key)
    if authentic is False and not allow_unverified:
        what = "was modified" if key.fingerprint == header.get("key_fingerprint") else "does not verify under this key"
        raise FormatError(f"{path}: faceveil metadata {what} (authentication failed)")
    try:
        h, w = (int(v) for v in header["image_size"])
        # Bound the inflated size: a crafted payload must not exhaust memory.
        inflater = zlib.decompressobj()
        raw = inflater.decompress(payload, 64 * h * w + (1 << 20))
        if inflater.unconsumed_tail:
            raise ValueError("payload larger than its image allows")
        arrays = st_load(raw)
    except Exception:  # noqa: BLE001
        raise FormatError(f"{path}: faceveil payload is corrupt") from None
    with Image.open(path) as img:
        img.load()
        image = to_rgb_array(img, str(path))
    mask = arrays["mask"].astype(bool)
    if mask.shape != image.shape[:2]:
        raise FormatError(f"{path}: stored mask does not match the image size")
    try:
        state = _decode_state(arrays["state"], header["state_encoding"]) if "state" in arrays else None
        v = veiled_from_header(header, image, mask, state)
    except (FormatError, KeyError) as exc:
        raise FormatError(f"{path}: {exc}") from None
    if "residual_sealed" in arrays:
        v.sealed_residual = arrays["residual_sealed"].tobytes()
    v.authenticated = authentic
    v.background_intact = header.get("background_sha256") in (None, background_sha256(image, mask))
    return v
