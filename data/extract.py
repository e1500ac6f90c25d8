"""From one photo to aligned faces with masks: detect, apply the face policy, align, mask.

:class:`FaceExtractor` holds the backends; :meth:`FaceExtractor.extract` takes
an RGB array and returns the kept faces plus one :class:`Reject` per photo or
face that was left out, with the reason. Nothing here raises for a bad photo:
the caller decides what to do with the rejects.

Face policy (``faces``):

- ``largest``: the largest face of each photo (default);
- ``all``: every face of at least ``min_face`` px;
- ``single``: only photos in which exactly one face is detected.

A face's ``face_index`` is its rank among all faces detected in the photo,
left to right, so it is stable whatever the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faceveil.data.align import ffhq_matrix, outside_fraction, transform_points, warp_face, warp_mask
from faceveil.data.backends import DetectorSpec, MaskSpec, make_detector, make_parsing_maps
from faceveil.data.faces import Face
from faceveil.data.masks import landmark_mask
from faceveil.errors import FaceveilError, InputError

FACE_POLICIES: tuple[str, ...] = ("largest", "all", "single")


@dataclass(frozen=True)
class ExtractConfig:
    size: int = 256
    faces: str = "largest"
    min_face: float = 64.0
    detector: DetectorSpec = field(default_factory=DetectorSpec)
    mask: MaskSpec = field(default_factory=MaskSpec)

    def __post_init__(self) -> None:
        if self.faces not in FACE_POLICIES:
            raise InputError(f"unknown face policy {self.faces!r}; choose one of {', '.join(FACE_POLICIES)}")
        if self.size < 64 or self.size % 8:
            raise InputError(f"crop size {self.size} must be at least 64 and a multiple of 8")

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "faces": self.faces, "min_face": self.min_face, "detector": self.detector.to_dict(), "mask": self.mask.to_dict()}


@dataclass(frozen=True)
class Reject:
    """A photo (``face is None``) or one face of it that was left out.

    ``kind`` is ``error`` for unreadable or failing input, ``skipped`` for a
    photo or face the policy leaves out (no face, too small, several faces).
    """

    source: str
    face: int | None
    kind: str
    reason: str


@dataclass
class AlignedFace:
    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) bool
    face_index: int
    meta: dict[str, Any]


def _round(a: np.ndarray, digits: int = 3) -> list:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


class FaceExtractor:
    def __init__(self, config: ExtractConfig) -> None:
        self.config = config
        self.detector = make_detector(config.detector)
        self.parsing = make_parsing_maps(config.mask)

    def _choose(self, faces: list[Face], source: str) -> tuple[list[int], list[Reject]]:
        cfg = self.config
        if not faces:
            return [], [Reject(source, None, "skipped", "no face found")]
        big = [i for i, f in enumerate(faces) if f.size >= cfg.min_face]
        if cfg.faces == "single" and len(faces) != 1:
            return [], [Reject(source, None, "skipped", f"several faces ({len(faces)}) found; --faces single keeps photos with exactly one")]
        if not big:
            largest = max(f.size for f in faces)
            return [], [Reject(source, None, "skipped", f"face too small ({largest:.0f} px < {cfg.min_face:g} px)")]
        if cfg.faces == "largest":
            return [max(big, key=lambda i: faces[i].area)], []
        small = [Reject(source, i, "skipped", f"face too small ({faces[i].size:.0f} px < {cfg.min_face:g} px)") for i in range(len(faces)) if i not in big]
        return big, small

    def extract(self, image: np.ndarray, source: str) -> tuple[list[AlignedFace], list[Reject], int]:
        """Aligned faces, rejects, and the number of faces detected in ``image``."""
        try:
            faces = self.detector.detect(image, source)
        except FaceveilError as exc:
            return [], [Reject(source, None, "error", str(exc))], 0
        keep, rejects = self._choose(faces, source)
        if not keep:
            return [], rejects, len(faces)
        source_mask = None
        if self.parsing is not None:
            try:
                source_mask = self.parsing.mask(source, image.shape[:2])
            except FaceveilError as exc:
                return [], rejects + [Reject(source, None, "error", str(exc))], len(faces)
        out = []
        for i in keep:
            try:
                out.append(self._align(image, faces[i], i, len(faces), source_mask))
            except (FaceveilError, ValueError) as exc:
                rejects.append(Reject(source, i, "error", str(exc)))
        return out, sorted(rejects, key=lambda r: -1 if r.face is None else r.face), len(faces)

    def _align(self, image: np.ndarray, face: Face, index: int, count: int, source_mask: np.ndarray | None) -> AlignedFace:
        cfg = self.config
        size = cfg.size
        matrix = ffhq_matrix(face.landmarks5, size)
        crop = warp_face(image, matrix, size)
        lm5 = transform_points(face.landmarks5, matrix)
        dense = transform_points(face.landmarks, matrix)
        if source_mask is not None:
            mask = warp_mask(source_mask, matrix, size)
        elif face.scheme == "five":
            raise InputError("only 5 landmarks are known; a landmark mask needs dense ones (use --mask parsing)")
        else:
            mask = landmark_mask(dense, lm5, size, forehead=cfg.mask.forehead, ears=cfg.mask.ears)
        if not mask.any():
            raise InputError("the face mask is empty")
        meta = {
            "face_index": index,
            "faces_in_source": count,
            "bbox": _round(face.bbox, 2),
            "score": round(float(face.score), 4),
            "landmarks5": _round(lm5),
            "landmarks": _round(dense),
            "landmarks_scheme": face.scheme,
            "source_size": [int(image.shape[1]), int(image.shape[0])],
            "transform": _round(matrix, 6),
            "outside_fraction": round(outside_fraction(matrix, size, image.shape[:2]), 4),
            "size": size,
            "detector": self.detector.name,
            "mask_source": cfg.mask.source,
        }
        return AlignedFace(image=crop, mask=mask, face_index=index, meta=meta)
