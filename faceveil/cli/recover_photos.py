"""``faceveil recover`` for version 2 photo files: each face replayed through the model, then the photo
residual. Version 3 photo files open without a model (:func:`faceveil.cli.recover.recover_v3`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from faceveil.cli.common import Report, load_backbone_for_cli, resolve_device, resolve_dtype


def is_photo_file(path: Path) -> bool:
    from faceveil.errors import FormatError
    from faceveil.fileformat import read_header
    from faceveil.photofile import is_photo_header

    try:
        return is_photo_header(read_header(path))
    except FormatError:
        return False  # the aligned-crop path reports it


def recover_photo_files(args: argparse.Namespace, key, pairs: list[tuple[Path, Path]], report: Report) -> None:
    import torch

    from faceveil.data.images import save_image
    from faceveil.errors import FaceveilError, InputError
    from faceveil.fileformat import escape
    from faceveil.models.photo import PhotoAnonymizer
    from faceveil.models.pipeline import Anonymizer
    from faceveil.cli.recover import V2_NOTE
    from faceveil.models.same_weights import weights_mismatch
    from faceveil.photofile import read_photo

    device = resolve_device(args.device)
    backbones: dict[tuple[str, torch.dtype], object] = {}
    for src, dst in pairs:
        try:
            vp = read_photo(src, key, force=args.force)
            for what in vp.meta.get("bypassed", []):
                report.note(f"{src}: --force bypassed: {what}")
            v0 = vp.faces[0].veiled
            if v0.adapter_hash and not args.backbone:
                raise InputError(f"made with adapter {escape(v0.adapter_name)} (sha256 {escape(v0.adapter_hash)}); "
                                 "pass --backbone EXPORT_FOLDER")
            recorded = v0.compute.get("dtype")
            dtype = getattr(torch, recorded) if args.dtype == "auto" and recorded in ("float32", "bfloat16", "float16") \
                else resolve_dtype(args.dtype, device)
            spec = args.backbone or v0.backbone
            if (spec, dtype) not in backbones:
                backbones[(spec, dtype)] = load_backbone_for_cli(spec, device, dtype)
            bb = backbones[(spec, dtype)]
            # Other weights draw another face with no error: the same check as aligned crops.
            why = weights_mismatch(v0.backbone, v0.adapter_hash, bb)
            if why is not None:
                if not args.force:
                    raise InputError(f"wrong weights: {why}")
                report.note(f"{src}: --force bypasses the weights check: {why.needs}, recovering with {why.loaded}")
            report.note(f"{src}: {V2_NOTE}")
            photos = PhotoAnonymizer(Anonymizer(bb, v0.settings), args.batch_size)
            [image] = photos.recover([vp], key, force=args.force)
            save_image(dst, image, mode=0o600)  # a recovered original is as private as the key
            report.ok += 1
        except (FaceveilError, ValueError, RuntimeError, OSError) as exc:
            report.fail(src, exc)
