"""Faces given by hand: ``--region x,y,w,h`` and ``--regions FILE.json``.

A region is a box in the photo's pixels. It has no landmarks, so it gets a
cover (:mod:`faceveil.data.photo_cover`), never the diffusion. A regions file is
a JSON object ``{"faces": [{"box": [x, y, w, h]}, ...]}``, which is also what
``faceveil detect`` writes: its output, edited, can be given back. A region
that repeats a detected face (IoU at least 0.5) adds nothing.
"""

from __future__ import annotations

import os

import numpy as np

from faceveil.data.faces import Face
from faceveil.errors import InputError
from faceveil.jsonfile import load_json_object

MANUAL = "manual"  # the landmark scheme of a face given by hand (none known)


def parse_region(text: str) -> np.ndarray:
    """``"x,y,w,h"`` -> ``(x0, y0, x1, y1)``."""
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--region {text!r}: expected x,y,w,h in pixels, e.g. 120,80,64,64") from None
    if w <= 0 or h <= 0:
        raise InputError(f"--region {text!r}: width and height must be positive")
    return np.array([x, y, x + w, y + h])


def load_regions(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """The boxes of a regions file (see the module docstring)."""
    doc = load_json_object(path, "regions file")
    faces = doc.get("faces")
    if not isinstance(faces, list):
        raise InputError(f"{path}: regions file: expected {{\"faces\": [{{\"box\": [x, y, w, h]}}, ...]}}")
    out = []
    for i, f in enumerate(faces):
        box = f.get("box") if isinstance(f, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise InputError(f"{path}: regions file: face {i} has no box [x, y, w, h]")
        out.append(parse_region(",".join(str(v) for v in box)))
    return out


def manual_face(box: np.ndarray) -> Face:
    nowhere = np.full((5, 2), np.nan)
    return Face(bbox=np.asarray(box, dtype=np.float64), score=1.0, landmarks5=nowhere, landmarks=nowhere, scheme=MANUAL)


def box_intersection(a: np.ndarray, b: np.ndarray) -> float:
    """Area shared by two boxes (x0, y0, x1, y1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return float(ix * iy)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = box_intersection(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-9)


def with_regions(found: list[Face], boxes: list[np.ndarray], hw: tuple[int, int]) -> list[Face]:
    """``found`` followed by a face for each box that is in the photo and is not a found face again."""
    h, w = hw
    out = list(found)
    for box in boxes:
        clipped = np.array([max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)])
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            raise InputError(f"region {box[0]:g},{box[1]:g},{box[2] - box[0]:g},{box[3] - box[1]:g} lies outside the {w}x{h} photo")
        if any(_iou(clipped, f.bbox) >= 0.5 for f in out):
            continue
        out.append(manual_face(clipped))
    return out
