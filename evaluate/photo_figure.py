"""The README's pictures: a bundled photo anonymized by the photo pipeline, or its masks.

    python -m faceveil.evaluate.photo_figure -o docs/anonymize_t1.png [--backbone tiny] [--steps 50]
    python -m faceveil.evaluate.photo_figure --masks -o docs/mask_extent.png

With ``--masks``: t1 and Grace Hopper with the outline of each face's region
for ``--mask-extent face`` (green) and ``head`` (magenta); no model is run.

Left: insightface's t1 group photo; right: ``faceveil anonymize`` of it with the
given backbone (the tiny one has random weights: its faces are keyed noise, not
realistic faces). Written at ``--width`` px per panel with a 256-colour palette
so that it stays small.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faceveil.evaluate.photo_figure", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--photo", default="t1_group")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--masks", action="store_true", help="draw the mask extents on t1 and Grace Hopper instead")
    args = p.parse_args(argv)
    if args.masks:
        return mask_figure(args.output, args.width)

    from faceveil.data.images import atomic_write, load_image
    from faceveil.data.samples import sample_photo_path
    from faceveil.keys import SecretKey
    from faceveil.models.photo_api import anonymize_photo
    from faceveil.models.settings import Settings

    original = load_image(sample_photo_path(args.photo))
    result = anonymize_photo(original, SecretKey.generate(), backbone=args.backbone, settings=Settings(steps=args.steps))
    h = round(original.shape[0] * args.width / original.shape[1])
    panels = [np.asarray(Image.fromarray(x).resize((args.width, h), Image.Resampling.LANCZOS)) for x in (original, result.image)]
    gap = np.full((h, 8, 3), 255, np.uint8)
    both = Image.fromarray(np.concatenate([panels[0], gap, panels[1]], axis=1)).quantize(256, dither=Image.Dither.NONE)
    atomic_write(args.output, lambda tmp: both.save(tmp, format="PNG", optimize=True))
    print(f"wrote {args.output} ({len(result.faces)} faces)")
    return 0


EXTENT_COLOURS = {"face": (40, 220, 60), "head": (230, 40, 230)}


def mask_figure(output: str, width: int) -> int:
    import cv2

    from faceveil.data.images import atomic_write, load_image
    from faceveil.data.photo_detect import FacePolicy
    from faceveil.data.samples import sample_photo_path
    from faceveil.models.photo_api import PhotoFinder

    panels = []
    for name in ("t1_group", "grace_hopper"):
        image = load_image(sample_photo_path(name))
        out = image.copy()
        thick = max(2, round(image.shape[1] / width))
        for extent, colour in EXTENT_COLOURS.items():
            for f in PhotoFinder(512, policy=FacePolicy(mask_extent=extent)).find(image):
                r = f.region(image.shape[:2])
                inside = np.zeros(image.shape[:2], np.uint8)
                inside[r.slices()] = r.inside
                contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(out, contours, -1, colour, thick)
        h = round(image.shape[0] * width / image.shape[1]) if name == "t1_group" else None
        panels.append(out if h is None else np.asarray(Image.fromarray(out).resize((width, h), Image.Resampling.LANCZOS)))
    h = panels[0].shape[0]
    w2 = round(panels[1].shape[1] * h / panels[1].shape[0])
    panels[1] = np.asarray(Image.fromarray(panels[1]).resize((w2, h), Image.Resampling.LANCZOS))
    gap = np.full((h, 8, 3), 255, np.uint8)
    both = Image.fromarray(np.concatenate([panels[0], gap, panels[1]], axis=1)).quantize(256, dither=Image.Dither.NONE)
    atomic_write(output, lambda tmp: both.save(tmp, format="PNG", optimize=True))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
