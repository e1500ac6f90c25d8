"""faceveil anonymize PHOTO... -o OUTDIR --key KEYFILE [photo options | --aligned [--mask MASK_OR_DIR]]

Ordinary photos by default: every face is detected, aligned, anonymized and
blended back (:mod:`faceveil.cli.anonymize_photos`). ``--aligned`` (implied by
``--mask``, and by a folder written by ``faceveil prepare``) takes inputs that
are already aligned face crops, as the diffusion backbone sees them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceveil.cli.common import (
    Report,
    add_model_args,
    add_scheme_args,
    batches_by,
    check_output_folder,
    find_mask,
    load_backbone_for_cli,
    planned_outputs,
    positive_int,
    progress,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
    resolve_settings,
    settle,
    Writer,
)


def register(sub: argparse._SubParsersAction) -> None:
    from faceveil.cli.photo_args import add_face_args
    from faceveil.data.photo_io import DEFAULT_MAX_PIXELS

    p = sub.add_parser("anonymize", help="replace every face of photos with keyed synthetic faces; writes self-describing PNGs")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="photos, folders of photos, or a folder written by 'faceveil prepare'")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (not the input folder, nor inside it)")
    p.add_argument("--key", required=True, type=Path, help="key file from 'faceveil keygen'")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs are never overwritten)")
    p.add_argument("--allow-anonymized", action="store_true", help="anonymize faceveil outputs again (refused by default)")
    g = p.add_argument_group("photos (default mode)")
    add_face_args(g)
    g.add_argument("--mark", action="store_true",
                   help="draw a magenta edge just inside each synthetic face, so that viewers can tell (recovered exactly)")
    g.add_argument("--pixel-recovery", action="store_true",
                   help="also let copies without the file's record (stripped, re-encoded, resized, cropped) recover "
                   "approximately with the key: a keyed watermark in each face, template masks (not landmark-fitted), "
                   "the key on the face region only; see README 'Recovery from the pixels alone'")
    g.add_argument("--keep-faceless", action="store_true", help="write photos without a face unchanged (as PNG without metadata)")
    g.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help=f"refuse larger photos (default {DEFAULT_MAX_PIXELS}: what a file can hold; $FACEVEIL_MAX_PIXELS)")
    a = p.add_argument_group("aligned crops")
    a.add_argument("--aligned", action="store_true", help="inputs are aligned face crops; sides that are not multiples "
                   "of the backbone's (8) are padded at the bottom and right for the model and cut back after")
    a.add_argument(
        "--mask",
        type=Path,
        help="implies --aligned: a one-channel face mask (white = face) or a folder of masks named NAME_mask.png "
        "or NAME.mask.png; default: an ellipse",
    )
    f = p.add_argument_group("output file")
    f.add_argument("--record", choices=("embedded", "sidecar"), default="embedded",
                   help="where the sealed recovery record goes: inside the PNG (default), or a NAME.fvrec file beside "
                   "the image, so the published image can be any format")
    f.add_argument("--image-format", choices=("png", "jpg", "webp"), default="png",
                   help="format of the published image (jpg and webp need --record sidecar; lossy, so recovery "
                   "restores the faces exactly and leaves the rest as published)")
    f.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG/WebP quality (default 95; 100 is lossless WebP)")
    f.add_argument("--keep-original-file", action="store_true",
                   help="also seal the input file's bytes (EXIF and all), so recovery gives back the camera's file with "
                   "its SHA-256; the sealed part then grows by the input's size")
    from faceveil.video.cli import add_video_args  # videos

    add_video_args(p)
    add_scheme_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def output_suffix(args: argparse.Namespace) -> str:
    from faceveil.errors import InputError

    if args.image_format != "png" and args.record != "sidecar":
        raise InputError(f"--image-format {args.image_format} needs --record sidecar: only a PNG can hold the record")
    return "." + args.image_format


def record_options(args: argparse.Namespace, src: Path | str) -> dict:
    """Keyword arguments of the file writers for one input: record placement, quality, original file."""
    original = None
    if args.keep_original_file and isinstance(src, Path):
        original = src.read_bytes()
    return {"record": args.record, "quality": args.quality, "original_file": original,
            "original_suffix": src.suffix.lower()[:16] if original is not None else None}


ITEMS_IN_FLIGHT = 64  # aligned crops held in memory at once


@dataclass
class Item:
    src: Path | str
    dst: Path
    image: np.ndarray
    mask: np.ndarray


def _prepared_items(args: argparse.Namespace, report: Report):
    """Items of the prepared folders, one shard in memory at a time."""
    from faceveil.data.prepared import iter_prepared
    from faceveil.errors import FaceveilError

    for folder in args.inputs:
        try:
            for s in iter_prepared(folder):
                dst = args.output / f"{s.key}{output_suffix(args)}"
                if dst.exists() and not args.overwrite:
                    report.note(f"{dst}: exists, skipped (use --overwrite)")
                    report.skipped += 1
                    continue
                yield Item(f"{folder}:{s.key}", dst, s.image, s.mask)
        except FaceveilError as exc:
            report.fail(folder, exc)


def _file_items(args: argparse.Namespace, report: Report, pairs):
    from faceveil.data.photo_io import load_photo
    from faceveil.errors import FaceveilError

    for src, dst in pairs:
        try:
            image = load_photo(src, args.max_pixels, args.allow_anonymized)
            yield Item(src, dst, image, find_mask(src, args.mask, image.shape[:2]))
        except FaceveilError as exc:
            report.fail(src, exc)


def run(args: argparse.Namespace) -> int:
    from faceveil.data.prepared import is_prepared_folder

    check_output_folder(args.inputs, args.output)
    output_suffix(args)  # an impossible format choice fails before any work
    # --- videos: their own path (faceveil.video.cli); the photos and crops go on below
    from faceveil.video.cli import anonymize_videos, split_inputs

    videos, rest = split_inputs(args.inputs) if not getattr(args, "videos_routed", False) else ([], args.inputs)
    if videos and args.pixel_recovery:
        from faceveil.errors import InputError

        raise InputError("--pixel-recovery is for photos: video frames carry no recovery mark yet (their record recovers them exactly)")
    if videos:
        args.inputs, args.videos_routed = rest, True  # the photos in them, once
        status = anonymize_videos(args, videos)
        return status if not rest else max(status, run(args))
    # --- end videos
    prepared = [is_prepared_folder(i) for i in args.inputs]
    if any(prepared) and not all(prepared):
        from faceveil.errors import InputError

        raise InputError("give either folders written by 'faceveil prepare' or photos, not both in one run")
    if not (args.aligned or args.mask is not None or all(prepared)):
        from faceveil.cli.anonymize_photos import run_photos

        return run_photos(args)
    if args.pixel_recovery:
        from faceveil.errors import InputError

        raise InputError("--pixel-recovery is for photos, not aligned crops: their faces are not found and marked")
    return run_aligned(args, from_prepare=all(prepared))


def run_aligned(args: argparse.Namespace, from_prepare: bool = False) -> int:
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
    if from_prepare:
        from faceveil.data.prepared import prepared_count

        items, total = _prepared_items(args, report), sum(prepared_count(f) for f in args.inputs)
    else:
        pairs = list(planned_outputs(args.inputs, args.output, args.overwrite, report, skip=mask_file_of(args),
                                     suffix=output_suffix(args)))
        items, total = _file_items(args, report, pairs), len(pairs)
    anonymizer, bar = None, None
    writer = Writer(report)
    while chunk := list(itertools.islice(items, ITEMS_IN_FLIGHT)):  # bounded memory, however many inputs
        if anonymizer is None:
            device = resolve_device(args.device)
            backbone = load_backbone_for_cli(args.backbone, device, resolve_dtype(args.dtype, device))
            bar = progress(total, "anonymize")
            try:
                anonymizer = Anonymizer(backbone, resolve_settings(args, backbone), on_progress=bar.update,
                                        compile_unet=args.compile)
            except ValueError as exc:
                raise InputError(str(exc)) from None
        for batch in batches_by(chunk, lambda it: it.image.shape, args.batch_size):
            start = bar.n
            try:
                veiled = anonymize_padded(anonymizer, [it.image for it in batch], [it.mask for it in batch], key)
            except (FaceveilError, ValueError, RuntimeError) as exc:
                for it in batch:
                    report.fail(it.src, exc)
                veiled = []
            for it, v in zip(batch, veiled):
                # Written on a worker thread, overlapping the next batch.
                writer.submit(it.src, functools.partial(write_veiled, **record_options(args, it.src)), it.dst, v, key)
            settle(bar, start, len(batch))
    writer.close()
    if bar is not None:
        bar.close()
    return report.finish("anonymized", args.output)


def pad_to_multiple(image: np.ndarray, mask: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``mask`` grown at the bottom and right to sides that are multiples of ``m``:
    the image repeats its last row and column, the mask is False there (nothing drawn)."""
    import cv2

    h, w = mask.shape
    dh, dw = -h % m, -w % m
    if not (dh or dw):
        return image, mask
    return (cv2.copyMakeBorder(np.ascontiguousarray(image), 0, dh, 0, dw, cv2.BORDER_REPLICATE),
            np.pad(mask, ((0, dh), (0, dw)), constant_values=False))


def anonymize_padded(anonymizer, images: list[np.ndarray], masks: list[np.ndarray], key) -> list:
    """Anonymize crops of any size (CelebA's 178x218, say): padded to the backbone's multiple, then
    cut back, so the output has the input's size. The mask is empty in the padding, which the
    diffusion sees as context only; the file seals the input-sized crop."""
    m = anonymizer.backbone.size_multiple
    padded = [pad_to_multiple(im, mk, m) for im, mk in zip(images, masks)]
    veiled = anonymizer.anonymize([p[0] for p in padded], [p[1] for p in padded], key)
    out = []
    for im, v in zip(images, veiled):
        h, w = im.shape[:2]
        if v.image.shape[:2] != (h, w):
            v = dataclasses.replace(v, image=np.ascontiguousarray(v.image[:h, :w]), mask=np.ascontiguousarray(v.mask[:h, :w]),
                                    original=None if v.original is None else np.ascontiguousarray(v.original[:h, :w]),
                                    state=None, sealed_residual=None)  # the latents are the padded crop's
        out.append(v)
    return out


def mask_file_of(args: argparse.Namespace):
    """Inputs that are masks (NAME_mask.png / NAME.mask.png beside NAME.png): not photos to anonymize."""
    from faceveil.cli.common import is_mask_name

    return is_mask_name if args.mask is not None and args.mask.is_dir() else None
