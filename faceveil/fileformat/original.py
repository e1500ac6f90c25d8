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


def has_sidecar(path: str | os.PathLike[str]) -> bool:
    from faceveil.fileformat.sidecar import sidecar_path

    return sidecar_path(path).is_file()


def open_original(path: str | os.PathLike[str], key: SecretKey, force: bool = False,
                  record: str | os.PathLike[str] | None = None) -> Original:
    """The original photo of a version 3 file (or image + sidecar record).

    Raises :class:`~faceveil.errors.KeyMismatchError` for a wrong key, :class:`~faceveil.errors.TamperedError`
    when anything fails authentication (unless ``force``), :class:`FormatError` otherwise."""
    from faceveil.fileformat.read import read_file
    from faceveil.fileformat.sidecar import read_sidecar
    from faceveil.fileformat.v3 import is_original, restore

    path = Path(path)
    if record is not None or has_sidecar(path):
        opened, pixels, intact = read_sidecar(path, key, record, force)
        image = restore(pixels, opened.faces)
        fmt = str(opened.header["image_file"].get("format", "")).lower()
        exact = is_original(opened, key, image)
        # Lossy only speaks for a record that authenticated in full: under --force a forged one could
        # point at any image.
        lossy = intact and not opened.bypassed and fmt in LOSSY and not exact
        return Original(image, exact, len(opened.faces), lossy=lossy,
                        bypassed=opened.bypassed, original_file=opened.original_file,
                        original_suffix=opened.original_suffix, model=opened.model)
    vf = read_file(path, key, force=force)
    if vf.version != 3:
        raise FormatError(f"{path}: a version {vf.version} file; it recovers by replaying the model")
    return Original(vf.original, bool(vf.exact), len(vf.faces), bypassed=list(vf.bypassed),
                    original_file=vf.original_file, original_suffix=vf.original_suffix, model=vf.model)
