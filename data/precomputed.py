"""The ``precomputed`` backend: landmarks and face-parsing masks given as files.

Landmarks (:class:`LandmarkTable`, used as a detector): one face per photo,
from a whitespace table in CelebA's ``list_landmarks_celeba.txt`` layout,
``NAME x1 y1 x2 y2 ...`` with 5 points (eye centres, nose, mouth corners, the
InsightFace order) or 68 points (dlib / iBUG layout); header lines that are not
numbers (CelebA's count and column names) are skipped. Photos are matched by
file name.

Parsing maps (:class:`ParsingMaps`), for ``--mask parsing``: per photo either

- one label map ``<stem>.png`` whose pixel values are class ids, or
- one binary PNG per class, ``<stem>_<class>.png``, as in CelebAMask-HQ's
  ``CelebAMask-HQ-mask-anno/*/`` folders (numeric stems zero-padded to 5).

Both are looked up anywhere under the given folder. A parsing map of another
size than its photo (CelebAMask-HQ: 512 px maps for 1024 px photos) is resized
with nearest-neighbour sampling. Parsing maps describe the photo's one face.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from faceveil.data.faces import Face, bbox_of, five_from_68
from faceveil.data.masks import CELEBAMASK_HQ_LABELS, FACE_CLASSES, class_ids, parsing_mask
from faceveil.errors import InputError


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class LandmarkTable:
    """Landmarks from a table file, one face per photo; a :class:`FaceDetector`."""

    name = "precomputed"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: dict[str, np.ndarray] = {}
        try:
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read the landmark file ({exc.strerror or exc})") from None
        for lineno, line in enumerate(lines, 1):
            tokens = line.split()
            if len(tokens) < 2 or not all(_is_number(t) for t in tokens[1:]):
                continue  # header, count or blank line
            values = np.array([float(t) for t in tokens[1:]], dtype=np.float64)
            if values.size not in (10, 136):
                raise InputError(f"{self.path}:{lineno}: expected 5 or 68 points (10 or 136 numbers), got {values.size} numbers")
            self._rows[Path(tokens[0]).name] = values.reshape(-1, 2)
        if not self._rows:
            raise InputError(f"{self.path}: no landmark rows found")

    def __len__(self) -> int:
        return len(self._rows)

    def detect(self, image: np.ndarray, source: str | None = None) -> list[Face]:
        pts = self._rows.get(Path(source).name) if source is not None else None
        if pts is None:
            return []
        if len(pts) == 68:
            lm5, scheme = five_from_68(pts), "dlib68"
            bbox = bbox_of(pts)
        else:
            lm5, scheme = pts, "five"
            # With five points the face box is estimated as half the FFHQ crop square.
            from faceveil.data.align import ffhq_quad

            quad = ffhq_quad(lm5)
            centre, half = quad.mean(0), np.linalg.norm(quad[0] - quad[1]) / 4
            bbox = np.concatenate([centre - half, centre + half])
        return [Face(bbox=bbox, score=1.0, landmarks5=lm5, landmarks=pts, scheme=scheme)]


class ParsingMaps:
    """Face masks from parsing annotations under ``root``, with a class-to-mask mapping."""

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str | int] = FACE_CLASSES,
        labels: Sequence[str] = CELEBAMASK_HQ_LABELS,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"parsing map folder {self.root} does not exist")
        try:
            self.ids = class_ids(classes, labels)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self.labels = tuple(labels)
        self._files = {p.name: p for p in sorted(self.root.rglob("*.png"))}

    def _class_files(self, stem: str) -> list[tuple[int, Path]]:
        stems = {stem, f"{int(stem):05d}"} if stem.isdigit() else {stem}
        found = []
        for class_id in self.ids:
            if class_id >= len(self.labels):
                continue
            for s in sorted(stems):
                path = self._files.get(f"{s}_{self.labels[class_id]}.png")
                if path is not None:
                    found.append((class_id, path))
        return found

    def mask(self, source: str, shape: tuple[int, int]) -> np.ndarray:
        """The ``(H, W)`` bool face mask of photo ``source`` at the photo's ``shape``."""
        stem = Path(source).stem
        label_map = self._files.get(f"{stem}.png")
        if label_map is not None:
            labels = _read_single_channel(label_map)
            mask = parsing_mask(labels, self.ids)
        else:
            per_class = self._class_files(stem)
            if not per_class:
                raise InputError(f"no parsing map under {self.root}")
            mask = None
            for _, path in per_class:
                part = _read_single_channel(path) > 0
                mask = part if mask is None else mask | part
            assert mask is not None
        if mask.shape != shape:
            mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
        return mask


def _read_single_channel(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode in ("L", "P", "1", "I", "I;16"):
                return np.asarray(img).astype(np.int64)
            rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable parsing map ({exc.__class__.__name__})") from None
    # CelebAMask-HQ's per-class files are RGB with three equal channels; a
    # colour picture is not a label map.
    if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
        raise InputError(f"{path}: a colour image, not a label map of class ids")
    return rgb[..., 0].astype(np.int64)
