"""``IdentityEncoder``: a frozen, differentiable ArcFace for identity losses and evaluation.

``embed(images, landmarks=None)`` takes the training pipeline's images, float RGB in [-1, 1],
``(B, 3, H, W)``; it aligns them to the 112x112 ArcFace crop (from 5-point landmarks in insightface
order, see :mod:`faceveil.models.arcface_align`, or with a fixed crop for pre-aligned faces), converts
them to the network's input convention and returns L2-normalised embeddings. The weights are frozen
and stay in eval mode, but gradients flow to the input.

Pointing faceveil at downloaded weights (nothing is downloaded here; use any of these specs in
training / evaluation configs, or pass them to :func:`load_identity_encoder`):

* insightface model-zoo packs, as insightface unpacks them under ``~/.insightface/models``::

      insightface:buffalo_l        -> ~/.insightface/models/buffalo_l/w600k_r50.onnx
      insightface:antelopev2       -> ~/.insightface/models/antelopev2/glintr100.onnx

  (``$INSIGHTFACE_HOME`` replaces ``~/.insightface``), or any ONNX file directly::

      onnx:/data/models/buffalo_l/w600k_r50.onnx      (a bare path ending in .onnx works too)

* arcface_torch checkpoints (``backbone.pth`` from its model zoo or your own training run)::

      arcface_torch:r50:/data/ms1mv3_arcface_r50/backbone.pth
      arcface_torch:/data/glint360k_cosface_r100/backbone.pth   (architecture inferred from the keys)

  (``r18``, ``r34``, ``r50``, ``r100``; a bare path ending in ``.pth``, ``.pt`` or ``.safetensors``
  also works.)

* random weights, for tests and profiling: ``tiny`` (a small iresnet) or ``random:r50``; the
  ``seed`` argument fixes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from faceveil.errors import ConfigError, InputError
from faceveil.models.arcface_align import CROP_TEMPLATES, align_faces, fixed_crop
from faceveil.models.arcface_weights import InputConvention, load_arcface_torch, load_onnx_arcface
from faceveil.models.iresnet import IRESNET_ARCHS, build_iresnet


class IdentityEncoder(nn.Module):
    """Frozen ArcFace backbone behind faceveil's image convention; see the module docstring."""

    def __init__(
        self,
        backbone: nn.Module,
        convention: InputConvention | None = None,
        crop: str = "arcface112",
        antialias: bool = True,
        name: str = "arcface",
    ) -> None:
        super().__init__()
        if crop not in CROP_TEMPLATES:
            raise ConfigError(f"unknown crop preset {crop!r}; known: {', '.join(CROP_TEMPLATES)}")
        self.backbone = backbone
        self.convention = convention or InputConvention()
        self.crop = crop
        self.antialias = antialias
        self.name = name
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> IdentityEncoder:
        # Stay in eval mode even when a parent module calls .train(): BatchNorm in training mode would
        # use batch statistics and update running stats, silently changing the judge.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return _first_tensor(self).device

    @property
    def dtype(self) -> torch.dtype:
        return _first_tensor(self).dtype

    def preprocess(self, images: torch.Tensor, landmarks: torch.Tensor | None = None, crop: str | None = None) -> torch.Tensor:
        """The network's input for ``images`` in [-1, 1]: aligned crop, RGB ``(pixel - mean) / std``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must be (B, 3, H, W) RGB, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise InputError(f"images must be float in [-1, 1], got {images.dtype} (convert uint8 with x / 127.5 - 1)")
        # Align in float32 or wider: landmarks in half precision are 0.5 px coarse at 1024 px, and the
        # anti-aliased resize has no half-precision CPU kernel. The network then runs in its own dtype.
        work = torch.promote_types(self.dtype, torch.float32)
        x = images.to(device=self.device, dtype=work)
        size = self.convention.size
        if landmarks is not None:
            x = align_faces(x, landmarks.to(device=x.device, dtype=work), size, self.antialias)
        else:
            x = fixed_crop(x, crop or self.crop, size, self.antialias)
        # [-1, 1] -> pixels -> the network's scaling; the identity map for the usual mean = std = 127.5.
        mean, std = self.convention.mean, self.convention.std
        if mean != 127.5 or std != 127.5:
            x = ((x + 1.0) * 127.5 - mean) / std
        return x.to(self.dtype)

    def embed(
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor | None = None,
        *,
        crop: str | None = None,
        expect_grad: bool = False,
    ) -> torch.Tensor:
        """L2-normalised embeddings ``(B, D)`` of ``images`` (float RGB in [-1, 1], ``(B, 3, H, W)``).

        ``landmarks`` ``(B, 5, 2)`` in pixel coordinates of ``images`` (insightface order); without them
        the fixed ``crop`` preset (default: the encoder's) is used. ``expect_grad=True`` (identity
        losses) raises unless the result is connected to the autograd graph.
        """
        if images.requires_grad and not torch.is_grad_enabled():
            # The known pitfall: a no_grad / inference_mode around the identity loss silently yields a
            # constant loss. Detach the input if a gradient-free embedding is really what you want.
            raise RuntimeError(
                "IdentityEncoder.embed called with grad disabled on an input that requires grad: the identity "
                "loss would get no gradient; remove the surrounding torch.no_grad(), or pass images.detach()"
            )
        feats = self.backbone(self.preprocess(images, landmarks, crop))
        # Normalise in at least float32: half-precision sums of 512 squares lose digits.
        wide = feats if feats.dtype in (torch.float32, torch.float64) else feats.float()
        out = F.normalize(wide, dim=-1).to(feats.dtype)
        if expect_grad and not out.requires_grad:
            raise RuntimeError(
                "IdentityEncoder.embed(expect_grad=True): the embedding has no gradient path to the images "
                "(grad disabled, or images detached / not requiring grad)"
            )
        return out

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed(images, landmarks)


def _first_tensor(module: nn.Module) -> torch.Tensor:
    for t in module.parameters():
        return t
    for t in module.buffers():
        return t
    raise ConfigError("identity backbone has no parameters or buffers")


@dataclass(frozen=True)
class IdentitySpec:
    """A parsed identity-network spec: ``kind`` is ``random``, ``onnx`` or ``arcface_torch``."""

    kind: str
    arch: str | None = None
    path: Path | None = None


_INSIGHTFACE_PACKS = {
    "buffalo_l": "w600k_r50.onnx",
    "buffalo_m": "w600k_r50.onnx",
    "buffalo_s": "w600k_mbf.onnx",
    "buffalo_sc": "w600k_mbf.onnx",
    "antelopev2": "glintr100.onnx",
}
_TORCH_SUFFIXES = (".pth", ".pt", ".safetensors")


def insightface_pack_file(pack: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The recognition ONNX file of an unpacked insightface model pack (e.g. ``buffalo_l``)."""
    if pack not in _INSIGHTFACE_PACKS:
        raise ConfigError(f"unknown insightface pack {pack!r}; known: {', '.join(_INSIGHTFACE_PACKS)}")
    base = Path(root or os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser() / "models" / pack
    name = _INSIGHTFACE_PACKS[pack]
    # antelopev2.zip unpacks into a nested antelopev2/antelopev2/ folder with some insightface versions.
    for candidate in (base / name, base / pack / name):
        if candidate.is_file():
            return candidate
    raise InputError(f"{base / name}: not found; download {pack}.zip from insightface's model zoo and unpack it there")


def parse_identity_spec(spec: str) -> IdentitySpec:
    """Parse ``tiny``, ``random:<arch>``, ``onnx:<path>``, ``insightface:<pack>``, ``arcface_torch:[<arch>:]<path>`` or a path."""
    kind, _, rest = spec.partition(":")
    if spec == "tiny":
        return IdentitySpec("random", "tiny")
    if kind == "random" and rest:
        if rest not in IRESNET_ARCHS:
            raise ConfigError(f"identity spec {spec!r}: unknown iresnet {rest!r}; known: {', '.join(IRESNET_ARCHS)}")
        return IdentitySpec("random", rest)
    if kind == "onnx" and rest:
        return IdentitySpec("onnx", path=Path(rest).expanduser())
    if kind == "insightface" and rest:
        return IdentitySpec("onnx", path=insightface_pack_file(rest))
    if kind == "arcface_torch" and rest:
        arch, sep, path = rest.partition(":")
        if sep and arch in IRESNET_ARCHS:
            return IdentitySpec("arcface_torch", arch, Path(path).expanduser())
        return IdentitySpec("arcface_torch", None, Path(rest).expanduser())
    if spec.endswith(".onnx"):
        return IdentitySpec("onnx", path=Path(spec).expanduser())
    if spec.endswith(_TORCH_SUFFIXES):
        return IdentitySpec("arcface_torch", None, Path(spec).expanduser())
    raise ConfigError(
        f"identity spec {spec!r} not understood; use tiny, random:<arch>, onnx:<path>, insightface:<pack>, "
        "arcface_torch:[<arch>:]<path>, or a path to a .onnx / .pth file"
    )


def load_identity_encoder(
    spec: str | IdentitySpec,
    *,
    seed: int = 0,
    crop: str = "arcface112",
    antialias: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> IdentityEncoder:
    """Build a frozen :class:`IdentityEncoder` from a spec (see the module docstring)."""
    parsed = parse_identity_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "random":
        backbone: nn.Module = build_iresnet(parsed.arch or "tiny", seed=seed).eval()
        convention, name = InputConvention(), f"random:{parsed.arch}"
    elif parsed.kind == "arcface_torch" and parsed.path is not None:
        backbone, convention = load_arcface_torch(parsed.path, parsed.arch)
        name = f"arcface_torch:{parsed.path.name}"
    elif parsed.kind == "onnx" and parsed.path is not None:
        backbone, convention, _ = load_onnx_arcface(parsed.path)
        name = f"onnx:{parsed.path.name}"
    else:
        raise ConfigError(f"identity spec {parsed} is incomplete")
    encoder = IdentityEncoder(backbone, convention, crop=crop, antialias=antialias, name=name)
    if device is not None or dtype is not None:
        encoder = encoder.to(device=device, dtype=dtype)
    return encoder
