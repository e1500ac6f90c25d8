"""Facial masks from landmarks and parsing maps, and the latent-resolution mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceveil.data.align import ffhq_matrix, transform_points
from faceveil.data.detect_dlib import DlibDetector
from faceveil.data.images import load_image
from faceveil.data.masks import CELEBAMASK_HQ_LABELS, FACE_CLASSES, class_ids, landmark_mask, latent_mask, parsing_mask
from faceveil.data.precomputed import ParsingMaps
from faceveil.data.samples import sample_photo_path
from faceveil.errors import InputError

SIZE = 256
EYES, NOSE, MOUTH, BROWS, JAW = range(36, 48), range(27, 36), range(48, 68), range(17, 27), range(0, 17)


def _aligned_landmarks() -> list[tuple[str, np.ndarray, np.ndarray]]:
    detector = DlibDetector()
    out = []
    for name in ("astronaut", "grace_hopper", "t1_group"):
        for i, face in enumerate(detector.detect(load_image(sample_photo_path(name)))):
            m = ffhq_matrix(face.landmarks5, SIZE)
            out.append((f"{name}:{i}", transform_points(face.landmarks, m), transform_points(face.landmarks5, m)))
    return out


FACES = _aligned_landmarks()


@pytest.mark.parametrize(("name", "dense", "five"), FACES, ids=[f[0] for f in FACES])
def test_landmark_mask_covers_the_features_and_leaves_corners_out(name: str, dense: np.ndarray, five: np.ndarray) -> None:
    mask = landmark_mask(dense, five, SIZE)
    assert mask.shape == (SIZE, SIZE) and mask.dtype == bool
    for idx in (*EYES, *NOSE, *MOUTH, *BROWS):
        x, y = np.round(dense[idx]).astype(int)
        assert mask[y, x], f"landmark {idx} at ({x}, {y}) is outside the mask"
    corner = SIZE // 8
    for sl in (np.s_[:corner, :corner], np.s_[:corner, -corner:], np.s_[-corner:, :corner], np.s_[-corner:, -corner:]):
        assert not mask[sl].any()
    assert 0.2 < mask.mean() < 0.6
    # Follows the outline: a rounded shape fills its bounding box far less than a box would.
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    assert 0.6 < fill < 0.9
    # Reaches over the forehead above the brows, but not to the top of the crop (hair).
    brow_top = dense[list(BROWS), 1].min()
    assert ys.min() < brow_top - 10
    assert not mask[: int(0.08 * SIZE)].any()


def test_forehead_and_ears_widen_the_hull() -> None:
    _, dense, five = FACES[0]
    bare = landmark_mask(dense, five, SIZE, forehead=0.0, ears=0.0)
    full = landmark_mask(dense, five, SIZE)
    assert (full >= bare).all() and full.sum() > bare.sum()
    ys_b, xs_b = np.nonzero(bare)
    ys_f, xs_f = np.nonzero(full)
    assert ys_f.min() < ys_b.min() - 10  # forehead
    assert xs_f.min() < xs_b.min() and xs_f.max() > xs_b.max()  # ears


def test_landmark_mask_needs_dense_landmarks() -> None:
    _, _, five = FACES[0]
    with pytest.raises(ValueError, match="dense"):
        landmark_mask(five, five, SIZE)


def test_class_ids_from_names_and_numbers() -> None:
    assert class_ids(["skin", "nose", "17"]) == [1, 10, 17]
    assert set(class_ids(FACE_CLASSES)) == {1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13}
    assert "hair" not in [CELEBAMASK_HQ_LABELS[i] for i in class_ids(FACE_CLASSES)]
    with pytest.raises(ValueError, match="unknown parsing class"):
        class_ids(["beard"])


def test_parsing_mask_selects_classes() -> None:
    labels = np.array([[0, 1, 17], [10, 13, 16]])
    np.testing.assert_array_equal(parsing_mask(labels, class_ids(FACE_CLASSES)), [[False, True, False], [True, True, False]])


def test_parsing_maps_read_label_maps_and_celebamask_hq_files(tmp_path: Path) -> None:
    # A label map at half the photo's resolution, as CelebAMask-HQ's are.
    labels = np.zeros((4, 4), dtype=np.uint8)
    labels[1:3, 1:3] = 1  # skin
    labels[0, :] = 17  # hair
    Image.fromarray(labels).save(tmp_path / "photo_a.png")
    # Per-class files, zero-padded numeric stem, nested one folder down.
    sub = tmp_path / "anno" / "0"
    sub.mkdir(parents=True)
    skin = np.zeros((4, 4), dtype=np.uint8)
    skin[0, 0] = 255
    nose = np.zeros((4, 4), dtype=np.uint8)
    nose[3, 3] = 255
    hair = np.full((4, 4), 255, dtype=np.uint8)
    Image.fromarray(skin).convert("RGB").save(sub / "00012_skin.png")
    Image.fromarray(nose).save(sub / "00012_nose.png")
    Image.fromarray(hair).save(sub / "00012_hair.png")

    maps = ParsingMaps(tmp_path)
    a = maps.mask("some/where/photo_a.jpg", (8, 8))
    assert a.shape == (8, 8) and a[2:6, 2:6].all() and a.sum() == 16
    b = maps.mask("12.jpg", (4, 4))
    assert b.sum() == 2 and b[0, 0] and b[3, 3]
    with pytest.raises(InputError, match="no parsing map"):
        maps.mask("missing.jpg", (4, 4))


def test_parsing_maps_refuse_a_colour_picture(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    with pytest.raises(InputError, match="colour image"):
        ParsingMaps(tmp_path).mask("photo.jpg", (4, 4))


def test_latent_mask_is_max_pooled() -> None:
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, 0, 3, 3] = 1  # one pixel lights its whole 8x8 cell
    mask[1, 0, 8:, 8:] = 1
    lat = latent_mask(mask, 8)
    assert lat.shape == (2, 1, 2, 2)
    np.testing.assert_array_equal(lat[0, 0].numpy(), [[1, 0], [0, 0]])
    np.testing.assert_array_equal(lat[1, 0].numpy(), [[0, 0], [0, 1]])
    with pytest.raises(ValueError, match="multiple"):
        latent_mask(torch.zeros(1, 1, 12, 12), 8)
