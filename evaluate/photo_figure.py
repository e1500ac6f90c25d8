"""The README's before/after picture: a bundled photo, anonymized by the photo pipeline.

    python -m faceveil.evaluate.photo_figure -o docs/anonymize_t1.png [--backbone tiny] [--steps 50]

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
    args = p.parse_args(argv)

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


if __name__ == "__main__":
    raise SystemExit(main())
