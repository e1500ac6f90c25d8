"""faceveil roundtrip IMAGE --backbone NAME [--scheme S] [--steps N]: how exact is recovery here?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from faceveil.cli.common import (
    add_model_args,
    add_scheme_args,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
    resolve_settings,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("roundtrip", help="measure recovery exactness (latent error, PSNR, wrong key) as JSON")
    p.add_argument("image", type=Path)
    p.add_argument("--mask", type=Path, help="face mask (default: the ellipse for aligned crops)")
    p.add_argument("--size", type=int, help="center-crop and resize the image to SIZE x SIZE first")
    add_scheme_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from faceveil.cli.common import find_mask, load_backbone_for_cli
    from faceveil.data.images import load_image
    from faceveil.errors import InputError
    from faceveil.evaluate.roundtrip import measure_roundtrip

    quiet_libraries()
    image = load_image(args.image)
    if args.size:
        h, w = image.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crop = Image.fromarray(image[top : top + s, left : left + s])
        image = np.asarray(crop.resize((args.size, args.size), Image.Resampling.LANCZOS))
    mask = find_mask(args.image, args.mask, image.shape[:2])
    device = resolve_device(args.device)
    backbone = load_backbone_for_cli(args.backbone, device, resolve_dtype(args.dtype, device))
    try:
        result = measure_roundtrip(backbone, image, mask, resolve_settings(args, backbone, residual=True))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    print(json.dumps(result, indent=2))
    return 0
