"""What a published image goes through on its way to someone else: re-saves, JPEG, resizes (uint8 RGB in, out)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image


def jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    """A JPEG round trip at ``quality`` (PIL's default 4:2:0 chroma subsampling)."""

    def attack(image: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=quality)
        return np.ascontiguousarray(np.asarray(Image.open(buf).convert("RGB")))

    return attack


def png(image: np.ndarray) -> np.ndarray:
    """Re-saved as PNG without any metadata: the same pixels."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return np.asarray(Image.open(buf).convert("RGB"))


def half(image: np.ndarray) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def half_and_back(image: np.ndarray) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(half(image), (w, h), interpolation=cv2.INTER_CUBIC)
