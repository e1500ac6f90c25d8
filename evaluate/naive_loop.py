"""The naive baseline a user would write with diffusers: DDIMInverseScheduler then DDIMScheduler.

One plain batch, guidance 1, sign flips inside the latent mask from a seeded generator
(the published method's key), no lattice, no lift, no residual, no bucket padding. It is
what faceveil's speed is compared with; its recovery is not exact (DESIGN.md, section 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from faceveil.data.masks import latent_mask
from faceveil.models.backbones import Backbone
from faceveil.models.pipeline import to_tensor, to_uint8


@torch.no_grad()
def naive_anonymize(bb: Backbone, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], steps: int, seed: int = 0) -> np.ndarray:
    x = to_tensor(images).to(bb.device)
    mask_px = torch.from_numpy(np.stack(list(masks))[:, None].astype(np.float32)).to(bb.device)
    cond = bb.conditioning(x, mask_px)
    z = bb.encode(x)
    inverse = DDIMInverseScheduler.from_config(bb.scheduler.config)
    inverse.set_timesteps(steps)
    for t in inverse.timesteps:
        z = inverse.step(bb.eps(z, int(t), cond), t, z).prev_sample
    g = torch.Generator(device="cpu").manual_seed(seed)
    signs = (torch.randint(0, 2, z.shape, generator=g) * 2 - 1).to(z.device, z.dtype)
    m = latent_mask(mask_px, bb.vae_factor).to(z.dtype)
    z = m * signs * z + (1 - m) * z
    sampler = DDIMScheduler.from_config(bb.scheduler.config)
    sampler.set_timesteps(steps)
    for t in sampler.timesteps:
        z = sampler.step(bb.eps(z, int(t), cond), t, z).prev_sample
    out = to_uint8(bb.decode(z))
    return np.where(np.stack(list(masks))[..., None], out, np.stack(list(images)))
