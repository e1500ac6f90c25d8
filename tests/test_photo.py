"""Ordinary photos: every face replaced, the rest bit-identical, recovery bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from faceveil.data.images import load_image
from faceveil.data.samples import sample_photo_path
from faceveil.keys import SecretKey
from faceveil.models.settings import Settings

FAST = Settings(scheme="exact", steps=2)


def region_mask(faces, hw):
    out = np.zeros(hw, bool)
    for f in faces:
        r = f.region(hw)
        out[r.slices()] |= r.inside
    return out


@pytest.fixture(scope="module")
def photo_tools(tiny_backbone):
    from faceveil.models.photo import PhotoAnonymizer
    from faceveil.models.pipeline import Anonymizer

    return PhotoAnonymizer(Anonymizer(tiny_backbone, FAST), batch_size=4)


@pytest.fixture(scope="module")
def t1_result(tmp_path_factory, tiny_backbone, one_thread):
    from faceveil.models.photo_api import anonymize_photo

    key = SecretKey.generate()
    path = tmp_path_factory.mktemp("t1") / "t1.png"
    result = anonymize_photo(sample_photo_path("t1_group"), key, backbone=tiny_backbone, settings=FAST, output=path)
    return key, path, result


def test_t1_six_faces_replaced_rest_identical_and_recovered_bit_for_bit(t1_result, tiny_backbone):
    from faceveil.data.detect_centerface import CenterFaceDetector
    from faceveil.models.photo_api import recover_photo
    from faceveil.fileformat import read_file

    key, path, result = t1_result
    original = load_image(sample_photo_path("t1_group"))
    assert len(result.faces) == 6
    changed = (result.image != original).any(-1)
    inside = region_mask(result.faces, original.shape[:2])
    assert not (changed & ~inside).any()  # outside every face region: bit-identical
    # Each face the detector finds has most of its central box replaced.
    for f in CenterFaceDetector().detect(original):
        x0, y0, x1, y1 = f.bbox.astype(int)
        cx0, cx1, cy0, cy1 = x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4, y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4
        assert changed[cy0:cy1, cx0:cx1].mean() > 0.8
    # From the file: authenticated, then the whole photo back bit for bit, with no model at all.
    vf = read_file(path, key)
    assert vf.authenticated and vf.pixels_intact and vf.exact and np.array_equal(vf.image, result.image)
    assert [f.treatment for f in vf.faces] == ["diffusion"] * 6 and vf.model["backbone"] == "tiny"
    assert np.array_equal(recover_photo(path, key), original)
    # The in-memory result still replays exactly through the model (what version 2 files did).
    assert np.array_equal(recover_photo(result, key, backbone=tiny_backbone), original)


def test_cli_recover_inspect_wrong_key_and_edited_pixels(t1_result, tmp_path, capsys):
    import json

    from PIL import Image, PngImagePlugin

    from faceveil.cli import main
    from faceveil.errors import KeyMismatchError, TamperedError
    from faceveil.fileformat import read_chunks, read_file
    from faceveil.keys import save_key

    key, path, result = t1_result
    original = load_image(sample_photo_path("t1_group"))
    keyfile = save_key(key, tmp_path / "me.key")
    assert main(["recover", str(path), "-o", str(tmp_path / "rec"), "--key", str(keyfile), "--device", "cpu"]) == 0
    assert np.array_equal(load_image(tmp_path / "rec" / "t1.png"), original)
    assert (tmp_path / "rec" / "t1.png").stat().st_mode & 0o777 == 0o600
    assert main(["inspect", str(path)]) == 0
    header = json.loads(capsys.readouterr().out)
    assert len(header["faces"]) == 6 and header["version"] == 3
    # Public: sizes, nonces, check values, hashes of what is public. No model, adapter, box or transform.
    assert set(header) == {"format", "version", "faceveil_version", "image_size", "pixels_sha256", "faces", "file", "payload_sha256"}
    with pytest.raises(KeyMismatchError):
        read_file(path, SecretKey.generate())
    with pytest.raises(KeyMismatchError):  # force cannot open records sealed under another key
        read_file(path, SecretKey.generate(), force=True)
    # Pixels edited after anonymization (faceveil chunks kept) are refused, or recovered with a note under force.
    chunks = read_chunks(path)
    info = PngImagePlugin.PngInfo()
    for ctype, body in chunks.items():
        info.add(ctype, body)
    edited = result.image.copy()
    edited[0, 0] ^= 1
    (tmp_path / "pub").mkdir()
    Image.fromarray(edited).save(tmp_path / "pub" / "e.png", pnginfo=info)
    with pytest.raises(TamperedError):
        read_file(tmp_path / "pub" / "e.png", key)
    vf = read_file(tmp_path / "pub" / "e.png", key, force=True)
    assert any("pixels" in b for b in vf.bypassed) and not vf.exact
    assert main(["recover", str(tmp_path / "pub" / "e.png"), "-o", str(tmp_path / "rec2"), "--key", str(keyfile)]) == 3
    # Forced, it is written with each bypassed check named, and the run still fails: it is not the original.
    assert main(["recover", str(tmp_path / "pub" / "e.png"), "-o", str(tmp_path / "rec3"), "--key", str(keyfile), "--force"]) == 1
    assert (tmp_path / "rec3" / "e.png").exists() and "NOT the original" in capsys.readouterr().err


def test_overlapping_faces_and_a_face_cut_by_the_border(tiny_backbone, photo_tools, one_thread):
    from faceveil.data.detect_centerface import CenterFaceDetector
    from faceveil.models.photo import plan_faces

    full = load_image(sample_photo_path("grace_hopper"))
    [face] = CenterFaceDetector().detect(full)
    cut = int(face.bbox[0] + 0.4 * (face.bbox[2] - face.bbox[0]))  # the left edge runs through the face
    photo = np.ascontiguousarray(full[:, cut:])
    shift = np.array([cut, 0.0])
    moved = dataclasses.replace(face, bbox=face.bbox - [cut, 0, cut, 0], landmarks5=face.landmarks5 - shift, landmarks=face.landmarks5 - shift)
    eye = np.hypot(*(face.landmarks5[1] - face.landmarks5[0]))
    second = dataclasses.replace(moved, landmarks5=moved.landmarks5 + [0.8 * eye, 0.3 * eye], landmarks=moved.landmarks5 + [0.8 * eye, 0.3 * eye])
    faces = plan_faces(photo, [moved, second], 256)
    a, b = (f.region(photo.shape[:2]) for f in faces)
    both = np.zeros(photo.shape[:2], int)
    both[a.slices()] += a.inside
    both[b.slices()] += b.inside
    assert (both == 2).sum() > 1000 and a.x0 == 0  # they overlap, and the first reaches the border
    key = SecretKey.generate()
    [vp] = photo_tools.anonymize([(photo, faces)], key)
    changed = (vp.image != photo).any(-1)
    assert not (changed & (both == 0)).any() and changed[both > 0].mean() > 0.9
    assert np.array_equal(photo_tools.recover([vp], key)[0], photo)


def test_blend_weights_stay_inside_the_mask():
    from faceveil.data.align import ffhq_matrix
    from faceveil.data.images import elliptical_mask
    from faceveil.data.photo_align import blend_weights, face_region

    mask = elliptical_mask(256, 256)
    w = blend_weights(mask)
    assert w[~mask].max() == 0 and w.max() == 1.0 and 0 < (w[mask] < 1).mean() < 0.2
    lm5 = np.array([[300.0, 300], [360, 305], [330, 340], [305, 370], [355, 372]])
    matrix = ffhq_matrix(lm5, 256)
    r = face_region(mask, matrix, (600, 700))
    # The region lies inside the warped mask (sampled at pixel centres, nearest neighbour).
    ys, xs = np.nonzero(r.inside)
    crop_xy = np.stack([xs + r.x0, ys + r.y0], 1) @ matrix[:, :2].T + matrix[:, 2]
    ij = np.clip(np.rint(crop_xy).astype(int), 0, 255)
    assert mask[ij[:, 1], ij[:, 0]].all()


def test_photo_residual_opens_only_with_its_key_and_regions():
    from faceveil.data.photo_align import Region
    from faceveil.models.photo_residual import apply_photo_residual, open_photo_residual, seal_photo_residual

    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rebuilt = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    w = np.zeros((20, 20), np.float32)
    w[5:15, 5:15] = 0.5
    regions = [Region(0, 0, 20, 20, w), Region(10, 10, 30, 30, w)]  # overlapping
    key, nonce = SecretKey.generate(), b"n" * 16
    base = rebuilt.copy()
    sealed = seal_photo_residual(original, rebuilt, regions, key, nonce)
    assert len(sealed) == 3 * 200 + 16
    assert open_photo_residual(sealed, regions, SecretKey.generate(), nonce) is None
    assert open_photo_residual(sealed, regions[:1], key, nonce) is None
    plain = open_photo_residual(sealed, regions, key, nonce)
    apply_photo_residual(base, plain, regions)
    assert np.array_equal(base, rebuilt)  # seal brought its copy to the original, apply does the same
    inside = np.zeros((40, 50), bool)
    inside[5:15, 5:15] = inside[15:25, 15:25] = True
    assert np.array_equal(base[inside], original[inside])


def test_tiled_pyramid_finds_big_and_small_faces_once_each():
    import cv2

    from faceveil.data.detect_centerface import CenterFaceDetector
    from faceveil.data.photo_detect import detect_in_photo, pyramid_scales

    det = CenterFaceDetector()
    t1 = load_image(sample_photo_path("t1_group"))
    canvas = np.full((1400, 2000, 3), 110, np.uint8)
    canvas[:886, :1280] = t1  # faces of 100-145 px: cut by 512-px tiles, whole on a coarser level
    small = cv2.resize(t1, None, fx=1 / 6, fy=1 / 6, interpolation=cv2.INTER_AREA)  # faces of 15-19 px
    canvas[1000 : 1000 + small.shape[0], 330 : 330 + small.shape[1]] = small  # across the tiles' seam at x = 384
    assert pyramid_scales(canvas.shape[:2], 512) == [1.0, 0.5, 0.25]
    faces = detect_in_photo(canvas, det, tile=512)
    big = [f for f in faces if f.bbox[1] < 900]
    little = [f for f in faces if f.bbox[1] >= 1000]
    assert len(big) == 6 and len(little) == 6 and len(faces) == 12  # each face once
    for a, b in zip(det.detect(t1), big):
        assert np.abs(a.landmarks5 - b.landmarks5).max() < 8
    assert all(12 <= f.size <= 22 for f in little)
    # A thumbnail is also searched at 2x: t1 at 1/8 (faces of 12-14 px) gives all six.
    thumb = cv2.resize(t1, None, fx=1 / 8, fy=1 / 8, interpolation=cv2.INTER_AREA)
    assert len(detect_in_photo(thumb, det)) == 6 > len(det.detect(thumb))


def test_face_policy_covers_what_the_diffusion_cannot_take_and_leaves_only_on_request():
    from faceveil.data.faces import Face
    from faceveil.data.photo_detect import FacePolicy, face_treatments

    mk = lambda s: Face(np.array([0, 0, s, s], float), 1.0, np.zeros((5, 2)), np.zeros((5, 2)), "five")  # noqa: E731
    faces = [mk(10), mk(80), mk(50)]
    assert [t for t, _ in face_treatments(faces, FacePolicy())] == ["blur", "diffusion", "diffusion"]
    assert face_treatments(faces, FacePolicy())[0][1] == "under --min-face 20 px"
    assert [t for t, _ in face_treatments(faces, FacePolicy(cover="box", min_face=60))] == ["box", "diffusion", "box"]
    assert [t for t, _ in face_treatments(faces, FacePolicy(leave_small=True))] == ["left", "diffusion", "diffusion"]
    assert [t for t, _ in face_treatments(faces, FacePolicy(faces="largest"))] == ["left", "diffusion", "left"]
    assert [t for t, _ in face_treatments(faces, FacePolicy(method="pixelate"))] == ["pixelate"] * 3


@pytest.mark.parametrize("method", ["blur", "pixelate", "box"])
def test_covered_faces_change_every_face_nothing_outside_and_recover_exactly(method, tmp_path):
    import cv2

    from faceveil.data.photo_detect import FacePolicy
    from faceveil.models.photo import PhotoAnonymizer
    from faceveil.models.photo_api import PhotoFinder, recover_photo, save_result

    t1 = load_image(sample_photo_path("t1_group"))
    thumb = cv2.resize(t1, None, fx=1 / 8, fy=1 / 8, interpolation=cv2.INTER_AREA)  # faces of 12-14 px
    faces = PhotoFinder(0, policy=FacePolicy(cover=method)).find(thumb)
    assert [f.treatment for f in faces] == [method] * 6 and all(f.veiled is None for f in faces)
    key = SecretKey.generate()
    [vp] = PhotoAnonymizer(None).anonymize([(thumb, faces)], key)
    changed = (vp.image != thumb).any(-1)
    inside = region_mask(faces, thumb.shape[:2])
    assert not (changed & ~inside).any()
    for f in faces:  # the face's own box is changed nearly everywhere
        x0, y0, x1, y1 = np.rint(f.bbox).astype(int)
        assert changed[y0:y1, x0:x1].mean() > 0.75, (method, f.index)
    # Covers are irreversible in the picture; the file seals what they hid, for the key alone.
    path = save_result(tmp_path / "thumb.png", vp, key)
    assert np.array_equal(recover_photo(path, key), thumb)
    assert not np.array_equal(recover_photo(path, key), vp.image)


def test_mixed_diffusion_and_covers_in_one_photo_recover_exactly_from_the_file(photo_tools, tmp_path):
    from faceveil.data.detect_centerface import CenterFaceDetector
    from faceveil.data.photo_detect import FacePolicy
    from faceveil.fileformat import read_file
    from faceveil.models.photo import cover_faces, plan_faces, treatment_summary
    from faceveil.models.photo_api import recover_photo, save_result

    t1 = load_image(sample_photo_path("t1_group"))
    found = CenterFaceDetector().detect(t1)
    sizes = sorted(f.size for f in found)
    faces = plan_faces(t1, found, 256, FacePolicy(cover="pixelate", min_face=sizes[2] + 0.5))
    assert sorted(f.treatment for f in faces) == ["diffusion"] * 3 + ["pixelate"] * 3
    assert "3 diffusion" in treatment_summary(faces) and "3 pixelate" in treatment_summary(faces)
    key = SecretKey.generate()
    [vp] = photo_tools.anonymize([(t1, faces)], key)
    changed = (vp.image != t1).any(-1)
    assert not (changed & ~region_mask(faces, t1.shape[:2])).any()
    assert all(f.veiled is not None for f in faces if f.treatment == "diffusion")
    # Replayed through the model, the diffusion faces come back and the covers stay on ...
    assert np.array_equal(photo_tools.recover([vp], key)[0], cover_faces(t1, faces))
    # ... while the v3 file seals every changed region's original pixels: the key alone gives it all back.
    path = save_result(tmp_path / "mixed.png", vp, key)
    assert np.array_equal(recover_photo(path, key), t1)
    assert [f.treatment for f in read_file(path, key).faces] == [f.treatment for f in faces]


@pytest.mark.parametrize("length", [777, 1536, 1537, 3000, 6000, 10000])
def test_tiles_cover_the_photo_with_the_overlap_and_no_more_than_the_tile(length):
    from faceveil.data.photo_detect import tiles

    starts, side = tiles(length, 1536, 192)
    cover = np.zeros(length, int)
    for s in starts:
        cover[s : s + side] += 1
    assert cover.min() >= 1 and side <= 1536 and starts[0] == 0 and starts[-1] + side == length
    assert all(starts[i] + side - starts[i + 1] >= 192 for i in range(len(starts) - 1))
    assert sum(cover) <= 1.25 * length or length <= 1536  # the overlap costs at most a quarter more


def test_python_api_defaults_are_the_clis(monkeypatch):
    import torch

    import faceveil.models.photo_api as api

    seen = []

    def stop(name):
        seen.append((name, torch.get_num_threads()))
        raise RuntimeError("stop")

    monkeypatch.setattr(api, "_backbone", stop)
    monkeypatch.setenv("FACEVEIL_BACKBONE", "ldm-ffhq")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="stop"):
            api.anonymize_photo(np.zeros((8, 8, 3), np.uint8), SecretKey.generate())
        monkeypatch.delenv("FACEVEIL_BACKBONE")
        with pytest.raises(RuntimeError, match="stop"):
            api.anonymize_photo(np.zeros((8, 8, 3), np.uint8), SecretKey.generate(), threads=2)
    finally:
        torch.set_num_threads(before)
    assert seen == [("ldm-ffhq", 1), ("sd2-inpaint", 2)]


def test_sideways_search_finds_faces_lying_down_in_the_photos_pixels():
    from faceveil.data.faces import Face
    from faceveil.data.photo_detect import _turned_back

    # A point and a box found in the turned picture come back to where they are in the photo.
    h, w = 7, 11
    for k in (1, 2, 3):
        img = np.zeros((h, w), int)
        img[2, 9] = 1  # x = 9, y = 2
        y, x = np.argwhere(np.rot90(img, k))[0]
        pt = np.array([[x, y]] * 5, float)
        f = _turned_back(Face(np.array([x, y, x + 1, y + 1], float), 1.0, pt, pt, "five"), k, (h, w))
        assert np.array_equal(f.landmarks5[0], [9, 2]) and np.array_equal(f.bbox, [9, 2, 10, 3]), k



def test_version_2_photo_files_replay_with_a_warning_and_refuse_other_weights(t1_result, tmp_path, capsys):
    import copy

    from faceveil.cli import main
    from faceveil.keys import save_key
    from faceveil.photofile import write_photo_v2

    key, _, result = t1_result
    original = load_image(sample_photo_path("t1_group"))
    keyfile = save_key(key, tmp_path / "me.key")
    write_photo_v2(tmp_path / "pub" / "t1.png", result, key)
    assert main(["recover", str(tmp_path / "pub"), "-o", str(tmp_path / "rec"), "--key", str(keyfile), "--device", "cpu"]) == 0
    assert np.array_equal(load_image(tmp_path / "rec" / "t1.png"), original)
    assert "version 2 file: recovered by replaying the model" in capsys.readouterr().err
    # The same photo recorded as made with other base weights: photo files now get the weights check too.
    other = copy.deepcopy(result)
    for f in other.faces:
        f.veiled.backbone = "sd2-inpaint:random:7"
    write_photo_v2(tmp_path / "pub2" / "t1.png", other, key)
    assert main(["recover", str(tmp_path / "pub2"), "-o", str(tmp_path / "rec2"), "--key", str(keyfile),
                 "--backbone", "tiny", "--device", "cpu"]) == 1
    assert "wrong weights" in capsys.readouterr().err and not (tmp_path / "rec2" / "t1.png").exists()
