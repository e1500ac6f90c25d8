"""dlib's models as shipped by the ``face-recognition-models`` package (offline).

Loaded once per process; dlib objects are not fork-safe to share, so worker
processes call these again and get their own copies.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path
from typing import Any

from faceveil.errors import InputError

MODEL_FILES: dict[str, str] = {
    "shape68": "shape_predictor_68_face_landmarks.dat",
    "shape5": "shape_predictor_5_face_landmarks.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
    "mmod": "mmod_human_face_detector.dat",
}


def dlib_model_path(name: str) -> Path:
    """Path of a dlib model file: ``shape68``, ``shape5``, ``resnet`` or ``mmod``."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise InputError("the dlib backend needs the 'face-recognition-models' package (pip install face-recognition-models)")
    path = Path(spec.origin).parent / "models" / MODEL_FILES[name]
    if not path.is_file():
        raise InputError(f"dlib model file missing: {path}")
    return path


def _dlib() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import dlib
    except ImportError:
        raise InputError("the dlib backend needs the 'dlib-bin' package (pip install dlib-bin)") from None
    return dlib


@functools.lru_cache(maxsize=None)
def frontal_detector() -> Any:
    """dlib's HOG frontal face detector."""
    return _dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def shape_predictor(points: int = 68) -> Any:
    """dlib's 68- or 5-point landmark predictor."""
    if points not in (5, 68):
        raise ValueError("points must be 5 or 68")
    return _dlib().shape_predictor(str(dlib_model_path(f"shape{points}")))


@functools.lru_cache(maxsize=None)
def face_descriptor_model() -> Any:
    """dlib's ResNet face descriptor (128-d, trained for Euclidean threshold 0.6)."""
    return _dlib().face_recognition_model_v1(str(dlib_model_path("resnet")))
