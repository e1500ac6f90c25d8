"""A version 3 record in a file of its own, beside a published image of any format.

``photo.jpg`` is published; ``photo.jpg.fvrec`` holds the same header, MAC and sealed
records an embedded file holds, plus the SHA-256 of the published file's exact bytes
(``image_file``), so a viewer shows exactly what was anonymized or the record refuses it.
Layout: ``MAGIC``, then the header's length (4 bytes, big-endian) and bytes, the MAC's
length and bytes, and the payload to the end.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from faceveil.errors import FormatError, TamperedError, escape
from faceveil.fileformat.png import MAX_PIXELS, decode_rgb
from faceveil.fileformat.v3 import (
    MAX_HEADER_BYTES, MAX_ORIGINAL_FILE, Opened, header_mac, key_matches, open_record, parse_header, record_lengths,
)  # fmt: skip
from faceveil.keys import tags_equal

MAGIC = b"\x89FVREC\r\n"
SUFFIX = ".fvrec"
MAX_SIDECAR_BYTES = MAX_ORIGINAL_FILE + 4 * MAX_PIXELS + (4 << 20)
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def sidecar_path(image_path: str | os.PathLike[str]) -> Path:
    p = Path(image_path)
    return p.with_name(p.name + SUFFIX)


def encode_image(image: np.ndarray, suffix: str, quality: int = 95) -> bytes:
    """The published image's bytes: PNG (lossless), JPEG or WebP (``quality``; 100 is lossless WebP)."""
    fmt = FORMATS.get(suffix.lower())
    if fmt is None:
        raise ValueError(f"published images are {', '.join(sorted(FORMATS))}; not {suffix!r}")
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(image))
    if fmt == "PNG":
        img.save(buf, format="PNG")
    elif fmt == "JPEG":
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        img.save(buf, format="WEBP", quality=quality, lossless=quality >= 100)
    return buf.getvalue()


def pack(header: bytes, mac: str, payload: bytes) -> bytes:
    m = mac.encode("ascii")
    return MAGIC + struct.pack(">I", len(header)) + header + struct.pack(">I", len(m)) + m + payload


def _head(rec: Path, f) -> tuple[bytes, bytes, int]:
    """(header bytes, MAC, offset of the payload) from the start of a record file; nothing else is read."""
    data = f.read(len(MAGIC) + 4 + MAX_HEADER_BYTES + 4 + 64)
    if not data.startswith(MAGIC):
        raise FormatError(f"{rec}: not a faceveil record (no {SUFFIX} signature)")
    pos, parts = len(MAGIC), []
    for cap in (MAX_HEADER_BYTES, 64):
        if pos + 4 > len(data):
            raise FormatError(f"{rec}: record is truncated")
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        if n > cap or pos + 4 + n > len(data):
            raise FormatError(f"{rec}: record is truncated or a length is out of range")
        parts.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return parts[0], parts[1], pos


def file_sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def read_sidecar(image_path: str | os.PathLike[str], key, record: str | os.PathLike[str] | None = None,
                 force: bool = False) -> tuple[Opened, np.ndarray, bool]:
    """(opened record, published pixels, whether the image is the very file the record was made for).

    The record is authenticated before anything else; the image's bytes are hashed before they
    are decoded. An image that is not the published one is :class:`TamperedError` unless ``force``."""
    image_path = Path(image_path)
    rec = Path(record) if record is not None else sidecar_path(image_path)
    try:
        if not rec.is_file() or rec.stat().st_size > MAX_SIDECAR_BYTES:
            raise FormatError(f"{rec}: not a record file, or larger than any faceveil record")
        with open(rec, "rb") as f:
            header_bytes, mac, start = _head(rec, f)
            header = parse_header(rec, header_bytes)
            if header.get("version") != 3 or not isinstance(header.get("image_file"), dict):
                raise FormatError(f"{rec}: not a version 3 sidecar record")
            # The MAC first: a record that fails it costs its header, never its payload.
            if not force and key_matches(header, key) and not tags_equal(header_mac(key, header_bytes), mac):
                raise TamperedError(f"{rec}: faceveil metadata was modified (authentication failed)")
            try:
                n = sum(length for _, length in record_lengths(header))
            except (KeyError, TypeError, ValueError) as exc:
                raise FormatError(f"{rec}: faceveil header is invalid: {escape(exc)}") from None
            if start + n != rec.stat().st_size:
                raise FormatError(f"{rec}: the record's length does not match its header (truncated or padded)")
            f.seek(start)
            payload = f.read(n)
    except OSError as exc:
        raise FormatError(f"{rec}: cannot read the record ({exc.strerror or exc})") from None
    opened = open_record(rec, header_bytes, header, mac, payload, key, force)
    try:
        digest, size = file_sha256(image_path)
    except OSError as exc:
        raise FormatError(f"{image_path}: cannot read it ({exc.strerror or exc})") from None
    expected = header["image_file"]
    intact = digest == expected.get("sha256") and size == expected.get("bytes")
    if not intact:
        what = "the image is not the one this record was made for (edited or re-encoded)"
        if not force:
            raise TamperedError(f"{image_path}: {what}")
        opened.bypassed.append(what)
    h, w = header["image_size"]
    pixels = decode_rgb(image_path, h, w)
    return opened, pixels, intact


def read_sidecar_header(record: str | os.PathLike[str]) -> dict:
    """The public header of a sidecar record (nothing authenticated: that needs the key)."""
    rec = Path(record)
    try:
        if not rec.is_file():
            raise FormatError(f"{rec}: not a record file")
        with open(rec, "rb") as f:
            header_bytes, _, _ = _head(rec, f)
    except OSError as exc:
        raise FormatError(f"{rec}: cannot read the record ({exc.strerror or exc})") from None
    return parse_header(rec, header_bytes)
