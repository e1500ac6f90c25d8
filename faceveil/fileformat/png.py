"""A strict, memory-bounded reader of a PNG's chunk layout, for untrusted files.

It parses only the chunk framing (length, type, CRC) and the IHDR, never the
pixels, so a crafted file costs at most its own size. Anything a faceveil file
never contains is refused with one line: a truncated chunk, a faceveil or IHDR
chunk given twice, a chunk (or bytes) after IEND, a CRC mismatch in a chunk we
read, a size beyond :data:`MAX_PIXELS`.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from faceveil.errors import FormatError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Largest image faceveil decodes (64 Mpx, e.g. 8192 x 8192): about 200 MB of RGB.
MAX_PIXELS = int(os.environ.get("FACEVEIL_MAX_PIXELS", str(64 * 2**20)))
# Largest file faceveil reads whole (the file is the bound of everything parsed from it).
MAX_FILE_BYTES = 1 << 30


@dataclass
class PngLayout:
    width: int
    height: int
    bit_depth: int
    color_type: int
    chunks: dict[bytes, bytes] = field(default_factory=dict)  # the chunks asked for, by type
    size: int = 0  # bytes in the file


def _crc_ok(ctype: bytes, body: bytes, crc: bytes) -> bool:
    return struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF) == crc


def read_png_layout(path: str | os.PathLike[str], wanted: frozenset[bytes] = frozenset(), max_pixels: int | None = None) -> PngLayout | None:
    """The IHDR and the ``wanted`` chunks of a PNG, or None when the file is not a PNG.

    Raises :class:`FormatError` (one line naming the file) for any malformed layout.
    """
    path = Path(path)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FormatError(f"{path}: file is larger than {MAX_FILE_BYTES >> 20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not data.startswith(PNG_SIGNATURE):
        return None
    pos = len(PNG_SIGNATURE)
    layout: PngLayout | None = None
    seen: set[bytes] = set()
    while True:
        if pos + 8 > len(data):
            raise FormatError(f"{path}: PNG ends before its IEND chunk (truncated)")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if length > 2**31 - 1 or end > len(data):
            raise FormatError(f"{path}: truncated PNG chunk {ctype.decode('latin-1')!r}")
        body, crc = data[pos + 8 : end - 4], data[end - 4 : end]
        if layout is None and ctype != b"IHDR":
            raise FormatError(f"{path}: PNG does not start with IHDR")
        if ctype == b"IHDR" or ctype in wanted:
            if ctype in seen:
                raise FormatError(f"{path}: PNG chunk {ctype.decode('latin-1')!r} occurs twice")
            seen.add(ctype)
            if not _crc_ok(ctype, body, crc):
                raise FormatError(f"{path}: PNG chunk {ctype.decode('latin-1')!r} is corrupt (CRC mismatch)")
        if ctype == b"IHDR":
            if length != 13:
                raise FormatError(f"{path}: PNG IHDR has length {length}, not 13")
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            if w == 0 or h == 0:
                raise FormatError(f"{path}: PNG declares an empty image")
            if w * h > limit:
                raise FormatError(f"{path}: PNG declares {w}x{h} pixels, more than the limit of {limit} (FACEVEIL_MAX_PIXELS)")
            layout = PngLayout(w, h, depth, color, size=size)
        elif ctype in wanted:
            layout.chunks[ctype] = body
        pos = end
        if ctype == b"IEND":
            break
    if pos != len(data):
        raise FormatError(f"{path}: {len(data) - pos} bytes after the PNG's IEND chunk")
    return layout
