"""FFHQ-style alignment: landmark geometry, warp conventions, anti-aliased shrinking."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from faceveil.data.align import ffhq_matrix, ffhq_quad, matrix_scale, outside_fraction, transform_points, warp_face
from faceveil.data.detect_dlib import DlibDetector
from faceveil.data.images import load_image
from faceveil.data.samples import sample_photo_path

SIZE = 256


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, np.ndarray]:
    photo = load_image(sample_photo_path("astronaut"))
    (face,) = DlibDetector().detect(photo)
    return photo, face.landmarks5


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    m = cv2.getRotationMatrix2D((0.0, 0.0), angle_deg, scale)
    m[:, 2] = (tx, ty)
    return m


def test_quad_is_a_square_with_ffhq_proportions(astronaut: tuple[np.ndarray, np.ndarray]) -> None:
    _, lm5 = astronaut
    quad = ffhq_quad(lm5)
    sides = np.linalg.norm(np.roll(quad, -1, 0) - quad, axis=1)
    np.testing.assert_allclose(sides, sides[0], rtol=1e-9)
    eye_dist = np.linalg.norm(lm5[1] - lm5[0])
    eye_to_mouth = np.linalg.norm(lm5[3:].mean(0) - lm5[:2].mean(0))
    assert sides[0] == pytest.approx(2 * max(2.0 * eye_dist, 1.8 * eye_to_mouth))


@pytest.mark.parametrize(("angle", "scale"), [(0.0, 1.0), (25.0, 0.5), (-40.0, 3.0)])
def test_aligned_landmarks_do_not_depend_on_pose_or_scale(astronaut: tuple[np.ndarray, np.ndarray], angle: float, scale: float) -> None:
    _, lm5 = astronaut
    reference = transform_points(lm5, ffhq_matrix(lm5, SIZE))
    moved = transform_points(lm5, _similarity(angle, scale, 300.0, -50.0))
    np.testing.assert_allclose(transform_points(moved, ffhq_matrix(moved, SIZE)), reference, atol=1e-6)
    # Eyes about level (FFHQ tilts by the eye-to-mouth direction too), in the upper half, either side of the centre.
    assert abs(reference[0, 1] - reference[1, 1]) < 1.0
    assert 0.40 * SIZE < reference[0, 1] < 0.52 * SIZE
    assert reference[0, 0] < SIZE / 2 < reference[1, 0]


def test_rotated_photo_gives_the_same_crop(astronaut: tuple[np.ndarray, np.ndarray]) -> None:
    photo, lm5 = astronaut
    reference = warp_face(photo, ffhq_matrix(lm5, SIZE), SIZE).astype(np.float64)
    # Rotate the photo by 30 degrees about its centre on a larger canvas.
    m = cv2.getRotationMatrix2D((255.5, 255.5), 30.0, 1.0)
    m[:, 2] += 128
    rotated = cv2.warpAffine(photo, m, (768, 768), flags=cv2.INTER_CUBIC)
    again = warp_face(rotated, ffhq_matrix(transform_points(lm5, m), SIZE), SIZE).astype(np.float64)
    # Two resamplings blur a little; a half-pixel slip or a flipped axis would cost far more.
    assert np.abs(again - reference)[32:-32, 32:-32].mean() < 4.0


def test_large_face_is_shrunk_to_the_same_crop(astronaut: tuple[np.ndarray, np.ndarray]) -> None:
    photo, lm5 = astronaut
    reference = warp_face(photo, ffhq_matrix(lm5, SIZE), SIZE).astype(np.float64)
    big = cv2.resize(photo, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    lm_big = (lm5 + 0.5) * 4 - 0.5  # pixel centres at integers
    matrix = ffhq_matrix(lm_big, SIZE)
    assert matrix_scale(matrix) < 0.5  # the area-averaging path runs
    shrunk = warp_face(big, matrix, SIZE).astype(np.float64)
    assert np.abs(shrunk - reference)[16:-16, 16:-16].mean() < 3.0


def test_shrinking_averages_instead_of_aliasing() -> None:
    # One-pixel stripes, shrunk 8x: an area average is flat grey, point sampling is not.
    stripes = np.zeros((2048, 2048, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    lm5 = np.array([[800.0, 900.0], [1200.0, 900.0], [1000.0, 1050.0], [840.0, 1180.0], [1160.0, 1180.0]])
    matrix = ffhq_matrix(lm5, SIZE)
    assert 0.1 < matrix_scale(matrix) < 0.2
    crop = warp_face(stripes, matrix, SIZE).astype(np.float64)
    naive = cv2.warpAffine(stripes, matrix, (SIZE, SIZE), flags=cv2.INTER_CUBIC).astype(np.float64)
    assert abs(crop.mean() - 127.5) < 3 and crop.std() < 10
    assert naive.std() > 30


def test_outside_fraction_counts_the_reflected_part() -> None:
    # A crop that maps 1:1 onto the photo with its left half beyond the photo's left edge.
    matrix = np.array([[1.0, 0.0, 128.0], [0.0, 1.0, 0.0]])
    assert outside_fraction(matrix, SIZE, (512, 512)) == pytest.approx(0.5)
    assert outside_fraction(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), SIZE, (512, 512)) == 0.0
    # Rotated and shrunk, checked against mapping every crop pixel back into the photo.
    matrix = np.array([[0.4, 0.2, 30.0], [-0.2, 0.4, 60.0]])
    inverse = cv2.invertAffineTransform(matrix)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    src = transform_points(np.stack([xx.ravel(), yy.ravel()], 1), inverse)
    expected = 1 - ((src >= -0.5) & (src <= 511.5)).all(1).mean()
    assert expected > 0.3
    assert outside_fraction(matrix, SIZE, (512, 512)) == pytest.approx(expected, abs=0.01)


def test_transform_points_matches_opencv() -> None:
    m = _similarity(17.0, 1.3, 5.0, -2.0)
    pts = np.random.default_rng(0).uniform(0, 100, (10, 2))
    expected = cv2.transform(pts[None].astype(np.float64), m)[0]
    np.testing.assert_allclose(transform_points(pts, m), expected, atol=1e-9)


def test_degenerate_landmarks_are_refused() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        ffhq_quad(np.zeros((5, 2)))
