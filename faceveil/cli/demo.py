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


def _wrong_key_face(path: Path, key, wrong):  # -> np.ndarray
    from faceveil.fileformat import read_veiled
    from faceveil.models.backbones import load_backbone
    from faceveil.models.pipeline import Anonymizer

    v = read_veiled(path, key)
    return Anonymizer(load_backbone("tiny", device="cpu"), v.settings).recover([v], wrong, force=True)[0].image


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from faceveil.cli import main
    from faceveil.data.images import elliptical_mask, load_image, save_image
    from faceveil.data.samples import sample_photo_path
    from faceveil.keys import SecretKey, load_key, save_key
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
    ]
    for argv in runs:
        rc = main(argv)
        if rc:
            return rc
    # The wrong key cannot even open the sealed record, so the CLI refuses it ...
    refused = main(["recover", str(out / "anonymized"), "-o", str(out / "wrong_key"), "--key", str(wrong_path), *common]) == 1
    name = f"{args.photo}.png"
    anon = load_image(out / "anonymized" / name)
    rec = load_image(out / "recovered" / name)
    # ... and even with the exact state in hand (the key holder's), it gives another face.
    bad = _wrong_key_face(out / "anonymized" / name, load_key(key_path), load_key(wrong_path))
    save_image(out / "wrong_key" / name, bad)
    outside = ~elliptical_mask(256, 256)
    summary = {
        "photo": args.photo,
        "output": str(out),
        "background_identical": bool((anon[outside] == face[outside]).all()),
        "psnr_anonymized_vs_original_db": _db(psnr(anon, face)),
        "psnr_recovered_vs_original_db": _db(psnr(rec, face)),
        "wrong_key_refused": refused,
        "psnr_wrong_key_vs_original_db": _db(psnr(bad, face)),
    }
    print(json.dumps(summary, indent=2))
    return 0
