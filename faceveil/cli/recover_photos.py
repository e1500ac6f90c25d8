"""``faceveil recover`` for anonymized photos (files with a record per face)."""

from __future__ import annotations

import argparse
from pathlib import Path

from faceveil.cli.common import Report, load_backbone_for_cli, resolve_device, resolve_dtype


def recover_photo_files(args: argparse.Namespace, key, pairs: list[tuple[Path, Path]], report: Report) -> None:
    import torch

    from faceveil.data.images import save_image
    from faceveil.errors import FaceveilError
    from faceveil.models.photo import PhotoAnonymizer
    from faceveil.models.pipeline import Anonymizer
    from faceveil.photofile import read_photo

    device = resolve_device(args.device)
    backbones: dict[tuple[str, torch.dtype], object] = {}
    for src, dst in pairs:
        try:
            vp = read_photo(src, key, allow_unverified=args.force)
            if vp.key_fingerprint != key.fingerprint and not args.force:
                raise FaceveilError(f"wrong key: {args.key} has fingerprint {key.fingerprint}, the photo needs "
                                    f"{vp.key_fingerprint} (use --force to try anyway)")
            if vp.authenticated is False:
                report.note(f"{src}: metadata does not authenticate under this key; trying anyway")
            if not vp.meta.get("pixels_intact", True):
                report.note(f"{src}: pixels changed since anonymization; recovery will not be exact")
            if not vp.faces:
                save_image(dst, vp.image)
                report.ok += 1
                continue
            v0 = vp.faces[0].veiled
            recorded = v0.compute.get("dtype")
            dtype = getattr(torch, recorded) if args.dtype == "auto" and recorded in ("float32", "bfloat16", "float16") \
                else resolve_dtype(args.dtype, device)
            spec = args.backbone or v0.backbone
            if (spec, dtype) not in backbones:
                backbones[(spec, dtype)] = load_backbone_for_cli(spec, device, dtype)
            [image] = PhotoAnonymizer(Anonymizer(backbones[(spec, dtype)], v0.settings), args.batch_size).recover([vp], key, force=True)
            save_image(dst, image)
            report.ok += 1
        except (FaceveilError, ValueError, RuntimeError, OSError) as exc:
            report.fail(src, exc)
