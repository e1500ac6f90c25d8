"""Detection backends on real photos: dlib counts, landmark order, insightface's model checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage

from faceveil.cli import main
from faceveil.data.backends import DetectorSpec, make_detector
from faceveil.data.detect_dlib import DlibDetector
from faceveil.data.detect_insightface import check_model_dir
from faceveil.data.images import load_image
from faceveil.data.faces import five_from_68
from faceveil.data.samples import sample_photo_path
from faceveil.errors import InputError

COFFEE = Path(skimage.__file__).parent / "data" / "coffee.png"


@pytest.fixture(scope="module")
def dlib_detector() -> DlibDetector:
    return DlibDetector()


@pytest.mark.parametrize(("name", "count"), [("astronaut", 1), ("grace_hopper", 1), ("t1_group", 6)])
def test_dlib_counts_faces_in_real_photos(dlib_detector: DlibDetector, name: str, count: int) -> None:
    faces = dlib_detector.detect(load_image(sample_photo_path(name)))
    assert len(faces) == count
    for f in faces:
        assert f.scheme == "dlib68" and f.landmarks.shape == (68, 2)
        assert f.score > 0.0
        x0, y0, x1, y1 = f.bbox
        # The eyes, nose and mouth lie inside the detection box, in the documented order.
        assert np.all((f.landmarks5[:, 0] > x0) & (f.landmarks5[:, 0] < x1) & (f.landmarks5[:, 1] > y0) & (f.landmarks5[:, 1] < y1))
        left_eye, right_eye, nose, left_mouth, right_mouth = f.landmarks5
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


def test_dlib_faces_are_sorted_left_to_right(dlib_detector: DlibDetector) -> None:
    faces = dlib_detector.detect(load_image(sample_photo_path("t1_group")))
    lefts = [f.bbox[0] for f in faces]
    assert lefts == sorted(lefts)


def test_dlib_finds_no_face_in_a_photo_without_one(dlib_detector: DlibDetector) -> None:
    assert dlib_detector.detect(load_image(COFFEE)) == []


def test_dlib_default_threshold_drops_the_weak_extra_box_upsampling_finds(dlib_detector: DlibDetector) -> None:
    photo = load_image(sample_photo_path("astronaut"))
    # Upsampled with a permissive threshold, dlib reports extra boxes on the suit;
    # the defaults (no upsampling, score > 0) keep only the face.
    assert len(DlibDetector(upsample=1, threshold=-0.5).detect(photo)) > 1
    assert len(dlib_detector.detect(photo)) == 1


def test_five_from_68_takes_eye_centres_nose_tip_and_mouth_corners() -> None:
    pts = np.arange(136, dtype=np.float64).reshape(68, 2)
    five = five_from_68(pts)
    np.testing.assert_allclose(five[0], pts[36:42].mean(0))
    np.testing.assert_allclose(five[1], pts[42:48].mean(0))
    np.testing.assert_allclose(five[2:], pts[[30, 48, 54]])
    with pytest.raises(ValueError):
        five_from_68(pts[:5])


def test_insightface_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "buffalo_l"
    with pytest.raises(InputError, match="does not exist.*buffalo_l"):
        make_detector(DetectorSpec(name="insightface", insightface_dir=str(missing)))


def test_insightface_folder_without_the_models_names_the_missing_files(tmp_path: Path) -> None:
    (tmp_path / "det_10g.onnx").write_bytes(b"")
    with pytest.raises(InputError) as err:
        check_model_dir(tmp_path)
    assert "2d106det.onnx" in str(err.value) and "det_10g.onnx" not in str(err.value).split("lacks")[1]


def test_cli_reports_a_missing_insightface_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["prepare", str(COFFEE), "-o", str(tmp_path / "out"), "--detector", "insightface", "--insightface-dir", str(tmp_path / "nope"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "insightface model folder" in err[0] and "nope" in err[0]
    assert not (tmp_path / "out" / "index.json").exists()


def test_unknown_detector_name_is_refused() -> None:
    with pytest.raises(InputError, match="unknown detector"):
        make_detector(DetectorSpec(name="mtcnn"))
