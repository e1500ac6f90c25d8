"""Time and peak memory of anonymizing and recovering one big photo (a benchmark, not a test).

    OMP_NUM_THREADS=2 python -m faceveil.evaluate.photo_benchmark --side 6000 [--backbone tiny] [--steps 4]

The photo is insightface's t1 (six faces) scaled to ``side`` px wide on a
``side`` x ``side`` canvas, saved as JPEG and run through the CLI's path: load,
detect on a downscaled copy, align and mask, anonymize the crops, blend back,
write the file; then read it and recover. Prints seconds per stage and the
process's peak resident memory after each stage.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def big_photo(side: int) -> np.ndarray:
    from faceveil.data.images import load_image
    from faceveil.data.samples import sample_photo_path

    t1 = load_image(sample_photo_path("t1_group"))
    h = round(t1.shape[0] * side / t1.shape[1])
    canvas = np.full((side, side, 3), 200, np.uint8)
    canvas[(side - h) // 2 : (side - h) // 2 + h] = cv2.resize(t1, (side, h), interpolation=cv2.INTER_CUBIC)
    return canvas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faceveil.evaluate.photo_benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=6000)
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args(argv)

    from faceveil.data.photo_io import load_photo
    from faceveil.keys import SecretKey
    from faceveil.models.backbones import load_backbone
    from faceveil.models.photo import PhotoAnonymizer, native_size
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.settings import Settings
    from faceveil.fileformat.original import open_original
    from faceveil.photofile import write_photo

    stages: dict[str, dict[str, float]] = {}
    bb = load_backbone(args.backbone)
    photos = PhotoAnonymizer(Anonymizer(bb, Settings(steps=args.steps)))
    finder = PhotoFinder(native_size(bb))
    key = SecretKey.generate()
    finder.detector.detect(np.zeros((64, 64, 3), np.uint8))  # load the detector's weights
    stages["libraries + models loaded"] = {"seconds": 0.0, "peak_mb": round(peak_mb(), 1)}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.jpg"
        # Made in a child process, so that its arrays do not count in this process's peak.
        code = f"from PIL import Image; from faceveil.evaluate.photo_benchmark import big_photo; Image.fromarray(big_photo({args.side})).save({str(src)!r}, quality=92)"
        subprocess.run([sys.executable, "-c", code], check=True)

        def stage(name, fn):
            t = time.perf_counter()
            out = fn()
            stages[name] = {"seconds": round(time.perf_counter() - t, 2), "peak_mb": round(peak_mb(), 1)}
            return out

        image = stage("load", lambda: load_photo(src))
        faces = stage("detect + align + mask", lambda: finder.find(image))
        [vp] = stage(f"anonymize {len(faces)} faces + blend", lambda: photos.anonymize([(image, faces)], key))
        stage("write file", lambda: write_photo(Path(tmp) / "big.png", vp, key))
        rec = stage("read, authenticate and recover (no model)", lambda: open_original(Path(tmp) / "big.png", key).image)
        exact = bool(np.array_equal(rec, image))
        size_mb = (Path(tmp) / "big.png").stat().st_size / 1e6
    print(json.dumps({"side": args.side, "faces": len(faces), "exact_recovery": exact, "file_mb": round(size_mb, 1),
                      "photo_mb": round(image.nbytes / 1e6, 1), "stages": stages}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
