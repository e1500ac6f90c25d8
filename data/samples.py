"""Real face photos that ship inside installed packages.

The photos are located at run time and never copied into this repository. They
feed the tests, the tiny demo and the sample shards.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from faceveil.data.images import load_image
from faceveil.errors import InputError


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(f"package {package!r} is not installed; it carries a sample photo")
    return Path(spec.origin).parent


def _sources() -> dict[str, tuple[str, tuple[str, ...]]]:
    # name -> (package, path inside the package)
    return {
        "astronaut": ("skimage", ("data", "astronaut.png")),
        "grace_hopper": ("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg")),
        "tom_hanks": ("insightface", ("data", "images", "Tom_Hanks_54745.png")),
        "t1_group": ("insightface", ("data", "images", "t1.jpg")),
    }


SAMPLE_NAMES: tuple[str, ...] = tuple(_sources())


def sample_photo_path(name: str) -> Path:
    """Path of one bundled sample photo, e.g. ``sample_photo_path("astronaut")``."""
    try:
        package, parts = _sources()[name]
    except KeyError:
        raise InputError(f"unknown sample photo {name!r}; known: {', '.join(SAMPLE_NAMES)}") from None
    path = _package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise InputError(f"sample photo {name!r} is missing from the installed {package} ({path})")
    return path


def sample_photo_paths() -> dict[str, Path]:
    """All bundled sample photos by name."""
    return {name: sample_photo_path(name) for name in SAMPLE_NAMES}


# Square face boxes (rows, cols) in the bundled photos, for measurements on a face crop;
# None: the photo is already an aligned face.
FACE_BOXES: dict[str, tuple[slice, slice] | None] = {
    "astronaut": (slice(20, 276), slice(130, 386)),
    "grace_hopper": (slice(90, 346), slice(132, 388)),
    "tom_hanks": None,
}


def sample_face(name: str, size: int = 256) -> np.ndarray:
    """The face crop of a bundled photo, resized to ``size`` px (uint8 RGB), e.g. ``sample_face("astronaut")``."""
    if name not in FACE_BOXES:
        raise InputError(f"no face box for sample photo {name!r}; known: {', '.join(FACE_BOXES)}")
    img = load_image(sample_photo_path(name))
    box = FACE_BOXES[name]
    if box is not None:
        img = img[box]
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))
