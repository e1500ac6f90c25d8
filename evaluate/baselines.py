"""Baselines evaluated side by side with faceveil.

- :class:`PublishedMethod`: the published method (Labarbarie, Itier, Puech, arXiv 2510.01031)
  as its released code runs: the key is a 32-bit ``torch`` seed whose Rademacher signs
  (``torch.Generator().manual_seed(seed)``) flip the starting noise inside the latent mask,
  the same signs for every image; plain DDIM inversion; no file metadata, so recovery
  re-encodes the 8-bit pixels and recomputes the mask on the *anonymized* image with the
  face detector and landmark mask (dlib here); no adapters. It is assembled from the
  foundation's pieces (:class:`~faceveil.models.schedule.Schedule`,
  :func:`~faceveil.models.inversion.make_scheme` with ``ddim``, the backbone's
  ``encode``/``decode``/``conditioning``/``eps``), not from faceveil's pipeline.
- :class:`BlurMethod`, :class:`PixelateMethod`, :class:`BlackBoxMethod`: the classic
  obfuscations, applied inside the same face mask; not recoverable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from faceveil.data.masks import latent_mask
from faceveil.models.backbones import Backbone
from faceveil.models.inversion import EpsFn, make_scheme
from faceveil.models.pipeline import to_tensor, to_uint8
from faceveil.models.schedule import Schedule


def paste(inside: np.ndarray, outside: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``inside`` where ``mask``, ``outside`` elsewhere ((H, W, 3) uint8, (H, W) bool)."""
    return np.where(mask[..., None], inside, outside).astype(np.uint8)


# --------------------------------------------------------------------------- classic obfuscation


@dataclass
class BlurMethod:
    sigma: float = 0.05  # fraction of the image side
    name: str = "blur"

    def apply(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        radius = max(self.sigma * image.shape[0], 0.5)
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
        return paste(blurred, image, mask)


@dataclass
class PixelateMethod:
    blocks: int = 8  # blocks across the image side
    name: str = "pixelate"

    def apply(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        n = max(1, self.blocks)
        small = Image.fromarray(image).resize((n, max(1, round(n * h / w))), Image.Resampling.BOX)
        return paste(np.asarray(small.resize((w, h), Image.Resampling.NEAREST)), image, mask)


@dataclass
class BlackBoxMethod:
    value: int = 0
    name: str = "blackbox"

    def apply(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return paste(np.full_like(image, self.value), image, mask)


# --------------------------------------------------------------------------- the published method


def seed_signs(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The published key: Rademacher signs from a 32-bit torch seed, one pattern for every image."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2, tuple(shape), generator=g).float() * 2.0 - 1.0


@dataclass
class Conditioned:
    """What one batch needs for the UNet: the eps function, the latent mask and the images."""

    eps: EpsFn
    mask_lat: torch.Tensor  # (B, 1, h, w) bool
    x: torch.Tensor  # images in [-1, 1]


class LatentPipe:
    """A backbone with one deterministic scheme, in pieces: condition, invert, re-key, sample.

    Shared by the published baseline (scheme ``ddim``) and the security suite, which
    needs the starting noise of an image and the noise an attacker can compute.
    """

    def __init__(self, backbone: Backbone, scheme: str, steps: int) -> None:
        self.backbone = backbone
        self.schedule = Schedule.from_scheduler(backbone.scheduler, steps)
        self.scheme = make_scheme(scheme, self.schedule)

    def condition(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Conditioned:
        bb = self.backbone
        x = to_tensor(images).to(bb.device)
        mask_px = torch.from_numpy(np.stack(list(masks))[:, None].astype(np.float32)).to(bb.device)
        cond = bb.conditioning(x, mask_px)
        return Conditioned(lambda z, t: bb.eps(z, t, cond), latent_mask(mask_px, bb.vae_factor) > 0, x)

    @torch.no_grad()
    def noise(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[torch.Tensor, Conditioned]:
        """Encode the 8-bit pixels and invert: the starting noise state (B, S, C, h, w)."""
        c = self.condition(images, masks)
        return self.scheme.invert(self.scheme.lift(self.backbone.encode(c.x), c.eps), c.eps), c

    @torch.no_grad()
    def invert_state(self, state: torch.Tensor, c: Conditioned) -> torch.Tensor:
        """Invert a stored clean-end state (faceveil's files carry it) to its starting noise."""
        return self.scheme.invert(state.to(self.backbone.device, self.scheme.state_dtype), c.eps)

    @torch.no_grad()
    def rekey(self, noise: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], c: Conditioned) -> torch.Tensor:
        return self.scheme.rekey(noise, fn, c.eps)

    @torch.no_grad()
    def finish(self, noise: torch.Tensor, c: Conditioned, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
        """Sample from ``noise``, decode, paste outside the masks: (uint8 images, clean latents)."""
        out = self.scheme.sample(noise, c.eps)
        z0 = self.scheme.endpoint(out)
        decoded = to_uint8(self.backbone.decode(z0))
        return np.stack([paste(decoded[i], images[i], masks[i]) for i in range(len(images))]), z0.float().cpu()


def sign_key_fn(seed: int, mask_lat: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """z -> M * (k * z) + (1 - M) * z with the seed's signs k (an involution)."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        k = seed_signs(seed, z.shape[1:]).to(device=z.device, dtype=z.dtype)
        return torch.where(mask_lat.expand_as(z), z * k, z)

    return fn


class PublishedScheme(LatentPipe):
    """Anonymize and recover as the published code does (see the module docstring)."""

    def __init__(self, backbone: Backbone, steps: int, mask_fallback: str = "ellipse", detector_upsample: int = 1) -> None:
        super().__init__(backbone, "ddim", steps)
        self.mask_fallback = mask_fallback
        self.detector_upsample = detector_upsample
        self._detector = None

    key_fn = staticmethod(sign_key_fn)

    # ------------------------------------------------------------------ masks
    def detect_masks(self, images: Sequence[np.ndarray], stored: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
        """The mask recomputed on each (anonymized) image; the fallback where no face is found."""
        from faceveil.data.detect_dlib import DlibDetector
        from faceveil.data.images import elliptical_mask
        from faceveil.data.masks import landmark_mask

        if self._detector is None:
            self._detector = DlibDetector(upsample=self.detector_upsample)
        masks, found = [], []
        for img, st in zip(images, stored):
            faces = self._detector.detect(img)
            m = None
            if faces:
                f = max(faces, key=lambda f: f.area)
                m = landmark_mask(f.landmarks, f.landmarks5, img.shape[:2])
                if not m.any():
                    m = None
            found.append(m is not None)
            if m is None:
                m = np.asarray(st, dtype=bool) if self.mask_fallback == "stored" else elliptical_mask(*img.shape[:2])
            masks.append(m)
        return masks, found

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def anonymize(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], seed: int) -> np.ndarray:
        z, c = self.noise(images, masks)
        keyed = self.scheme.rekey(z, self.key_fn(seed, c.mask_lat), c.eps)
        return self.finish(keyed, c, images, masks)[0]

    @torch.no_grad()
    def recover(self, images: Sequence[np.ndarray], seed: int, stored_masks: Sequence[np.ndarray]) -> tuple[np.ndarray, torch.Tensor, list[bool]]:
        """From pixels only: re-detect the mask, DDIM-invert, flip back with the seed, sample.

        ``stored_masks`` only serve the ``stored`` fallback. Returns images, latents and
        whether the mask was found on each anonymized image.
        """
        masks, found = self.detect_masks(images, stored_masks)
        z, c = self.noise(images, masks)
        unkeyed = self.scheme.rekey(z, self.key_fn(seed, c.mask_lat), c.eps)
        rec, z0 = self.finish(unkeyed, c, images, masks)
        return rec, z0, found
