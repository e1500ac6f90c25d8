"""Recover images that carry no faceveil record from their pixels: ``faceveil recover`` on a copy.

Faces anonymized with ``--pixel-recovery`` carry a keyed watermark; this finds them, inverts them
with the model and the key and writes the photo with the faces restored, approximately. An image
with no mark under the key fails with one line.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from faceveil.cli.common import Report, Writer, load_backbone_for_cli, progress, quiet_libraries, resolve_device, resolve_dtype, resolve_settings


from faceveil.errors import FormatError


def parse_scales(text: str) -> tuple[float, ...]:
    from faceveil.errors import InputError

    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        scales = ()
    if not scales or any(not 0.25 <= s <= 8 for s in scales):
        raise InputError(f"--scales takes factors between 0.25 and 8, comma-separated, not {text[:40]!r}")
    return scales


NO_RECORD = ("no faceveil record: not a faceveil file, or its metadata was stripped or it was re-encoded (an image "
             "published with --record sidecar needs its NAME.fvrec beside it, or --record FILE); and no face marked under "
             "this key in its pixels (not anonymized with --pixel-recovery, another key, or too damaged)")


def recover_pixel_files(args: argparse.Namespace, key, pairs: list[tuple[Path, Path]], report: Report) -> None:
    """Search each image for marks (no model needed); the model loads at the first marked one. One
    image in memory at a time."""
    from faceveil.data.images import save_image
    from faceveil.data.photo_io import load_photo
    from faceveil.errors import FaceveilError
    from faceveil.watermark import find

    scales = parse_scales(args.scales)
    recoverer: object = None  # the PixelRecoverer once loaded; an error line if it failed to
    writer = Writer(report)
    bar = progress(len(pairs), "recover from pixels")
    for src, dst in pairs:
        bar.set_postfix_str(f"searching {src.name}")
        try:
            image = load_photo(src)
            marks = find(image, key, scales)
            if not marks:
                raise FormatError(NO_RECORD)
            if recoverer is None:
                recoverer = _load_recoverer(args)
            if isinstance(recoverer, str):
                raise FormatError(recoverer)
            bar.set_postfix_str(f"recovering {src.name}")
            result = recoverer.recover(image, key, scales, marks=marks)
            if result is None:  # marks whose faces lie outside the image
                raise FormatError(NO_RECORD)
        except (FaceveilError, ValueError, RuntimeError, OSError) as exc:
            report.fail(src, exc)
        else:
            report.note(f"{src}: {result.summary()}")
            # A recovered photo is as private as the key.
            writer.submit(src, functools.partial(save_image, mode=0o600), dst, result.image)
        bar.update(1)
    writer.close()
    bar.close()


def _load_recoverer(args: argparse.Namespace):  # -> PixelRecoverer | str
    """The model for marked faces, or the one line saying why it did not load."""
    from faceveil.cli.common import apply_threads
    from faceveil.errors import FaceveilError
    from faceveil.machine import default_backbone
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.pixel_recovery import PixelRecoverer

    apply_threads(args.threads)
    quiet_libraries()
    try:
        device = resolve_device(args.device)
        backbone = load_backbone_for_cli(args.backbone or default_backbone(), device, resolve_dtype(args.dtype, device))
        return PixelRecoverer(Anonymizer(backbone, resolve_settings(args, backbone)), args.inversion_steps)
    except (FaceveilError, ValueError, OSError) as exc:
        return f"faces marked under this key were found, but the model to recover them did not load: {exc}"
