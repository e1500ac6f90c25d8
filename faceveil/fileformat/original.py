"""The original photo from a version 3 record and the key: no model, the same bits on any machine.

:func:`open_original` takes an anonymized PNG with its record embedded, or a published image
with its sidecar record (``NAME.fvrec``, or ``record=``), authenticates everything, puts the
sealed original pixels back and checks the result against the sealed digest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceveil.errors import FormatError
from faceveil.keys import SecretKey

LOSSY = frozenset({"jpg", "jpeg", "webp"})


@dataclass
class Original:
    image: np.ndarray  # (H, W, 3) uint8
    exact: bool  # matches the sealed digest of the original photo, bit for bit
    faces: int
    version: int = 3
    lossy: bool = False  # a sidecar's published image is lossy: outside the faces it is not the original
    bypassed: list[str] = field(default_factory=list)  # what ``force`` let through
    original_file: bytes | None = None  # the input file's bytes (--keep-original-file)
    original_suffix: str | None = None
    model: dict | None = None


def file_version(path: str | os.PathLike[str]) -> int | None:
    """The format version a PNG's faceveil header names (None: no faceveil header), read without the payload."""
    from faceveil.fileformat.png import read_png_layout
    from faceveil.fileformat.v3 import HEADER_CHUNK, LIMITS, parse_header

    layout = read_png_layout(path, frozenset({HEADER_CHUNK}), limits=LIMITS)
    if layout is None or HEADER_CHUNK not in layout.chunks:
        return None
    version = parse_header(Path(path), layout.chunks[HEADER_CHUNK]).get("version")
    return version if isinstance(version, int) else -1


def has_sidecar(path: str | os.PathLike[str]) -> bool:
    from faceveil.fileformat.sidecar import sidecar_path

    return sidecar_path(path).is_file()


def open_original(path: str | os.PathLike[str], key: SecretKey, force: bool = False,
                  record: str | os.PathLike[str] | None = None) -> Original:
    """The original photo of a version 3 file (or image + sidecar record).

    Raises :class:`~faceveil.errors.KeyMismatchError` for a wrong key, :class:`~faceveil.errors.TamperedError`
    when anything fails authentication (unless ``force``), :class:`FormatError` otherwise."""
    from faceveil.fileformat.sidecar import read_sidecar

    path = Path(path)
    if record is not None or has_sidecar(path):
        opened, pixels, intact = read_sidecar(path, key, record, force)
        fmt = str(opened.header["image_file"].get("format", "")).lower()
        # The very PNG it was made for must restore the original; a lossy image only its faces.
        image, exact = restore_checked(path, opened, pixels, intact and fmt not in LOSSY, key)
        # Lossy only speaks for a record that authenticated in full: under --force a forged one could
        # point at any image.
        lossy = intact and not opened.bypassed and fmt in LOSSY and not exact
        return Original(image, exact, len(opened.faces), lossy=lossy,
                        bypassed=opened.bypassed, original_file=opened.original_file,
                        original_suffix=opened.original_suffix, model=opened.model)
    opened, image, intact = open_embedded(path, key, force)
    original, exact = restore_checked(path, opened, image, intact, key)
    return Original(original, exact, len(opened.faces), bypassed=list(opened.bypassed),
                    original_file=opened.original_file, original_suffix=opened.original_suffix, model=opened.model)


def open_embedded(path: Path, key: SecretKey, force: bool = False):  # -> (Opened, np.ndarray, bool)
    """(opened record, published pixels, whether they are intact) of a PNG with its record embedded.
    Reads the faceveil chunks and the pixels only; imports no model code."""
    from faceveil.errors import escape
    from faceveil.fileformat.png import plain_layout_problems, read_png_layout
    from faceveil.fileformat.v3 import CHUNKS, DATA_CHUNK, HEADER_CHUNK, LIMITS, parse_header

    layout = read_png_layout(path, CHUNKS, limits=LIMITS)
    if layout is None or HEADER_CHUNK not in layout.chunks or DATA_CHUNK not in layout.chunks:
        raise FormatError(f"{path}: no faceveil metadata (stripped or re-encoded?)")
    header = parse_header(path, layout.chunks[HEADER_CHUNK])
    if header.get("version") != 3:
        raise FormatError(f"{path}: a version {escape(header.get('version'))} file; it recovers by replaying the model")
    bypassed = plain_layout_problems(path, layout, force)
    opened, image, intact = open_layout(path, layout, header, key, force)
    opened.bypassed[:0] = bypassed
    return opened, image, intact


def open_layout(path: Path, layout, header: dict, key: SecretKey, force: bool):  # -> (Opened, np.ndarray, bool)
    """Authenticate and open a version 3 PNG whose layout and header are read, then decode its pixels."""
    from faceveil.errors import TamperedError
    from faceveil.fileformat.png import decode_rgb
    from faceveil.fileformat.v3 import DATA_CHUNK, HEADER_CHUNK, MAC_CHUNK, check_image_size, open_record, pixels_sha256

    check_image_size(path, header, layout.height, layout.width)
    opened = open_record(path, layout.chunks[HEADER_CHUNK], header, layout.chunks.get(MAC_CHUNK),
                         layout.chunks[DATA_CHUNK], key, force, layout.ihdr)
    image = decode_rgb(path, layout.height, layout.width)
    intact = pixels_sha256(image) == header.get("pixels_sha256")
    if not intact:
        what = "pixels were edited since anonymization (face or background)"
        if not force:
            raise TamperedError(f"{path}: {what}")
        opened.bypassed.append(what)
    return opened, image, intact


def restore_checked(path: Path, opened, image: np.ndarray, intact: bool, key: SecretKey) -> tuple[np.ndarray, bool]:
    """(the published pixels with the sealed originals put back, whether that is the original exactly).
    ``intact``: the pixels are the very ones anonymized, so anything but the original is an error,
    never a quiet result."""
    from faceveil.fileformat.v3 import is_original, restore

    original = restore(image, opened.faces)
    exact = is_original(opened, key, original)
    if not exact and intact:
        raise FormatError(f"{path}: the restored photo does not match the sealed digest of the original")
    return original, exact
