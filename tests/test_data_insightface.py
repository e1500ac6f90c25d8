"""The insightface backend's real code path, run on small ONNX models built here.

buffalo_l cannot be downloaded on this machine, so these tests write two tiny
ONNX graphs with the same interfaces: an SCRFD-style detector (9 outputs:
scores, box distances and 5-point offsets for strides 8, 16 and 32, two
anchors per cell) that fires on the red channel of a 32 px block, and a
106-point landmark model (192 px input) that outputs a fixed face template.
insightface's own ``model_zoo`` routes, prepares and decodes them, so the
loading, colour order, coordinate mapping, alignment and mask code all run
for real; only the networks' weights are stand-ins. The expected numbers
follow from SCRFD's decoding: anchor centre ± distance x stride.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from faceveil.data.backends import DetectorSpec
from faceveil.data.detect_insightface import InsightFaceDetector
from faceveil.data.extract import ExtractConfig
from faceveil.data.prepare import prepare
from faceveil.data.shards import decode_sample
from faceveil.errors import InputError

DET_SIZE = 640
BOX = 2.0  # box half-side in strides
KPS = np.array([[-0.6, -0.5], [0.6, -0.5], [0.0, 0.1], [-0.5, 0.6], [0.5, 0.6]])  # in strides


def _template() -> np.ndarray:
    """106 points in [-1, 1]: a jaw contour, a brow line, features inside."""
    t = np.zeros((106, 2))
    theta = np.linspace(np.pi, 0, 33)
    t[:33] = np.c_[-0.5 * np.cos(theta), 0.55 * np.sin(theta)]
    t[33:53] = np.c_[np.linspace(-0.45, 0.45, 20), np.full(20, -0.45)]
    t[53:] = np.random.default_rng(0).uniform([-0.3, -0.3], [0.3, 0.4], (53, 2))
    return t


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _detector_onnx(path: Path) -> None:
    nodes, inits = [], []
    outputs: dict[str, list] = {"score": [], "bbox": [], "kps": []}

    def const(name: str, value: np.ndarray | float, dtype: type = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    # The blob's channel 0 is red: insightface swaps the BGR input to RGB.
    nodes.append(helper.make_node("Slice", ["input.1", const("c0", [0], np.int64), const("c1", [1], np.int64), const("ax", [1], np.int64)], ["red"]))
    const("zero", 0.0)
    for s in (8, 16, 32):
        p = f"s{s}"
        nodes.append(helper.make_node("AveragePool", ["red"], [f"{p}_mean"], kernel_shape=[s, s], strides=[s, s]))
        gain, bias = (20.0, -10.0) if s == 32 else (0.0, -30.0)  # only stride 32 fires
        nodes.append(helper.make_node("Mul", [f"{p}_mean", const(f"{p}_gain", gain)], [f"{p}_g"]))
        nodes.append(helper.make_node("Add", [f"{p}_g", const(f"{p}_bias", bias)], [f"{p}_logit"]))
        nodes.append(helper.make_node("Sigmoid", [f"{p}_logit"], [f"{p}_sig"]))
        nodes.append(helper.make_node("Concat", [f"{p}_sig", f"{p}_sig"], [f"{p}_score_map"], axis=1))  # two anchors
        nodes.append(helper.make_node("Mul", [f"{p}_mean", "zero"], [f"{p}_z"]))
        for kind, values in (("bbox", np.full(4, BOX)), ("kps", KPS.ravel())):
            c = const(f"{p}_{kind}_c", np.tile(values, 2).reshape(1, -1, 1, 1))
            nodes.append(helper.make_node("Add", [f"{p}_z", c], [f"{p}_{kind}_map"]))
        for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
            nodes.append(helper.make_node("Transpose", [f"{p}_{kind}_map"], [f"{p}_{kind}_t"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", [f"{p}_{kind}_t", const(f"{p}_{kind}_shape", [-1, width], np.int64)], [f"{kind}_{s}"]))
            outputs[kind].append(helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [None, width]))
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET_SIZE, DET_SIZE])
    _save(helper.make_graph(nodes, "scrfd_stand_in", [inp], outputs["score"] + outputs["bbox"] + outputs["kps"], inits), path)


def _landmark_onnx(path: Path, template: np.ndarray) -> None:
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "template"], ["fc1"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero"), numpy_helper.from_array(template.astype(np.float32).reshape(1, -1), "template")]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, template.size])
    _save(helper.make_graph(nodes, "lmk106_stand_in", [inp], [out], inits), path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("buffalo_l")
    _detector_onnx(d / "det_10g.onnx")
    _landmark_onnx(d / "2d106det.onnx", _template())
    return d


def _photo(colour: tuple[int, int, int], row: int = 10, col: int = 8) -> np.ndarray:
    img = np.full((DET_SIZE, DET_SIZE, 3), 40, dtype=np.uint8)
    img[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32] = colour
    return img


def test_detector_decodes_boxes_points_and_dense_landmarks(model_dir: Path) -> None:
    detector = InsightFaceDetector(model_dir)
    (face,) = detector.detect(_photo((255, 0, 0)))
    anchor = np.array([8 * 32, 10 * 32], dtype=np.float64)  # SCRFD anchors sit at cell corners
    np.testing.assert_allclose(face.bbox, [*(anchor - BOX * 32), *(anchor + BOX * 32)], atol=1e-3)
    np.testing.assert_allclose(face.landmarks5, anchor + KPS * 32, atol=1e-3)
    assert face.scheme == "insightface106" and face.landmarks.shape == (106, 2) and face.score > 0.99
    # The landmark model sees a crop 1.5 x the box, so a template unit is 1.5 x 128 / 2 = 96 px.
    np.testing.assert_allclose(face.landmarks, anchor + _template() * 96, atol=0.05)


def test_detector_gets_the_colour_order_right(model_dir: Path) -> None:
    detector = InsightFaceDetector(model_dir)
    assert len(detector.detect(_photo((255, 0, 0)))) == 1
    assert detector.detect(_photo((0, 0, 255))) == []  # a blue block is not red


def test_prepare_with_the_insightface_backend(model_dir: Path, tmp_path: Path) -> None:
    Image.fromarray(_photo((255, 0, 0), row=9, col=9)).save(tmp_path / "face.png")
    Image.fromarray(_photo((0, 0, 0))).save(tmp_path / "blank.png")
    config = ExtractConfig(detector=DetectorSpec(name="insightface", insightface_dir=str(model_dir)))
    report = prepare([tmp_path / "face.png", tmp_path / "blank.png"], tmp_path / "out", config, progress=False)
    assert report.samples == 1 and report.faces_found == 1
    (reject,) = report.rejects
    assert reject.source.endswith("blank.png") and reject.reason == "no face found"
    import webdataset as wds

    (raw,) = list(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False))
    d = decode_sample(raw)
    assert d.meta["detector"] == "insightface" and d.meta["landmarks_scheme"] == "insightface106"
    assert len(d.meta["landmarks"]) == 106
    for x, y in np.round(d.meta["landmarks5"]).astype(int):
        assert d.mask[y, x]
    assert not d.mask[:16, :16].any() and not d.mask[-16:, -16:].any()


def test_a_non_detector_in_the_detector_slot_is_refused(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "det_10g.onnx").write_bytes((model_dir / "2d106det.onnx").read_bytes())
    (tmp_path / "2d106det.onnx").write_bytes((model_dir / "2d106det.onnx").read_bytes())
    with pytest.raises(InputError, match="not a face detection model"):
        InsightFaceDetector(tmp_path)
