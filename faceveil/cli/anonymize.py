"""faceveil anonymize INPUT... -o OUTDIR --key KEYFILE [--mask MASK_OR_DIR] ..."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceveil.cli.common import (
    Report,
    add_model_args,
    add_scheme_args,
    batches_by,
    find_mask,
    load_backbone_for_cli,
    planned_outputs,
    progress,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
    resolve_settings,
    settle,
    Writer,
)

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anonymize", help="replace faces with keyed synthetic faces; writes self-describing PNGs")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--key", required=True, type=Path, help="key file from 'faceveil keygen'")
    p.add_argument(
        "--mask",
        type=Path,
        help="face mask image (white = face) or a folder of masks named like the inputs "
        "(NAME.png, NAME_mask.png); default: an ellipse for aligned crops",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs are never overwritten)")
    add_scheme_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


@dataclass
class Item:
    src: Path
    dst: Path
    image: np.ndarray
    mask: np.ndarray


def run(args: argparse.Namespace) -> int:
    from faceveil.data.images import load_image
    from faceveil.errors import FaceveilError, InputError
    from faceveil.fileformat import write_veiled
    from faceveil.keys import load_key
    from faceveil.models.pipeline import Anonymizer

    quiet_libraries()
    report = Report("anonymize")
    key = load_key(args.key)
    if args.mask is not None and not args.mask.exists():
        report.fail(args.mask, "no such mask file or folder")
        return 2
    items: list[Item] = []
    for src, dst in planned_outputs(args.inputs, args.output, args.overwrite, report):
        try:
            image = load_image(src)
            items.append(Item(src, dst, image, find_mask(src, args.mask, image.shape[:2])))
        except FaceveilError as exc:
            report.fail(src, exc)
    if items:
        device = resolve_device(args.device)
        backbone = load_backbone_for_cli(args.backbone, device, resolve_dtype(args.dtype, device))
        bar = progress(len(items), "anonymize")
        try:
            anonymizer = Anonymizer(backbone, resolve_settings(args, backbone), on_progress=bar.update,
                                    compile_unet=args.compile)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        writer = Writer(report)
        for batch in batches_by(items, lambda it: it.image.shape, args.batch_size):
            start = bar.n
            try:
                veiled = anonymizer.anonymize([it.image for it in batch], [it.mask for it in batch], key)
            except (FaceveilError, ValueError, RuntimeError) as exc:
                for it in batch:
                    report.fail(it.src, exc)
                veiled = []
            for it, v in zip(batch, veiled):
                writer.submit(it.src, write_veiled, it.dst, v, key)  # overlaps the next batch
            settle(bar, start, len(batch))
        writer.close()
        bar.close()
    return report.finish("anonymized", args.output)
