"""Recovery from the pixels alone: a stripped, re-encoded, resized or cropped copy and the key.

1. :func:`faceveil.watermark.find` locates every region marked under the key and reads its body;
   a copy resized by 1/2 is read at twice its size, a cropped one on its shifted grid.
2. :func:`faceveil.models.pixel_geometry.resolve` rebuilds each face's crop geometry and template
   mask from the body and where the mark lies; :func:`pixel_nonce` its nonce.
3. Decoder inversion: the latent whose decoding matches the face's pixels (Adam from the encoder's
   latent, inside the mask), since the face was drawn by the decoder. Outside the mask the latent
   stays the encoder's: the key never touched it (pixel-recoverable faces key the mask only).
4. The scheme's inversion with the key's inverse, then sampling (:meth:`Anonymizer.recover_latents`).
5. Each recovered crop is blended back; every other pixel stays as given.

The result is approximate. Its quality estimate is the consistency of the round trip: the
recovered face, anonymized again with the key and the same nonce, against the pixels given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from faceveil.data.align import warp_face
from faceveil.data.masks import latent_mask
from faceveil.data.photo_align import context_crop, context_photo, face_region, paste_face
from faceveil.keys import SecretKey
from faceveil.models.photo import keyed_region, native_size
from faceveil.models.pipeline import Anonymizer, psnr, to_tensor
from faceveil.models.pixel_geometry import Geometry, pixel_nonce, resolve, template_mask
from faceveil.watermark import Mark, find

DEFAULT_SCALES = (1.0, 2.0)
INVERSION_STEPS = 200


@dataclass
class PixelFace:
    mark: Mark
    geometry: Geometry
    consistency_db: float = float("nan")  # the recovered face anonymized again against the given pixels


@dataclass
class PixelRecovery:
    image: np.ndarray  # (H, W, 3) uint8: the input with every marked face recovered
    faces: list[PixelFace] = field(default_factory=list)
    scale: float = 1.0  # the factor the input was read at

    def summary(self) -> str:
        est = [f.consistency_db for f in self.faces if np.isfinite(f.consistency_db)]
        where = f", read at {self.scale:g}x" if self.scale != 1 else ""
        quality = f"; round-trip consistency {min(est):.1f} dB (worst face)" if est else ""
        return f"approximate (pixels only): {len(self.faces)} face(s) found by their marks{where}{quality}"


def invert_decoder(decode: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, target: torch.Tensor,
                   mask: torch.Tensor, steps: int = INVERSION_STEPS, lr: float = 0.05) -> torch.Tensor:
    """z minimizing the squared error of ``decode(z)`` against ``target`` inside ``mask`` (N, 1, H, W), from ``start``."""
    z = start.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    weight = mask / mask.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    for _ in range(steps):
        with torch.enable_grad():
            loss = (((decode(z.to(start.dtype)).float() - target) ** 2) * weight).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        sched.step()
    return z.detach().to(start.dtype)


class PixelRecoverer:
    """Find and recover every face marked under a key, with one :class:`Anonymizer` (its settings
    must be those the faces were anonymized with)."""

    def __init__(self, anonymizer: Anonymizer, inversion_steps: int = INVERSION_STEPS, estimate: bool = True) -> None:
        self.anonymizer = anonymizer
        self.size = native_size(anonymizer.backbone)
        self.inversion_steps = inversion_steps
        self.estimate = estimate

    def recover(self, image: np.ndarray, key: SecretKey, scales: Sequence[float] = DEFAULT_SCALES,
                marks: Sequence[Mark] | None = None) -> PixelRecovery | None:
        """The recovered photo, or None when no region carries a mark under ``key`` (``marks``: what
        :func:`faceveil.watermark.find` already read from ``image``)."""
        marks = find(image, key, scales) if marks is None else list(marks)
        if not marks:
            return None
        scale = marks[0].scale
        h, w = image.shape[:2]
        work = image if scale == 1 else cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        faces = [PixelFace(m, resolve(m, self.size)) for m in marks]
        hw = work.shape[:2]
        matrices = [f.geometry.matrix(self.size) for f in faces]
        masks = [template_mask(self.size, f.geometry.extent) for f in faces]
        regions = [face_region(m, a, hw) for m, a in zip(masks, matrices)]
        kept = [i for i, r in enumerate(regions) if r is not None]
        faces, matrices, masks, regions = ([x[i] for i in kept] for x in (faces, matrices, masks, regions))
        if not faces:
            return None
        context = context_photo(work, regions)
        given = [np.where(m[..., None], warp_face(work, a, self.size), context_crop(context, a, self.size))
                 for m, a in zip(masks, matrices)]
        nonces = [pixel_nonce(key, f.mark.body) for f in faces]
        recovered = self._recover_crops(given, masks, nonces, key, faces)
        out = work.copy()
        for crop, a, r in zip(recovered, matrices, regions):
            paste_face(out, crop, a, r)
        if scale != 1:
            # Back at the input's size, changing only the faces' regions.
            changed = np.zeros(hw, dtype=np.uint8)
            for r in regions:
                changed[r.slices()] |= r.inside.astype(np.uint8)
            small = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)
            inside = cv2.resize(changed, (w, h), interpolation=cv2.INTER_AREA) > 0
            out = np.where(inside[..., None], small, image)
        return PixelRecovery(out, faces, scale)

    def _recover_crops(self, given: list[np.ndarray], masks: list[np.ndarray], nonces: list[bytes], key: SecretKey,
                       faces: list[PixelFace]) -> list[np.ndarray]:
        an = self.anonymizer
        bb = an.backbone
        bodies = [f.mark.body for f in faces]
        recovered: list[np.ndarray] = []
        batch = max(1, an.max_bucket)
        for start in range(0, len(given), batch):
            sl = slice(start, start + batch)
            x = to_tensor(given[sl]).to(bb.device, bb.dtype)
            m = torch.from_numpy(np.stack(masks[sl])[:, None].astype(np.float32)).to(bb.device)
            with torch.no_grad():
                z_enc = bb.encode(x)
            # Eroded: the blended edge and the warp's interpolation are not the decoder's pixels.
            core = torch.nn.functional.max_pool2d(1 - m, 9, stride=1, padding=4).lt(0.5).float()
            z = invert_decoder(bb.decode, z_enc, x.float(), core, self.inversion_steps)
            # The cells the key acted on (the anonymizer's own latent mask): the decoder's latent there.
            z = torch.where(latent_mask(m, bb.vae_factor) > 0, z, z_enc)
            with keyed_region(an, bodies[sl]):
                out = an.recover_latents(z, given[sl], masks[sl], key, nonces[sl])
            recovered.extend(out)
        if self.estimate:
            with keyed_region(an, bodies):
                again = an.anonymize(recovered, masks, key, nonces=nonces, allow_caller_nonces=True)
            for f, v, g, mk in zip(faces, again, given, masks):
                f.consistency_db = psnr(v.image[mk], g[mk])
        return recovered
