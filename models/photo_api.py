"""One call from a photo to its anonymized version and face records, and back.

::

    from faceveil.keys import SecretKey, load_key, save_key
    from faceveil.models.photo_api import anonymize_photo, recover_photo

    key = SecretKey.generate()
    save_key(key, "me.key")  # without the key file nothing comes back
    result = anonymize_photo("group.jpg", key, backbone="tiny", output="group_anon.png")
    result.image            # (H, W, 3) uint8, every face replaced or covered
    [(f.bbox, f.treatment) for f in result.faces]
    original = recover_photo("group_anon.png", load_key("me.key"))

:class:`PhotoFinder` is the detection half (detector, face policy, alignment
and masks) that the command line shares.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faceveil.data.faces import FaceDetector
from faceveil.data.photo_detect import DEFAULT_TILE, LEFT, SIDEWAYS, FacePolicy, NoFaceError, detect_in_photo
from faceveil.data.photo_regions import with_regions
from faceveil.errors import InputError
from faceveil.keys import SecretKey, load_key
from faceveil.machine import apply_threads, default_backbone
from faceveil.models.backbones import Backbone, load_backbone
from faceveil.models.photo import PhotoAnonymizer, PhotoFace, VeiledPhoto, native_size, plan_faces
from faceveil.models.pipeline import Anonymizer
from faceveil.models.settings import Settings

DEFAULT_DETECTOR = "centerface"


@functools.lru_cache(maxsize=4)
def _detector(name: str) -> FaceDetector:
    from faceveil.data.backends import DetectorSpec, make_detector

    return make_detector(DetectorSpec(name=name))


class PhotoFinder:
    """Detect the faces of a photo and plan each one's treatment (:class:`FacePolicy`)."""

    def __init__(self, size: int, detector: str | FaceDetector = DEFAULT_DETECTOR, policy: FacePolicy | None = None,
                 tile: int = DEFAULT_TILE, sideways: bool = False) -> None:
        self.size = int(size)
        self.turns = SIDEWAYS if sideways else ()
        self.detector = _detector(detector) if isinstance(detector, str) else detector
        self.policy = policy or FacePolicy()
        self.tile = int(tile)

    def find(self, image: np.ndarray, source: str | None = None, regions: Sequence[np.ndarray] = ()) -> list[PhotoFace]:
        """Every found face and every face given by hand (``regions``: boxes x0, y0, x1, y1), planned;
        raises :class:`NoFaceError` when there is none."""
        found = with_regions(detect_in_photo(image, self.detector, self.tile, source, self.turns), list(regions), image.shape[:2])
        if not found:
            raise NoFaceError("no face found")
        return plan_faces(image, found, self.size, self.policy)


def _key(key: SecretKey | str | os.PathLike[str]) -> SecretKey:
    return key if isinstance(key, SecretKey) else load_key(key)


def _image(photo: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
    if isinstance(photo, np.ndarray):
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise InputError("a photo array must be (H, W, 3) uint8 RGB")
        return photo
    from faceveil.data.photo_io import load_photo

    return load_photo(photo)


def _backbone(backbone: str | Backbone) -> Backbone:
    return load_backbone(backbone) if isinstance(backbone, str) else backbone


def anonymize_photo(
    photo: np.ndarray | str | os.PathLike[str],
    key: SecretKey | str | os.PathLike[str],
    backbone: str | Backbone | None = None,
    settings: Settings | None = None,
    detector: str | FaceDetector = DEFAULT_DETECTOR,
    policy: FacePolicy | None = None,
    output: str | os.PathLike[str] | None = None,
    regions: Sequence[np.ndarray] = (),
    threads: int | None = None,
) -> VeiledPhoto:
    """Anonymize every face of ``photo`` (an RGB uint8 array or a path). ``result.image`` is the
    anonymized photo, ``result.faces`` the face records, each with its ``treatment``; ``output``
    also writes the file. ``backbone`` defaults as the CLI's does ($FACEVEIL_BACKBONE, else
    sd2-inpaint), ``threads`` too (the CPUs other processes leave idle); ``regions`` are faces
    given by hand, boxes (x0, y0, x1, y1)."""
    apply_threads(threads)
    key = _key(key)
    bb = _backbone(backbone or default_backbone())
    image = _image(photo)
    planned = PhotoFinder(native_size(bb), detector, policy).find(image, None if isinstance(photo, np.ndarray) else str(photo), regions)
    [result] = PhotoAnonymizer(Anonymizer(bb, settings)).anonymize([(image, planned)], key)
    if output is not None:
        save_result(output, result, key)
    return result


def save_result(path: str | os.PathLike[str], result: VeiledPhoto, key: SecretKey, **options: object) -> Path:
    """Atomically write an anonymized photo (version 3: every changed face region's original pixels
    sealed, diffusion and covers alike; ``options`` as :func:`faceveil.photofile.write_photo`'s).
    Faces left as they were (only on request) changed nothing and have no record; a photo with
    no changed face is written as pixels only."""
    from faceveil.data.images import save_image
    from faceveil.photofile import write_photo

    changed = [f for f in result.faces if f.treatment != LEFT]
    if not changed:
        return save_image(path, result.image)
    return write_photo(path, dataclasses.replace(result, faces=changed), key, **options)


def recover_photo(photo: VeiledPhoto | str | os.PathLike[str], key: SecretKey | str | os.PathLike[str],
                  backbone: str | Backbone | None = None, threads: int | None = None) -> np.ndarray:
    """The original photo from an anonymized file (or :class:`VeiledPhoto`) and the key.

    A version 3 file (what :func:`anonymize_photo` writes) opens with the key alone, loads no
    model and is checked against the sealed digest of the original; version 2 files and
    in-memory results are replayed through ``backbone`` (default: the one recorded)."""
    apply_threads(threads)
    key = _key(key)
    if not isinstance(photo, VeiledPhoto):
        from faceveil.fileformat import read_header
        from faceveil.fileformat.original import has_sidecar, open_original

        if has_sidecar(photo) or (read_header(photo) or {}).get("version") == 3:
            return open_original(photo, key).image
        from faceveil.photofile import read_photo

        photo = read_photo(Path(photo), key)
    diffused = [f for f in photo.faces if f.treatment == "diffusion"]
    if not diffused:
        return photo.image.copy()
    v0 = diffused[0].veiled
    bb = _backbone(backbone or v0.backbone)
    return PhotoAnonymizer(Anonymizer(bb, v0.settings)).recover([photo], key)[0]
