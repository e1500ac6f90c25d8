"""The ``dlib-cnn`` backend: dlib's MMOD CNN face detector + 68-point shape predictor.

The model (``mmod_human_face_detector.dat``) ships in ``face-recognition-models``
and works offline. It finds tilted and half-profile faces that the HOG window
misses, at a much higher CPU cost; like HOG its window starts at about 80 px,
so ``upsample=1`` is needed for faces down to about 40 px.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from faceveil.data.dlib_models import _dlib, dlib_model_path, shape_predictor
from faceveil.data.faces import Face, five_from_68, sort_faces


@functools.lru_cache(maxsize=None)
def cnn_detector() -> Any:
    return _dlib().cnn_face_detection_model_v1(str(dlib_model_path("mmod")))


class DlibCnnDetector:
    name = "dlib-cnn"

    def __init__(self, upsample: int = 0, threshold: float = 0.0) -> None:
        if upsample < 0:
            raise ValueError("upsample must be >= 0")
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self._detector = cnn_detector()
        self._predictor = shape_predictor(68)

    def detect(self, image: np.ndarray, source: str | None = None) -> list[Face]:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        faces = []
        for det in self._detector(image, self.upsample):
            if det.confidence < self.threshold:
                continue
            rect = det.rect
            points = np.array([(p.x, p.y) for p in self._predictor(image, rect).parts()], dtype=np.float64)
            bbox = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)
            faces.append(Face(bbox=bbox, score=float(det.confidence), landmarks5=five_from_68(points), landmarks=points, scheme="dlib68"))
        return sort_faces(faces)
