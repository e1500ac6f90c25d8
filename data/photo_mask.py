"""The facial mask of an aligned crop, as ``prepare`` computes it, for any detector.

Detectors with dense landmarks (dlib's 68, InsightFace's 106) give the mask
directly (:func:`faceveil.data.masks.landmark_mask` on the landmarks mapped into
the crop). Detectors with 5 points only (CenterFace) get dense landmarks from
dlib's 68-point predictor run on the aligned crop, where the face is upright and
at a known place. Either mask is widened to cover the ellipse around the eyes,
nose and mouth that the 5 points fix: a failed dense fit can never leave the
centre of the face visible.
"""

from __future__ import annotations

import cv2
import numpy as np

from faceveil.data.align import transform_points
from faceveil.data.faces import Face
from faceveil.data.masks import landmark_mask

# Where dlib's HOG detector puts its box on an FFHQ-aligned crop, as fractions of
# the crop side (measured on the bundled photos: 46,72 - 202,228 at 256 px).
CANONICAL_BOX = (0.18, 0.28, 0.79, 0.89)


def predicted_landmarks(crop: np.ndarray) -> np.ndarray:
    """dlib's 68 points on an aligned crop, from the canonical box."""
    import dlib

    from faceveil.data.dlib_models import shape_predictor

    s = crop.shape[0]
    x0, y0, x1, y1 = (int(round(f * s)) for f in CANONICAL_BOX)
    shape = shape_predictor(68)(np.ascontiguousarray(crop), dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def core_ellipse(landmarks5: np.ndarray, size: int) -> np.ndarray:
    """The ellipse through the eyes' outer reach, down past the mouth (crop coordinates)."""
    lm = np.asarray(landmarks5, dtype=np.float64)
    eyes, mouth = lm[:2].mean(0), lm[3:].mean(0)
    centre = (eyes + mouth) / 2
    down = mouth - eyes
    length = float(np.hypot(*down))
    angle = float(np.degrees(np.arctan2(down[1], down[0]))) - 90.0
    half_w = max(float(np.hypot(*(lm[1] - lm[0]))) * 0.95, length * 0.8)
    mask = np.zeros((size, size), dtype=np.uint8)
    axes = (max(int(round(half_w)), 1), max(int(round(length * 1.05)), 1))
    cv2.ellipse(mask, (int(round(centre[0])), int(round(centre[1]))), axes, angle, 0, 360, 1, thickness=-1)
    return mask.astype(bool)


# How far the landmark hull is grown, as fractions of the face (see landmark_mask): "face" reaches
# the hairline and takes the ears (ears stand out about a fifth of the face's width beyond the jaw
# line's widest points); "head" also takes the hair around the face.
MASK_EXTENTS: dict[str, tuple[float, float]] = {"face": (0.45, 0.2), "head": (0.9, 0.32)}  # (forehead, ears)
DEFAULT_MASK_EXTENT = "face"


def crop_mask(face: Face, matrix: np.ndarray, crop: np.ndarray, extent: str = DEFAULT_MASK_EXTENT) -> np.ndarray:
    """``(S, S)`` bool facial mask of ``face`` in its aligned ``crop``."""
    forehead, ears = MASK_EXTENTS[extent]
    size = crop.shape[0]
    lm5 = transform_points(face.landmarks5, matrix)
    dense = predicted_landmarks(crop) if face.scheme == "five" else transform_points(face.landmarks, matrix)
    mask = landmark_mask(dense, lm5, size, forehead=forehead, ears=ears)
    return mask | core_ellipse(lm5, size)
