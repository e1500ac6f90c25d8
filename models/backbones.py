"""Diffusion backbones by name: UNet + autoencoder + DDIM schedule (+ fixed prompt embedding).

``load_backbone(spec)`` accepts:
- ``tiny``: the sd2-inpaint classes at toy size: a random UNet from a fixed seed and a small
  trained autoencoder (``models/weights/tiny_vae.safetensors``, written by
  ``python -m faceveil.train.tiny_autoencoder``);
- ``sd2-inpaint`` or ``sd2-inpaint:<hub id or folder>``: Stable Diffusion 2 inpainting
  (9-channel UNet2DConditionModel, kl-f8 AutoencoderKL, scaling 0.18215);
- ``ldm-ffhq`` or ``ldm-ffhq:<hub id or folder>``: the published method's unconditional
  UNet2DModel on VQ latents at 256 px;
- a folder written by ``faceveil export`` (it holds ``faceveil.json``).

``build_backbone(name, random_weights=True)`` builds a real layout from its config
with random weights, for benchmarks.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNet2DModel, VQModel

from faceveil.errors import ConfigError

SD2_INPAINT_ID = "stabilityai/stable-diffusion-2-inpainting"
LDM_FFHQ_ID = "CompVis/ldm-celebahq-256"
EXPORT_MANIFEST = "faceveil.json"
# tiny's trained autoencoder (python -m faceveil.train.tiny_autoencoder writes it) and its digest.
TINY_VAE_PATH = Path(__file__).resolve().parent / "weights" / "tiny_vae.safetensors"
TINY_VAE_SHA256 = "77fd229b643b21345bd431c11d0329cf1daa3dad5c6c0dc88e7950457f454a3c"

SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
LDM_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.0015,
    beta_end=0.0195,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
)


@dataclass
class Backbone:
    """A UNet, its autoencoder and schedule, with the conditioning logic of its layout."""

    name: str
    spec: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: DDIMScheduler
    scaling_factor: float
    prompt_embeds: torch.Tensor | None = None  # (1, L, D) empty-prompt embedding for cross-attention UNets
    adapter_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inpainting(self) -> bool:
        return isinstance(self.unet, UNet2DConditionModel) and self.unet.config.in_channels == 9

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (autoencoder and UNet downsampling)."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Backbone:
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if kwargs:
            for module in (self.unet, self.vae):
                module.to(**kwargs)
            if self.prompt_embeds is not None:
                self.prompt_embeds = self.prompt_embeds.to(**kwargs)
        return self

    def requires_grad_(self, flag: bool) -> Backbone:
        self.unet.requires_grad_(flag)
        self.vae.requires_grad_(flag)
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> scaled latents (deterministic: the posterior mode)."""
        # Kernels pick algorithms by memory layout; one layout keeps results bit-reproducible.
        x = images.to(device=self.device, dtype=self.vae.dtype).contiguous()
        if isinstance(self.vae, VQModel):
            z = self.vae.encode(x).latents
        else:
            z = self.vae.encode(x).latent_dist.mode()
        return (z * self.scaling_factor).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (unclamped)."""
        z = (latents.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor).contiguous()
        return self.vae.decode(z).sample

    def conditioning(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """UNet conditioning for images in [-1, 1] and their pixel mask (B, 1, H, W), 1 = face.

        For an inpainting UNet: the latent-resolution mask and the latents of the
        image with the face zeroed. Both depend only on pixels outside the mask, so
        recovery rebuilds them bit for bit from the anonymized image.
        """
        if not self.inpainting:
            return {}
        mask = mask.to(device=self.device, dtype=self.vae.dtype)
        masked = images.to(device=self.device, dtype=self.vae.dtype) * (1 - mask)
        from faceveil.data.masks import latent_mask

        return {"mask": latent_mask(mask, self.vae_factor).to(self.dtype), "masked_latents": self.encode(masked)}

    def eps(self, z: torch.Tensor, t: int, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """Noise prediction at (z, t), returned in z's dtype; v-prediction is converted to eps."""
        x = z.to(self.dtype)
        if self.inpainting:
            x = torch.cat([x, cond["mask"].to(self.dtype), cond["masked_latents"].to(self.dtype)], dim=1)
        x = x.contiguous()
        tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        if isinstance(self.unet, UNet2DConditionModel):
            emb = self.prompt_embeds
            if emb is None:
                raise ConfigError(f"backbone {self.name} has no prompt embedding")
            out = self.unet(x, tt, encoder_hidden_states=emb.expand(z.shape[0], -1, -1)).sample
        else:
            out = self.unet(x, tt).sample
        out = out.to(z.dtype)
        if self.scheduler.config.prediction_type == "v_prediction":
            a = float(self.scheduler.alphas_cumprod[t])
            out = a**0.5 * out + (1 - a) ** 0.5 * z
        return out


# --------------------------------------------------------------------------- layouts


def load_tiny_vae_weights(vae: torch.nn.Module, path: Path = TINY_VAE_PATH) -> None:
    """Load tiny's trained autoencoder into ``vae``, after checking the file's SHA-256."""
    from safetensors.torch import load_file

    retrain = "python -m faceveil.train.tiny_autoencoder"
    if not path.is_file():
        raise ConfigError(f"{path}: tiny's autoencoder weights are missing; reinstall faceveil, or rebuild them with {retrain}")
    digest = file_sha256(path)
    if digest != TINY_VAE_SHA256:
        raise ConfigError(
            f"{path}: SHA-256 {digest[:16]}... is not tiny's ({TINY_VAE_SHA256[:16]}...): the file was altered; "
            f"restore it from the package, or rebuild it with {retrain} and set TINY_VAE_SHA256"
        )
    # Copies: a tensor at an unaligned address in the file's buffer would take other kernels.
    vae.load_state_dict({k: v.clone() for k, v in load_file(path).items()}, strict=True)


TINY_UNET_OUTPUT_SCALE = 0.1


def tiny_components(seed: int = 0, trained_vae: bool = True) -> dict[str, Any]:
    """tiny's parts; ``trained_vae=False`` keeps the autoencoder's random initialisation (to train it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=9,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            # Groups of 4 channels, not 1: a one-channel group would normalize away that channel's
            # per-image mean, the colour cast the autoencoder must carry.
            norm_num_groups=2,
            sample_size=256,
        )
        prompt = torch.randn(1, 8, 32)
    with torch.no_grad():
        # A random UNet's noise predictions are far too large: sampled latents leave the autoencoder's
        # range (std 2.5 against 0.9; 17 % of decoded face pixels saturate) and no decoder inversion
        # finds them again. Scaled down, tiny's "faces" stay keyed noise the decoder can represent.
        unet.conv_out.weight.mul_(TINY_UNET_OUTPUT_SCALE)
        unet.conv_out.bias.mul_(TINY_UNET_OUTPUT_SCALE)
    # Loaded after the seeded draws, so the UNet and prompt are those of the all-random tiny.
    if trained_vae:
        load_tiny_vae_weights(vae)
    return dict(unet=unet, vae=vae, scheduler=DDIMScheduler(**SD_SCHEDULER), scaling_factor=1.0, prompt_embeds=prompt)


def sd2_inpaint_components_random(seed: int = 0) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=9,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        prompt = torch.randn(1, 77, 1024)
    return dict(unet=unet, vae=vae, scheduler=DDIMScheduler(**SD_SCHEDULER), scaling_factor=0.18215, prompt_embeds=prompt)


def ldm_ffhq_components_random(seed: int = 0) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=64,
            in_channels=3,
            out_channels=3,
            layers_per_block=2,
            block_out_channels=(224, 448, 672, 896),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=32,
        )
        vae = VQModel(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(128, 256, 512),
            layers_per_block=2,
            latent_channels=3,
            num_vq_embeddings=8192,
            vq_embed_dim=3,
            sample_size=256,
        )
    return dict(unet=unet, vae=vae, scheduler=DDIMScheduler(**LDM_SCHEDULER), scaling_factor=1.0, prompt_embeds=None)


def cache_dir() -> Path:
    """The faceveil cache folder: $FACEVEIL_CACHE, else ~/.cache/faceveil."""
    return Path(os.environ.get("FACEVEIL_CACHE", Path.home() / ".cache" / "faceveil"))


def load_prompt_embeds(path: str | os.PathLike[str]) -> torch.Tensor:
    """The ``prompt_embeds`` tensor of a safetensors file, in memory of its own.

    safetensors can hand back a tensor at an unaligned address inside the file's buffer; BLAS
    then takes other kernels and the UNet's last bits change, which exact recovery cannot afford.
    """
    from safetensors.torch import load_file

    return load_file(path)["prompt_embeds"].clone()


def empty_prompt_embedding(source: str, local_files_only: bool = False) -> torch.Tensor:
    """The text encoder's embedding of "" for ``source``, computed once and cached.

    Looked up first as ``<source>/prompt_embeds.safetensors`` (exports ship it),
    then in the faceveil cache; computed with the source's CLIP text encoder only
    when neither exists, so run time needs no text encoder.
    """
    from safetensors.torch import save_file

    local = Path(source) / "prompt_embeds.safetensors"
    if local.is_file():
        return load_prompt_embeds(local)
    cached = cache_dir() / "prompt_embeds" / (re.sub(r"[^A-Za-z0-9_.-]+", "--", source) + ".safetensors")
    if cached.is_file():
        return load_prompt_embeds(cached)
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local_files_only)
    enc = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", local_files_only=local_files_only)
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = enc(ids)[0].float().contiguous()
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_embeds": emb}, str(cached))
    return emb


def sd2_inpaint_components_pretrained(
    source: str = SD2_INPAINT_ID, local_files_only: bool = False, prompt_embeds: torch.Tensor | None = None
) -> dict[str, Any]:
    kw = dict(local_files_only=local_files_only)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kw)
    scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
    return dict(
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        scaling_factor=float(vae.config.scaling_factor),
        prompt_embeds=prompt_embeds if prompt_embeds is not None else empty_prompt_embedding(source, local_files_only),
    )


def ldm_ffhq_components_pretrained(
    source: str = LDM_FFHQ_ID, local_files_only: bool = False, prompt_embeds: torch.Tensor | None = None
) -> dict[str, Any]:
    kw = dict(local_files_only=local_files_only)
    unet = UNet2DModel.from_pretrained(source, subfolder="unet", **kw)
    vae = VQModel.from_pretrained(source, subfolder="vqvae", **kw)
    scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
    return dict(unet=unet, vae=vae, scheduler=scheduler, scaling_factor=1.0, prompt_embeds=None)


@dataclass(frozen=True)
class Layout:
    default_source: str | None
    random: Callable[[int], dict[str, Any]]
    pretrained: Callable[..., dict[str, Any]] | None


LAYOUTS: dict[str, Layout] = {
    "tiny": Layout(None, tiny_components, None),
    "sd2-inpaint": Layout(SD2_INPAINT_ID, sd2_inpaint_components_random, sd2_inpaint_components_pretrained),
    "ldm-ffhq": Layout(LDM_FFHQ_ID, ldm_ffhq_components_random, ldm_ffhq_components_pretrained),
}


def build_backbone(name: str, random_weights: bool = True, seed: int = 0, source: str | None = None,
                   local_files_only: bool = False, prompt_embeds: torch.Tensor | None = None) -> Backbone:
    """Build a registered layout: random weights from ``seed``, or pretrained from ``source``.

    ``prompt_embeds`` (e.g. shipped with an export) spares computing the empty-prompt embedding.
    """
    if name not in LAYOUTS:
        raise ConfigError(f"unknown backbone {name!r}; choose from {', '.join(LAYOUTS)} or an export folder")
    layout = LAYOUTS[name]
    if random_weights or layout.pretrained is None:
        parts = layout.random(seed)
        spec = name if layout.pretrained is None else f"{name}:random:{seed}"
    else:
        src = source or layout.default_source
        parts = layout.pretrained(src, local_files_only=local_files_only, prompt_embeds=prompt_embeds)
        spec = f"{name}:{src}"
    backbone = Backbone(name=name, spec=spec, **parts)
    # Before any dtype cast, so the hash names the weights, not the precision they run in.
    backbone.extra["base_sha256"] = weights_sha256(backbone)
    backbone.unet.eval()
    backbone.vae.eval()
    return backbone.requires_grad_(False)


# Export folders are loaded by the training package (LoRA adapters on a base backbone).
ExportLoader = Callable[[Path], Backbone]
_export_loader: ExportLoader | None = None


def register_export_loader(fn: ExportLoader) -> None:
    global _export_loader
    _export_loader = fn


def load_backbone(spec: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  local_files_only: bool = False, prompt_embeds: torch.Tensor | None = None) -> Backbone:
    """Load a backbone from a spec string (see the module docstring) onto ``device``/``dtype``."""
    path = Path(spec)
    if (path / EXPORT_MANIFEST).is_file():
        if _export_loader is None:
            importlib.import_module("faceveil.train.export")  # registers the export loader

        assert _export_loader is not None
        backbone = _export_loader(path)
    else:
        name, _, rest = spec.partition(":")
        if rest.startswith("random"):
            _, _, seed = rest.partition(":")
            backbone = build_backbone(name, random_weights=True, seed=int(seed or 0))
        else:
            backbone = build_backbone(name, random_weights=False, source=rest or None,
                                      local_files_only=local_files_only, prompt_embeds=prompt_embeds)
    return backbone.to(device=device, dtype=dtype)


def weights_sha256(bb: Backbone) -> str:
    """SHA-256 of the UNet's and the autoencoder's tensors (names, dtypes, shapes, bytes) and the
    prompt embedding: two backbones of one name with other weights (another seed, another hub
    revision) get other hashes."""
    h = hashlib.sha256(b"faceveil/weights/v1\0")
    for part, module in (("unet", bb.unet), ("vae", bb.vae)):
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    if bb.prompt_embeds is not None:
        h.update(bb.prompt_embeds.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    from faceveil.jsonfile import load_json_object

    return load_json_object(Path(path) / EXPORT_MANIFEST, "export manifest")
