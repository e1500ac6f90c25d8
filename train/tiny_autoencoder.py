"""Train the ``tiny`` backbone's autoencoder: ``python -m faceveil.train.tiny_autoencoder``.

The tiny backbone's UNet stays random from its seed; its AutoencoderKL is trained here, so that
D(E(x)) resembles x and pixel-space recovery can be measured on tiny (DESIGN.md, section 11).

Training images are the non-face pictures that ship inside installed packages (skimage.data's
coffee, chelsea, rocket, ...; matplotlib's sample images), cut into random crops at random scales
and flips. The bundled face photos (astronaut, Grace Hopper, Tom Hanks, t1) are never trained on:
they are the held-out faces (``faceveil.data.samples.sample_face``) whose in-mask PSNR this
script reports. Fixed seed, one thread,
deterministic; writes ``models/weights/tiny_vae.safetensors`` and prints one JSON object with the
file's SHA-256 (copy it into ``models/backbones.py``'s ``TINY_VAE_SHA256``)::

    OMP_NUM_THREADS=1 python -m faceveil.train.tiny_autoencoder

This file only writes weights; ``faceveil.models.backbones`` reads them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from faceveil.data.images import elliptical_mask
from faceveil.data.samples import sample_face
from faceveil.errors import InputError
from faceveil.models.backbones import TINY_VAE_PATH, file_sha256, tiny_components

# (package, path inside it). No faces: skimage's astronaut, camera (a cameraman) and lfw_subset
# and matplotlib's grace_hopper are left out on purpose.
TRAINING_IMAGES: tuple[tuple[str, str], ...] = (
    ("skimage", "data/coffee.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/motorcycle_right.png"),
    ("skimage", "data/color.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/gravel.png"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/grass.png"),
    ("skimage", "data/horse.png"),
    ("skimage", "data/moon.png"),
    ("skimage", "data/page.png"),
    ("skimage", "data/text.png"),
    ("skimage", "data/cell.png"),
    ("skimage", "data/microaneurysms.png"),
    ("skimage", "data/clock_motion.png"),
    ("skimage", "data/logo.png"),
    ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
    ("matplotlib", "mpl-data/sample_data/logo2.png"),
)

COLOUR_SHARE = 0.75  # of crops drawn from the colour pictures
COLOUR_WEIGHT = 4.0  # of the L1 loss between 8x8 block means

HELD_OUT_FACES: tuple[str, ...] = ("astronaut", "grace_hopper", "tom_hanks")


def training_images() -> list[torch.Tensor]:
    """The training pictures as float tensors (3, H, W) in [-1, 1]."""
    images = []
    for package, rel in TRAINING_IMAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise InputError(f"package {package!r} is not installed; it carries training image {rel}")
        with Image.open(Path(spec.origin).parent / rel) as img:
            # Some carry transparency: flatten onto white, as a viewer shows them.
            rgba = img.convert("RGBA")
        arr = np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"))
        images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1)
    return images


def random_crops(images: Sequence[torch.Tensor], n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random crops (n, 3, size, size): scale in [0.25, 1], flips, mild colour casts.

    Half the bundled pictures are grey and few are skin-coloured, so colour pictures are drawn
    more often and every crop gets a random per-channel gain and offset.
    """
    colour = [img for img in images if not (torch.equal(img[0], img[1]) and torch.equal(img[1], img[2]))]
    grey = [img for img in images if not any(img is c for c in colour)]
    crops = []
    for _ in range(n):
        pool = colour if not grey or (colour and torch.rand((), generator=gen) < COLOUR_SHARE) else grey
        img = pool[int(torch.randint(len(pool), (1,), generator=gen))]
        _, h, w = img.shape
        scale = float(torch.empty(()).uniform_(0.25, 1.0, generator=gen))
        side = min(max(size, int(min(h, w) * scale)), h, w)
        y = int(torch.randint(h - side + 1, (1,), generator=gen))
        x = int(torch.randint(w - side + 1, (1,), generator=gen))
        crop = img[:, y : y + side, x : x + side][None]
        if side != size:
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if torch.rand((), generator=gen) < 0.5:
            crop = crop.flip(-1)
        gain = torch.empty(1, 3, 1, 1).uniform_(0.8, 1.2, generator=gen)
        shift = torch.empty(1, 3, 1, 1).uniform_(-0.1, 0.1, generator=gen)
        crops.append(((crop + 1) * gain + shift).clamp(0, 2) - 1)
    return torch.cat(crops).contiguous()


def _gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Edges carry most of a face's detail; L1 alone blurs them.
    da = (a[..., 1:, :] - a[..., :-1, :], a[..., :, 1:] - a[..., :, :-1])
    db = (b[..., 1:, :] - b[..., :-1, :], b[..., :, 1:] - b[..., :, :-1])
    return sum((x - y).abs().mean() for x, y in zip(da, db))


@torch.no_grad()
def face_psnr(vae: torch.nn.Module, face: np.ndarray) -> float:
    """PSNR (dB, 8-bit) of D(E(x)) against x inside the elliptical face mask."""
    x = torch.from_numpy(face.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    y8 = ((y.clamp(-1, 1) + 1) * 127.5).round()
    mask = torch.from_numpy(elliptical_mask(*face.shape[:2]))
    err = (y8[0].permute(1, 2, 0)[mask] - torch.from_numpy(face.copy())[mask].float()) ** 2
    return float(10 * np.log10(255.0**2 / err.mean().item()))


def train(steps: int, seed: int = 0, batch: int = 8, size: int = 96, lr: float = 2e-3, kl_weight: float = 1e-5,
          log_every: int = 100) -> torch.nn.Module:
    """Train tiny's autoencoder from its seeded initialisation; returns it in eval mode."""
    torch.manual_seed(seed)
    vae = tiny_components(seed, trained_vae=False)["vae"].float().train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )
    images = training_images()
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        x = random_crops(images, batch, size, gen)
        posterior = vae.encode(x).latent_dist
        # The mode, not a sample: faceveil only ever decodes the mode, and at this size the sampling
        # noise drowned everything but brightness (faces came back grey). The KL term keeps the
        # latents near unit scale, where the UNet's noise lives.
        y = vae.decode(posterior.mode()).sample
        # Colour at the latent's resolution, weighted up: without it this small autoencoder spends
        # its latents on brightness detail and decodes faces grey (14 dB on Grace Hopper).
        colour = (F.avg_pool2d(y, 8) - F.avg_pool2d(x, 8)).abs().mean()
        loss = (y - x).abs().mean() + _gradient_l1(y, x) + COLOUR_WEIGHT * colour + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)", file=sys.stderr)
    return vae.eval()


def save_weights(vae: torch.nn.Module, path: Path) -> str:
    """Write the autoencoder's state dict as safetensors; returns the file's SHA-256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in vae.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "what": "faceveil tiny AutoencoderKL"})
    return file_sha256(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=96, help="training crop side in pixels")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--output", type=Path, default=TINY_VAE_PATH)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    # Bit-reproducible: one thread, deterministic kernels, a seeded generator for crops and noise.
    torch.use_deterministic_algorithms(True)
    start = time.time()
    vae = train(args.steps, args.seed, args.batch, args.size, args.lr)
    sha = save_weights(vae, args.output)
    report: dict[str, Any] = {
        "output": str(args.output),
        "sha256": sha,
        "steps": args.steps,
        "seed": args.seed,
        "seconds": round(time.time() - start, 1),
        # Held out: faces at 256 px, never trained on.
        "face_psnr_db": {name: round(face_psnr(vae, sample_face(name)), 2) for name in HELD_OUT_FACES},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
