"""Independent face recognizers for evaluation, behind one interface: embed, then similarity.

The network the identity loss optimises against must not be the only judge, so evaluation also asks:

* :class:`DlibRecognizer`: dlib's ResNet face descriptor (128-d, from ``face-recognition-models``;
  offline). HOG detection (or given boxes), dlib's 5-point shape, dlib's own chip alignment. Its
  native metric is the Euclidean distance of the raw descriptors (same person below about 0.6).
* :class:`FacenetRecognizer`: facenet-pytorch's MTCNN (weights bundled) and InceptionResnetV1
  (512-d, cosine). The VGGFace2 / CASIA-WebFace weights are not bundled: put facenet-pytorch's file
  ``20180402-114759-vggface2.pt`` (or ``20180408-102900-casia-webface.pt``) in
  ``$TORCH_HOME/checkpoints`` (default ``~/.cache/torch/checkpoints``), or pass its path.
* :class:`ArcFaceRecognizer`: the trained-against :class:`~faceveil.models.identity.IdentityEncoder`
  (cosine), with given 5-point landmarks, MTCNN landmarks, or a fixed crop.

Images are RGB ``uint8`` arrays ``(H, W, 3)`` (one, a list, or an ``(N, H, W, 3)`` stack) or a float
tensor ``(N, 3, H, W)`` in [-1, 1]. ``embed`` returns one row per image, a float32 CPU tensor
``(N, D)``; a face that cannot be found raises, or with ``missing="nan"`` gives a NaN row (and NaN
similarities). ``similarity(a, b)`` compares rows pairwise, higher meaning more alike: the cosine, or
minus the Euclidean distance for dlib.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from faceveil.errors import ConfigError, InputError
from faceveil.models.arcface_weights import check_state_dict, read_state_dict
from faceveil.models.identity import IdentityEncoder

Images = np.ndarray | Sequence[np.ndarray] | torch.Tensor
Boxes = np.ndarray | Sequence[Sequence[float] | None] | None
Metric = Literal["cosine", "euclidean"]
Missing = Literal["raise", "nan"]


@runtime_checkable
class Recognizer(Protocol):
    """What every recognizer offers; ``boxes`` are optional ``(x0, y0, x1, y1)`` hints, one per image."""

    name: str
    metric: Metric

    def embed(self, images: Images, boxes: Boxes = None) -> torch.Tensor: ...

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``(N, D)`` and ``(N, D)`` (or broadcastable) embeddings; NaN rows stay NaN."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(dim=-1)


def euclidean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance of embeddings."""
    return (a.float() - b.float()).norm(dim=-1)


def similarity(metric: Metric, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise similarity under ``metric``: cosine, or minus the Euclidean distance."""
    if metric == "cosine":
        return cosine_similarity(a, b)
    if metric == "euclidean":
        return -euclidean_distance(a, b)
    raise ConfigError(f"unknown metric {metric!r}")


def similarity_matrix(metric: Metric, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All-pairs similarity ``(N, M)`` of ``a (N, D)`` against ``b (M, D)``."""
    return similarity(metric, a[:, None, :], b[None, :, :])


class _Base:
    name: str = "recognizer"
    metric: Metric = "cosine"

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return similarity(self.metric, a, b)


def to_uint8_list(images: Images) -> list[np.ndarray]:
    """Normalise the accepted image forms to a list of ``(H, W, 3)`` uint8 RGB arrays."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise InputError(f"image tensors must be float (N, 3, H, W) in [-1, 1], got {images.dtype} {tuple(images.shape)}")
        pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [np.ascontiguousarray(p) for p in pixels.permute(0, 2, 3, 1).cpu().numpy()]
    if isinstance(images, np.ndarray):
        images = [images] if images.ndim == 3 else list(images)
    out = []
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise InputError(f"image {i}: expected (H, W, 3) uint8 RGB, got {img.dtype} {img.shape}")
        out.append(np.ascontiguousarray(img))
    return out


def _boxes_for(boxes: Boxes, n: int) -> list[np.ndarray | None]:
    if boxes is None:
        return [None] * n
    rows = [None if b is None else np.asarray(b, dtype=np.float64).reshape(4) for b in boxes]
    if len(rows) != n:
        raise InputError(f"{len(rows)} boxes for {n} images")
    return rows


def _fail(missing: Missing, message: str) -> None:
    if missing == "raise":
        raise InputError(message)


class DlibRecognizer(_Base):
    """dlib's face descriptor; ``embed`` returns raw 128-d descriptors (not unit norm)."""

    name = "dlib"
    metric: Metric = "euclidean"
    # dlib's documented decision threshold on the Euclidean distance (LFW accuracy 99.38 %).
    threshold = 0.6

    def __init__(self, upsample: Sequence[int] = (0, 1), num_jitters: int = 0, padding: float = 0.25, missing: Missing = "raise") -> None:
        from faceveil.data import dlib_models

        self._detector = dlib_models.frontal_detector()
        self._shape = dlib_models.shape_predictor(5)
        self._net = dlib_models.face_descriptor_model()
        self.upsample = tuple(upsample)
        self.num_jitters = num_jitters
        self.padding = padding
        self.missing = missing

    def detect(self, image: np.ndarray) -> np.ndarray:
        """HOG face boxes ``(K, 4)`` ``(x0, y0, x1, y1)``, best score first; more upsampling only if none found."""
        for up in self.upsample:
            rects, scores, _ = self._detector.run(image, up, 0.0)
            if len(rects):
                order = np.argsort(scores)[::-1]
                return np.array([[rects[i].left(), rects[i].top(), rects[i].right(), rects[i].bottom()] for i in order], dtype=np.float64)
        return np.zeros((0, 4))

    def embed(self, images: Images, boxes: Boxes = None) -> torch.Tensor:
        import dlib

        imgs = to_uint8_list(images)
        out = np.full((len(imgs), 128), np.nan, dtype=np.float32)
        for i, (img, box) in enumerate(zip(imgs, _boxes_for(boxes, len(imgs)), strict=True)):
            if box is None:
                found = self.detect(img)
                if not len(found):
                    _fail(self.missing, f"image {i}: dlib found no face")
                    continue
                box = found[0]
            rect = dlib.rectangle(*(int(round(v)) for v in box))
            shape = self._shape(img, rect)
            out[i] = np.asarray(self._net.compute_face_descriptor(img, shape, self.num_jitters, self.padding))
        return torch.from_numpy(out)


def _facenet_pytorch() -> Any:
    try:
        import facenet_pytorch
    except ImportError:
        # Its metadata pins an old torch, hence --no-deps; the models themselves run on current torch.
        raise InputError("MTCNN and facenet need the 'facenet-pytorch' package (pip install --no-deps facenet-pytorch)") from None
    return facenet_pytorch


@functools.lru_cache(maxsize=4)
def _mtcnn(device: str, image_size: int = 160) -> Any:
    MTCNN = _facenet_pytorch().MTCNN

    # select_largest: with several faces, the evaluation means the main one.
    return MTCNN(image_size=image_size, margin=0, post_process=True, select_largest=True, device=device)


def mtcnn_detect(image: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """MTCNN faces in an RGB uint8 image: boxes ``(K, 4)`` and 5-point landmarks ``(K, 5, 2)``
    (insightface order), largest face first. Uses the weights bundled with facenet-pytorch."""
    boxes, _, points = _mtcnn(device).detect(image, landmarks=True)
    if boxes is None:
        return np.zeros((0, 4)), np.zeros((0, 5, 2))
    return np.asarray(boxes, dtype=np.float64), np.asarray(points, dtype=np.float64)


FACENET_WEIGHTS = {
    "vggface2": "20180402-114759-vggface2.pt",
    "casia-webface": "20180408-102900-casia-webface.pt",
}


def facenet_weights_path(weights: str | os.PathLike[str]) -> Path:
    """Where facenet-pytorch keeps ``vggface2`` / ``casia-webface`` weights, or ``weights`` as a path."""
    if str(weights) in FACENET_WEIGHTS:
        home = Path(os.environ.get("TORCH_HOME", Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch")).expanduser()
        return home / "checkpoints" / FACENET_WEIGHTS[str(weights)]
    return Path(weights).expanduser()


class FacenetRecognizer(_Base):
    """facenet-pytorch: MTCNN crop (160 px, ``(x - 127.5) / 128``) into InceptionResnetV1, cosine."""

    metric: Metric = "cosine"

    def __init__(self, weights: str | os.PathLike[str] = "vggface2", device: str = "cpu", missing: Missing = "raise") -> None:
        InceptionResnetV1 = _facenet_pytorch().InceptionResnetV1
        path = facenet_weights_path(weights)
        if not path.is_file():
            raise InputError(
                f"{path}: facenet weights not found (facenet-pytorch does not bundle them and nothing is downloaded "
                f"here); copy {FACENET_WEIGHTS.get(str(weights), 'the weights file')} there or pass its path"
            )
        # The released files carry the training classifier ("logits.*"); embeddings do not use it.
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("logits.")}
        net = InceptionResnetV1(pretrained=None, classify=False)
        check_state_dict(net, state, str(path))
        net.load_state_dict(state, strict=True)
        self.net = net.eval().requires_grad_(False).to(device)
        self.device = device
        self.missing = missing
        self.name = f"facenet:{Path(weights).stem if str(weights) not in FACENET_WEIGHTS else weights}"

    def embed(self, images: Images, boxes: Boxes = None) -> torch.Tensor:
        mtcnn = _mtcnn(self.device)
        imgs = to_uint8_list(images)
        crops: list[torch.Tensor | None] = []
        for i, (img, box) in enumerate(zip(imgs, _boxes_for(boxes, len(imgs)), strict=True)):
            crop = mtcnn(img) if box is None else mtcnn.extract(img, box[None], None)
            if crop is None:
                _fail(self.missing, f"image {i}: MTCNN found no face")
            crops.append(crop)
        out = torch.full((len(imgs), 512), float("nan"))
        found = [i for i, c in enumerate(crops) if c is not None]
        if found:
            with torch.no_grad():
                batch = torch.stack([crops[i] for i in found]).to(self.device)  # type: ignore[misc]
                out[found] = self.net(batch).float().cpu()
        return out


class ArcFaceRecognizer(_Base):
    """The identity encoder as a judge. Landmarks: given, else MTCNN's (``detect=True``), else the fixed crop."""

    metric: Metric = "cosine"

    def __init__(self, encoder: IdentityEncoder, detect: bool = False, missing: Missing = "raise") -> None:
        self.encoder = encoder
        self.detect = detect
        self.missing = missing
        self.name = encoder.name
        self._embedding_dim: int | None = None

    def embed(self, images: Images, boxes: Boxes = None, landmarks: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        imgs = to_uint8_list(images)
        # Per image: (5, 2) landmarks, None for the fixed crop, or False where no face was found.
        per_image: list[np.ndarray | None | bool]
        if landmarks is not None:
            lms = np.asarray(landmarks, dtype=np.float64)
            if lms.shape != (len(imgs), 5, 2):
                raise InputError(f"landmarks must be ({len(imgs)}, 5, 2), got {lms.shape}")
            per_image = list(lms)
        elif self.detect:
            per_image = [self._detect_one(i, img, box) for i, (img, box) in enumerate(zip(imgs, _boxes_for(boxes, len(imgs)), strict=True))]
        elif boxes is not None:
            raise ConfigError("ArcFaceRecognizer aligns with landmarks, not boxes: pass landmarks= or use detect=True")
        else:
            per_image = [None] * len(imgs)
        out = torch.full((len(imgs), self._dim()), float("nan"))
        with torch.no_grad():
            for i, (img, lm) in enumerate(zip(imgs, per_image, strict=True)):
                if lm is False:
                    continue  # no face found (missing="nan")
                x = torch.tensor(img).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # copies: arrays may be read-only
                lm_t = None if lm is None else torch.from_numpy(lm)[None]  # type: ignore[arg-type]
                out[i] = self.encoder.embed(x, lm_t)[0].float().cpu()
        return out

    def _dim(self) -> int:
        # The embedding size, so rows of faces not found are NaN of the right width.
        if self._embedding_dim is None:
            with torch.no_grad():
                self._embedding_dim = int(self.encoder.embed(torch.zeros(1, 3, 112, 112)).shape[-1])
        return self._embedding_dim

    def _detect_one(self, i: int, img: np.ndarray, box: np.ndarray | None) -> np.ndarray | bool:
        found, points = mtcnn_detect(img)
        if box is not None and len(found):
            overlap = _iou(found, box)
            # The detection that overlaps the hinted box most, if any does.
            found, points = (found[[overlap.argmax()]], points[[overlap.argmax()]]) if overlap.max() > 0 else (found[:0], points[:0])
        if not len(found):
            _fail(self.missing, f"image {i}: MTCNN found no face for the ArcFace crop")
            return False
        return points[0]


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    x0 = np.maximum(boxes[:, 0], box[0])
    y0 = np.maximum(boxes[:, 1], box[1])
    x1 = np.minimum(boxes[:, 2], box[2])
    y1 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(boxes) + area(box) - inter)


def load_recognizer(name: str, *, device: str = "cpu", missing: Missing = "raise", **kwargs: object) -> Recognizer:
    """A recognizer by name: ``dlib``, ``facenet[:vggface2|:casia-webface|:<path>]``, or
    ``arcface:<identity spec>`` (see :mod:`faceveil.models.identity`; MTCNN landmarks unless ``detect=False``)."""
    from faceveil.models.identity import load_identity_encoder

    kind, _, rest = name.partition(":")
    if kind == "dlib" and not rest:
        return DlibRecognizer(missing=missing, **kwargs)  # type: ignore[arg-type]
    if kind == "facenet":
        return FacenetRecognizer(rest or "vggface2", device=device, missing=missing)
    if kind == "arcface" and rest:
        detect = bool(kwargs.pop("detect", True))
        return ArcFaceRecognizer(load_identity_encoder(rest, device=device, **kwargs), detect=detect, missing=missing)  # type: ignore[arg-type]
    raise ConfigError(f"unknown recognizer {name!r}; use dlib, facenet[:<weights>] or arcface:<identity spec>")
