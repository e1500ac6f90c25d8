"""Real face photos that ship inside installed packages.

The photos are located at run time and never copied into this repository. They
feed the tests, the tiny demo and the sample shards.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
