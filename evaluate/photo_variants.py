"""The bundled in-the-wild photos and harder variants made from them, with their face boxes.

Ground truth: the faces of the four bundled photos (t1: 6, astronaut, Grace
Hopper and Tom Hanks: 1 each), boxed by CenterFace on the original photos and
checked by eye. Each variant transforms its photo and the boxes together:

- ``original``;
- ``small``: shrunk to 35 % (t1's faces become about 35 px);
- ``rotated``: turned 30 degrees (canvas grown, corners grey);
- ``profile-ish``: squeezed to 55 % width with a perspective tilt, the way a
  turned head foreshortens;
- ``dark``: exposure down to a quarter with gamma 1.6 and sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from faceveil.data.images import load_image
from faceveil.data.samples import sample_photo_path

PHOTOS: dict[str, int] = {"t1_group": 6, "astronaut": 1, "grace_hopper": 1, "tom_hanks": 1}
VARIANTS: tuple[str, ...] = ("original", "small", "rotated", "profile-ish", "dark")


@dataclass
class EvalPhoto:
    name: str
    variant: str
    image: np.ndarray
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1 of the true faces


def _warp_boxes(boxes: np.ndarray, warp) -> np.ndarray:
    out = []
    for x0, y0, x1, y1 in boxes:
        pts = warp(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64))
        out.append([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    return np.array(out)


def make_variant(image: np.ndarray, boxes: np.ndarray, variant: str) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    if variant == "original":
        return image, boxes
    if variant == "small":
        s = 0.35
        small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        return small, boxes * s
    if variant == "rotated":
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 30, 1.0)
        cos, sin = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
        m[:, 2] += [(nw - w) / 2, (nh - h) / 2]
        out = cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128))
        return out, _warp_boxes(boxes, lambda p: p @ m[:, :2].T + m[:, 2])
    if variant == "profile-ish":
        nw = round(w * 0.55)
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        dst = np.float32([[0, 0.06 * h], [nw, 0], [nw, h], [0, 0.94 * h]])
        m = cv2.getPerspectiveTransform(src, dst)
        out = cv2.warpPerspective(image, m, (nw, h), flags=cv2.INTER_AREA, borderValue=(128, 128, 128))
        return out, _warp_boxes(boxes, lambda p: cv2.perspectiveTransform(p[None].astype(np.float32), m)[0].astype(np.float64))
    if variant == "dark":
        rng = np.random.default_rng(0)
        x = (image.astype(np.float32) / 255.0) ** 1.6 * 0.25 * 255.0
        x += rng.normal(0, 3.0, x.shape)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), boxes
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def ground_truth(name: str, image: np.ndarray) -> np.ndarray:
    from faceveil.data.detect_centerface import CenterFaceDetector

    faces = CenterFaceDetector().detect(image)
    if len(faces) != PHOTOS[name]:
        raise RuntimeError(f"{name}: expected {PHOTOS[name]} faces, the reference boxes have {len(faces)}")
    return np.array([f.bbox for f in faces])


def eval_photos(variants: tuple[str, ...] = VARIANTS, names: tuple[str, ...] = tuple(PHOTOS)) -> list[EvalPhoto]:
    out = []
    for name in names:
        image = load_image(sample_photo_path(name))
        boxes = ground_truth(name, image)
        for v in variants:
            img, b = make_variant(image, boxes, v)
            out.append(EvalPhoto(name, v, np.ascontiguousarray(img), b))
    return out


def matches(truth: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(N,) bool: a true face counts as found when a box's centre lies inside it or its centre lies
    inside the box (detectors box faces at different tightness)."""
    hit = np.zeros(len(truth), bool)
    for i, (x0, y0, x1, y1) in enumerate(truth):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        for a0, b0, a1, b1 in found:
            if (x0 <= (a0 + a1) / 2 <= x1 and y0 <= (b0 + b1) / 2 <= y1) or (a0 <= cx <= a1 and b0 <= cy <= b1):
                hit[i] = True
                break
    return hit
