"""Differentiable face alignment to the 112x112 ArcFace crop.

Landmark convention (the shards store landmarks this way; every function here expects it):
``(B, 5, 2)`` float pixel coordinates ``(x, y)`` of the image they belong to, pixel centres at integer
coordinates (OpenCV's convention), in insightface's order :data:`LANDMARK_ORDER`:

    0 left eye, 1 right eye, 2 nose tip, 3 left mouth corner, 4 right mouth corner,

where "left" means the side on the left of the picture (the subject's right). RetinaFace / SCRFD and
MTCNN (facenet-pytorch) emit this order; dlib's 5-point predictor does not (it gives eye corners).

The crop is insightface's ``norm_crop``: the similarity transform (rotation, uniform scale,
translation; least squares, as skimage's ``SimilarityTransform.estimate``) that takes the landmarks
onto :data:`ARCFACE_TEMPLATE`, applied as an affine warp (``kornia.geometry.warp_affine``, bilinear,
zero border), so gradients reach the image (and the landmarks). With ``antialias=True`` the image is
first shrunk with an anti-aliasing filter when the crop would down-sample it (insightface does not;
on a 1024 px FFHQ face a plain bilinear warp to 112 px aliases badly).

Pre-aligned data sets need no landmarks: :func:`fixed_crop` uses a fixed 5-point template per preset
(:data:`CROP_TEMPLATES`), in coordinates relative to the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine

from faceveil.errors import ConfigError, InputError

LANDMARK_ORDER: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")

ARCFACE_SIZE = 112
# insightface's arcface_dst (utils/face_align.py): where the 5 landmarks go in the 112x112 crop.
ARCFACE_TEMPLATE = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=torch.float64,
)

# Mean RetinaFace landmarks of FFHQ-aligned faces, measured on 512x512 crops (facexlib's face_template,
# used by GFPGAN / CodeFormer), in pixels of the 512x512 crop.
_FFHQ_512 = torch.tensor(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=torch.float64,
)
# Stored as fractions of the image extent, edge to edge: (pixel + 0.5) / size, so that rescaling keeps
# pixel centres where they belong.
CROP_TEMPLATES: dict[str, torch.Tensor] = {
    # An image that already is an ArcFace crop (any size: it is only rescaled).
    "arcface112": (ARCFACE_TEMPLATE + 0.5) / ARCFACE_SIZE,
    "ffhq": (_FFHQ_512 + 0.5) / 512.0,
    # CelebA-HQ (Karras et al. 2018) was aligned with the very recipe FFHQ later reused (quad from eye
    # centres and mouth corners, same scale rule), so the FFHQ template applies.
    "celebahq": (_FFHQ_512 + 0.5) / 512.0,
}


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    # Solve the 5-point fit in float64: 1024 px coordinates squared lose digits in float16/32.
    return torch.float32 if t.device.type == "mps" else torch.float64


def check_landmarks(landmarks: torch.Tensor, batch: int | None = None, check_order: bool = True) -> torch.Tensor:
    """Validate ``(B, 5, 2)`` landmarks (a single ``(5, 2)`` gets a batch axis) and return them."""
    if landmarks.dim() == 2:
        landmarks = landmarks.unsqueeze(0)
    if landmarks.dim() != 3 or landmarks.shape[1:] != (5, 2):
        raise InputError(f"landmarks must be (B, 5, 2) pixel coordinates, got {tuple(landmarks.shape)}")
    if batch is not None and landmarks.shape[0] != batch:
        raise InputError(f"{landmarks.shape[0]} landmark sets for {batch} images")
    if not torch.isfinite(landmarks).all():
        raise InputError("landmarks contain NaN or inf")
    if check_order:
        # Swapped eyes (x_left > x_right) is the usual sign of a mirrored or subject-relative order; a
        # similarity cannot mirror, so the fit would be wrong rather than merely flipped.
        bad = (landmarks[:, 0, 0] > landmarks[:, 1, 0]).nonzero().flatten()
        if len(bad):
            raise InputError(
                f"landmarks of image {int(bad[0])}: left eye is right of the right eye; expected insightface order "
                f"{', '.join(LANDMARK_ORDER)} with 'left' = left in the picture (pass check_order=False for upside-down faces)"
            )
    return landmarks


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity ``(B, 2, 3)`` taking points ``src (B, N, 2)`` onto ``dst (N, 2) | (B, N, 2)``.

    The matrix maps source pixel coordinates to destination ones (OpenCV's ``warpAffine`` ``M``).
    Parametrised as ``u = a x - b y + tx, v = b x + a y + ty``; the closed form equals Umeyama's without
    reflection, which is what insightface's ``estimate_norm`` computes. Differentiable in both inputs.
    """
    work = _work_dtype(src)
    s = src.to(work)
    d = dst.to(device=src.device, dtype=work).expand_as(s)
    s_mean, d_mean = s.mean(dim=1, keepdim=True), d.mean(dim=1, keepdim=True)
    sc, dc = s - s_mean, d - d_mean
    norm = (sc**2).sum(dim=(1, 2))
    a = (sc[..., 0] * dc[..., 0] + sc[..., 1] * dc[..., 1]).sum(dim=1) / norm
    b = (sc[..., 0] * dc[..., 1] - sc[..., 1] * dc[..., 0]).sum(dim=1) / norm
    mx, my = s_mean[:, 0, 0], s_mean[:, 0, 1]
    tx = d_mean[:, 0, 0] - (a * mx - b * my)
    ty = d_mean[:, 0, 1] - (b * mx + a * my)
    rows = torch.stack([torch.stack([a, -b, tx], dim=-1), torch.stack([b, a, ty], dim=-1)], dim=1)
    return rows.to(src.dtype)


def arcface_matrix(landmarks: torch.Tensor, size: int = ARCFACE_SIZE) -> torch.Tensor:
    """insightface's ``estimate_norm`` for a batch: ``(B, 2, 3)`` from landmarks to a ``size`` crop."""
    if size % ARCFACE_SIZE:
        raise ConfigError(f"ArcFace crop size must be a multiple of 112, got {size}")
    return estimate_similarity(landmarks, ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))


def warp_to_crop(images: torch.Tensor, matrix: torch.Tensor, size: int = ARCFACE_SIZE, antialias: bool = True) -> torch.Tensor:
    """Warp ``(B, C, H, W)`` images with source-to-crop matrices ``(B, 2, 3)`` into ``(B, C, size, size)``."""
    m = matrix.to(images.dtype)
    if antialias:
        images, m = _shrink_for_warp(images, m)
    # align_corners=True puts pixel centres on integer coordinates, the convention cv2.warpAffine uses.
    return warp_affine(images, m, dsize=(size, size), mode="bilinear", padding_mode="zeros", align_corners=True)


def _shrink_for_warp(images: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Output pixels per input pixel; shrink by the largest one in the batch so no face gets up-sampled.
    lin = m[:, :, :2].detach().float()
    det = lin[:, 0, 0] * lin[:, 1, 1] - lin[:, 0, 1] * lin[:, 1, 0]  # by hand: linalg.det has no half kernels
    scale = float(det.abs().sqrt().max())
    if scale >= 1.0:
        return images, m
    h, w = images.shape[-2:]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    rx, ry = nw / w, nh / h
    # Small-image pixel p maps back to original pixel (p + 0.5) / r - 0.5 (half-pixel convention).
    back = m.new_tensor([[1 / rx, 0.0, 0.5 / rx - 0.5], [0.0, 1 / ry, 0.5 / ry - 0.5], [0.0, 0.0, 1.0]])
    return small, m @ back


def align_faces(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    size: int = ARCFACE_SIZE,
    antialias: bool = True,
    check_order: bool = True,
) -> torch.Tensor:
    """ArcFace crops ``(B, C, size, size)`` of ``(B, C, H, W)`` images from their 5-point landmarks."""
    landmarks = check_landmarks(landmarks, images.shape[0], check_order)
    return warp_to_crop(images, arcface_matrix(landmarks.to(images.device), size), size, antialias)


def crop_template(preset: str, height: int, width: int) -> torch.Tensor:
    """The preset's 5 landmarks ``(5, 2)`` in pixel coordinates of a ``height x width`` image."""
    try:
        rel = CROP_TEMPLATES[preset]
    except KeyError:
        raise ConfigError(f"unknown crop preset {preset!r}; known: {', '.join(CROP_TEMPLATES)}") from None
    return rel * rel.new_tensor([width, height]) - 0.5


def fixed_crop_matrix(preset: str, height: int, width: int, size: int = ARCFACE_SIZE) -> torch.Tensor:
    """``(2, 3)`` matrix of the fixed ArcFace crop for a pre-aligned ``height x width`` image."""
    return arcface_matrix(crop_template(preset, height, width).unsqueeze(0), size)[0]


def fixed_crop(images: torch.Tensor, preset: str = "ffhq", size: int = ARCFACE_SIZE, antialias: bool = True) -> torch.Tensor:
    """ArcFace crops of pre-aligned faces (``ffhq``, ``celebahq`` or ``arcface112``) without landmarks."""
    h, w = images.shape[-2:]
    if preset == "arcface112" and h == w == size:
        return images  # already the crop; skip a resampling that would only add rounding
    m = fixed_crop_matrix(preset, h, w, size).to(device=images.device, dtype=images.dtype)
    return warp_to_crop(images, m.expand(images.shape[0], 2, 3), size, antialias)
