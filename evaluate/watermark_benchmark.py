"""What the face-region watermark survives: ``python -m faceveil.evaluate.watermark_benchmark``.

For bundled face photos scaled so that the face box is 64, 128, 256 or 512 px, it embeds a random
64-bit recovery id (``faceveil.watermark``) inside the default elliptical face mask and reports per
region size: slots (capacity), the PSNR cost inside the region, and for each distortion the raw
bit accuracy at the true grid and the share of ids read back exactly. Distortions: none, a PNG
re-save (pixels only, no metadata), JPEG 95/75/50, a 1/2 resize and back, a 1/2 resize kept at
half size, and a crop that moves the grid (13, 29 px) saved as JPEG 90. Marks are found without
the mask (:func:`faceveil.watermark.find`, scales 1 and 2, grid search).
Also counts ids read with a wrong key (must be 0). Prints one JSON object; ``--table`` adds a
Markdown table on stderr::

    python -m faceveil.evaluate.watermark_benchmark --trials 4 --table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image

from faceveil import watermark as wm
from faceveil.evaluate.distortions import half, half_and_back, jpeg, png
from faceveil.data.images import elliptical_mask, load_image
from faceveil.data.samples import FACE_BOXES, sample_photo_path
from faceveil.errors import InputError
from faceveil.keys import SecretKey

PHOTOS = ("astronaut", "grace_hopper")
SIZES = (64, 128, 256, 512)


CROP = (13, 29)  # a screenshot-like cut: the grid moves by a fraction of a block and of a tile


def _crop(image: np.ndarray) -> np.ndarray:
    return jpeg(90)(image[CROP[0] :, CROP[1] :])


def _uncrop(seen: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape, dtype=np.uint8)
    full[CROP[0] :, CROP[1] :] = seen
    return full


# name -> (distortion, the resize factor that undoes it, back to the photo's frame for bit accuracy)
DISTORTIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]]] = {
    "none": (lambda a: a, 1.0, lambda a, _: a),
    "png": (png, 1.0, lambda a, _: a),
    "jpeg95": (jpeg(95), 1.0, lambda a, _: a),
    "jpeg75": (jpeg(75), 1.0, lambda a, _: a),
    "jpeg50": (jpeg(50), 1.0, lambda a, _: a),
    "half_and_back": (half_and_back, 1.0, lambda a, _: a),
    "half": (half, 2.0, lambda a, _: a),
    "crop_jpeg90": (_crop, 1.0, _uncrop),
}


def photo_with_region(name: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The photo scaled so its face box is ``side`` px, and the elliptical face mask in it."""
    box = FACE_BOXES[name]
    if box is None:
        raise InputError(f"{name} has no face box in a larger photo")
    img = load_image(sample_photo_path(name))
    scale = side / (box[0].stop - box[0].start)
    h, w = round(img.shape[0] * scale), round(img.shape[1] * scale)
    img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.LANCZOS))
    y, x = round(box[0].start * scale), round(box[1].start * scale)
    mask = np.zeros((h, w), dtype=bool)
    mask[y : y + side, x : x + side] = elliptical_mask(side, side)
    return img, mask


def _bit_accuracy(image: np.ndarray, mask: np.ndarray, key: SecretKey, truth: np.ndarray, scale: float) -> float:
    if scale != 1:  # read at the true grid after undoing the resize
        h, w = image.shape[:2]
        image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    bits = wm.read_bits(image, mask, key)
    return float("nan") if bits is None else float((bits == truth).mean())


def run(photos: Sequence[str], sizes: Sequence[int], trials: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    wrong_key_ids = 0
    for side in sizes:
        row: dict[str, Any] = {"slots": [], "psnr_db": [], "bit_accuracy": {}, "id_read": {}}
        for name in photos:
            img, mask = photo_with_region(name, side)
            for trial in range(trials):
                seed = hashlib.sha256(f"{name}/{side}/{trial}".encode()).digest()
                key, rid = SecretKey(seed), seed[:wm.ID_BYTES]
                row["slots"].append(wm.capacity(mask))
                try:
                    marked = wm.embed(img, mask, key, rid)
                except InputError:
                    continue  # too small a region: no mark
                err = (marked.astype(np.float64) - img)[mask]
                row["psnr_db"].append(10 * np.log10(255.0**2 / max(np.mean(err**2), 1e-12)))
                truth = wm.sealed_bits(key, rid)
                for label, (distort, scale, undo) in DISTORTIONS.items():
                    seen = distort(marked)
                    row["bit_accuracy"].setdefault(label, []).append(
                        _bit_accuracy(undo(seen, marked.shape), mask, key, truth, scale))
                    # Found without the mask: the reader searches scales and (for crops) grids.
                    got = [m.body for m in wm.find(seen, key, scales=(1.0, 2.0))]
                    row["id_read"].setdefault(label, []).append(got == [rid])
                wrong = SecretKey(hashlib.sha256(seed).digest())
                wrong_key_ids += len(wm.find(marked, wrong, scales=(1.0, 2.0)))
        n = len(row["slots"])
        rows[str(side)] = {
            "trials": n,
            "slots": int(np.mean(row["slots"])),
            "slots_per_bit": round(float(np.mean(row["slots"])) / wm.PAYLOAD_BITS, 1),
            "embedded": len(row["psnr_db"]),
            "psnr_db": round(float(np.mean(row["psnr_db"])), 2) if row["psnr_db"] else None,
            "bit_accuracy": {k: round(float(np.nanmean(v)), 4) for k, v in row["bit_accuracy"].items()},
            "id_read": {k: f"{sum(v)}/{len(v)}" for k, v in row["id_read"].items()},
        }
    return {"payload_bits": wm.PAYLOAD_BITS, "id_bits": 8 * wm.ID_BYTES, "step": wm.STEP, "photos": list(photos),
            "sizes": rows, "wrong_key_ids": wrong_key_ids}


def markdown(report: dict[str, Any]) -> str:
    labels = list(DISTORTIONS)
    lines = ["| region px | slots/bit | PSNR dB | " + " | ".join(labels) + " |",
             "|---" * (3 + len(labels)) + "|"]
    for side, row in report["sizes"].items():
        if not row["embedded"]:
            lines.append(f"| {side} | {row['slots_per_bit']} | too small | " + " | ".join("-" for _ in labels) + " |")
            continue
        cells = [f"{row['bit_accuracy'][k]:.3f} ({row['id_read'][k]})" for k in labels]
        lines.append(f"| {side} | {row['slots_per_bit']} | {row['psnr_db']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=[n for n, b in FACE_BOXES.items() if b])
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--trials", type=int, default=4, help="keys and ids per photo and size")
    ap.add_argument("--table", action="store_true", help="also print a Markdown table on stderr")
    args = ap.parse_args(argv)
    report = run(args.photos, args.sizes, args.trials)
    print(json.dumps(report, indent=2))
    if args.table:
        print(markdown(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
