"""Reading ordinary photos for anonymization, with the checks a batch needs.

:func:`load_photo` gives an upright ``(H, W, 3)`` uint8 array (EXIF orientation
applied) and nothing else: no EXIF (with its thumbnail of the face), GPS, XMP,
ICC profile or comment travels with it, so nothing of them can reach an output.
It refuses, each with one line: a photo over ``max_pixels`` (checked from the
header, before decoding), 16-bit and float images, transparency, corrupt and
truncated files, and files that are already faceveil outputs.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from faceveil.data.images import to_rgb_array
from faceveil.errors import InputError

# The file format's reading limit (faceveil.fileformat.png.MAX_PIXELS, read the same way here
# so that the CLI's help does not import torch): a bigger photo could not be recovered.
DEFAULT_MAX_PIXELS = int(os.environ.get("FACEVEIL_MAX_PIXELS", str(64 * 2**20)))


def png_bit_depth(path: Path) -> int | None:
    """The bit depth in a PNG's IHDR (Pillow reads 16-bit RGB as 8-bit without a word)."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">B", head[24:25])[0]


def is_faceveil_file(path: str | os.PathLike[str]) -> bool:
    from faceveil.errors import FormatError
    from faceveil.fileformat import HEADER_CHUNK, read_chunks

    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return False
    try:
        return HEADER_CHUNK in read_chunks(path)
    except FormatError:
        return False  # a malformed PNG: decoding it reports why


def load_photo(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS, allow_anonymized: bool = False) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if not allow_anonymized and is_faceveil_file(path):
        raise InputError(f"{path}: already a faceveil output; refusing to anonymize it again (use --allow-anonymized)")
    depth = png_bit_depth(path)
    if depth is not None and depth > 8:
        raise InputError(f"{path}: {depth}-bit PNG is not supported; convert to 8-bit first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise InputError(f"{path}: photo is {w}x{h} ({w * h / 1e6:.1f} MP), over the limit of {max_pixels / 1e6:g} MP (--max-pixels)")
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # no copy of a big photo when it is upright
                return to_rgb_array(img, str(path))
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{path}: photo is over the limit of {max_pixels / 1e6:g} MP (--max-pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
