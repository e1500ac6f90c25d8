"""Does the photo pipeline find every face, at any size? Recall by face size, ours against deface.

    python -m faceveil.evaluate.recall_benchmark [--json OUT] [--no-deface]

Scenes are built at run time from the bundled photos (t1: 6 faces, astronaut,
Grace Hopper, Tom Hanks; :mod:`faceveil.evaluate.photo_variants` gives their
true boxes, CenterFace's on the originals, checked by eye):

- ``24 MP``: a 6000x4000 canvas holding t1 at 3x and three small copies of
  every photo (faces of about 16, 25 and 40 px);
- ``rotated``: each photo turned by 30 and 90 degrees, at half size;
- ``crowd``: a 2400x1600 canvas tiled with 24 copies of the photos, faces 20-70 px;
- ``thumbnail``: each photo shrunk so that its faces are about 10, 13, 16 and 20 px.

"ours" is :func:`faceveil.data.photo_detect.detect_in_photo` with the default
detector; "deface" is deface's own CenterFace called the way the ``deface``
command does by default (the whole frame at full resolution, threshold 0.2).
Prints recall per face-size bucket (the true box's shorter side), false
positives, and seconds per megapixel on this machine.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from faceveil.data.images import load_image
from faceveil.data.samples import sample_photo_path
from faceveil.evaluate.photo_variants import PHOTOS, _warp_boxes, ground_truth, matches
from faceveil.evaluate.report import table

BUCKETS: tuple[tuple[float, float], ...] = ((0, 16), (16, 24), (24, 32), (32, 64), (64, 128), (128, 1e9))


@dataclass
class Scene:
    name: str
    image: np.ndarray
    boxes: np.ndarray  # (N, 4) true faces
    sizes: np.ndarray  # (N,) the true faces' shorter sides before any rotation


def _background(h: int, w: int, seed: int) -> np.ndarray:
    # smooth colour with texture, so that the detector has something that is not a face to reject
    rng = np.random.default_rng(seed)
    low = cv2.resize(rng.integers(40, 220, (6, 9, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    return np.clip(low.astype(np.float32) + noise, 0, 255).astype(np.uint8)


class _Canvas:
    def __init__(self, h: int, w: int, seed: int) -> None:
        self.image = _background(h, w, seed)
        self.boxes: list[np.ndarray] = []

    def paste(self, image: np.ndarray, boxes: np.ndarray, x: int, y: int, scale: float) -> None:
        h, w = image.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        self.image[y : y + size[1], x : x + size[0]] = small
        self.boxes.extend(boxes * np.tile([size[0] / w, size[1] / h], 2) + [x, y, x, y])

    def scene(self, name: str) -> Scene:
        b = np.array(self.boxes)
        return Scene(name, self.image, b, np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))


def _truth() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in PHOTOS:
        image = load_image(sample_photo_path(name))
        out[name] = (image, ground_truth(name, image))
    return out


def _face_side(boxes: np.ndarray) -> float:
    return float(np.median(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))


def build_scenes(truth: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[Scene]:
    scenes = []
    big = _Canvas(4000, 6000, 0)
    t1, t1_boxes = truth["t1_group"]
    big.paste(t1, t1_boxes, 100, 100, 3.0)  # faces of 300-440 px
    for x, side in ((4100, 16), (4700, 25), (5300, 40)):  # a column of every photo per face size
        y = 150
        for image, boxes in truth.values():
            s = side / _face_side(boxes)
            big.paste(image, boxes, x, y, s)
            y += round(image.shape[0] * s) + 40
    for side, xy in ((16, (200, 2900)), (25, (1400, 2800)), (40, (2700, 2800))):
        big.paste(t1, t1_boxes, *xy, side / _face_side(t1_boxes))
    scenes.append(big.scene("24 MP"))

    for name, (image, boxes) in truth.items():
        for angle in (30, 90):
            half = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
            h, w = half.shape[:2]
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            cos, sin = abs(m[0, 0]), abs(m[0, 1])
            nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
            m[:, 2] += [(nw - w) / 2, (nh - h) / 2]
            out = cv2.warpAffine(half, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128))
            b = _warp_boxes(boxes * 0.5, lambda p: p @ m[:, :2].T + m[:, 2])
            hb = boxes * 0.5
            scenes.append(Scene(f"rotated {angle}", out, b, np.minimum(hb[:, 2] - hb[:, 0], hb[:, 3] - hb[:, 1])))

    crowd = _Canvas(1600, 2400, 1)
    rng = np.random.default_rng(2)
    names = list(truth)
    for i in range(24):
        r, c = divmod(i, 6)
        image, boxes = truth[names[i % len(names)]]
        side = float(rng.uniform(20, 70))
        s = side / _face_side(boxes)
        s = min(s, 380 / image.shape[1], 380 / image.shape[0])  # stays in its cell
        crowd.paste(image, boxes, 10 + 398 * c, 10 + 398 * r, s)
    scenes.append(crowd.scene("crowd"))

    for name, (image, boxes) in truth.items():
        for side in (10, 13, 16, 20):
            s = side / _face_side(boxes)
            h, w = image.shape[:2]
            size = (max(1, round(w * s)), max(1, round(h * s)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            b = boxes * np.tile([size[0] / w, size[1] / h], 2)
            scenes.append(Scene(f"thumbnail {side} px", small, b, np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
    return scenes


def ours(turns: tuple[int, ...] = ()) -> Callable[[np.ndarray], np.ndarray]:
    from faceveil.data.detect_centerface import CenterFaceDetector
    from faceveil.data.photo_detect import detect_in_photo

    det = CenterFaceDetector()
    return lambda image: np.array([f.bbox for f in detect_in_photo(image, det, turns=turns)]).reshape(-1, 4)


def deface_default() -> Callable[[np.ndarray], np.ndarray]:
    import contextlib
    import io

    from deface.centerface import CenterFace

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its execution provider
        cf = CenterFace(in_shape=None, backend="auto")
    # deface's defaults: the frame as it is (no --scale), --thresh 0.2
    return lambda image: np.asarray(cf(image, threshold=0.2)[0])[:, :4].reshape(-1, 4)


def measure(detect: Callable[[np.ndarray], np.ndarray], scenes: list[Scene]) -> dict:
    found = np.zeros(len(BUCKETS), int)
    total = np.zeros(len(BUCKETS), int)
    per_scene: dict[str, list[int]] = {}
    false_pos, seconds, megapixels = 0, 0.0, 0.0
    for sc in scenes:
        t = time.perf_counter()
        boxes = detect(sc.image)
        seconds += time.perf_counter() - t
        megapixels += sc.image.shape[0] * sc.image.shape[1] / 1e6
        hit = matches(sc.boxes, boxes)
        false_pos += int((~matches(boxes, sc.boxes)).sum())
        group = per_scene.setdefault(sc.name.rstrip("0123456789 px").strip() or sc.name, [0, 0])
        group[0] += int(hit.sum())
        group[1] += len(hit)
        for k, (lo, hi) in enumerate(BUCKETS):
            inb = (sc.sizes >= lo) & (sc.sizes < hi)
            found[k] += int(hit[inb].sum())
            total[k] += int(inb.sum())
    return {"found": found.tolist(), "total": total.tolist(), "per_scene": per_scene, "false_positives": false_pos,
            "seconds": seconds, "megapixels": megapixels, "seconds_per_megapixel": seconds / megapixels,
            "recall": float(found.sum() / max(total.sum(), 1))}


def render(rows: dict[str, dict]) -> str:
    labels = [f"{lo:g}–{hi:g} px" if hi < 1e9 else f"≥ {lo:g} px" for lo, hi in BUCKETS]
    labels[0] = f"< {BUCKETS[0][1]:g} px"
    scene_names = list(next(iter(rows.values()))["per_scene"])
    header = ["detector", *labels, *scene_names, "recall", "false pos.", "s / MP"]
    body = []
    for name, r in rows.items():
        cells = [f"{a}/{b}" for a, b in zip(r["found"], r["total"])]
        scenes = [f"{a}/{b}" for a, b in r["per_scene"].values()]
        body.append([name, *cells, *scenes, f"{100 * r['recall']:.1f} %", str(r["false_positives"]), f"{r['seconds_per_megapixel']:.2f}"])
    return table(header, body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faceveil.evaluate.recall_benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--no-deface", action="store_true", help="measure ours only")
    p.add_argument("--sideways", action="store_true", help="also measure ours with --sideways")
    p.add_argument("--save-scenes", metavar="DIR", help="also write the scenes as PNG files to look at")
    args = p.parse_args(argv)
    scenes = build_scenes(_truth())
    if args.save_scenes:
        from pathlib import Path

        from faceveil.data.images import save_image

        Path(args.save_scenes).mkdir(parents=True, exist_ok=True)
        for i, sc in enumerate(scenes):
            save_image(Path(args.save_scenes) / f"{i:02d}_{sc.name.replace(' ', '_')}.png", sc.image)
    rows = {"ours (tiled pyramid)": measure(ours(), scenes)}
    if args.sideways:
        from faceveil.data.photo_detect import SIDEWAYS

        rows["ours --sideways"] = measure(ours(SIDEWAYS), scenes)
    if not args.no_deface:
        rows["deface defaults"] = measure(deface_default(), scenes)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
