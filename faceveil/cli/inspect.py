"""faceveil inspect FILE: print the public metadata as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print an anonymized file's public metadata as JSON (for photos: one record per face)")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faceveil.errors import FormatError
    from faceveil.fileformat import read_header, read_veiled

    from faceveil.photofile import read_photo, read_photo_header

    photo_header = read_photo_header(args.file) if args.file.is_file() else None
    if photo_header is not None:
        vp = read_photo(args.file)
        for fh, f in zip(photo_header["faces"], vp.faces):
            fh["mask_fraction"] = round(float(f.mask.mean()), 6)
            fh["has_latents"] = f.veiled.state is not None
        print(json.dumps(photo_header, indent=2))
        return 0
    header = read_header(args.file) if args.file.is_file() else None
    if header is None:
        raise FormatError(f"{args.file}: no faceveil metadata" if args.file.is_file() else f"{args.file}: no such file")
    v = read_veiled(args.file)
    header["mask_fraction"] = round(float(v.mask.mean()), 6)
    header["has_latents"] = v.state is not None
    print(json.dumps(header, indent=2))
    return 0
