"""Face recognizers as evaluation judges, with the face geometry taken from the clean image.

An anonymized or recovered crop shows its face where the original's was (the pixels
outside the mask are the original's), so each judge embeds it with the *original's*
face box (dlib, facenet) or 5-point landmarks (ArcFace): the score then measures
identity, not whether a detector happens to fire on a synthetic face (detection is
measured on its own). Where the clean image has no detectable face, the judge falls
back to its own detection and returns NaN rows when that fails too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from faceveil.errors import FaceveilError
from faceveil.evaluate.faces import EvalFace, Notes
from faceveil.models.recognizers import cosine_similarity, load_recognizer, similarity, similarity_matrix


@dataclass
class Judge:
    spec: str
    recognizer: object
    kind: str  # dlib | facenet | arcface
    _boxes: dict[str, np.ndarray | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec

    @property
    def metric(self) -> str:
        return self.recognizer.metric  # type: ignore[attr-defined]

    def _box(self, face: EvalFace) -> np.ndarray | None:
        if face.id not in self._boxes:
            box = None
            if self.kind == "dlib":
                found = self.recognizer.detect(face.image)  # type: ignore[attr-defined]
                box = found[0] if len(found) else None
            elif self.kind == "facenet":
                from faceveil.models.recognizers import mtcnn_detect

                found, _ = mtcnn_detect(face.image)
                box = found[0] if len(found) else None
            if box is None and face.landmarks is not None:
                pts = np.asarray(face.landmarks)
                box = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
            self._boxes[face.id] = box
        return self._boxes[face.id]

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray], like: Sequence[EvalFace]) -> torch.Tensor:
        """Embeddings (N, D) of ``images``, using the geometry of the clean faces ``like``."""
        images = [np.ascontiguousarray(im) for im in images]
        if not images:
            return torch.zeros(0, 0)
        if self.kind == "arcface":
            if all(f.landmarks5 is not None for f in like):
                lms = np.stack([np.asarray(f.landmarks5, dtype=np.float64) for f in like])
                return self.recognizer.embed(images, landmarks=lms)  # type: ignore[attr-defined]
            return self.recognizer.embed(images)  # type: ignore[attr-defined]
        boxes = [self._box(f) for f in like]
        out = []
        for img, box in zip(images, boxes):
            # One at a time: a face without a box is detected on its own image.
            out.append(self.recognizer.embed([img], None if box is None else [box]))  # type: ignore[attr-defined]
        return torch.cat(out)

    @property
    def is_distance(self) -> bool:
        """dlib: its native unit is the Euclidean distance (same person below its threshold)."""
        return self.metric == "euclidean"

    @property
    def threshold(self) -> float | None:
        """The recognizer's own decision threshold in its native unit (dlib: 0.6), if it has one."""
        return getattr(self.recognizer, "threshold", None)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Native similarity (cosine, or minus the Euclidean distance for dlib), row-wise."""
        return similarity(self.metric, a, b)  # type: ignore[arg-type]

    def similarity_matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return similarity_matrix(self.metric, a, b)  # type: ignore[arg-type]

    @staticmethod
    def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cosine_similarity(a, b)


def load_judges(specs: Sequence[str], notes: Notes, skip_unavailable: bool = True, device: str = "cpu") -> list[Judge]:
    """Recognizers by spec (``dlib``, ``facenet[:weights]``, ``arcface:<identity spec>``).

    With ``skip_unavailable``, a recognizer whose weights are missing is skipped with a note
    (facenet's weights are not bundled); a spec that is not understood is always an error.
    """
    from faceveil.errors import ConfigError

    judges = []
    for spec in specs:
        kind = spec.partition(":")[0]
        if kind not in ("dlib", "facenet", "arcface"):
            raise ConfigError(f"unknown recognizer {spec!r}; use dlib, facenet[:<weights>] or arcface:<identity spec>")
        kwargs = {"detect": False} if kind == "arcface" else {}
        try:
            rec = load_recognizer(spec, device=device, missing="nan", **kwargs)
        except ConfigError:
            raise
        except (FaceveilError, OSError, ImportError) as exc:
            if not skip_unavailable:
                raise
            notes.note(f"recognizer {spec} skipped: {exc}")
            continue
        judges.append(Judge(spec, rec, kind))
    return judges


HEADLINE_ORDER = ("arcface", "facenet", "dlib")
RANDOM_IDENTITY_SPECS = ("tiny", "random")  # faceveil.models.identity specs with random weights


def has_real_weights(judge: Judge) -> bool:
    return not (judge.kind == "arcface" and judge.spec.partition(":")[2].partition(":")[0] in RANDOM_IDENTITY_SPECS)


def headline_judge(judges: Sequence[Judge]) -> Judge:
    """The recognizer for the report's headline identity columns: one whose cosine separates people
    (ArcFace, else FaceNet, with trained weights). dlib's cosines are high for anyone, so where it is the
    only trained recognizer it heads the table in its own unit, the distance against its 0.6 threshold."""
    for kind in HEADLINE_ORDER:
        for j in judges:
            if j.kind == kind and has_real_weights(j):
                return j
    return judges[0]
