"""faceveil demo -o OUTDIR: keygen, anonymize and recover a bundled real photo with the tiny backbone.

It drives the real CLI commands end to end, so it doubles as a smoke test of an
install. The tiny backbone has random weights: the "new face" is noise-like; the
point is the exact round trip.
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
    from PIL import Image

    from faceveil.cli import main
    from faceveil.data.images import elliptical_mask, load_image, save_image
    from faceveil.data.samples import sample_photo_path
    from faceveil.keys import SecretKey, save_key
    from faceveil.models.pipeline import psnr

    out: Path = args.output
    inp = out / "input"
    photo = load_image(sample_photo_path(args.photo))
    face = np.asarray(Image.fromarray(photo).resize((256, 256), Image.Resampling.LANCZOS))
    save_image(inp / f"{args.photo}.png", face)
    key_path, wrong_path = out / "demo.key", out / "wrong.key"
    for p in (key_path, wrong_path):
        if not p.exists():
            save_key(SecretKey.generate(), p)
    common = ["--backbone", "tiny", "--device", "cpu", "--overwrite"]
    steps = ["--scheme", args.scheme, "--steps", str(args.steps)]
    runs = [
        ["anonymize", str(inp), "-o", str(out / "anonymized"), "--key", str(key_path), "--aligned", *steps, *common],
        ["recover", str(out / "anonymized"), "-o", str(out / "recovered"), "--key", str(key_path), *common],
        ["recover", str(out / "anonymized"), "-o", str(out / "wrong_key"), "--key", str(wrong_path), "--force", *common],
    ]
    for argv in runs:
        rc = main(argv)
        if rc:
            return rc
    name = f"{args.photo}.png"
    anon = load_image(out / "anonymized" / name)
    rec = load_image(out / "recovered" / name)
    bad = load_image(out / "wrong_key" / name)
    outside = ~elliptical_mask(256, 256)
    summary = {
        "photo": args.photo,
        "output": str(out),
        "background_identical": bool((anon[outside] == face[outside]).all()),
        "psnr_anonymized_vs_original_db": _db(psnr(anon, face)),
        "psnr_recovered_vs_original_db": _db(psnr(rec, face)),
        "psnr_wrong_key_vs_original_db": _db(psnr(bad, face)),
    }
    print(json.dumps(summary, indent=2))
    return 0
