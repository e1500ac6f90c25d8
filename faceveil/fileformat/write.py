"""Writing files: version 3 (what faceveil writes) and version 2 (kept to test reading old files).

:func:`write_photo_v3` and :func:`write_crop` write version 3 (:mod:`faceveil.fileformat.v3`),
embedded in the PNG or as a sidecar record beside an image of any format;
:func:`write_file` writes the version 2 layout, which recovers by replaying the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from faceveil import __version__
from faceveil.data.images import atomic_write
from faceveil.errors import InputError
from faceveil.fileformat.records import (
    FACE_PURPOSE, FORMAT, MAX_FACES, PHOTO_PURPOSE, FaceRecord, FileInfo, canonical,
    model_description,
)  # fmt: skip
from faceveil.fileformat.sealing import seal_arrays
from faceveil.fileformat.sidecar import encode_image, pack, sidecar_path
from faceveil.fileformat.v3 import DATA_CHUNK, HEADER_CHUNK, MAC_CHUNK, SealedFace, full_region, header_mac, ihdr_body, pixels_sha256, seal
from faceveil.keys import NONCE_BYTES, SecretKey, new_nonce
from faceveil.models.inversion import LATTICE
from faceveil.models.pipeline import Veiled

def _state_arrays(state: torch.Tensor, encoding: str) -> np.ndarray:
    if encoding == "lattice":
        counts = torch.round(state.double() / LATTICE)
        return counts.to(torch.int32 if counts.abs().max() < 2**31 else torch.int64).numpy()
    return state.float().numpy()


def write_file(
    path: str | os.PathLike[str],
    image: np.ndarray,
    records: list[FaceRecord],
    info: FileInfo,
    key: SecretKey,
    photo_extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Atomically write an anonymized PNG holding ``image`` and the sealed ``records``."""
    if Path(path).suffix.lower() != ".png":
        raise InputError(f"{path}: anonymized files are PNG; use a .png name")
    if not 1 <= len(records) <= MAX_FACES:
        raise ValueError(f"a file holds 1 to {MAX_FACES} face records, got {len(records)}")
    if len({r.nonce for r in records}) != len(records) or any(len(r.nonce) != NONCE_BYTES for r in records):
        raise ValueError("every face record needs its own 16-byte nonce")
    crop = records[0].mask.shape
    states = {None if r.state is None else tuple(r.state.shape) for r in records}
    if any(r.mask.shape != crop for r in records) or len(states) != 1:
        raise ValueError("the face records of one file share one crop size and state shape")
    state_shape = states.pop()
    encoding = None if state_shape is None else ("lattice" if info.settings.scheme == "exact" else "float32")
    sealed, faces = [], []
    for r in records:
        arrays: dict[str, np.ndarray] = {"mask": r.mask.astype(np.uint8)}
        if r.state is not None:
            arrays["state"] = _state_arrays(r.state, encoding)
        if r.sealed_residual is not None:
            arrays["residual_sealed"] = np.frombuffer(r.sealed_residual, dtype=np.uint8)
        if r.affine is not None:
            arrays["affine"] = np.asarray(r.affine, dtype=np.float64).reshape(2, 3)
        sealed.append(seal_arrays(arrays, key, FACE_PURPOSE, r.nonce))
        r.check = key.check_value(r.nonce)
        faces.append({"nonce": r.nonce.hex(), "check": r.check, "sealed_bytes": len(sealed[-1])})
    photo = None
    if photo_extra:
        photo_nonce = new_nonce()
        sealed.append(seal_arrays(photo_extra, key, PHOTO_PURPOSE, photo_nonce))
        photo = {"nonce": photo_nonce.hex(), "sealed_bytes": len(sealed[-1])}
    payload = b"".join(sealed)
    s = info.settings
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": 2,
        "faceveil_version": __version__,
        "backbone": info.backbone,
        "adapter": None if info.adapter_hash is None else {"name": info.adapter_name, "sha256": info.adapter_hash},
        "scheme": s.scheme,
        "steps": s.steps,
        "transform": s.transform,
        "residual": bool(s.residual),
        "compute": dict(info.compute),
        "image_size": list(image.shape[:2]),
        "crop_size": list(crop),
        "state_shape": None if state_shape is None else list(state_shape),
        "state_encoding": encoding,
        "pixels_sha256": pixels_sha256(image),
        "faces": faces,
        "photo": photo,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    header["mac"] = key.mac(canonical(header))
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add(HEADER_CHUNK, json.dumps(header).encode())
    pnginfo.add(DATA_CHUNK, payload)
    img = Image.fromarray(np.ascontiguousarray(image))
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG", pnginfo=pnginfo))


def write_v3(
    path: str | os.PathLike[str],
    image: np.ndarray,
    original: np.ndarray,
    faces: list[SealedFace],
    model: dict[str, Any] | None,
    key: SecretKey,
    record: str = "embedded",
    quality: int = 95,
    original_file: bytes | None = None,
    original_suffix: str | None = None,
) -> Path:
    """Atomically write an anonymized ``image`` whose ``faces`` seal ``original``'s pixels (version 3).

    ``record="embedded"``: one PNG holding the record. ``"sidecar"``: the image in the format its
    suffix names (PNG, JPEG or WebP at ``quality``) and the record beside it, ``NAME.fvrec``.
    Raises ValueError when a changed pixel lies outside every face region."""
    path = Path(path)
    if record == "embedded":
        if path.suffix.lower() != ".png":
            raise InputError(f"{path}: a file with its record embedded is a PNG; use a .png name or --record sidecar")
        header, payload = seal(image, original, faces, model, key, original_file, original_suffix)
        mac = header_mac(key, header, ihdr_body(*image.shape[:2]))
        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add(HEADER_CHUNK, header)
        pnginfo.add(DATA_CHUNK, payload)
        pnginfo.add(MAC_CHUNK, mac.encode("ascii"))
        img = Image.fromarray(np.ascontiguousarray(image))
        return atomic_write(path, lambda tmp: img.save(tmp, format="PNG", pnginfo=pnginfo))
    if record != "sidecar":
        raise ValueError(f"record is 'embedded' or 'sidecar', not {record!r}")
    data = encode_image(image, path.suffix, quality)
    image_file = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "format": path.suffix.lower().lstrip(".")}
    header, payload = seal(image, original, faces, model, key, original_file, original_suffix, image_file)
    atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_bytes(pack(header, header_mac(key, header), payload)))
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_veiled(path: str | os.PathLike[str], v: Veiled, key: SecretKey, record: str = "embedded", quality: int = 95,
                 original_file: bytes | None = None, original_suffix: str | None = None) -> Path:
    """Write one anonymized aligned crop (version 3): the mask's original pixels, sealed."""
    if v.original is None:
        raise ValueError("writing a file needs the original crop (Veiled.original, set by Anonymizer.anonymize)")
    return write_v3(path, v.image, v.original, [full_region(v.nonce, v.mask)], model_description(FileInfo.of(v)), key,
                    record, quality, original_file, original_suffix)


def write_veiled_v2(path: str | os.PathLike[str], v: Veiled, key: SecretKey) -> Path:
    """Write one aligned crop in the version 2 layout (only to test that old files still recover)."""
    return write_file(path, v.image, [FaceRecord(v.nonce, v.mask, v.state, v.sealed_residual)], FileInfo.of(v), key)
