"""The ``dlib`` backend: HOG frontal face detector + 68-point shape predictor.

Both models ship in the ``face-recognition-models`` / ``dlib-bin`` packages and
work offline, which makes this the default backend for tests and the demo.

Defaults are dlib's own: no upsampling (the HOG window finds faces from about
80 px) and a detection score above 0. Upsampling once finds faces down to about
40 px but also admits weak false positives (on skimage's astronaut photo it adds
a second, non-face box at score 0.12), so it is opt-in via ``upsample``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from faceveil.data.dlib_models import frontal_detector, shape_predictor
from faceveil.data.faces import Face, five_from_68, sort_faces


class DlibDetector:
    name = "dlib"

    def __init__(self, upsample: int = 0, threshold: float = 0.0) -> None:
        if upsample < 0:
            raise ValueError("upsample must be >= 0")
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self._detector = self._make_detector()
        self._predictor = shape_predictor(68)

    def _make_detector(self) -> Any:
        return frontal_detector()

    def _boxes(self, image: np.ndarray) -> list[tuple[Any, float]]:
        """(dlib rectangle, score) of each face at or above the threshold."""
        rects, scores, _ = self._detector.run(image, self.upsample, self.threshold)
        return list(zip(rects, scores, strict=True))

    def detect(self, image: np.ndarray, source: str | None = None) -> list[Face]:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        faces = []
        for rect, score in self._boxes(image):
            shape = self._predictor(image, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            # dlib's rectangles are inclusive; +1 makes x1 - x0 the width in pixels.
            bbox = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)
            faces.append(Face(bbox=bbox, score=float(score), landmarks5=five_from_68(points), landmarks=points, scheme="dlib68"))
        return sort_faces(faces)
