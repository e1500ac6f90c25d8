"""``faceveil prepare`` end to end on real photos, bad files included."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import skimage
import webdataset as wds
from PIL import Image

from faceveil.cli import main
from faceveil.data.backends import DetectorSpec, MaskSpec
from faceveil.data.detect_dlib import DlibDetector
from faceveil.data.extract import ExtractConfig, FaceExtractor
from faceveil.data.images import load_image
from faceveil.data.prepare import prepare
from faceveil.data.samples import sample_photo_path
from faceveil.data.shards import decode_sample, read_index, read_rejects

COFFEE = Path(skimage.__file__).parent / "data" / "coffee.png"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _samples(folder: Path) -> list[dict]:
    index = read_index(folder)
    out = []
    for shard in index["shards"]:
        out += list(wds.WebDataset(str(folder / shard["name"]), shardshuffle=False, empty_check=False))
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "grace_hopper", "t1_group"):
        src = sample_photo_path(name)
        shutil.copy(src, d / f"{name}{src.suffix}")
    shutil.copy(COFFEE, d / "coffee.png")  # a real photo without a face
    jpeg = sample_photo_path("grace_hopper").read_bytes()
    (d / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # truncated
    return d


@pytest.fixture(scope="module")
def cli_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("out") / "shards"
    before = {p.name: _sha(p) for p in photos.iterdir()}
    cap = io.StringIO()
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stdout(cap), contextlib.redirect_stderr(err):
        rc = main(["prepare", str(photos), "-o", str(out), "--faces", "all", "--workers", "2", "--no-progress"])
    after = {p.name: _sha(p) for p in photos.iterdir()}
    return {"rc": rc, "out": out, "stdout": cap.getvalue(), "stderr": err.getvalue(), "before": before, "after": after}


def test_cli_counts_faces_and_rejects_bad_inputs(cli_run: dict) -> None:
    out = cli_run["out"]
    assert cli_run["rc"] == 1  # a corrupt input is a failure; the rest still went through
    index = read_index(out)
    assert index["photos"] == 5 and index["samples"] == 8 and index["faces_found"] == 8
    per_source = Counter(Path(json.loads(s["meta.json"])["source"]).stem for s in _samples(out))
    assert per_source == {"astronaut": 1, "grace_hopper": 1, "t1_group": 6}
    rejects = {Path(r["source"]).name: r for r in read_rejects(out / "rejects.tsv")}
    assert set(rejects) == {"coffee.png", "corrupt.jpg"}
    assert rejects["coffee.png"]["kind"] == "skipped" and rejects["coffee.png"]["reason"] == "no face found"
    assert rejects["corrupt.jpg"]["kind"] == "error" and "not a readable image" in rejects["corrupt.jpg"]["reason"]
    # One line on stderr for the one bad file; a summary with the numbers on stdout.
    err_lines = [line for line in cli_run["stderr"].splitlines() if line.strip()]
    assert len(err_lines) == 1 and "corrupt.jpg" in err_lines[0]
    assert "5 photos, 8 faces found, 8 samples" in cli_run["stdout"]
    assert "rejected: 2 (1 no face found, 1 not a readable image)" in cli_run["stdout"]
    assert "s per photo" in cli_run["stdout"]


def test_inputs_are_left_untouched(cli_run: dict) -> None:
    assert cli_run["before"] == cli_run["after"]


def test_shards_round_trip_losslessly(cli_run: dict, photos: Path) -> None:
    extractor = FaceExtractor(ExtractConfig(faces="all"))
    expected = {}
    for name in ("astronaut.png", "t1_group.jpg"):
        path = photos / name
        faces, _, _ = extractor.extract(load_image(path), str(path))
        for f in faces:
            expected[(name, f.face_index)] = f
    seen = 0
    for raw in _samples(cli_run["out"]):
        d = decode_sample(raw)
        assert d.image.shape == (256, 256, 3) and d.image.dtype == np.uint8
        assert d.mask.shape == (256, 256) and d.mask.any()
        with Image.open(io.BytesIO(raw["mask.png"])) as m:
            assert m.mode == "L" and set(np.unique(np.asarray(m))) <= {0, 255}
        meta = d.meta
        assert raw["__key__"] == f"{meta['source_index']:08d}_{meta['face_index']:02d}"
        assert len(meta["landmarks5"]) == 5 and len(meta["landmarks"]) == 68 and len(meta["bbox"]) == 4
        assert meta["label"] == "" and meta["detector"] == "dlib"
        for x, y in np.round(meta["landmarks5"]).astype(int):
            assert d.mask[y, x]
        ref = expected.get((Path(meta["source"]).name, meta["face_index"]))
        if ref is not None:
            np.testing.assert_array_equal(d.image, ref.image)
            np.testing.assert_array_equal(d.mask, ref.mask)
            np.testing.assert_allclose(meta["landmarks5"], ref.meta["landmarks5"])
            seen += 1
    assert seen == 7


def test_worker_count_does_not_change_the_shards(cli_run: dict, photos: Path, tmp_path: Path) -> None:
    report = prepare([photos], tmp_path, ExtractConfig(faces="all"), workers=1, progress=False)
    assert report.samples == 8
    assert _sha(tmp_path / "shard-000000.tar") == _sha(cli_run["out"] / "shard-000000.tar")
    assert (tmp_path / "rejects.tsv").read_text() == (cli_run["out"] / "rejects.tsv").read_text()


def test_rerun_skips_finished_shards_and_redoes_changed_ones(photos: Path, tmp_path: Path) -> None:
    config = ExtractConfig(faces="all")
    first = prepare([photos], tmp_path, config, images_per_shard=2, progress=False)
    assert first.shards == 3 and first.processed == 5 and first.shards_skipped == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.tar")}

    again = prepare([photos], tmp_path, config, images_per_shard=2, progress=False)
    assert again.processed == 0 and again.shards_skipped == 3
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.tar")} == stamps
    assert again.samples == first.samples and len(again.rejects) == len(first.rejects)

    (tmp_path / "shard-000001.tar").unlink()
    partial = prepare([photos], tmp_path, config, images_per_shard=2, progress=False)
    assert partial.processed == 2 and partial.shards_skipped == 2 and partial.samples == first.samples

    changed = prepare([photos], tmp_path, ExtractConfig(faces="all", size=128), images_per_shard=2, progress=False)
    assert changed.processed == 5 and changed.shards_skipped == 0
    assert decode_sample(_samples(tmp_path)[0]).image.shape == (128, 128, 3)


def test_face_policies(photos: Path, tmp_path: Path) -> None:
    t1 = photos / "t1_group.jpg"
    largest = prepare([t1], tmp_path / "largest", ExtractConfig(faces="largest"), progress=False)
    (sample,) = _samples(tmp_path / "largest")
    faces = DlibDetector().detect(load_image(t1))
    assert largest.faces_found == 6
    assert json.loads(sample["meta.json"])["face_index"] == int(np.argmax([f.area for f in faces]))

    single = prepare([t1, photos / "astronaut.png"], tmp_path / "single", ExtractConfig(faces="single"), progress=False)
    assert single.samples == 1
    (reject,) = single.rejects
    assert reject.source.endswith("t1_group.jpg") and reject.kind == "skipped" and "several faces (6)" in reject.reason


def test_small_faces_are_skipped(photos: Path, tmp_path: Path) -> None:
    # Box sizes: astronaut 88 px, Grace Hopper 216 px, the t1 faces 88-125 px.
    report = prepare([photos], tmp_path, ExtractConfig(faces="all", min_face=120), progress=False)
    assert report.samples == 2  # Hopper and the one 125 px face of t1
    reasons = Counter((Path(r.source).name, r.reason.split(" (")[0]) for r in report.rejects)
    assert reasons[("astronaut.png", "face too small")] == 1
    assert reasons[("t1_group.jpg", "face too small")] == 5
    assert report.errors == 1  # the corrupt file


def test_identity_labels_from_folders_list_files_and_identity_files(tmp_path: Path) -> None:
    root = tmp_path / "lfw"
    (root / "Grace_Hopper").mkdir(parents=True)
    (root / "Eileen_Collins").mkdir()
    shutil.copy(sample_photo_path("grace_hopper"), root / "Grace_Hopper" / "Grace_Hopper_0001.jpg")
    shutil.copy(sample_photo_path("astronaut"), root / "Eileen_Collins" / "Eileen_Collins_0001.png")
    shutil.copy(sample_photo_path("astronaut"), root / "loose.png")

    def labels(folder: Path) -> dict[str, str]:
        return {json.loads(s["meta.json"])["relpath"]: json.loads(s["meta.json"])["label"] for s in _samples(folder)}

    prepare([root], tmp_path / "a", progress=False)
    assert labels(tmp_path / "a") == {"Eileen_Collins/Eileen_Collins_0001.png": "Eileen_Collins", "Grace_Hopper/Grace_Hopper_0001.jpg": "Grace_Hopper", "loose.png": ""}

    listing = tmp_path / "pairs.txt"
    listing.write_text("# photos\nlfw/Grace_Hopper/Grace_Hopper_0001.jpg\n\nlfw/loose.png\n")
    prepare([listing], tmp_path / "b", progress=False)
    assert labels(tmp_path / "b") == {"lfw/Grace_Hopper/Grace_Hopper_0001.jpg": "Grace_Hopper", "lfw/loose.png": "lfw"}

    ids = tmp_path / "identity_CelebA.txt"
    ids.write_text("Grace_Hopper_0001.jpg 7\nloose.png 12\n")
    prepare([root], tmp_path / "c", identity_file=ids, progress=False)
    assert labels(tmp_path / "c") == {"Eileen_Collins/Eileen_Collins_0001.png": "", "Grace_Hopper/Grace_Hopper_0001.jpg": "7", "loose.png": "12"}


def test_missing_input_is_a_reject_not_a_crash(photos: Path, tmp_path: Path) -> None:
    report = prepare([photos / "astronaut.png", tmp_path / "nope.jpg"], tmp_path / "out", progress=False)
    assert report.samples == 1 and report.errors == 1
    (row,) = read_rejects(tmp_path / "out" / "rejects.tsv")
    assert row == {"source": str(tmp_path / "nope.jpg"), "face": "-", "kind": "error", "reason": "no such file or folder"}


def test_precomputed_68_point_landmarks_reproduce_the_dlib_crops(photos: Path, tmp_path: Path) -> None:
    path = photos / "grace_hopper.jpg"
    (face,) = DlibDetector().detect(load_image(path))
    table = tmp_path / "landmarks.txt"
    row = " ".join(f"{v:g}" for v in face.landmarks.ravel())
    table.write_text(f"1\nx1 y1 ...\n{path.name} {row}\n")
    prepare([path], tmp_path / "dlib", progress=False)
    prepare([path], tmp_path / "pre", ExtractConfig(detector=DetectorSpec(name="precomputed", landmarks_file=str(table))), progress=False)
    a, b = decode_sample(_samples(tmp_path / "dlib")[0]), decode_sample(_samples(tmp_path / "pre")[0])
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert b.meta["detector"] == "precomputed"


def test_precomputed_five_points_with_a_parsing_map(photos: Path, tmp_path: Path) -> None:
    path = photos / "astronaut.png"
    photo = load_image(path)
    (face,) = DlibDetector().detect(photo)
    table = tmp_path / "list_landmarks_celeba.txt"
    table.write_text(f"astronaut.png {' '.join(f'{v:.2f}' for v in face.landmarks5.ravel())}\n")
    # A label map at half resolution: skin in a disc around the face, hair everywhere else.
    parsing = tmp_path / "parsing"
    parsing.mkdir()
    h, w = photo.shape[0] // 2, photo.shape[1] // 2
    cx, cy = face.landmarks5[2] / 2
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < 25**2, 1, 17).astype(np.uint8)
    Image.fromarray(labels).save(parsing / "astronaut.png")

    config = ExtractConfig(detector=DetectorSpec(name="precomputed", landmarks_file=str(table)), mask=MaskSpec(source="parsing", parsing_dir=str(parsing)))
    report = prepare([path, photos / "grace_hopper.jpg"], tmp_path / "out", config, progress=False)
    assert report.samples == 1
    (reject,) = report.rejects  # Hopper has no landmark row
    assert reject.source.endswith("grace_hopper.jpg") and reject.reason == "no face found"
    d = decode_sample(_samples(tmp_path / "out")[0])
    nose = np.round(d.meta["landmarks5"][2]).astype(int)
    assert d.mask[nose[1], nose[0]] and not d.mask[:40].any()
    # The disc (radius 25 px at half resolution) scaled into the crop.
    scale = np.sqrt(abs(np.linalg.det(np.array(d.meta["transform"])[:, :2])))
    assert d.mask.sum() == pytest.approx(np.pi * (50 * scale) ** 2, rel=0.1)

    # Five points cannot make a landmark mask: a clear per-photo error.
    no_parsing = ExtractConfig(detector=DetectorSpec(name="precomputed", landmarks_file=str(table)))
    report = prepare([path], tmp_path / "out2", no_parsing, progress=False)
    assert report.samples == 0 and report.errors == 1 and "use --mask parsing" in report.rejects[0].reason


def test_tars_are_plain_webdataset_tars(cli_run: dict) -> None:
    with tarfile.open(cli_run["out"] / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert names[:3] == ["00000000_00.image.png", "00000000_00.mask.png", "00000000_00.meta.json"]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    photo = load_image(sample_photo_path("astronaut"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": stored turned counter-clockwise
    Image.fromarray(np.rot90(photo, 1).copy()).save(tmp_path / "sideways.png", exif=exif)
    np.testing.assert_array_equal(load_image(tmp_path / "sideways.png"), photo)
    assert len(DlibDetector().detect(np.rot90(photo, 1).copy())) == 0  # sideways, the face is not found
    assert prepare([tmp_path / "sideways.png"], tmp_path / "out", progress=False).samples == 1


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    from faceveil.errors import InputError

    with pytest.raises(InputError, match="not a folder"):
        prepare([sample_photo_path("astronaut")], tmp_path / "taken", progress=False)
