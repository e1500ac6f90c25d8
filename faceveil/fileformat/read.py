"""Reading an untrusted file: cheap checks first, authentication before anything costly."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceveil.errors import FormatError, KeyMismatchError, TamperedError, escape
from faceveil.fileformat.png import MAX_PIXELS, decode_rgb, plain_layout_problems, read_png_layout
from faceveil.fileformat.records import (
    V1_MAX_PIXELS, FACE_PURPOSE, MAX_FACES, PHOTO_PURPOSE,
    FaceRecord, FileInfo, VeiledFile, file_info, header_authentic, info_from_model,
)  # fmt: skip
from faceveil.fileformat.sealing import at_most, exactly, open_arrays
from faceveil.fileformat.v3 import CHUNKS, DATA_CHUNK, HEADER_CHUNK, LIMITS, check_image_size, key_matches, parse_header, pixels_sha256
from faceveil.fileformat.v3 import VERSION as V3
from faceveil.fileformat.v1 import read_v1
from faceveil.keys import NONCE_BYTES, SecretKey
from faceveil.models.inversion import LATTICE

SUPPORTED = (1, 2, V3)


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    header = parse_header(path, raw)
    if header.get("version") not in SUPPORTED:
        # A well-formed newer version is the user's to upgrade for; anything else was altered.
        cls = FormatError if isinstance(header.get("version"), int) and header["version"] > V3 else TamperedError
        raise cls(f"{path}: faceveil format version {escape(header.get('version'))} is not supported (this reads 1 to {V3})")
    return header


def read_chunks(path: str | os.PathLike[str]) -> dict[bytes, bytes]:
    """The faceveil chunks of a PNG (empty when it has none or is not a PNG), strictly parsed."""
    layout = read_png_layout(path, CHUNKS, limits=LIMITS)
    return {} if layout is None else dict(layout.chunks)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The public JSON header, or None when the file carries no faceveil metadata (the sealed
    payload is skipped, never read)."""
    layout = read_png_layout(path, frozenset({HEADER_CHUNK}), limits=LIMITS)
    if layout is None or HEADER_CHUNK not in layout.chunks:
        return None
    return _parse_header(Path(path), layout.chunks[HEADER_CHUNK])


def _int_list(header: dict[str, Any], name: str, n: int, low: int, high: int) -> list[int]:
    value = header.get(name)
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, int) and low <= v <= high for v in value):
        raise ValueError(f"{name} must be {n} integers in [{low}, {high}]")
    return value


def _validate(header: dict[str, Any], width: int, height: int, payload_len: int) -> tuple[FileInfo, list[dict[str, Any]]]:
    """Check every field the reader relies on, before anything costly is decoded."""
    info = file_info(header)
    h, w = _int_list(header, "image_size", 2, 1, MAX_PIXELS)
    if (h, w) != (height, width):
        raise ValueError(f"it describes a {w}x{h} image but the PNG is {width}x{height}")
    ch, cw = _int_list(header, "crop_size", 2, 1, 1 << 14)
    if ch * cw > MAX_PIXELS:
        raise ValueError("crop_size is too large")
    if header.get("state_shape") is not None:
        shape = _int_list(header, "state_shape", 4, 1, 1 << 14)
        if shape[0] > 2 or np.prod(shape, dtype=np.int64) > 2 * ch * cw or header.get("state_encoding") not in ("lattice", "float32"):
            raise ValueError(f"state_shape {shape} or state_encoding does not fit a {cw}x{ch} crop")
    faces = header.get("faces")
    if not isinstance(faces, list) or not 1 <= len(faces) <= MAX_FACES:
        raise ValueError(f"faces must list 1 to {MAX_FACES} records")
    parts = list(faces) + ([header["photo"]] if header.get("photo") else [])
    total = 0
    for f in parts:
        if not isinstance(f, dict) or not isinstance(f.get("sealed_bytes"), int) or f["sealed_bytes"] < 16:
            raise ValueError("a record lacks its sealed length")
        if len(bytes.fromhex(str(f.get("nonce", "")))) != NONCE_BYTES:
            raise ValueError("a record's nonce is not 16 bytes")
        total += f["sealed_bytes"]
    if total != payload_len:
        raise ValueError(f"records add up to {total} bytes, the payload has {payload_len}")
    return info, parts


def _face_spec(header: dict[str, Any]):
    ch, cw = header["crop_size"]
    spec = {
        "mask": exactly(("U8",), (ch, cw)),
        "residual_sealed": at_most(("U8",), 6 * ch * cw + 16, ndim=1),
        "affine": exactly(("F64",), (2, 3)),
    }
    if header.get("state_shape") is not None:
        dtypes = ("I32", "I64") if header["state_encoding"] == "lattice" else ("F32",)
        spec["state"] = exactly(dtypes, tuple(header["state_shape"]))
    cap = 8 * ch * cw + 8 * int(np.prod(header.get("state_shape") or [0])) + (1 << 16)
    return spec, cap


def _by_size(blob: bytes) -> int:
    """Inflate cap from a record's own size: far above what zlib gives our arrays, far below a bomb's."""
    return 1024 * len(blob) + (1 << 20)


def _open_records(vf: VeiledFile, parts: list[dict[str, Any]], payload: bytes, key: SecretKey) -> list[str]:
    """Open every sealed record into ``vf``; return what did not open."""
    header, failed, pos = vf.header, [], 0
    spec, cap = _face_spec(header)
    h, w = header["image_size"]
    photo_spec = {"*": at_most(("U8", "I16", "I32", "F32", "F64"), 4 * h * w)}
    for i, part in enumerate(parts):
        blob, pos = payload[pos : pos + part["sealed_bytes"]], pos + part["sealed_bytes"]
        nonce = bytes.fromhex(part["nonce"])
        if i < len(header["faces"]):
            arrays = open_arrays(blob, key, FACE_PURPOSE, nonce, min(cap, _by_size(blob)), spec)
            if arrays is None:
                failed.append(f"face {i}")
                continue
            state = None
            if "state" in arrays:
                t = torch.from_numpy(arrays["state"].copy())
                state = t.double() * LATTICE if header["state_encoding"] == "lattice" else t.float()
            residual = arrays["residual_sealed"].tobytes() if "residual_sealed" in arrays else None
            vf.records.append(FaceRecord(nonce, arrays["mask"].astype(bool), state, residual, arrays.get("affine"), part["check"]))
        else:
            arrays = open_arrays(blob, key, PHOTO_PURPOSE, nonce, min(24 * h * w + (1 << 16), _by_size(blob)), _AnyName(photo_spec["*"]))
            if arrays is None:
                failed.append("the photo record")
            vf.photo_extra = arrays
    return failed


class _AnyName(dict):
    """A spec that applies one check to every tensor name."""

    def __init__(self, check) -> None:
        super().__init__()
        self._check = check

    def get(self, name, default=None):  # noqa: ARG002
        return self._check


def _refuse(vf: VeiledFile, force: bool, exc: FormatError) -> None:
    if not force:
        raise exc
    vf.bypassed.append(str(exc).removeprefix(f"{vf.path}: "))


def read_file(path: str | os.PathLike[str], key: SecretKey | None = None, force: bool = False, pixels: bool = True,
              allow_v1: bool = False) -> VeiledFile:
    """Read and authenticate an anonymized file (see the module docstring for the order of checks).

    Without ``key`` only the public header and the pixels are read. With it, a wrong key
    raises :class:`KeyMismatchError`; a failed MAC, payload hash, record tag or pixel hash,
    or a chunk a faceveil file never holds, :class:`TamperedError`. ``force`` lets all but
    the record tags through and lists them in ``bypassed`` (force cannot break encryption).
    Version 1 files are refused unless ``allow_v1``: their pixels were never authenticated.
    """
    path = Path(path)
    layout = read_png_layout(path, CHUNKS, limits=LIMITS)
    if layout is None or HEADER_CHUNK not in layout.chunks or DATA_CHUNK not in layout.chunks:
        raise FormatError(f"{path}: no faceveil metadata (stripped or re-encoded?)")
    header = _parse_header(path, layout.chunks[HEADER_CHUNK])
    bypassed = plain_layout_problems(path, layout, force) if key is not None else []
    if key is None and (layout.bit_depth, layout.color_type, layout.interlace) != (8, 2, 0):
        plain_layout_problems(path, layout, True)  # the pixel layout is refused even without the key
    if header["version"] == V3:
        vf = _read_v3(path, layout, header, key, force, pixels)
    elif header["version"] == 2:
        vf = _read_v2(path, layout, header, key, force, pixels)
    else:
        vf = _read_v1(path, layout, header, key, force, allow_v1)
    vf.bypassed[:0] = bypassed
    return vf


def _read_v1(path: Path, layout, header: dict[str, Any], key: SecretKey | None, force: bool, allow_v1: bool) -> VeiledFile:
    if key is not None and not allow_v1:
        raise FormatError(f"{path}: a version 1 file: its pixels and settings were never authenticated; "
                          "recover it with --allow-v1 if you trust where it has been")
    if header.get("image_size") != [layout.height, layout.width]:
        raise FormatError(f"{path}: the header describes a {escape(header.get('image_size'))} image, the PNG is {layout.height}x{layout.width}")
    if layout.height * layout.width > V1_MAX_PIXELS:
        raise FormatError(f"{path}: a version 1 file of {layout.width}x{layout.height}; version 1 held aligned crops "
                          f"of at most {V1_MAX_PIXELS} pixels")
    payload = layout.chunks[DATA_CHUNK]
    v = read_v1(path, header, payload, lambda h, w: decode_rgb(path, h, w), key, force)
    if key is not None and not v.background_intact and not force:
        raise TamperedError(f"{path}: pixels outside the mask were edited since anonymization")
    rec = FaceRecord(v.nonce, v.mask, v.state, v.sealed_residual)
    return VeiledFile(path, header, FileInfo.of(v), v.image, [rec] if key is not None else [],
                      authenticated=False if key is not None else None, pixels_intact=v.background_intact)


def _read_v3(path: Path, layout, header: dict[str, Any], key: SecretKey | None, force: bool, pixels: bool) -> VeiledFile:
    from faceveil.fileformat.original import open_layout, restore_checked

    vf = VeiledFile(path, header, None, None, [])
    if key is None:
        check_image_size(path, header, layout.height, layout.width)
        if pixels:
            vf.image = decode_rgb(path, layout.height, layout.width)
            vf.pixels_intact = pixels_sha256(vf.image) == header.get("pixels_sha256")
        return vf
    opened, vf.image, vf.pixels_intact = open_layout(path, layout, header, key, force)
    vf.faces, vf.model, vf.bypassed = opened.faces, opened.model, opened.bypassed
    vf.original_file, vf.original_suffix = opened.original_file, opened.original_suffix
    vf.authenticated = not any("authentication" in b for b in opened.bypassed)
    vf.info = info_from_model(opened.model)
    vf.original, vf.exact = restore_checked(path, opened, vf.image, vf.pixels_intact, key)
    return vf


def _read_v2(path: Path, layout, header: dict[str, Any], key: SecretKey | None, force: bool, pixels: bool) -> VeiledFile:
    payload = layout.chunks[DATA_CHUNK]
    authentic = None if key is None else header_authentic(header, key)
    if key is not None and not force and not key_matches(header, key):
        raise KeyMismatchError(f"{path}: wrong key: this file was anonymized with another key")
    vf = VeiledFile(path, header, None, None, [], authenticated=authentic)  # type: ignore[arg-type]
    if authentic is False:
        _refuse(vf, force, TamperedError(f"{path}: faceveil metadata was modified (authentication failed)"))
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        _refuse(vf, force, TamperedError(f"{path}: sealed records do not match the header's hash"))
    try:
        vf.info, parts = _validate(header, layout.width, layout.height, len(payload))
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: faceveil header is invalid: {escape(exc)}") from None
    if key is not None:
        try:
            failed = _open_records(vf, parts, payload, key)
        except FormatError as exc:
            raise FormatError(f"{path}: {exc}") from None
        if failed:
            _refuse(vf, force, TamperedError(f"{path}: {', '.join(failed)} did not open under this key (altered)"))
    if pixels:
        vf.image = decode_rgb(path, layout.height, layout.width)
        vf.pixels_intact = pixels_sha256(vf.image) == header.get("pixels_sha256")
        if not vf.pixels_intact and key is not None:
            _refuse(vf, force, TamperedError(f"{path}: pixels were edited since anonymization (face or background)"))
    return vf


def verify_file(path: str | os.PathLike[str], key: SecretKey) -> VeiledFile:
    """Authenticate a file completely under ``key`` (header, records, pixels) without recovering it."""
    return read_file(path, key, force=False, allow_v1=False)
