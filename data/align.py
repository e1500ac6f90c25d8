"""FFHQ-style face alignment from the 5-point landmarks.

The crop is the oriented square of the FFHQ data set's recipe (Karras et al.,
``ffhq-dataset/download_ffhq.py``): centred a little below the eyes, rotated so
the eyes are level, with a side of ``max(4 x eye distance, 3.6 x eye-to-mouth)``.
Only the eye centres and mouth corners enter, so dlib's 68 points, InsightFace's
5 points and CelebA's landmark files all give the same crop.

:func:`ffhq_matrix` gives the 2x3 similarity that maps source pixels to crop
pixels; :func:`warp_face` applies it (OpenCV), shrinking with area averaging
first when the face is larger than the crop so that the result does not alias.
Parts of the crop outside the photo are filled by reflection, as FFHQ does.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def ffhq_quad(landmarks5: np.ndarray) -> np.ndarray:
    """The FFHQ crop square in source pixels: ``(4, 2)`` corners, top-left,
    bottom-left, bottom-right, top-right (in the face's own orientation)."""
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks, got {lm.shape}")
    eye_left, eye_right, _, mouth_left, mouth_right = lm
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # FFHQ: x points right along the eye line, tilted by the eye-to-mouth direction.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_matrix(landmarks5: np.ndarray, size: int) -> np.ndarray:
    """The ``(2, 3)`` similarity mapping source pixels to pixels of a ``size``-px crop."""
    quad = ffhq_quad(landmarks5)
    # The quad's corners are the outer edges of the crop's corner pixels,
    # i.e. half a pixel outside their centres.
    lo, hi = -0.5, size - 0.5
    dst = np.array([[lo, lo], [lo, hi], [hi, lo]])
    # Three corners fix the affine map exactly; solved in float64 (OpenCV's
    # getAffineTransform works in float32).
    src = np.concatenate([quad[[0, 1, 3]], np.ones((3, 1))], axis=1)
    return np.linalg.solve(src, dst).T


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine matrix to ``(N, 2)`` points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def matrix_scale(matrix: np.ndarray) -> float:
    """The linear scale of a similarity (crop pixels per source pixel)."""
    return math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))


def outside_fraction(matrix: np.ndarray, size: int, source_hw: tuple[int, int]) -> float:
    """Fraction of the crop's pixels whose source lies outside the photo (filled by reflection)."""
    h, w = source_hw
    # The photo's outline, mapped into the crop, is a parallelogram; count the crop pixels it covers.
    outline = transform_points(np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]]), matrix)
    inside = np.zeros((size, size), dtype=np.uint8)
    shift = 4  # fixed-point fraction bits for sub-pixel vertices
    cv2.fillConvexPoly(inside, np.round(outline * (1 << shift)).astype(np.int32), 1, lineType=cv2.LINE_8, shift=shift)
    return float(1.0 - inside.mean())


def _shrink_first(image: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-average the region the crop reads down to about crop scale.

    ``warpAffine`` samples, it does not average: shrinking a 1000-px face to
    256 px in one warp would alias. Returns the smaller image and the matrix
    that maps *its* pixels to the crop.
    """
    scale = matrix_scale(matrix)
    inverse = cv2.invertAffineTransform(matrix)
    corners = transform_points(np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]]), inverse)
    margin = math.ceil(3.0 / scale)
    h, w = image.shape[:2]
    x0 = max(int(math.floor(corners[:, 0].min())) - margin, 0)
    y0 = max(int(math.floor(corners[:, 1].min())) - margin, 0)
    x1 = min(int(math.ceil(corners[:, 0].max())) + margin + 1, w)
    y1 = min(int(math.ceil(corners[:, 1].max())) + margin + 1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crop lies (almost) outside the photo
        return image, matrix
    region = image[y0:y1, x0:x1]
    new_w = max(int(round((x1 - x0) * scale)), 1)
    new_h = max(int(round((y1 - y0) * scale)), 1)
    small = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
    sx, sy = new_w / (x1 - x0), new_h / (y1 - y0)
    # source pixel x -> small pixel (x - x0 + 0.5) * sx - 0.5
    to_small = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])
    from_small = cv2.invertAffineTransform(to_small)
    combined = matrix[:, :2] @ from_small[:, :2]
    offset = matrix[:, :2] @ from_small[:, 2] + matrix[:, 2]
    return small, np.concatenate([combined, offset[:, None]], axis=1)


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp ``image`` (``H x W x C`` or ``H x W``, uint8) into a ``size``-px crop."""
    if matrix_scale(matrix) < 1.0:
        image, matrix = _shrink_first(image, matrix, size)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def warp_mask(mask: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp a boolean mask into the crop (linear weights, kept where >= 0.5; outside the photo is 0)."""
    m = mask.astype(np.float32)
    if matrix_scale(matrix) < 1.0:
        m, matrix = _shrink_first(m, matrix, size)
    out = cv2.warpAffine(m, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return out >= 0.5
