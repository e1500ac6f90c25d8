"""Finding every face of an ordinary photo, at any size: a tiled image pyramid.

A detector sees a bounded input (``tile`` px a side), so a big photo is covered
by overlapping tiles at full resolution, then again at half, a quarter... until
one tile holds the whole photo; a small photo (a thumbnail) is also looked at
twice enlarged. Memory stays bounded by one tile whatever the photo's size; the
time is about 1.5x one pass over the photo's pixels (see
``python -m faceveil.evaluate.recall_benchmark`` for the measured numbers).

Why this shape: a face of 16-40 px in a 24-megapixel photo is gone on any copy
small enough to detect in one pass (round 2 missed 17 of 18), while a face
larger than the tiles' overlap is cut at some tile edge and is only seen whole
on a coarser level. Detections are merged across tiles and levels by
non-maximum suppression, and a box lying mostly inside a larger one (a face
cut by a tile edge, seen whole elsewhere) is dropped.

What each face then gets is the face policy, :func:`face_treatments`: the
diffusion, or an irreversible cover (:mod:`faceveil.data.photo_cover`) where the
diffusion cannot take it. A found face is left as it was only when asked
(``--leave-small``, ``--faces largest``), and the run then says so and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import cv2
import numpy as np

from faceveil.data.detect_centerface import nms
from faceveil.data.faces import Face, FaceDetector, sort_faces
from faceveil.data.photo_cover import COVERS
from faceveil.data.photo_mask import DEFAULT_MASK_EXTENT, MASK_EXTENTS
from faceveil.data.photo_regions import MANUAL, box_intersection
from faceveil.errors import InputError

PHOTO_FACE_POLICIES: tuple[str, ...] = ("all", "largest")
METHODS: tuple[str, ...] = ("diffusion", *COVERS)
DEFAULT_MIN_FACE = 20.0  # smaller faces are covered: too few pixels for landmarks and the diffusion crop
DEFAULT_TILE = 1536  # detector input side; a tile of 1536 px takes about 1 s on one CPU core
UPSCALE_BELOW_PIXELS = 1_000_000  # photos up to this size are also searched at 2x, for faces under 16 px
MERGE_IOU = 0.3
SIDEWAYS = (1, 3)  # quarter turns searched with --sideways: faces lying on either side


def pyramid_scales(hw: tuple[int, int], tile: int) -> list[float]:
    """The scales searched: 2 for a small photo, 1, then halving until one tile holds the photo."""
    h, w = hw
    scales = [2.0] if h * w <= UPSCALE_BELOW_PIXELS else []
    s = 1.0
    scales.append(s)
    while max(h, w) * s > tile:
        s /= 2
        scales.append(s)
    return scales


def tiles(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """``(starts, side)``: the fewest windows of at most ``tile`` covering ``[0, length)`` with
    neighbours sharing at least ``overlap``, all of one side and evenly spread."""
    if length <= tile:
        return [0], length
    n = -(-(length - overlap) // (tile - overlap))
    side = -(-(length + (n - 1) * overlap) // n)
    return [round(i * (length - side) / (n - 1)) for i in range(n)], side


def _windows(hw: tuple[int, int], tile: int) -> Iterator[tuple[int, int, int, int]]:
    # Faces up to the overlap lie whole in some window; a larger one is whole on a coarser level
    # (where it is at most twice smaller), and its pieces cut by the windows are merged away.
    overlap = tile // 8
    ys, sh = tiles(hw[0], tile, overlap)
    xs, sw = tiles(hw[1], tile, overlap)
    for y in ys:
        for x in xs:
            yield y, x, y + sh, x + sw


def _placed(face: Face, offset: tuple[int, int], scale: tuple[float, float]) -> Face:
    """``face``, found at ``offset`` in a copy scaled by ``scale`` (x, y), in the photo's pixels."""
    off = np.array(offset, dtype=np.float64)
    sc = np.array(scale, dtype=np.float64)

    def back(points: np.ndarray) -> np.ndarray:
        # pixel centres at integers: x_photo = (x_copy + 0.5) / s - 0.5
        return (np.asarray(points, dtype=np.float64) + off + 0.5) / sc - 0.5

    bbox = (np.asarray(face.bbox, dtype=np.float64) + np.tile(off, 2)) / np.tile(sc, 2)
    return replace(face, bbox=bbox, landmarks5=back(face.landmarks5), landmarks=back(face.landmarks))


def merge_faces(faces: list[Face], iou: float = MERGE_IOU) -> list[Face]:
    """One face per place: greedy NMS by score, then boxes lying mostly inside a larger kept face dropped."""
    if not faces:
        return []
    boxes = np.array([f.bbox for f in faces], dtype=np.float64)
    keep = nms(boxes, np.array([f.score for f in faces]), iou)
    kept: list[Face] = []
    for i in sorted(keep, key=lambda i: -faces[i].area):  # largest first: a part of a face inside it goes
        if not any(box_intersection(boxes[i], k.bbox) >= 0.8 * max(faces[i].area, 1e-9) for k in kept):
            kept.append(faces[i])
    return sort_faces(kept)


def detect_in_photo(image: np.ndarray, detector: FaceDetector, tile: int = DEFAULT_TILE, source: str | None = None,
                    turns: tuple[int, ...] = ()) -> list[Face]:
    """Every face of ``image`` in its own pixel coordinates (see the module docstring). ``turns``
    (quarter turns, 1 to 3) also searches the photo turned, for faces lying on their side, which an
    upright detector misses; each turn costs one more pass."""
    found = _detect_upright(image, detector, tile, source)
    h, w = image.shape[:2]
    for k in turns:
        for f in _detect_upright(np.ascontiguousarray(np.rot90(image, k)), detector, tile, source):
            found.append(_turned_back(f, k, (h, w)))
    return merge_faces(found)


def _turned_back(face: Face, k: int, hw: tuple[int, int]) -> Face:
    """``face`` found in ``np.rot90(photo, k)``, in the photo's pixels."""
    h, w = hw

    def back(points: np.ndarray, edge: float) -> np.ndarray:
        # rot90 once: turned (x', y') is photo (W - 1 - y', x') for pixel centres, (W - y', x') for box edges
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        for turn in range(k, 0, -1):
            width = w if (turn - 1) % 2 == 0 else h  # width of the picture before this turn
            p = np.stack([width - 1 + edge - p[:, 1], p[:, 0]], axis=1)
        return p

    b = np.asarray(face.bbox, dtype=np.float64)
    corners = back(np.array([[b[0], b[1]], [b[2], b[3]]]), 1.0)
    bbox = np.array([corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max()])
    return replace(face, bbox=bbox, landmarks5=back(face.landmarks5, 0.0), landmarks=back(face.landmarks, 0.0))


def _detect_upright(image: np.ndarray, detector: FaceDetector, tile: int, source: str | None) -> list[Face]:
    h, w = image.shape[:2]
    found: list[Face] = []
    for s in pyramid_scales((h, w), tile):
        if s == 1.0:
            level = image
        else:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            level = cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        lh, lw = level.shape[:2]
        sx, sy = lw / w, lh / h
        for window in _windows((lh, lw), tile):
            y0, x0, y1, x1 = window
            for f in detector.detect(np.ascontiguousarray(level[y0:y1, x0:x1]), source):
                found.append(_placed(f, (x0, y0), (sx, sy)))
    return found


@dataclass(frozen=True)
class FacePolicy:
    """What each found face gets. ``method`` is for every face; a face the diffusion cannot take
    (under ``min_face``, or failing alignment) gets ``cover``; ``leave_small`` leaves faces under
    ``min_face`` as they were instead, and ``faces="largest"`` leaves all but the largest."""

    method: str = "diffusion"
    cover: str = "blur"
    min_face: float = DEFAULT_MIN_FACE
    leave_small: bool = False
    faces: str = "all"
    mask_extent: str = DEFAULT_MASK_EXTENT
    # Template masks, quantized geometry and a watermark, so that copies without the file's record
    # (stripped, re-encoded, resized, cropped) still recover approximately with the key.
    pixel_recovery: bool = False

    def __post_init__(self) -> None:
        if self.faces not in PHOTO_FACE_POLICIES:
            raise InputError(f"unknown face policy {self.faces!r}; choose one of {', '.join(PHOTO_FACE_POLICIES)}")
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.mask_extent not in MASK_EXTENTS:
            raise InputError(f"unknown mask extent {self.mask_extent!r}; choose one of {', '.join(MASK_EXTENTS)}")
        if self.cover not in COVERS:
            raise InputError(f"unknown cover {self.cover!r}; choose one of {', '.join(COVERS)}")


LEFT = "left"  # the treatment of a face left as it was (only on request)


def face_treatments(faces: list[Face], policy: FacePolicy) -> list[tuple[str, str | None]]:
    """``(treatment, why)`` per face: ``"diffusion"``, a cover, or ``"left"``; ``why`` says why a
    face does not get ``policy.method``."""
    detected = [i for i, f in enumerate(faces) if f.scheme != MANUAL]
    largest = max(detected, key=lambda i: faces[i].area) if detected else -1
    out: list[tuple[str, str | None]] = []
    for i, f in enumerate(faces):
        small = f.size < policy.min_face
        if f.scheme == MANUAL:  # no landmarks: a cover, whatever its size
            out.append((policy.method if policy.method in COVERS else policy.cover, "given by hand"))
        elif policy.faces == "largest" and i != largest:
            out.append((LEFT, "not the largest, --faces largest"))
        elif small and policy.leave_small:
            out.append((LEFT, f"under --min-face {policy.min_face:g} px, --leave-small"))
        elif small and policy.method == "diffusion":
            out.append((policy.cover, f"under --min-face {policy.min_face:g} px"))
        else:
            out.append((policy.method, None))
    return out


class NoFaceError(InputError):
    """A photo in which no face was found (``--keep-faceless`` writes it unchanged)."""
