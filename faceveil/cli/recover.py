"""faceveil recover INPUT... -o OUTDIR --key KEYFILE [--force] [--meta JSON --mask MASK]"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from faceveil.cli.anonymize import find_mask
from faceveil.cli.common import (
    Report,
    add_model_args,
    batches_by,
    planned_outputs,
    progress,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recover", help="turn anonymized images back into the originals with the right key")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="anonymized PNGs or folders")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--key", required=True, type=Path, help="the key file used to anonymize")
    p.add_argument("--force", action="store_true", help="try even when the key's fingerprint does not match")
    p.add_argument(
        "--meta",
        type=Path,
        help="for files whose metadata was stripped: the JSON that 'faceveil inspect' printed for them "
        "(recovery then re-encodes the pixels and is approximate)",
    )
    p.add_argument("--mask", type=Path, help="with --meta: the face mask (file or folder), as given to anonymize")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_model_args(p, backbone_default=None)
    p.set_defaults(func=run)


def _load(src: Path, args: argparse.Namespace, key, report: Report):
    from faceveil.data.images import load_image
    from faceveil.errors import FormatError, InputError
    from faceveil.fileformat import read_header, read_veiled, veiled_from_header

    if read_header(src) is not None:
        return read_veiled(src, key, verify=not args.force)
    if args.meta is None:
        raise FormatError(f"{src}: no faceveil metadata (stripped or re-encoded?); give --meta and --mask to recover from pixels")
    try:
        header = json.loads(args.meta.read_text())
    except (OSError, ValueError):
        raise InputError(f"{args.meta}: not a JSON file from 'faceveil inspect'") from None
    image = load_image(src)
    if args.mask is None:
        raise InputError(f"{src}: no faceveil metadata; --mask is needed with --meta")
    report.note(f"{src}: no faceveil metadata; re-encoding the pixels with the given mask (approximate recovery)")
    return veiled_from_header(header, image, find_mask(src, args.mask, image.shape[:2]), None)


def run(args: argparse.Namespace) -> int:
    from faceveil.errors import FaceveilError
    from faceveil.data.images import save_image
    from faceveil.keys import load_key
    from faceveil.models.backbones import load_backbone
    from faceveil.models.pipeline import Anonymizer

    quiet_libraries()
    report = Report("recover")
    key = load_key(args.key)
    items = []
    for src, dst in planned_outputs(args.inputs, args.output, args.overwrite, report):
        try:
            v = _load(src, args, key, report)
            if v.key_fingerprint != key.fingerprint and not args.force:
                raise FaceveilError(
                    f"wrong key: {args.key} has fingerprint {key.fingerprint}, the image needs "
                    f"{v.key_fingerprint} (use --force to try anyway)"
                )
            items.append((src, dst, v))
        except FaceveilError as exc:
            report.fail(src, exc)
    if items:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        backbones: dict[str, object] = {}
        bar = progress(len(items), "recover")

        def group(it):
            v = it[2]
            return (args.backbone or v.backbone, v.settings.scheme, v.settings.steps, v.settings.transform,
                    v.image.shape, v.state is None)

        for batch in batches_by(items, group, args.batch_size):
            spec = group(batch[0])[0]
            try:
                if spec not in backbones:
                    backbones[spec] = load_backbone(spec, device=device, dtype=dtype)
                bb = backbones[spec]
                v0 = batch[0][2]
                if v0.adapter_hash != bb.adapter_hash:
                    report.note(f"{batch[0][0]}: made with adapter {v0.adapter_hash}, recovering with {bb.adapter_hash}")
                rec = Anonymizer(bb, v0.settings).recover([it[2] for it in batch], key, force=args.force)
            except (FaceveilError, ValueError, RuntimeError, OSError) as exc:
                for src, _, _ in batch:
                    report.fail(src, exc)
                bar.update(len(batch))
                continue
            for (src, dst, _), r in zip(batch, rec):
                try:
                    save_image(dst, r.image)
                    report.ok += 1
                except (FaceveilError, OSError) as exc:
                    report.fail(src, exc)
                bar.update(1)
        bar.close()
    return report.finish("recovered", args.output)
