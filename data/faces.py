"""One detected face, and the detector interface every backend implements.

Coordinates are in pixels of the image the face was found in, with pixel
centres at integer coordinates (the convention of OpenCV and dlib).

The 5-point landmarks follow the InsightFace / ArcFace order, with "left" and
"right" meaning the image's left and right:
``left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

FIVE_POINT_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


@dataclass(frozen=True, eq=False)  # arrays inside: compare fields explicitly
class Face:
    """A detected (or given) face.

    ``bbox`` is ``(x0, y0, x1, y1)``; ``landmarks`` are the dense landmarks of
    ``scheme`` (``dlib68``, ``insightface106``, or ``five`` when only the five
    points are known).
    """

    bbox: np.ndarray
    score: float
    landmarks5: np.ndarray
    landmarks: np.ndarray
    scheme: str

    @property
    def size(self) -> float:
        """The shorter side of the bounding box, the size ``--min-face`` compares."""
        return float(min(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))

    @property
    def area(self) -> float:
        return float(max(self.bbox[2] - self.bbox[0], 0) * max(self.bbox[3] - self.bbox[1], 0))


class FaceDetector(Protocol):
    """What a detection backend provides.

    ``source`` is the photo's path; only backends that read per-photo files
    (``precomputed``) use it.
    """

    name: str

    def detect(self, image: np.ndarray, source: str | None = None) -> list[Face]: ...


def five_from_68(points: np.ndarray) -> np.ndarray:
    """The 5 points from dlib's / iBUG's 68-point layout: eye centres, nose tip, mouth corners."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {pts.shape}")
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


def bbox_of(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


def sort_faces(faces: list[Face]) -> list[Face]:
    """Left to right, then top to bottom: a face's index within its photo does
    not depend on the order the detector happened to report it in."""
    return sorted(faces, key=lambda f: (round(float(f.bbox[0]), 1), round(float(f.bbox[1]), 1)))
