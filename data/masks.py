"""Facial masks: skin, brows, eyes, nose, mouth, lips and ears; not hair, not background.

Two sources:

- :func:`landmark_mask` builds the mask from dense landmarks (dlib's 68 or
  InsightFace's 106 points): the convex hull of the face contour and brows,
  raised over the forehead and widened at ear height. Landmarks do not see the
  hairline or the ears, so those two parts are estimates in proportion to the
  face (``forehead``, ``ears``); the hull follows the jaw line, not a box.
- :func:`parsing_mask` selects classes of a face-parsing label map, such as
  CelebAMask-HQ's annotations, which do include ears and stop at the hairline.

:func:`latent_mask` brings a pixel mask to latent resolution for the diffusion
model (max-pooling: a latent cell that touches the face counts as face, so the
key changes every latent the face influences).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: preparing shards does not need it
    import torch

# CelebAMask-HQ's 19 classes, in the order of the label maps that the usual
# face-parsing tools (and CelebAMask-HQ's own g_mask.py) write.
CELEBAMASK_HQ_LABELS: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip

# Classes that make the facial mask. Eyeglasses are kept: they sit over the
# eyes, and leaving them out would leave holes where the eyes are.
FACE_CLASSES: tuple[str, ...] = (
    "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "nose", "mouth", "u_lip", "l_lip",
)  # fmt: skip


def landmark_mask(
    landmarks: np.ndarray,
    landmarks5: np.ndarray,
    size: int | tuple[int, int],
    forehead: float = 0.35,
    ears: float = 0.06,
) -> np.ndarray:
    """A ``(H, W)`` bool face mask from dense landmarks, in the landmarks' pixel frame.

    ``forehead``: how far the points above the eye line (the brows) are raised,
    as a fraction of the brow-to-chin height. ``ears``: how far the contour is
    widened between eye and nose height, as a fraction of the face width.
    """
    h, w = (size, size) if isinstance(size, int) else size
    pts = np.asarray(landmarks, dtype=np.float64)
    lm5 = np.asarray(landmarks5, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 17:
        raise ValueError(f"a landmark mask needs dense landmarks (at least 17 points), got {pts.shape}")
    eye_mid = lm5[:2].mean(0)
    mouth_mid = lm5[3:].mean(0)
    up = eye_mid - mouth_mid
    up /= np.linalg.norm(up)
    right = np.array([-up[1], up[0]])
    if np.dot(right, lm5[1] - lm5[0]) < 0:
        right = -right
    height = (pts - eye_mid) @ up
    across = (pts - eye_mid) @ right
    span = height.max() - height.min()
    width = across.max() - across.min()
    # Brows and anything above the eye line, lifted over the forehead.
    extra = [pts[height > 0] + up * forehead * span]
    # Contour between nose and eye height, pushed out where the ears are.
    nose_height = float((lm5[2] - eye_mid) @ up)
    band = (height <= 0) & (height >= nose_height)
    if band.any():
        for level in (0.0, nose_height):
            base = eye_mid + up * level
            extra.append(np.stack([base + right * (across[band].min() - ears * width), base + right * (across[band].max() + ears * width)]))
    hull = cv2.convexHull(np.concatenate([pts, *extra]).astype(np.float32))
    mask = np.zeros((h, w), dtype=np.uint8)
    shift = 4  # sub-pixel vertices: OpenCV takes fixed-point coordinates with this many fraction bits
    cv2.fillConvexPoly(mask, np.round(hull * (1 << shift)).astype(np.int32), 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def class_ids(classes: Iterable[str | int], labels: Sequence[str] = CELEBAMASK_HQ_LABELS) -> list[int]:
    """Class names (from ``labels``) or integer ids to ids; unknown names raise ``ValueError``."""
    ids = []
    for c in classes:
        if isinstance(c, int) or (isinstance(c, str) and c.strip().isdigit()):
            ids.append(int(c))
        elif c in labels:
            ids.append(labels.index(c))
        else:
            raise ValueError(f"unknown parsing class {c!r}; known: {', '.join(labels)}")
    return sorted(set(ids))


def parsing_mask(label_map: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """The pixels of a ``(H, W)`` integer label map whose class is one of ``ids``."""
    return np.isin(label_map, list(ids))


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Downsample a ``(..., 1, H, W)`` {0, 1} mask by ``factor`` with max-pooling.

    ``H`` and ``W`` must be multiples of ``factor``. A latent cell is inside
    the face when any of its pixels is, so that the keyed latents cover the
    whole face.
    """
    import torch.nn.functional as F

    if mask.shape[-1] % factor or mask.shape[-2] % factor:
        raise ValueError(f"mask size {tuple(mask.shape[-2:])} is not a multiple of {factor}")
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    pooled = F.max_pool2d(flat, kernel_size=factor, stride=factor)
    return pooled.reshape(*lead, *pooled.shape[-2:]).to(mask.dtype)
