"""Reading chosen chunks of a PNG file, CRC-checked, without decoding the image."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Collection
from pathlib import Path

from faceveil.errors import FormatError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png_chunks(path: str | os.PathLike[str], types: Collection[bytes]) -> dict[bytes, bytes]:
    """The bodies of the chunks of ``types`` (empty for a file that is not a PNG)."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return {}
        out: dict[bytes, bytes] = {}
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            (length,) = struct.unpack(">I", head[:4])
            ctype = head[4:]
            if ctype in types:
                body, crc = f.read(length), f.read(4)
                if len(body) != length or len(crc) != 4:
                    raise FormatError(f"{path}: truncated PNG chunk {ctype!r}")
                if struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF) != crc:
                    raise FormatError(f"{path}: faceveil chunk {ctype.decode(errors='replace')} is corrupt (CRC mismatch)")
                out[ctype] = body
            elif ctype == b"IEND":
                break
            else:
                f.seek(length + 4, os.SEEK_CUR)  # skip pixels without reading them
        return out


def has_chunk(path: str | os.PathLike[str], types: Collection[bytes]) -> bool:
    try:
        return bool(read_png_chunks(Path(path), types))
    except (OSError, FormatError):
        return False
