"""``faceveil prepare INPUT... -o OUTDIR``: photos to aligned, masked face shards.

See :mod:`faceveil.data.prepare` for the pipeline and :mod:`faceveil.data.shards`
for the format. Exit status: 0 when every input was read (photos without a
usable face are skipped, listed in ``rejects.tsv``, and are not failures),
1 when any input could not be read or processed, 2 for a usage problem.
"""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="detect, align and mask faces into webdataset shards",
        description="Detect the faces in photos, align them FFHQ-style, compute facial masks and write "
        "webdataset shards (OUTDIR/shard-NNNNNN.tar) with index.json and rejects.tsv beside them. "
        "Re-running skips finished shards.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="photo files, folders (recursive), or list files (.txt/.lst/.list, one path per line)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the shards")
    p.add_argument("--size", type=int, default=256, help="aligned crop size in pixels (FFHQ-style; 256 or 512 typical; default 256)")
    p.add_argument("--faces", choices=("largest", "all", "single"), default="largest", help="several faces in a photo: keep the largest (default), all, or only photos with exactly one")
    p.add_argument("--min-face", type=float, default=64.0, metavar="PX", help="skip faces whose box is smaller than this (default 64)")
    p.add_argument("--detector", choices=("dlib", "insightface", "precomputed"), default="dlib", help="detection backend (default dlib, offline)")
    p.add_argument("--threshold", type=float, default=None, help="detection score threshold (default: dlib 0.0, insightface 0.5)")
    p.add_argument("--upsample", type=int, default=0, help="dlib: upsample the photo N times to find smaller faces (default 0)")
    p.add_argument("--insightface-dir", default="~/.insightface/models/buffalo_l", metavar="DIR", help="insightface: folder with det_10g.onnx and 2d106det.onnx (buffalo_l)")
    p.add_argument("--det-size", type=int, default=640, help="insightface: detector input size (default 640)")
    p.add_argument("--landmarks", metavar="FILE", help="precomputed: landmark table, CelebA layout (NAME x1 y1 ... with 5 or 68 points)")
    p.add_argument("--mask", choices=("landmarks", "parsing"), default="landmarks", help="mask from the landmarks (default) or from parsing maps")
    p.add_argument("--parsing-dir", metavar="DIR", help="parsing maps: <stem>.png label maps or CelebAMask-HQ <stem>_<class>.png files")
    p.add_argument("--mask-classes", metavar="LIST", help="comma-separated parsing classes (CelebAMask-HQ names or ids) that make the mask; default: skin, brows, eyes, glasses, ears, nose, mouth, lips")
    p.add_argument("--labels", choices=("folder", "none"), default="folder", help="identity label: the photo's folder name (LFW layout; default) or none")
    p.add_argument("--identity-file", metavar="FILE", help="identity labels by file name, CelebA identity_CelebA.txt layout")
    p.add_argument("--images-per-shard", type=int, default=1000, metavar="N", help="photos per shard (default 1000)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N", help="worker processes (default: CPU count, at most 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _summary(report, workers: int) -> str:  # noqa: ANN001 - PrepareReport, imported lazily
    lines = [
        f"prepare: {report.photos} photos, {report.faces_found} faces found, {report.samples} samples in "
        f"{report.shards} shard(s) in {report.out_dir}"
        + (f" ({report.shards_skipped} finished shard(s) kept)" if report.shards_skipped else "")
    ]
    if report.rejects:
        reasons = ", ".join(f"{n} {reason}" for reason, n in report.reasons().items())
        lines.append(f"rejected: {len(report.rejects)} ({reasons}); see {report.out_dir / 'rejects.tsv'}")
    else:
        lines.append("rejected: 0")
    if report.processed:
        lines.append(
            f"time: {report.seconds:.1f} s for {report.processed} photos, {report.seconds / report.processed:.3f} s per photo "
            f"({report.work_seconds / report.processed:.3f} s of work each, {workers} worker(s))"
        )
    if report.stale_shards:
        lines.append(f"note: {len(report.stale_shards)} shard file(s) in the folder are not from this run and not in index.json: {', '.join(report.stale_shards[:3])}{' ...' if len(report.stale_shards) > 3 else ''}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from faceveil.data.backends import DetectorSpec, MaskSpec
    from faceveil.data.extract import ExtractConfig
    from faceveil.data.masks import FACE_CLASSES
    from faceveil.data.prepare import prepare

    classes = tuple(c.strip() for c in args.mask_classes.split(",") if c.strip()) if args.mask_classes else FACE_CLASSES
    config = ExtractConfig(
        size=args.size,
        faces=args.faces,
        min_face=args.min_face,
        detector=DetectorSpec(
            name=args.detector,
            threshold=args.threshold,
            upsample=args.upsample,
            insightface_dir=args.insightface_dir,
            det_size=args.det_size,
            landmarks_file=args.landmarks,
        ),
        mask=MaskSpec(source=args.mask, parsing_dir=args.parsing_dir, classes=classes),
    )

    def on_error(reject) -> None:  # noqa: ANN001
        where = reject.source if reject.face is None else f"{reject.source} (face {reject.face})"
        tqdm.write(f"faceveil prepare: {where}: {reject.reason}", file=sys.stderr)

    report = prepare(
        args.inputs,
        args.output,
        config,
        images_per_shard=args.images_per_shard,
        workers=args.workers,
        labels=args.labels,
        identity_file=args.identity_file,
        progress=not args.no_progress,
        on_error=on_error,
    )
    print(_summary(report, args.workers))
    return 1 if report.errors else 0
