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

from faceveil.data.detect_dlib import DlibDetector
from faceveil.data.dlib_models import _dlib, dlib_model_path


@functools.lru_cache(maxsize=None)
def cnn_detector() -> Any:
    return _dlib().cnn_face_detection_model_v1(str(dlib_model_path("mmod")))


class DlibCnnDetector(DlibDetector):
    name = "dlib-cnn"

    def _make_detector(self) -> Any:
        return cnn_detector()

    def _boxes(self, image: np.ndarray) -> list[tuple[Any, float]]:
        return [(d.rect, d.confidence) for d in self._detector(image, self.upsample) if d.confidence >= self.threshold]
