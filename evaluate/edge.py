"""Edge quality of keying the whole starting noise versus only the face region.

Keying the whole noise (the default: the outside noise is otherwise a function of the face)
samples a new image everywhere, and the outside is pasted back. An inpainting UNet is
conditioned on the outside, so its face fits; an unconditional one (ldm-ffhq) may leave a
seam at the mask's edge. ``seam`` is the mean absolute step across the mask's edge (between
4-neighbours on either side), relative to the same step in the original: 1 is seamless.

``python -m faceveil.evaluate.edge --backbone tiny`` (inpainting) and ``--backbone
tiny-uncond`` (the ldm-ffhq layout at toy size: an unconditional UNet2DModel).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def seam(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean |I(p) - I(q)| over 4-neighbour pairs with p inside and q outside the mask."""
    img = image.astype(np.float64)
    steps = []
    for axis in (0, 1):
        a, b = np.swapaxes(mask, 0, axis), np.swapaxes(img, 0, axis)
        edge = a[1:] != a[:-1]
        steps.append(np.abs(b[1:] - b[:-1])[edge].mean(-1))
    return float(np.concatenate(steps).mean())


def tiny_uncond():  # -> Backbone
    """The ldm-ffhq layout (unconditional UNet2DModel) at toy size, with the tiny autoencoder."""
    from diffusers import DDIMScheduler, UNet2DModel

    from faceveil.models.backbones import LDM_SCHEDULER, Backbone, tiny_components

    parts = tiny_components(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                           attention_head_dim=8, norm_num_groups=8)  # fmt: skip
    bb = Backbone("tiny-uncond", "tiny-uncond", unet, parts["vae"], DDIMScheduler(**LDM_SCHEDULER), 1.0)
    bb.unet.eval()
    bb.vae.eval()
    return bb.requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    from faceveil.data.images import elliptical_mask
    from faceveil.evaluate.linking import sample_faces
    from faceveil.keys import SecretKey
    from faceveil.models.backbones import load_backbone
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.settings import Settings

    p = argparse.ArgumentParser(prog="python -m faceveil.evaluate.edge", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny", help="a backbone spec, or tiny-uncond")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--faces", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bb = tiny_uncond() if args.backbone == "tiny-uncond" else load_backbone(args.backbone, device="cpu")
    faces = sample_faces(args.out / "samples", args.size)[: args.faces]
    mask = elliptical_mask(args.size, args.size)
    base = np.mean([seam(f, mask) for f in faces])
    key = SecretKey.generate()
    res: dict[str, object] = {"backbone": args.backbone, "inpainting": bb.inpainting, "faces": len(faces), "original_seam": base}
    for region in ("mask", "whole"):
        an = Anonymizer(bb, Settings("exact", args.steps))
        an.key_region = region
        out = an.anonymize(faces, [mask] * len(faces), key)
        res[f"seam_{region}"] = float(np.mean([seam(v.image, mask) for v in out]) / base)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
