"""The ``insightface`` backend: SCRFD (RetinaFace family) detection with 5 points,
plus the 106-point 2D landmark model, from a local ``buffalo_l`` folder.

Users download ``buffalo_l`` once (``insightface`` model zoo) and unpack it, e.g.
to ``~/.insightface/models/buffalo_l``; it must hold ``det_10g.onnx`` and
``2d106det.onnx``. Nothing is downloaded here: a missing folder or file is a
clear :class:`~faceveil.errors.InputError`.

The two ONNX files are loaded through ``insightface.model_zoo.get_model``, which
recognises the model kind from its graph (the same routing ``FaceAnalysis``
uses), and run on the CPU provider unless ``providers`` says otherwise. The
folder's other models (recognition, gender/age, 3D landmarks) are not opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faceveil.data.faces import Face, sort_faces
from faceveil.errors import InputError

DEFAULT_MODEL_DIR = Path("~/.insightface/models/buffalo_l")
DETECTION_FILE = "det_10g.onnx"
LANDMARK_FILE = "2d106det.onnx"


def check_model_dir(model_dir: str | Path, files: Sequence[str] = (DETECTION_FILE, LANDMARK_FILE)) -> Path:
    """The resolved model folder, or an :class:`InputError` naming what is missing."""
    path = Path(model_dir).expanduser()
    hint = "download insightface's buffalo_l models and unpack them there (or pass --insightface-dir)"
    if not path.is_dir():
        raise InputError(f"insightface model folder {path} does not exist; {hint}")
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise InputError(f"insightface model folder {path} lacks {', '.join(missing)}; {hint}")
    return path.resolve()


class InsightFaceDetector:
    name = "insightface"

    def __init__(
        self,
        model_dir: str | Path = DEFAULT_MODEL_DIR,
        det_size: int = 640,
        threshold: float = 0.5,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        detection_file: str = DETECTION_FILE,
        landmark_file: str = LANDMARK_FILE,
    ) -> None:
        folder = check_model_dir(model_dir, (detection_file, landmark_file))
        from insightface.model_zoo import model_zoo

        self.threshold = float(threshold)
        self._det = model_zoo.get_model(str(folder / detection_file), providers=list(providers))
        self._lmk = model_zoo.get_model(str(folder / landmark_file), providers=list(providers))
        if getattr(self._det, "taskname", None) != "detection":
            raise InputError(f"{folder / detection_file}: not a face detection model")
        if getattr(self._lmk, "taskname", None) != "landmark_2d_106":
            raise InputError(f"{folder / landmark_file}: not a 106-point 2D landmark model")
        self._det.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=self.threshold)
        self._lmk.prepare(ctx_id=-1)

    def detect(self, image: np.ndarray, source: str | None = None) -> list[Face]:
        from insightface.app.common import Face as InsightFace

        bgr = np.ascontiguousarray(image[..., ::-1])  # insightface models take OpenCV's BGR order
        boxes, kpss = self._det.detect(bgr)
        faces = []
        for i in range(boxes.shape[0]):
            if kpss is None:
                raise InputError(f"{self._det.model_file}: this detector gives no 5-point landmarks")
            record = InsightFace(bbox=boxes[i, :4], kps=kpss[i], det_score=float(boxes[i, 4]))
            dense = np.asarray(self._lmk.get(bgr, record), dtype=np.float64)[:, :2]
            faces.append(
                Face(
                    bbox=np.asarray(boxes[i, :4], dtype=np.float64),
                    score=float(boxes[i, 4]),
                    landmarks5=np.asarray(kpss[i], dtype=np.float64),
                    landmarks=dense,
                    scheme="insightface106",
                )
            )
        return sort_faces(faces)
