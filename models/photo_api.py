"""One call from a photo to its anonymized version and face records, and back.

::

    from faceveil.keys import SecretKey
    from faceveil.models.photo_api import anonymize_photo, recover_photo

    key = SecretKey.generate()
    result = anonymize_photo("group.jpg", key, backbone="tiny", output="group_anon.png")
    result.image            # (H, W, 3) uint8, every face replaced
    [f.bbox for f in result.faces]
    original = recover_photo("group_anon.png", key)

:class:`PhotoFinder` is the detection half (detector, face policy, alignment
and masks) that the command line shares.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from faceveil.data.faces import FaceDetector
from faceveil.data.photo_detect import DEFAULT_DETECT_SIDE, NoFaceError, detect_in_photo, select_faces
from faceveil.errors import InputError
from faceveil.keys import SecretKey, load_key
from faceveil.models.backbones import Backbone, load_backbone
from faceveil.models.photo import PhotoAnonymizer, PhotoFace, VeiledPhoto, native_size, plan_faces
from faceveil.models.pipeline import Anonymizer
from faceveil.models.settings import Settings

DEFAULT_DETECTOR = "centerface"
DEFAULT_MIN_FACE = 20.0


@functools.lru_cache(maxsize=4)
def _detector(name: str) -> FaceDetector:
    from faceveil.data.backends import DetectorSpec, make_detector

    return make_detector(DetectorSpec(name=name))


class PhotoFinder:
    """Detect, choose, align and mask the faces of a photo."""

    def __init__(self, size: int, detector: str | FaceDetector = DEFAULT_DETECTOR, faces: str = "all",
                 min_face: float = DEFAULT_MIN_FACE, detect_side: int = DEFAULT_DETECT_SIDE) -> None:
        self.size = int(size)
        self.detector = _detector(detector) if isinstance(detector, str) else detector
        self.faces, self.min_face, self.detect_side = faces, float(min_face), int(detect_side)
        select_faces([], faces, min_face)  # an unknown policy fails here, before any photo

    def find(self, image: np.ndarray, source: str | None = None) -> list[PhotoFace]:
        """The planned faces; raises :class:`NoFaceError` or :class:`InputError` with the reason."""
        found = detect_in_photo(image, self.detector, self.detect_side, source)
        keep, reason = select_faces(found, self.faces, self.min_face)
        if not keep:
            raise (NoFaceError if not found else InputError)(reason or "no face chosen")
        return plan_faces(image, found, keep, self.size)


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
    backbone: str | Backbone = "tiny",
    settings: Settings | None = None,
    detector: str | FaceDetector = DEFAULT_DETECTOR,
    faces: str = "all",
    min_face: float = DEFAULT_MIN_FACE,
    output: str | os.PathLike[str] | None = None,
) -> VeiledPhoto:
    """Anonymize every face of ``photo`` (an RGB uint8 array or a path). ``result.image`` is the
    anonymized photo, ``result.faces`` the face records; ``output`` also writes the file."""
    key = _key(key)
    bb = _backbone(backbone)
    image = _image(photo)
    planned = PhotoFinder(native_size(bb), detector, faces, min_face).find(image, None if isinstance(photo, np.ndarray) else str(photo))
    [result] = PhotoAnonymizer(Anonymizer(bb, settings)).anonymize([(image, planned)], key)
    if output is not None:
        from faceveil.photofile import write_photo

        write_photo(output, result, key)
    return result


def recover_photo(photo: VeiledPhoto | str | os.PathLike[str], key: SecretKey | str | os.PathLike[str],
                  backbone: str | Backbone | None = None) -> np.ndarray:
    """The original photo from an anonymized file (or :class:`VeiledPhoto`) and the key.

    A version 3 file (what :func:`anonymize_photo` writes) opens with the key alone, loads no
    model and is checked against the sealed digest of the original; version 2 files and
    in-memory results are replayed through ``backbone`` (default: the one recorded)."""
    key = _key(key)
    if not isinstance(photo, VeiledPhoto):
        from faceveil.fileformat import read_header
        from faceveil.fileformat.original import has_sidecar, open_original

        if has_sidecar(photo) or (read_header(photo) or {}).get("version") == 3:
            return open_original(photo, key).image
        from faceveil.photofile import read_photo

        photo = read_photo(Path(photo), key)
    if not photo.faces:
        return photo.image.copy()
    v0 = photo.faces[0].veiled
    bb = _backbone(backbone or v0.backbone)
    return PhotoAnonymizer(Anonymizer(bb, v0.settings)).recover([photo], key)[0]
