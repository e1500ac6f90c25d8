"""Geometry between a photo and its aligned face crops: crop out, blend back, face regions.

A face is fixed by its ``(2, 3)`` similarity ``matrix`` (photo pixels -> crop
pixels, :func:`faceveil.data.align.ffhq_matrix`), the crop ``size`` and its
boolean crop ``mask``. Everything here is a deterministic function of those
public values and the pixels it is given, so that recovery rebuilds the same
regions, contexts and blends bit for bit.

- :func:`blend_weights` is the face's weight in crop pixels: the crop mask,
  eroded and smoothed so that the anti-aliased edge stays inside the mask;
- :func:`face_region` warps those weights into the photo: a window
  ``(y0, x0, y1, x1)`` and its float32 weights. The face region is where the
  weight is > 0; every other photo pixel is never written;
- :func:`paste_face` blends a crop into the photo window by those weights,
  writing only in-image pixels (a crop padded beyond the border is cut there);
- :func:`context_photo` fills every face region with grey. A crop's pixels
  outside its mask are taken from this picture, which is the same before and
  after anonymization, so recovery sees the conditioning anonymization saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from faceveil.data.align import matrix_scale, warp_face

FILL = 127  # grey that stands for face pixels in the context photo


@dataclass(frozen=True)
class Region:
    """A face's footprint in the photo: ``weights`` over ``photo[y0:y1, x0:x1]``."""

    y0: int
    x0: int
    y1: int
    x1: int
    weights: np.ndarray  # (y1 - y0, x1 - x0) float32 in [0, 1]

    @property
    def inside(self) -> np.ndarray:
        return self.weights > 0

    @property
    def pixels(self) -> int:
        return int(np.count_nonzero(self.weights > 0))

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def feather_px(size: int) -> int:
    """Half the width of the blended edge in crop pixels (2 at 256 px, 4 at 512 px)."""
    return max(1, size // 128)


def blend_weights(mask: np.ndarray) -> np.ndarray:
    """``(S, S)`` float32 weights: 1 inside the mask, a linear ramp over its last 2e pixels, 0 outside."""
    e = feather_px(mask.shape[0])
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * e + 1, 2 * e + 1))
    core = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)
    # A box blur of radius e spreads the core by e: back to the mask's edge, not past it.
    soft = cv2.blur(core, (2 * e + 1, 2 * e + 1), borderType=cv2.BORDER_CONSTANT)
    return np.where(mask, np.clip(soft, 0.0, 1.0), 0.0).astype(np.float32)


def _footprint(matrix: np.ndarray, size: int, hw: tuple[int, int], margin: int = 2) -> tuple[int, int, int, int] | None:
    inverse = cv2.invertAffineTransform(matrix)
    c = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    pts = c @ inverse[:, :2].T + inverse[:, 2]
    h, w = hw
    x0 = max(int(math.floor(pts[:, 0].min())) - margin, 0)
    y0 = max(int(math.floor(pts[:, 1].min())) - margin, 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + margin + 1, w)
    y1 = min(int(math.ceil(pts[:, 1].max())) + margin + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, x0, y1, x1


def _warp_back(crop: np.ndarray, matrix: np.ndarray, window: tuple[int, int, int, int], interpolation: int) -> np.ndarray:
    """Sample ``crop`` at the photo pixels of ``window`` (float32)."""
    y0, x0, y1, x1 = window
    # photo pixel (x, y) -> crop pixel: matrix @ (x, y, 1); shift so the window starts at (0, 0).
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, 0] * x0 + matrix[:, 1] * y0
    scale = matrix_scale(matrix)  # crop pixels per photo pixel
    src = crop.astype(np.float32)
    if scale > 1.0 and interpolation != cv2.INTER_NEAREST:
        # Shrinking the crop onto fewer photo pixels: low-pass first so that it does not alias.
        sigma = 0.5 * math.sqrt(scale * scale - 1.0)
        src = cv2.GaussianBlur(src, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return cv2.warpAffine(
        src, shifted, (x1 - x0, y1 - y0), flags=interpolation | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def face_region(mask: np.ndarray, matrix: np.ndarray, hw: tuple[int, int]) -> Region | None:
    """The face's weights in the photo (``None`` when the crop lies outside it)."""
    size = mask.shape[0]
    window = _footprint(matrix, size, hw)
    if window is None:
        return None
    weights = _warp_back(blend_weights(mask), matrix, window, cv2.INTER_LINEAR)
    # Weights are also bounded by the nearest-sampled mask: the edge never leaves the mask.
    inside = _warp_back(mask.astype(np.float32), matrix, window, cv2.INTER_NEAREST) > 0.5
    weights = np.where(inside, np.clip(weights, 0.0, 1.0), 0.0).astype(np.float32)
    weights[weights < 1.0 / 512] = 0.0  # below half a grey level: not written
    if not weights.any():
        return None
    return Region(*window, weights=weights)


def paste_face(photo: np.ndarray, crop: np.ndarray, matrix: np.ndarray, region: Region) -> None:
    """Blend ``crop`` into ``photo`` (in place) over ``region``."""
    window = (region.y0, region.x0, region.y1, region.x1)
    warped = _warp_back(crop, matrix, window, cv2.INTER_LINEAR)
    view = photo[region.slices()]
    a = region.weights[..., None]
    mixed = np.clip(np.rint(a * warped + (1.0 - a) * view.astype(np.float32)), 0, 255).astype(np.uint8)
    inside = region.inside
    view[inside] = mixed[inside]


def context_photo(photo: np.ndarray, regions: Sequence[Region | None]) -> np.ndarray:
    """A copy of ``photo`` with every face region filled with grey."""
    ctx = photo.copy()
    for r in regions:
        if r is not None:
            ctx[r.slices()][r.inside] = FILL
    return ctx


def face_crop(photo: np.ndarray, context: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The crop to anonymize: the face from ``photo`` inside ``mask``, ``context`` around it."""
    size = mask.shape[0]
    return np.where(mask[..., None], warp_face(photo, matrix, size), warp_face(context, matrix, size))


def context_crop(context: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """What recovery knows of a crop before recovering it: the context around the face."""
    return warp_face(context, matrix, size)
