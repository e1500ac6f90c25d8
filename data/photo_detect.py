"""Finding the faces of an ordinary photo: detection on a downscaled copy, then the face policy.

A big photo costs detection at ``max_side`` pixels plus the faces: boxes and
landmarks found on the copy are scaled back to the photo's pixels.

Privacy errs on the side of anonymizing: a detected face is never left as it
was. With ``--faces all`` (default) a photo holding a face smaller than
``--min-face`` is refused, with one line, rather than written with that face
visible; ``--faces largest`` is the explicit choice to replace only the largest.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from faceveil.data.faces import Face, FaceDetector
from faceveil.errors import InputError

PHOTO_FACE_POLICIES: tuple[str, ...] = ("all", "largest")
DEFAULT_DETECT_SIDE = 1600


def detect_in_photo(image: np.ndarray, detector: FaceDetector, max_side: int = DEFAULT_DETECT_SIDE, source: str | None = None) -> list[Face]:
    """Faces of ``image`` in its own pixel coordinates, found on a copy at most ``max_side`` px."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return detector.detect(image, source)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    sx, sy = w / small.shape[1], h / small.shape[0]

    def up(points: np.ndarray) -> np.ndarray:
        # pixel centres at integers: x_big = (x_small + 0.5) * s - 0.5
        return (np.asarray(points, dtype=np.float64) + 0.5) * [sx, sy] - 0.5

    faces = []
    for f in detector.detect(small, source):
        bbox = np.asarray(f.bbox, dtype=np.float64) * [sx, sy, sx, sy]
        faces.append(replace(f, bbox=bbox, landmarks5=up(f.landmarks5), landmarks=up(f.landmarks)))
    return faces


def select_faces(faces: list[Face], policy: str, min_face: float) -> tuple[list[int], str | None]:
    """Indices of the faces to replace, or ``([], reason)`` when none is."""
    if policy not in PHOTO_FACE_POLICIES:
        raise InputError(f"unknown face policy {policy!r}; choose one of {', '.join(PHOTO_FACE_POLICIES)}")
    if not faces:
        return [], "no face found"
    big = [i for i, f in enumerate(faces) if f.size >= min_face]
    if not big:
        return [], f"face too small ({max(f.size for f in faces):.0f} px < --min-face {min_face:g} px)"
    if policy == "largest":
        return [max(big, key=lambda i: faces[i].area)], None
    small = [i for i in range(len(faces)) if i not in big]
    if small:
        sizes = ", ".join(f"face {i} is {faces[i].size:.0f} px" for i in small)
        return [], f"{sizes} < --min-face {min_face:g} px; refusing the photo rather than leaving a face visible"
    return big, None


class NoFaceError(InputError):
    """A photo in which no face was found (``--keep-faceless`` writes it unchanged)."""
