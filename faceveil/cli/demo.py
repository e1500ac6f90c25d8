"""faceveil demo -o OUTDIR: keygen, anonymize and recover a bundled real photo with the tiny backbone.

It drives the real CLI commands end to end on the photo path (detection, the
facial mask from the detector's landmarks, blending back), so it doubles as a
smoke test of an install. The tiny backbone has random weights: the "new face" is
noise-like; the point is the exact round trip, and that a wrong key gets nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="anonymize and recover a bundled sample photo with the tiny backbone")
    p.add_argument("-o", "--output", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--photo", default="tom_hanks", help="bundled sample photo (default: tom_hanks)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scheme", default="exact", choices=("ddim", "fixed-point", "exact"))
    p.set_defaults(func=run)


def _db(value: float) -> float | str:
    return round(value, 2) if value != float("inf") else "inf"  # strict JSON has no Infinity


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from faceveil.cli import main
    from faceveil.data.images import load_image
    from faceveil.data.samples import sample_photo_path
    from faceveil.keys import SecretKey, save_key
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.models.pipeline import psnr

    out: Path = args.output
    src = sample_photo_path(args.photo)  # the photo path: detection, the facial mask, blending back
    photo = load_image(src)
    key_path, wrong_path = out / "demo.key", out / "wrong.key"
    for p in (key_path, wrong_path):
        if not p.exists():
            save_key(SecretKey.generate(), p)
    common = ["--backbone", "tiny", "--device", "cpu", "--overwrite"]
    steps = ["--scheme", args.scheme, "--steps", str(args.steps)]
    runs = [
        ["anonymize", str(src), "-o", str(out / "anonymized"), "--key", str(key_path), *steps, *common],
        ["recover", str(out / "anonymized"), "-o", str(out / "recovered"), "--key", str(key_path), *common],
    ]
    for argv in runs:
        rc = main(argv)
        if rc:
            return rc
    # The wrong key cannot open the sealed record, so recovery refuses it and writes nothing.
    refused = main(["recover", str(out / "anonymized"), "-o", str(out / "wrong_key"), "--key", str(wrong_path), *common]) == 1
    name = f"{src.stem}.png"
    anon = load_image(out / "anonymized" / name)
    rec = load_image(out / "recovered" / name)
    # The face regions, as anonymize planned them (same detector and mask, deterministic).
    inside = np.zeros(photo.shape[:2], bool)
    for f in PhotoFinder(256).find(photo):
        r = f.region(photo.shape[:2])
        inside[r.slices()] |= r.inside
    summary = {
        "photo": args.photo,
        "output": str(out),
        "face_pixels": int(inside.sum()),
        "background_identical": bool((anon[~inside] == photo[~inside]).all()),
        "psnr_anonymized_vs_original_db": _db(psnr(anon, photo)),
        "psnr_recovered_vs_original_db": _db(psnr(rec, photo)),
        "wrong_key_refused": refused,
        "wrong_key_wrote_nothing": not (out / "wrong_key" / name).exists(),
    }
    print(json.dumps(summary, indent=2))
    return 0
