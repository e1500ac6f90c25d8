"""The anonymized photo file: a PNG with a record per face and the sealed photo residual.

Chunks (private, ancillary: viewers show the photo and ignore them):

- ``fvPh``: UTF-8 JSON header: format ``faceveil-photo``, version, photo size,
  key fingerprint, the photo nonce, the SHA-256 of all the photo's pixels, the
  payload's SHA-256, one record per face (its index, ``matrix``, crop size and
  the crop header of :func:`faceveil.fileformat.public_header`: backbone,
  settings, nonce, compute), and an HMAC under the key over all of it;
- ``fvPD``: zlib-compressed safetensors with ``face{i}.mask``, ``face{i}.state``,
  ``face{i}.residual_sealed`` and ``photo.residual_sealed``.

Nothing is secret and nothing is a keyless function of the original: masks and
transforms come from the anonymized photo's geometry, states are the keyed
latents, residuals are AEAD ciphertexts of fixed length. With a key the header is
authenticated before the payload is inflated, and inflation is bounded by what
the header's face count and photo size allow.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from faceveil import __version__
from faceveil.data.images import atomic_write, to_rgb_array
from faceveil.errors import FormatError, InputError
from faceveil.fileformat import _decode_state, _encode_state, public_header, veiled_from_header
from faceveil.pngchunks import read_png_chunks
from faceveil.keys import SecretKey
from faceveil.models.photo import PhotoFace, VeiledPhoto

FORMAT = "faceveil-photo"
VERSION = 1
HEADER_CHUNK = b"fvPh"
DATA_CHUNK = b"fvPD"
MAX_FACES = 4096


def _canonical(header: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in header.items() if k != "mac"}, sort_keys=True, separators=(",", ":")).encode()


def pixels_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def _face_header(f: PhotoFace) -> dict[str, Any]:
    crop = public_header(f.veiled)
    for k in ("format", "version", "faceveil_version", "key_fingerprint", "background_sha256"):
        crop.pop(k, None)
    crop["sealed_residual"] = f.veiled.sealed_residual is not None
    return {"index": f.index, "matrix": np.asarray(f.matrix, dtype=np.float64).tolist(), "size": f.size, "crop": crop}


def encode_photo(vp: VeiledPhoto, key: SecretKey) -> tuple[dict[str, Any], bytes]:
    h, w = vp.image.shape[:2]
    arrays: dict[str, np.ndarray] = {}
    faces = []
    for i, f in enumerate(vp.faces):
        if f.veiled is None:
            raise ValueError("every face needs its anonymized record")
        fh = _face_header(f)
        arrays[f"face{i}.mask"] = f.mask.astype(np.uint8)
        if f.veiled.state is not None:
            arrays[f"face{i}.state"], fh["crop"]["state_encoding"] = _encode_state(f.veiled.state, f.veiled.settings.scheme)
            fh["crop"]["state_shape"] = list(f.veiled.state.shape)
        if f.veiled.sealed_residual is not None:
            arrays[f"face{i}.residual_sealed"] = np.frombuffer(f.veiled.sealed_residual, dtype=np.uint8)
        faces.append(fh)
    if vp.sealed_residual is not None:
        arrays["photo.residual_sealed"] = np.frombuffer(vp.sealed_residual, dtype=np.uint8)
    payload = zlib.compress(st_save(arrays), 6)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "faceveil_version": __version__,
        "image_size": [h, w],
        "key_fingerprint": vp.key_fingerprint,
        "nonce": vp.nonce.hex(),
        "faces": faces,
        "pixels_sha256": pixels_sha256(vp.image),
        "photo_residual": vp.sealed_residual is not None,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    header["mac"] = key.mac(_canonical(header))
    return header, payload


def write_photo(path: str | os.PathLike[str], vp: VeiledPhoto, key: SecretKey) -> Path:
    """Atomically write an anonymized photo (PNG) with its face records."""
    if Path(path).suffix.lower() != ".png":
        raise InputError(f"{path}: anonymized files are PNG; use a .png name")
    header, payload = encode_photo(vp, key)
    info = PngImagePlugin.PngInfo()
    info.add(HEADER_CHUNK, json.dumps(header).encode())
    info.add(DATA_CHUNK, payload)
    img = Image.fromarray(vp.image)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG", pnginfo=info, compress_level=6))


def read_photo_header(path: str | os.PathLike[str], chunks: dict[bytes, bytes] | None = None) -> dict[str, Any] | None:
    """The public header of a photo file, or None when the file is not one."""
    chunks = read_png_chunks(path, (HEADER_CHUNK, DATA_CHUNK)) if chunks is None else chunks
    if HEADER_CHUNK not in chunks:
        return None
    try:
        header = json.loads(chunks[HEADER_CHUNK])
    except ValueError:
        raise FormatError(f"{path}: faceveil photo header is not valid JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FormatError(f"{path}: not a faceveil photo header")
    if header.get("version") != VERSION:
        raise FormatError(f"{path}: faceveil photo format version {header.get('version')} is not supported (this is {VERSION})")
    return header


def header_authentic(header: dict[str, Any], key: SecretKey) -> bool:
    return hmac.compare_digest(key.mac(_canonical(header)), str(header.get("mac", "")))


def _payload(path: Path, header: dict[str, Any], payload: bytes) -> dict[str, np.ndarray]:
    h, w = (int(v) for v in header["image_size"])
    faces = header["faces"]
    if not isinstance(faces, list) or len(faces) > MAX_FACES:
        raise ValueError("bad face list")
    sizes = [int(f["size"]) for f in faces]
    if any(s < 8 or s > 4096 for s in sizes):
        raise ValueError("bad crop size")
    # Bound the inflated size: masks, states and residuals cannot exceed this for honest files.
    limit = sum(64 * s * s for s in sizes) + 3 * h * w + (1 << 20)
    inflater = zlib.decompressobj()
    raw = inflater.decompress(payload, limit)
    if inflater.unconsumed_tail:
        raise ValueError("payload larger than its photo allows")
    return st_load(raw)


def read_photo(path: str | os.PathLike[str], key: SecretKey | None = None, allow_unverified: bool = False) -> VeiledPhoto:
    """Read a file written by :func:`write_photo`. With ``key`` the header is authenticated first;
    a failure raises :class:`FormatError` unless ``allow_unverified``."""
    path = Path(path)
    chunks = read_png_chunks(path, (HEADER_CHUNK, DATA_CHUNK))
    header = read_photo_header(path, chunks)
    if header is None or DATA_CHUNK not in chunks:
        raise FormatError(f"{path}: no faceveil photo metadata (stripped or re-encoded?)")
    authentic = None if key is None else header_authentic(header, key)
    if authentic is False and not allow_unverified:
        what = "was modified" if key.fingerprint == header.get("key_fingerprint") else "does not verify under this key"
        raise FormatError(f"{path}: faceveil metadata {what} (authentication failed)")
    payload = chunks[DATA_CHUNK]
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise FormatError(f"{path}: faceveil payload does not match its header")
    try:
        arrays = _payload(path, header, payload)
        with Image.open(path) as img:
            img.load()
            image = to_rgb_array(img, str(path))
        if list(image.shape[:2]) != [int(v) for v in header["image_size"]]:
            raise ValueError("the photo's size does not match its header")
        faces = []
        for i, fh in enumerate(header["faces"]):
            size = int(fh["size"])
            mask = arrays[f"face{i}.mask"].astype(bool)
            if mask.shape != (size, size):
                raise ValueError(f"face {i}: mask shape does not match its crop size")
            crop = dict(fh["crop"], image_size=[size, size], key_fingerprint=str(header["key_fingerprint"]))
            state = _decode_state(arrays[f"face{i}.state"], crop["state_encoding"]) if f"face{i}.state" in arrays else None
            v = veiled_from_header(crop, np.zeros((size, size, 3), np.uint8), mask, state)
            if f"face{i}.residual_sealed" in arrays:
                v.sealed_residual = arrays[f"face{i}.residual_sealed"].tobytes()
            matrix = np.asarray(fh["matrix"], dtype=np.float64)
            if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
                raise ValueError(f"face {i}: bad transform")
            faces.append(PhotoFace(index=int(fh["index"]), matrix=matrix, mask=mask, veiled=v))
        sealed = arrays["photo.residual_sealed"].tobytes() if "photo.residual_sealed" in arrays else None
        vp = VeiledPhoto(image, faces, bytes.fromhex(header["nonce"]), sealed, str(header["key_fingerprint"]))
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a crafted file must give one line, not a traceback
        raise FormatError(f"{path}: faceveil photo payload is corrupt ({exc.__class__.__name__}: {exc})") from None
    vp.authenticated = authentic
    vp.meta = {"pixels_intact": header.get("pixels_sha256") == pixels_sha256(image), "header": header}
    return vp
