"""``faceveil anonymize`` on ordinary photos: detect, plan, anonymize in batches, write.

Photos are read and their faces planned one by one (a bad photo is one line and
the batch goes on); the crops of all photos then go through the backbone in
batches of ``--batch-size`` faces, a few photos at a time so that memory stays
bounded whatever the number of photos.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceveil.cli.common import (
    Report,
    load_backbone_for_cli,
    planned_outputs,
    progress,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
    resolve_settings,
)

PHOTOS_IN_FLIGHT = 8  # photos whose pixels are held at once


@dataclass
class PhotoItem:
    src: Path
    dst: Path
    image: np.ndarray
    faces: list  # list[PhotoFace]


def run_photos(args: argparse.Namespace) -> int:
    from faceveil.data.images import save_image
    from faceveil.cli.photo_args import face_policy, hand_regions
    from faceveil.data.photo_detect import LEFT, NoFaceError
    from faceveil.data.photo_io import load_photo
    from faceveil.errors import FaceveilError, InputError
    from faceveil.keys import load_key
    from faceveil.models.photo import PhotoAnonymizer, mark_synthetic, treatment_summary
    from faceveil.models.photo_api import PhotoFinder, save_result
    from faceveil.models.pipeline import Anonymizer
    from faceveil.cli.anonymize import output_suffix, record_options

    quiet_libraries()
    report = Report("anonymize")
    key = load_key(args.key)
    pairs = list(planned_outputs(args.inputs, args.output, args.overwrite, report, suffix=output_suffix(args)))
    if not pairs:
        return report.finish("anonymized", args.output)
    policy = face_policy(args)
    regions = hand_regions(args)
    bar = progress(len(pairs), "anonymize")
    faces_done = [0.0, 0]  # diffusion faces' worth of work done, faces in the batch: the progress phase

    def on_faces(n: float) -> None:
        faces_done[0] += n
        bar.set_postfix_str(f"diffusion {min(faces_done[0], faces_done[1]):.1f}/{faces_done[1]} faces")

    if args.method == "diffusion":
        device = resolve_device(args.device)
        backbone = load_backbone_for_cli(args.backbone, device, resolve_dtype(args.dtype, device))
        try:
            photos = PhotoAnonymizer(Anonymizer(backbone, resolve_settings(args, backbone), on_progress=on_faces), args.batch_size)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    else:
        photos = PhotoAnonymizer(None)  # covers only: no model to load
    finder = PhotoFinder(photos.size, args.detector, policy, args.detect_size, args.sideways)
    pending: list[PhotoItem] = []

    def flush() -> None:
        if not pending:
            return
        faces_done[:] = [0.0, sum(f.treatment == "diffusion" for it in pending for f in it.faces)]
        try:
            veiled = photos.anonymize([(it.image, it.faces) for it in pending], key)
        except (FaceveilError, ValueError, RuntimeError) as exc:
            for it in pending:
                report.fail(it.src, exc)
            veiled = []
        for i, note in photos.notes:
            report.note(f"{pending[i].src}: {note}")
        for it, vp in zip(pending, veiled):
            if args.mark:
                mark_synthetic(vp)
            bar.set_postfix_str(f"writing {it.src.name}")
            try:
                save_result(it.dst, vp, key, **record_options(args, it.src))
                report.ok += 1
            except (FaceveilError, OSError, ValueError) as exc:
                report.fail(it.src, exc)
                continue
            report.note(f"{it.src}: {treatment_summary(vp.faces)}")
            if any(f.treatment == LEFT for f in vp.faces):
                report.left_visible.append(str(it.dst))
        bar.update(len(pending))
        pending.clear()

    for src, dst in pairs:
        bar.set_postfix_str(f"detecting in {src.name}")
        try:
            image = load_photo(src, args.max_pixels, args.allow_anonymized)
            pending.append(PhotoItem(src, dst, image, finder.find(image, str(src), regions)))
        except NoFaceError as exc:
            if args.keep_faceless:
                save_image(dst, image)  # pixels only: no metadata of the input
                report.note(f"{src}: {exc}; written unchanged (--keep-faceless)")
                report.ok += 1
            else:
                report.note(f"{src}: {exc}; skipped (use --keep-faceless to write it unchanged)")
                report.skipped += 1
            bar.update(1)
            continue
        except FaceveilError as exc:
            report.fail(src, exc)
            bar.update(1)
            continue
        if len(pending) >= PHOTOS_IN_FLIGHT or sum(len(it.faces) for it in pending) >= 4 * args.batch_size:
            flush()
    flush()
    bar.close()
    return report.finish("anonymized", args.output)
