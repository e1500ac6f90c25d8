"""5-point alignment to the ArcFace crop: insightface's transform, gradients, fixed crops."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.transform import SimilarityTransform

from faceveil.data.images import load_image
from faceveil.data.samples import sample_photo_path
from faceveil.errors import ConfigError, InputError
from faceveil.models.arcface_align import (
    ARCFACE_TEMPLATE,
    LANDMARK_ORDER,
    align_faces,
    arcface_matrix,
    crop_template,
    estimate_similarity,
    fixed_crop,
    fixed_crop_matrix,
)

# MTCNN's 5 points (insightface order) on the astronaut sample photo.
ASTRONAUT = torch.tensor([[205.011, 101.727], [246.763, 103.714], [224.671, 128.965], [201.716, 139.246], [245.265, 141.857]])


def _photo(name: str) -> torch.Tensor:
    return torch.tensor(load_image(sample_photo_path(name))).permute(2, 0, 1)[None].float()


def _apply(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    return pts @ m[..., :2].transpose(-1, -2) + m[..., None, :, 2]


def test_landmark_order_is_insightface() -> None:
    assert LANDMARK_ORDER == ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
    # In the template the "left" eye and mouth corner are on the left of the picture.
    assert ARCFACE_TEMPLATE[0, 0] < ARCFACE_TEMPLATE[1, 0] and ARCFACE_TEMPLATE[3, 0] < ARCFACE_TEMPLATE[4, 0]


def test_similarity_fit_matches_skimage() -> None:
    g = torch.Generator().manual_seed(0)
    src = ARCFACE_TEMPLATE[None] * 3 + torch.randn(8, 5, 2, generator=g, dtype=torch.float64) * 6 + 100
    ours = estimate_similarity(src, ARCFACE_TEMPLATE)
    for b in range(8):
        tform = SimilarityTransform()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tform.estimate(src[b].numpy(), ARCFACE_TEMPLATE.numpy())
        np.testing.assert_allclose(ours[b].numpy(), tform.params[:2], rtol=0, atol=1e-9)


def test_exact_similarity_is_recovered() -> None:
    angle, scale, shift = 0.3, 2.5, torch.tensor([40.0, -7.0], dtype=torch.float64)
    rot = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float64)
    landmarks = (ARCFACE_TEMPLATE @ rot.T) * scale + shift
    m = arcface_matrix(landmarks[None])
    torch.testing.assert_close(_apply(m, landmarks[None])[0], ARCFACE_TEMPLATE, rtol=0, atol=1e-9)


def test_crop_matches_insightface_norm_crop() -> None:
    from insightface.utils.face_align import norm_crop

    img = load_image(sample_photo_path("astronaut"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = norm_crop(img, ASTRONAUT.numpy()).astype(np.float32)
    ours = align_faces(_photo("astronaut"), ASTRONAUT[None], antialias=False)[0].permute(1, 2, 0).numpy()
    diff = np.abs(ours - ref)
    # insightface rounds to uint8: at most half a level apart, plus float noise.
    assert diff.max() < 0.55 and diff.mean() < 0.3


def test_antialiased_crop_is_scale_consistent() -> None:
    """Aligning a 3x larger copy with scaled landmarks gives the same crop; a half-pixel slip does not."""
    img = _photo("astronaut")
    big = F.interpolate(img, scale_factor=3, mode="bicubic", align_corners=False)
    ref = align_faces(img, ASTRONAUT[None])
    same = align_faces(big, ((ASTRONAUT + 0.5) * 3 - 0.5)[None])
    slipped = align_faces(big, ((ASTRONAUT + 1.0) * 3 - 0.5)[None])
    inner = (..., slice(8, -8), slice(8, -8))
    assert (same - ref)[inner].abs().mean() < 1.0
    assert (slipped - ref)[inner].abs().mean() > 3.0


def test_gradients_reach_image_and_landmarks() -> None:
    img = (_photo("astronaut") / 127.5 - 1).requires_grad_(True)
    lms = ASTRONAUT[None].clone().requires_grad_(True)
    crop = align_faces(img, lms)
    assert crop.shape == (1, 3, 112, 112)
    (crop * torch.linspace(-1, 1, 112)).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert lms.grad is not None and lms.grad.abs().sum() > 0


def test_batched_alignment_equals_one_by_one() -> None:
    img = _photo("astronaut").expand(3, -1, -1, -1)
    lms = torch.stack([ASTRONAUT, ASTRONAUT + 2.0, ASTRONAUT * 1.1])
    batch = align_faces(img, lms)
    single = torch.cat([align_faces(img[i : i + 1], lms[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch[0], single[0], rtol=0, atol=1e-3)
    torch.testing.assert_close(batch[1], single[1], rtol=0, atol=1e-3)


def test_mirrored_landmark_order_is_refused() -> None:
    swapped = ASTRONAUT[[1, 0, 2, 4, 3]]
    with pytest.raises(InputError, match="insightface order"):
        align_faces(_photo("astronaut"), swapped[None])
    with pytest.raises(InputError, match=r"\(B, 5, 2\)"):
        align_faces(_photo("astronaut"), torch.zeros(1, 68, 2))


def test_arcface112_fixed_crop_is_identity_on_arcface_crops() -> None:
    face = _photo("tom_hanks")  # a 112x112 ArcFace-aligned crop
    assert torch.equal(fixed_crop(face, "arcface112"), face)
    # At another size the crop is a plain rescale: 224 -> 112 of an up-scaled crop gives it back.
    big = F.interpolate(face, size=(224, 224), mode="bilinear", align_corners=False)
    assert (fixed_crop(big, "arcface112", antialias=False) - face).abs().mean() < 2.0
    assert (fixed_crop(big, "ffhq", antialias=False) - face).abs().mean() > 10.0


def test_ffhq_template_is_a_face_layout_close_to_arcface() -> None:
    tmpl = crop_template("ffhq", 512, 512)
    torch.testing.assert_close(tmpl[0], torch.tensor([192.98138, 239.94708], dtype=torch.float64), rtol=0, atol=1e-6)
    m = fixed_crop_matrix("ffhq", 512, 512)
    residual = (_apply(m, tmpl) - ARCFACE_TEMPLATE).norm(dim=-1)
    assert residual.max() < 3.0  # pixels of the 112 crop: the two layouts agree up to a similarity


def test_ffhq_fixed_crop_matches_landmark_alignment_on_an_ffhq_style_face() -> None:
    """Make an FFHQ-style 256 crop of a real face, then its fixed crop ~ the landmark-aligned crop."""
    img = _photo("astronaut")
    to_ffhq = estimate_similarity(ASTRONAUT[None].double(), crop_template("ffhq", 256, 256)).float()
    from faceveil.models.arcface_align import warp_to_crop

    ffhq_style = warp_to_crop(img, to_ffhq, size=256, antialias=False)
    via_template = fixed_crop(ffhq_style, "ffhq")
    via_landmarks = align_faces(img, ASTRONAUT[None])
    inner = (..., slice(16, -16), slice(16, -16))
    off_by_3px = align_faces(img, ASTRONAUT[None] + 3.0)
    # The templates differ by ~1-2.5 px (see above), so the crops differ a little; a 3 px slip is far worse.
    assert (via_template - via_landmarks)[inner].abs().mean() < 6.0
    assert (via_template - off_by_3px)[inner].abs().mean() > 15.0
    assert fixed_crop(ffhq_style, "celebahq").shape == (1, 3, 112, 112)


def test_unknown_crop_preset() -> None:
    with pytest.raises(ConfigError, match="unknown crop preset 'lfw'"):
        fixed_crop(torch.zeros(1, 3, 64, 64), "lfw")
