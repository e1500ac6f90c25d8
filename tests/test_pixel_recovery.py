"""Recovery from the pixels alone: the mark carries the geometry and the nonce, a stripped PNG and a
JPEG-90 copy recover closer to the original than the anonymized image is, and nothing else does."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from faceveil.data.photo_detect import FacePolicy
from faceveil.data.photo_io import load_photo
from faceveil.data.samples import sample_photo_path
from faceveil.keys import SecretKey
from faceveil.models import pixel_geometry as pg
from faceveil.watermark import Mark

KEY = SecretKey(bytes(range(32)))
STEPS = 4  # tiny's sampling steps here: enough to key and invert, quick on two cores
INVERSION = 25


def test_geometry_survives_the_body_and_a_crop():
    from faceveil.data.align import ffhq_matrix

    lm5 = np.array([[230.0, 110], [290, 112], [262, 140], [238, 170], [285, 171]])
    g = pg.quantize(ffhq_matrix(lm5, 256), 256, "head")
    body = pg.pack(g)
    assert pg.unpack(body).extent == "head" and len(body) == 8
    mid = (g.cy4 / 4, g.cx4 / 4)
    # Found where it was made: the same geometry, so the same matrix bit for bit.
    same = pg.resolve(Mark(body, 1.0, (0, 0), (mid[0] + 5, mid[1] - 7), 40), 256)
    assert same == g and np.array_equal(same.matrix(256), g.matrix(256))
    # In a copy cropped by (37, 70) px, found through the tile lattice's origin.
    dy, dx = 37, 70
    moved = pg.resolve(Mark(body, 1.0, (dy % 32, dx % 64), (mid[0] - dy + 6, mid[1] - dx + 9), 40), 256)
    assert (moved.cy4, moved.cx4) == (g.cy4 - 4 * dy, g.cx4 - 4 * dx)
    # The nonce follows the key and the body.
    assert pg.pixel_nonce(KEY, body) != pg.pixel_nonce(SecretKey(bytes(32)), body)
    assert pg.pixel_nonce(KEY, body) != pg.pixel_nonce(KEY, pg.pack(g, random_bits=1))


def test_scale_out_of_range_is_refused():
    m = np.array([[9.0, 0, 0], [0, 9.0, 0]])  # 9 crop pixels per photo pixel: a face of a few pixels
    assert pg.quantize(m, 256) is None


@pytest.fixture(scope="module")
def anonymized(tiny_backbone):
    from faceveil.models.photo import PhotoAnonymizer
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.settings import Settings

    photo = load_photo(sample_photo_path("astronaut"))
    an = Anonymizer(tiny_backbone, Settings(scheme="exact", steps=STEPS, residual=False))
    faces = PhotoFinder(256, policy=FacePolicy(pixel_recovery=True)).find(photo)
    [vp] = PhotoAnonymizer(an).anonymize([(photo, faces)], KEY)
    [face] = vp.faces
    region = face.region(photo.shape[:2])
    inside = np.zeros(photo.shape[:2], dtype=bool)
    inside[region.slices()] = region.inside
    return an, photo, vp, inside


def _psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    err = (a[where].astype(np.float64) - b[where]) ** 2
    return float(10 * np.log10(255.0**2 / err.mean()))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_only_the_face_region_changes(anonymized):
    _, photo, vp, inside = anonymized
    assert np.array_equal(vp.image[~inside], photo[~inside])
    assert _psnr(vp.image, photo, inside) < 14  # the face is gone


@pytest.fixture(scope="module")
def recovered(anonymized):
    """The stripped PNG and the JPEG-90 copy recovered, and the stripped one with the whole noise keyed
    (as ordinary faces are): the pixel path depends on keying the face region only."""
    import contextlib

    from faceveil.models import pixel_recovery as pr

    an, photo, vp, inside = anonymized
    rec = pr.PixelRecoverer(an, inversion_steps=INVERSION, estimate=False)
    copies = {"stripped_png": vp.image.copy(), "jpeg90": _jpeg(vp.image, 90)}
    out = {name: (pixels, rec.recover(pixels, KEY, scales=(1.0,))) for name, pixels in copies.items()}
    original = pr.keyed_region
    try:
        pr.keyed_region = lambda anonymizer, bodies: contextlib.nullcontext()
        out["whole_noise_keyed"] = (copies["stripped_png"], rec.recover(copies["stripped_png"], KEY, scales=(1.0,)))
    finally:
        pr.keyed_region = original
    return out


@pytest.mark.parametrize("copy", ["stripped_png", "jpeg90"])
def test_a_copy_without_its_record_recovers_closer_than_the_anonymized_image(anonymized, recovered, copy):
    _, photo, vp, inside = anonymized
    pixels, result = recovered[copy]
    assert result is not None and len(result.faces) == 1
    anon_db, rec_db = _psnr(vp.image, photo, inside), _psnr(result.image, photo, inside)
    assert rec_db > anon_db + 1.5, (anon_db, rec_db)
    # Nothing outside the face's region is touched.
    assert np.array_equal(result.image[~inside], pixels[~inside])


def test_keying_the_whole_noise_leaves_nothing_to_recover(anonymized, recovered):
    _, photo, vp, inside = anonymized
    _, result = recovered["whole_noise_keyed"]
    assert _psnr(result.image, photo, inside) < _psnr(vp.image, photo, inside) + 1.0


def test_no_mark_under_this_key_finds_nothing(anonymized):
    from faceveil.models.pixel_recovery import PixelRecoverer

    an, photo, vp, _ = anonymized
    rec = PixelRecoverer(an, inversion_steps=1, estimate=False)
    assert rec.recover(vp.image, SecretKey(bytes(32)), scales=(1.0,)) is None
    assert rec.recover(photo, KEY, scales=(1.0,)) is None


def test_cli_copy_without_record_and_unmarked_photo(tmp_path):
    """One command on copies: the marked one is recovered (and says approximate), an unmarked photo gets one
    line and exit 1; verify says it cannot authenticate either."""
    env = {"FACEVEIL_BACKBONE": "tiny", "OMP_NUM_THREADS": "2"}
    import os

    env = {**os.environ, **env}
    key = tmp_path / "me.key"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "faceveil", *args], capture_output=True, text=True, env=env, timeout=600)

    assert cli("keygen", "-o", str(key)).returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    Image.open(sample_photo_path("astronaut")).convert("RGB").save(src / "astro.png")
    r = cli("anonymize", str(src / "astro.png"), "-o", str(tmp_path / "out"), "--key", str(key), "--pixel-recovery",
            "--steps", str(STEPS))
    assert r.returncode == 0, r.stderr
    copies = tmp_path / "copies"
    copies.mkdir()
    Image.open(tmp_path / "out" / "astro.png").convert("RGB").save(copies / "astro.jpg", quality=90)
    Image.open(sample_photo_path("grace_hopper")).convert("RGB").save(copies / "plain.png")
    r = cli("recover", str(copies), "-o", str(tmp_path / "back"), "--key", str(key), "--steps", str(STEPS),
            "--inversion-steps", "5", "--scales", "1")
    assert r.returncode == 1
    assert "astro.jpg: approximate (pixels only): 1 face(s) found" in r.stderr
    [line] = [x for x in r.stderr.splitlines() if "no face marked" in x]
    assert "plain.png" in line and "no face marked under this key" in line
    assert (tmp_path / "back" / "astro.png").exists() and not (tmp_path / "back" / "plain.png").exists()
    r = cli("verify", str(copies / "astro.jpg"), "--key", str(key))
    assert r.returncode != 0 and "cannot be authenticated" in r.stderr


def test_pixel_recovery_is_refused_where_it_cannot_mark(tmp_path, capsys):
    from faceveil.cli import main

    key = tmp_path / "k.key"
    assert main(["keygen", "-o", str(key)]) == 0
    src = tmp_path / "in"
    src.mkdir()
    Image.open(sample_photo_path("astronaut")).convert("RGB").resize((128, 128)).save(src / "face.png")
    capsys.readouterr()
    rc = main(["anonymize", str(src / "face.png"), "-o", str(tmp_path / "out"), "--key", str(key), "--pixel-recovery", "--aligned"])
    assert rc == 2 and "--pixel-recovery is for photos, not aligned crops" in capsys.readouterr().err
    assert not (tmp_path / "out" / "face.png").exists()


def test_a_tiny_image_among_copies_is_one_line_and_the_batch_goes_on(tmp_path, capsys):
    from faceveil.cli import main

    key = tmp_path / "k.key"
    assert main(["keygen", "-o", str(key)]) == 0
    copies = tmp_path / "copies"
    copies.mkdir()
    Image.new("RGB", (1, 1)).save(copies / "a_dot.png")
    Image.open(sample_photo_path("grace_hopper")).convert("RGB").save(copies / "b_plain.png")
    capsys.readouterr()
    assert main(["recover", str(copies), "-o", str(tmp_path / "back"), "--key", str(key)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert sum("no face marked under this key" in line for line in err.splitlines()) == 2  # both files, one line each
