"""A strict, memory-bounded reader of a PNG's chunk layout, for untrusted files.

It walks the chunk framing (length, type, CRC) with seeks and reads only the
IHDR and the chunks asked for, never the pixels, so a crafted file costs what
those chunks hold, not its own size. Anything a faceveil file never contains is
refused with one line: a truncated chunk, a faceveil or IHDR chunk given twice,
a chunk (or bytes) after IEND, a CRC mismatch in a chunk we read, a size beyond
:data:`MAX_PIXELS`, a wanted chunk over its size limit.

``strict`` (every faceveil file since version 3, and the check ``verify`` makes on
every version) also refuses any chunk outside IHDR, IDAT, IEND and the wanted
ones, and any IHDR other than 8-bit RGB without interlacing: colour profiles,
gamma, EXIF orientation, APNG frames, text and physical-size chunks change what a
viewer shows without changing the decoded pixels, so a file that carries one is
not the file that was anonymized.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from faceveil.errors import FormatError, TamperedError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Largest image faceveil decodes (64 Mpx, e.g. 8192 x 8192): about 200 MB of RGB.
MAX_PIXELS = int(os.environ.get("FACEVEIL_MAX_PIXELS", str(64 * 2**20)))
# Largest file faceveil reads (each chunk it keeps has a smaller limit of its own).
MAX_FILE_BYTES = 1 << 30
# The chunks a strict file may hold besides the faceveil ones.
IMAGE_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND"})


@dataclass
class PngLayout:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int = 0
    chunks: dict[bytes, bytes] = field(default_factory=dict)  # the chunks asked for, by type
    ihdr: bytes = b""  # the IHDR body, exactly as in the file
    size: int = 0  # bytes in the file
    foreign: list[str] = field(default_factory=list)  # chunk types outside IHDR/IDAT/IEND and ``wanted``


def _name(ctype: bytes) -> str:
    return ctype.decode("latin-1").encode("unicode_escape").decode("ascii")


Limit = Union[int, Callable[[int, int], int]]


def read_png_layout(
    path: str | os.PathLike[str],
    wanted: frozenset[bytes] = frozenset(),
    max_pixels: int | None = None,
    strict: bool = False,
    limits: dict[bytes, Limit] | None = None,
) -> PngLayout | None:
    """The IHDR and the ``wanted`` chunks of a PNG, or None when the file is not a PNG.

    ``limits`` caps a wanted chunk's length in bytes, or gives the cap as a function of the
    image's (width, height); it is checked before the chunk is read. Every chunk's CRC is
    checked, streaming the ones not kept, so memory stays at the kept chunks.
    Raises :class:`FormatError` (one line naming the file) for a malformed layout, and
    :class:`TamperedError` in ``strict`` mode for a chunk a faceveil file never holds.
    """
    path = Path(path)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    limits = limits or {}
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FormatError(f"{path}: file is larger than {MAX_FILE_BYTES >> 20} MiB")
        with open(path, "rb") as f:
            return _walk(path, f, size, wanted, limit, strict, limits)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _stream_crc(f, ctype: bytes, length: int) -> int:
    crc = zlib.crc32(ctype)
    left = length
    while left:
        piece = f.read(min(left, 1 << 18))
        if not piece:
            break
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    return crc & 0xFFFFFFFF


def _walk(path: Path, f, size: int, wanted: frozenset[bytes], limit: int, strict: bool, limits: dict[bytes, Limit]) -> PngLayout | None:
    if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        return None
    pos = len(PNG_SIGNATURE)
    layout: PngLayout | None = None
    seen: set[bytes] = set()
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: PNG ends before its IEND chunk (truncated)")
        (length,) = struct.unpack(">I", head[:4])
        ctype = head[4:8]
        end = pos + 12 + length
        if length > 2**31 - 1 or end > size:
            raise FormatError(f"{path}: truncated PNG chunk {_name(ctype)!r}")
        if layout is None and ctype != b"IHDR":
            raise FormatError(f"{path}: PNG does not start with IHDR")
        keep = ctype == b"IHDR" or ctype in wanted
        if strict and not keep and ctype not in IMAGE_CHUNKS:
            raise TamperedError(
                f"{path}: PNG chunk {_name(ctype)!r} is not part of a faceveil file (it can change what a viewer "
                "shows); the file was altered after anonymization"
            )
        if keep:
            if ctype in seen:
                raise FormatError(f"{path}: PNG chunk {_name(ctype)!r} occurs twice")
            seen.add(ctype)
            cap = limits.get(ctype)
            if callable(cap):
                cap = cap(layout.width, layout.height) if layout is not None else 0
            if cap is not None and length > cap:
                raise FormatError(f"{path}: PNG chunk {_name(ctype)!r} holds {length} bytes, more than its limit of {cap}")
            body, crc = f.read(length), f.read(4)
            if struct.pack(">I", zlib.crc32(body, zlib.crc32(ctype)) & 0xFFFFFFFF) != crc:
                raise FormatError(f"{path}: PNG chunk {_name(ctype)!r} is corrupt (CRC mismatch)")
        elif struct.pack(">I", _stream_crc(f, ctype, length)) != f.read(4):
            # Viewers refuse a chunk whose CRC fails (libpng): a file they cannot show is not genuine.
            raise FormatError(f"{path}: PNG chunk {_name(ctype)!r} is corrupt (CRC mismatch)")
        if ctype == b"IHDR":
            if length != 13:
                raise FormatError(f"{path}: PNG IHDR has length {length}, not 13")
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if w == 0 or h == 0:
                raise FormatError(f"{path}: PNG declares an empty image")
            if w * h > limit:
                raise FormatError(f"{path}: PNG declares {w}x{h} pixels, more than the limit of {limit} (FACEVEIL_MAX_PIXELS)")
            if strict and (depth, color, interlace) != (8, 2, 0):
                raise TamperedError(f"{path}: PNG is not 8-bit RGB without interlacing, as faceveil writes it (altered)")
            layout = PngLayout(w, h, depth, color, interlace, ihdr=body, size=size)
        elif keep:
            layout.chunks[ctype] = body
        elif ctype not in IMAGE_CHUNKS:
            layout.foreign.append(_name(ctype))
        pos = end
        if ctype == b"IEND":
            break
    if pos != size:
        raise FormatError(f"{path}: {size - pos} bytes after the PNG's IEND chunk")
    return layout


def split_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each chunk of PNG bytes, trusting the lengths (for building test and fuzz files)."""
    out, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def join_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """PNG bytes of (type, body) chunks, each with its length and a correct CRC."""
    return PNG_SIGNATURE + b"".join(
        struct.pack(">I", len(b)) + c + b + struct.pack(">I", zlib.crc32(c + b) & 0xFFFFFFFF) for c, b in chunks
    )


def plain_layout_problems(path: Path, layout: PngLayout, force: bool) -> list[str]:
    """Refuse what a faceveil file never holds: any pixel layout but 8-bit RGB without interlacing
    (never bypassed: decoding 16-bit or alpha costs up to 8 bytes a pixel), and chunks outside the
    faceveil ones, which change what a viewer shows (``force`` lets those through: returned)."""
    if (layout.bit_depth, layout.color_type, layout.interlace) != (8, 2, 0):
        raise TamperedError(f"{path}: the PNG is not 8-bit RGB without interlacing, as faceveil writes it (altered)")
    if not layout.foreign:
        return []
    from faceveil.errors import escape

    what = (f"PNG chunks {escape(', '.join(sorted(set(layout.foreign))), 120)} are not part of a faceveil file "
            "(they change what a viewer shows); the file was altered after anonymization")
    if not force:
        raise TamperedError(f"{path}: {what}")
    return [what]


def decode_rgb(path: str | os.PathLike[str], h: int, w: int):  # -> np.ndarray
    """The pixels of an image file that must be ``w`` x ``h``, as (h, w, 3) uint8 (checked before decoding)."""
    from PIL import Image

    from faceveil.data.images import to_rgb_array

    try:
        with Image.open(path) as img:
            if img.size != (w, h):
                raise FormatError(f"{path}: image is {img.size[0]}x{img.size[1]}, its record says {w}x{h}")
            img.load()
            return to_rgb_array(img, str(path))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FormatError(f"{path}: pixels cannot be decoded ({exc.__class__.__name__})") from None
