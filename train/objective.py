"""The training objective: key-shifted faces far from the original identity, a UNet that stays a diffusion model.

One trajectory: the loss sees the images ``faceveil anonymize`` makes. Per batch (see
:meth:`Objective.training_inputs` and :meth:`VeilModel.losses`):

1. draw a fresh key and nonce per image: SHA-256 derived from a seed and the batch coordinates
   (``objective.key_seed``, or when unset a random per-run seed the training loop draws once
   and keeps in its checkpoints, so a resumed run draws the same keys); never torch's RNG;
2. without gradients, the UNet in eval mode, the deployed settings (``anonymize.scheme``,
   ``anonymize.steps``): encode, lift and invert the clean latents, then key the noise-end
   state with ``Anonymizer.keyed_noise`` / ``Anonymizer.key_fn`` -- the code ``anonymize``
   itself runs, so the key acts where and how it acts at inference;
3. with gradients through the LoRA UNet: sample from the keyed state on the same levels with
   the same arithmetic (:class:`faceveil.train.trajectory.Trajectory`; straight-through
   lattice rounding). ``unroll: full`` (default) runs the whole trajectory with each UNet call
   checkpointed and gives the clean latents ``anonymize`` gives with the same batching
   (``batch_invariant=False``) bit for bit (``torch.equal``; against its default fixed-bucket
   batching, within 1e-3);
   ``unroll: shortcut`` back-propagates through the first K = ``objective.grad_steps`` UNet
   calls, the high-noise steps that decide identity, and ends with the DDIM x0-prediction;
4. decode with the frozen autoencoder and paste the original pixels back outside the mask.

Losses (each weighted by the config and logged):
- identity: relu(cos(ArcFace(anonymized), ArcFace(original)) - margin);
- wrong key: the same for the face that recovery with a *wrong* key produces (its start is
  the keyed state re-keyed with the wrong key's inverse, as ``recover`` does), so a wrong key
  cannot bring the identity back;
- prior: the standard denoising loss, eps-MSE at uniformly random timesteps on the clean
  latents with the inpainting conditioning (torch's RNG);
- perceptual: LPIPS(anonymized, original), keeping pose, expression and lighting.

Exactness of recovery does not depend on the weights (the exact scheme inverts bit for bit
whatever the UNet computes), so no loss is needed for it; the validation step measures it.

All UNet calls, with and without gradients, go through :class:`VeilModel` -- the module that
``accelerator.prepare`` wraps -- so DDP, FSDP and DeepSpeed see one forward per backward
for the losses and sharded weights are gathered for the no-gradient calls too. Dropout
(``lora.dropout``) acts only in the differentiable forward: every no-gradient call runs the
UNet in eval mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from faceveil.keys import NONCE_BYTES, SecretKey, new_nonce
from faceveil.data.masks import latent_mask
from faceveil.models.backbones import Backbone
from faceveil.models.pipeline import Anonymizer
from faceveil.models.settings import Settings
from faceveil.train.config_schema import ObjectiveSection
from faceveil.train.trajectory import Trajectory

LOSS_NAMES = ("identity", "wrong_key", "prior", "perceptual")


@dataclass
class Frozen:
    """The frozen networks the objective uses; held outside the module tree so wrappers see only the UNet."""

    backbone: Backbone
    identity: nn.Module
    lpips: nn.Module | None = None


def build_lpips(net: str, backbone: str) -> nn.Module:
    """LPIPS with the package's linear heads; the feature net pretrained (torchvision, downloaded once) or random."""
    import lpips
    from faceveil.errors import ConfigError

    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=backbone == "random", verbose=False)
    except Exception as exc:  # noqa: BLE001 - torchvision download failures come in many types
        raise ConfigError(
            f"LPIPS ({net}) needs torchvision's ImageNet {net} weights, which could not be loaded ({exc.__class__.__name__}: "
            f"{exc}); put them in ~/.cache/torch/hub/checkpoints, or set objective.perceptual_backbone=random "
            "(offline, weak) or objective.perceptual_weight=0"
        ) from None
    model.eval().requires_grad_(False)
    return model


# --------------------------------------------------------------------------- keys


def draw_keys(n: int, key_seed: int | None = None, *coords: object) -> tuple[list[SecretKey], list[bytes]]:
    """``n`` fresh (key, nonce) pairs: random, or SHA-256 of (key_seed, coords, i) when ``key_seed`` is set."""
    if key_seed is None:
        return [SecretKey.generate() for _ in range(n)], [new_nonce() for _ in range(n)]
    keys, nonces = [], []
    for i in range(n):
        tag = "/".join(str(c) for c in (key_seed, *coords, i)).encode()
        keys.append(SecretKey(hashlib.sha256(b"faceveil/train/key\0" + tag).digest()))
        nonces.append(hashlib.sha256(b"faceveil/train/nonce\0" + tag).digest()[:NONCE_BYTES])
    return keys, nonces


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """The module in eval mode (no dropout) for the block; its previous mode restored after."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


# --------------------------------------------------------------------------- module


class VeilModel(nn.Module):
    """The UNet (with its LoRA adapter) plus the objective; the only trainable module.

    ``forward("eps", z=, t=, cond=)`` is the noise prediction (used without gradients for
    inversion and keying), ``forward("losses", ...)`` computes every loss.
    """

    def __init__(self, unet: nn.Module, frozen: Frozen, cfg: ObjectiveSection, settings: Settings) -> None:
        super().__init__()
        self.unet = unet
        self.frozen = frozen
        self.cfg = cfg
        self.bb = dataclasses.replace(frozen.backbone, unet=unet)
        scheme = Anonymizer(self.bb, settings).scheme  # the deployed scheme, schedule and step count
        self.schedule = scheme.schedule
        self.trajectory = Trajectory(scheme, cfg.unroll, cfg.grad_steps)

    # ------------------------------------------------------------ UNet calls
    def unet_raw(self, z: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The UNet's raw output (eps or v) for a batch of per-sample timesteps."""
        bb = self.bb
        x = z.to(bb.dtype)
        if bb.inpainting:
            x = torch.cat([x, cond["mask"].to(bb.dtype), cond["masked_latents"].to(bb.dtype)], dim=1)
        if bb.prompt_embeds is not None and "encoder_hidden_states" in _forward_params(self.unet):
            return self.unet(x, timesteps, encoder_hidden_states=bb.prompt_embeds.expand(z.shape[0], -1, -1)).sample
        return self.unet(x, timesteps).sample

    def step_eps(self, x: torch.Tensor, level: int, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.schedule.timestep(level)
        if self.cfg.checkpoint_steps and torch.is_grad_enabled():
            return checkpoint(lambda z: self.bb.eps(z, t, cond), x, use_reentrant=False)
        return self.bb.eps(x, t, cond)

    def unroll(self, state: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """Keyed noise-end state -> clean latents (B, C, h, w), float32, with gradients (see the module docstring)."""
        return self.trajectory.sample(state, lambda x, level: self.step_eps(x, level, cond)).float()

    def faces(self, x_clean: torch.Tensor, images: torch.Tensor, mask_px: torch.Tensor) -> torch.Tensor:
        decoded = self.bb.decode(x_clean).float().clamp(-1, 1)
        return mask_px * decoded + (1 - mask_px) * images

    def identity_cos(self, faces: torch.Tensor, landmarks: torch.Tensor | None, emb_orig: torch.Tensor) -> torch.Tensor:
        emb = self.frozen.identity.embed(faces, landmarks, expect_grad=True)
        return (emb.float() * emb_orig.float()).sum(-1)

    def prior_loss(self, z0: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        sched = self.bb.scheduler
        b = z0.shape[0]
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), device=z0.device)
        noise = torch.randn_like(z0, dtype=torch.float32)
        acp = sched.alphas_cumprod.to(z0.device, torch.float32)[t].view(b, 1, 1, 1)
        z0 = z0.float()
        zt = acp.sqrt() * z0 + (1 - acp).sqrt() * noise
        if sched.config.prediction_type == "v_prediction":
            target = acp.sqrt() * noise - (1 - acp).sqrt() * z0
        else:
            target = noise
        return F.mse_loss(self.unet_raw(zt, t, cond).float(), target)

    def pixel_loss(self, latent: torch.Tensor, anon: torch.Tensor, mask_px: torch.Tensor) -> torch.Tensor:
        """How far the anonymized latent moves through a website (see ObjectiveSection.pixel_weight), inside the mask."""
        seen = website_channel(anon, self.cfg.pixel_jpeg_quality, self.cfg.pixel_resize)
        again = self.bb.encode(seen.to(self.bb.dtype)).float()
        m = latent_mask(mask_px, self.bb.vae_factor).float()
        return (((again - latent) ** 2) * m).sum() / (m.sum() * latent.shape[1]).clamp(min=1) / latent.detach().var().clamp(min=1e-6)

    # ------------------------------------------------------------ forward
    def forward(self, kind: str, **kw: Any) -> Any:
        if kind == "eps":
            return self.bb.eps(kw["z"], kw["t"], kw["cond"])
        if kind == "losses":
            return self.losses(**kw)
        raise ValueError(f"unknown VeilModel call {kind!r}")

    def losses(self, start: torch.Tensor, z0: torch.Tensor, cond: dict[str, torch.Tensor], images: torch.Tensor,
               mask_px: torch.Tensor, landmarks: torch.Tensor | None, emb_orig: torch.Tensor,
               wrong_start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        c = self.cfg
        out: dict[str, torch.Tensor] = {}
        zero = start.new_zeros(())
        anon_latent = self.unroll(start, cond)
        anon = self.faces(anon_latent, images, mask_px)
        cos = self.identity_cos(anon, landmarks, emb_orig)
        out["identity"] = F.relu(cos - c.identity_margin).mean()
        out["identity_cos"] = cos.detach().mean()
        if wrong_start is not None:
            wrong = self.faces(self.unroll(wrong_start, cond), images, mask_px)
            wcos = self.identity_cos(wrong, landmarks, emb_orig)
            out["wrong_key"] = F.relu(wcos - c.wrong_key_margin).mean()
            out["wrong_key_cos"] = wcos.detach().mean()
        else:
            out["wrong_key"] = zero
        out["prior"] = self.prior_loss(z0, cond) if c.prior_weight > 0 else zero
        if c.perceptual_weight > 0 and self.frozen.lpips is not None:
            out["perceptual"] = self.frozen.lpips(anon.float(), images.float()).mean()
        else:
            out["perceptual"] = zero
        out["pixel"] = self.pixel_loss(anon_latent, anon, mask_px) if c.pixel_weight > 0 else zero
        out["loss"] = (
            c.identity_weight * out["identity"]
            + c.wrong_key_weight * out["wrong_key"]
            + c.prior_weight * out["prior"]
            + c.perceptual_weight * out["perceptual"]
            + c.pixel_weight * out["pixel"]
        )
        return out


def website_channel(images: torch.Tensor, quality: float, resize: float) -> torch.Tensor:
    """A differentiable stand-in for re-encoding (JPEG at ``quality``) and resizing (by ``resize`` and
    back) of (B, 3, H, W) images in [-1, 1]."""
    import kornia

    x = (images.float() + 1) / 2
    b, _, h, w = x.shape
    # kornia's JPEG works on sides that are multiples of 16.
    ph, pw = -h % 16, -w % 16
    padded = F.pad(x, (0, pw, 0, ph), mode="replicate")
    q = torch.full((b,), float(quality), device=x.device)
    x = kornia.enhance.jpeg_codec_differentiable(padded, q)[..., :h, :w]
    if resize < 1:
        small = F.interpolate(x, scale_factor=resize, mode="bilinear", antialias=True, align_corners=False)
        x = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    return x.clamp(0, 1) * 2 - 1


_PARAMS_CACHE: dict[type, tuple[str, ...]] = {}


def _forward_params(module: nn.Module) -> tuple[str, ...]:
    import inspect

    cls = type(module)
    if cls not in _PARAMS_CACHE:
        _PARAMS_CACHE[cls] = tuple(inspect.signature(cls.forward).parameters)
    return _PARAMS_CACHE[cls]


# --------------------------------------------------------------------------- per-batch inputs


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) in [-1, 1], float32
    mask: torch.Tensor  # (B, 1, H, W) {0, 1}, float32
    landmarks: torch.Tensor | None  # (B, 5, 2) pixels

    @classmethod
    def from_loader(cls, batch: dict[str, Any], device: torch.device, use_landmarks: bool = True) -> Batch:
        lm = batch.get("landmarks5") if use_landmarks else None
        return cls(
            images=batch["image"].to(device, torch.float32),
            mask=(batch["mask"] > 0.5).to(device, torch.float32),
            landmarks=lm.to(device, torch.float32) if lm is not None else None,
        )


class Objective:
    """Everything per batch that needs no gradients, then the losses through the wrapped model."""

    def __init__(self, cfg: ObjectiveSection, frozen: Frozen, settings: Settings) -> None:
        self.cfg = cfg
        self.frozen = frozen
        # The deployed pipeline's own keying and inversion: one trajectory for training and anonymize.
        self.anonymizer = Anonymizer(frozen.backbone, settings, batch_invariant=False)
        self.scheme = self.anonymizer.scheme

    @torch.no_grad()
    def training_inputs(self, model: Callable[..., Any], batch: Batch, keys: list[SecretKey], nonces: list[bytes],
                        wrong_keys: list[SecretKey] | None = None) -> dict[str, Any]:
        """Encode, lift, invert and key (UNet in eval mode); the keyword arguments of ``model("losses", ...)``."""
        bb = self.frozen.backbone
        modes = eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
        with modes:
            cond = bb.conditioning(batch.images, batch.mask)
            z0 = bb.encode(batch.images).float()
            eps = lambda z, t: model("eps", z=z, t=t, cond=cond)  # noqa: E731
            mask_lat = latent_mask(batch.mask, bb.vae_factor) > 0
            an = self.anonymizer
            keyed = an.keyed_noise(self.scheme.lift(z0, eps), eps, an.key_fn(mask_lat, keys, nonces))
            wrong_start = None
            if wrong_keys is not None:
                # Recovery with a wrong key: the keyed state re-keyed with the wrong key's inverse, as recover does.
                wrong_start = self.scheme.rekey(keyed, an.key_fn(mask_lat, wrong_keys, nonces, inverse=True), eps)
            emb_orig = self.frozen.identity.embed(batch.images, batch.landmarks).float()
        return dict(
            start=keyed,
            wrong_start=wrong_start,
            z0=z0,
            cond=cond,
            images=batch.images,
            mask_px=batch.mask,
            landmarks=batch.landmarks,
            emb_orig=emb_orig,
        )
