"""The face-region watermark: right key reads the body, wrong key reads nothing, outside is untouched,
and marks are found without a mask in stripped, re-encoded, resized and cropped copies."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from faceveil import watermark as wm
from faceveil.data.images import elliptical_mask, load_image
from faceveil.data.samples import sample_photo_path
from faceveil.errors import InputError
from faceveil.keys import SecretKey

KEY = SecretKey(bytes(range(32)))
RID = bytes.fromhex("0123456789abcdef")


def _region(image: np.ndarray, y: int, x: int, side: int) -> np.ndarray:
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[y : y + side, x : x + side] = elliptical_mask(side, side)
    return mask


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 512 px astronaut photo, its 256 px face region, and the photo marked with RID under KEY."""
    image = load_image(sample_photo_path("astronaut"))
    mask = _region(image, 20, 130, 256)
    return image, mask, wm.embed(image, mask, KEY, RID)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_right_key_reads_the_id(astronaut):
    _, mask, marked = astronaut
    assert wm.extract(marked, mask, KEY) == RID


def test_wrong_key_reads_none(astronaut):
    _, mask, marked = astronaut
    assert wm.extract(marked, mask, SecretKey(bytes(32))) is None


def test_unmarked_face_reads_none(astronaut):
    image, mask, _ = astronaut
    assert wm.extract(image, mask, KEY) is None


def test_only_the_region_changes_and_quietly(astronaut):
    image, mask, marked = astronaut
    assert np.array_equal(marked[~mask], image[~mask])
    changed = np.any(marked != image, axis=2)
    assert changed.sum() > 0.5 * mask.sum()  # the mark fills the region, not a corner of it
    err = (marked.astype(np.float64) - image)[mask]
    assert 10 * np.log10(255.0**2 / np.mean(err**2)) >= 38.0  # measured 39.4 dB


@pytest.mark.parametrize("quality", [75, 50])
def test_survives_jpeg_at_256_px(astronaut, quality):
    _, mask, marked = astronaut
    assert wm.extract(_jpeg(marked, quality), mask, KEY) == RID


def test_found_without_a_mask_after_a_half_resize(astronaut):
    _, mask, marked = astronaut
    h, w = mask.shape
    half = cv2.resize(marked, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    assert wm.find(half, KEY, scales=(1.0,)) == []  # read at the wrong scale
    [mark] = wm.find(half, KEY, scales=(1.0, 2.0))
    assert mark.body == RID and mark.scale == 2.0
    ys, xs = np.nonzero(mask)
    assert abs(mark.centroid[0] - ys.mean() / 2) < 6 and abs(mark.centroid[1] - xs.mean() / 2) < 6


@pytest.mark.parametrize("dy,dx", [(13, 29), (40, 3)])
def test_found_in_a_cropped_jpeg_with_the_tile_lattice(astronaut, dy, dx):
    _, mask, marked = astronaut
    crop = _jpeg(marked[dy:, dx:], 75)
    [mark] = wm.find(crop, KEY)
    assert mark.body == RID
    # Pixel (y, x) of the crop was photo pixel (y + dy, x + dx), at tile pixel (y + dy) % 32, (x + dx) % 64.
    assert mark.origin == (dy % wm.TILE_PX[0], dx % wm.TILE_PX[1])
    assert wm.find(crop, KEY, search_grid=False) == []  # the image's own grid no longer fits


def test_nothing_found_in_an_unmarked_photo_or_under_another_key(astronaut):
    image, _, marked = astronaut
    assert wm.find(image, KEY, scales=(1.0, 2.0)) == []
    assert wm.find(marked, SecretKey(bytes(32)), scales=(1.0, 2.0)) == []


def test_tampered_sealed_bits_fail_authentication():
    sealed = wm.seal_id(KEY, RID)
    assert wm.open_id(KEY, sealed) == RID
    for i in range(8 * len(sealed)):
        bad = bytearray(sealed)
        bad[i // 8] ^= 0x80 >> (i % 8)
        assert wm.open_id(KEY, bytes(bad)) is None
    assert wm.open_id(SecretKey(bytes(32)), sealed) is None
    assert sealed[: wm.ID_BYTES] != RID  # the id is not in the clear


def test_doubtful_bits_are_corrected_but_confident_errors_are_not():
    truth = wm.sealed_bits(KEY, RID)
    soft = np.where(truth == 1, -5.0, 5.0)
    soft[[3, 70, 101]] *= -0.1  # three wrong but weak votes
    assert wm._decode(KEY, soft, doubtful=6) == RID
    assert wm._decode(KEY, soft, doubtful=0) is None
    soft[40] = -soft[40]  # a confident error is beyond the flips
    assert wm._decode(KEY, soft, doubtful=6) is None


def test_placement_covers_every_bit_in_a_small_region():
    image = np.full((200, 200, 3), 128, dtype=np.uint8)
    mask = _region(image, 30, 40, 128)
    table = wm.placement(KEY)
    bits, _ = wm._slots(table, wm._blocks_inside(mask))
    counts = np.bincount(bits.ravel(), minlength=wm.PAYLOAD_BITS)
    assert counts.min() >= 2 and wm.capacity(mask) == counts.sum()
    other = wm.placement(SecretKey(bytes(32)))
    assert not np.array_equal(table.bit, other.bit)  # the key decides the placement
    marked = wm.embed(image, mask, KEY, RID)
    assert wm.extract(marked, mask, KEY) == RID


def test_too_small_a_region_is_refused():
    image = np.full((100, 100, 3), 128, dtype=np.uint8)
    with pytest.raises(InputError, match="too few"):
        wm.embed(image, _region(image, 10, 10, 64), KEY, RID)
    with pytest.raises(InputError, match="8 bytes"):
        wm.seal_id(KEY, b"short")


@pytest.mark.parametrize("shape", [(1, 1, 3), (9, 300, 3), (31, 40, 3)])
def test_images_too_small_for_a_mark_read_nothing(shape):
    assert wm.find(np.zeros(shape, np.uint8), KEY, scales=(1.0, 2.0)) == []
