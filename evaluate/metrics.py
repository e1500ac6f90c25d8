"""Image, identity and utility metrics. Library implementations where there is one.

- PSNR and SSIM: ``torchmetrics.functional.image`` (8-bit images, data range 255 / 1.0);
  identical images give PSNR ``inf`` and SSIM 1.
- LPIPS: the ``lpips`` package; the backbone is configurable because its ImageNet weights
  come from torchvision's download cache (see :class:`Lpips`).
- FID / KID: ``torchmetrics.image`` with a configurable feature network (:func:`feature_network`).
- Verification (TAR at FAR, ROC) lives in :mod:`faceveil.evaluate.verification`; here are
  rank-1 identification, landmark drift, the outside-mask check and aggregation helpers.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from faceveil.errors import ConfigError, InputError


def _stack(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) or images.ndim == 3 else images
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8:
        raise InputError(f"metrics take uint8 images, got {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).double()


def psnr(preds: Sequence[np.ndarray], target: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image PSNR in dB of uint8 (H, W, 3) images (``inf`` for identical images): the
    pipeline's :func:`faceveil.models.pipeline.psnr` for each pair."""
    from faceveil.models.pipeline import psnr as psnr_one

    preds, target = ([preds] if isinstance(x, np.ndarray) and x.ndim == 3 else list(x) for x in (preds, target))
    if len(preds) != len(target):
        raise InputError(f"psnr: {len(preds)} images against {len(target)} targets")
    for a, b in zip(preds, target):
        if np.asarray(a).dtype != np.uint8 or np.asarray(b).dtype != np.uint8:
            raise InputError(f"metrics take uint8 images, got {np.asarray(a).dtype} and {np.asarray(b).dtype}")
        if np.shape(a) != np.shape(b):
            raise InputError(f"psnr: image shapes differ, {np.shape(a)} and {np.shape(b)}")
    return np.asarray([psnr_one(np.asarray(a), np.asarray(b)) for a, b in zip(preds, target)], dtype=np.float64)


def ssim(preds: Sequence[np.ndarray], target: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image SSIM (Gaussian window 11, sigma 1.5) of uint8 images (1 for identical images)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    # float32: torchmetrics' float64 convolutions are about 10x slower on a CPU.
    p, t = _stack(preds).float() / 255.0, _stack(target).float() / 255.0
    out = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
    return out.reshape(-1).numpy().astype(np.float64)


# --------------------------------------------------------------------------- LPIPS


def _torchvision_weights(net: str):  # -> torchvision WeightsEnum
    import torchvision.models as tvm

    return {"alex": tvm.AlexNet_Weights, "vgg": tvm.VGG16_Weights, "squeeze": tvm.SqueezeNet1_1_Weights}[net].IMAGENET1K_V1


class Lpips:
    """LPIPS (v0.1 linear heads, bundled with ``lpips``) on uint8 images.

    ``backbone``:
    - ``pretrained``: torchvision's ImageNet weights, the standard LPIPS. They must already be in
      torch's hub cache (``torch.hub.get_dir()/checkpoints``); nothing is downloaded here;
    - ``random``: a randomly initialised backbone (``lpips.LPIPS(pnet_rand=True)``): runs offline,
      still 0 for identical images and growing with distortion, but not comparable to published numbers;
    - a path to a state dict of the torchvision network (full model or its ``features``).
    """

    def __init__(self, net: str = "alex", backbone: str = "pretrained", device: str | torch.device = "cpu") -> None:
        import lpips

        if net not in ("alex", "vgg", "squeeze"):
            raise ConfigError(f"lpips net {net!r}: use alex, vgg or squeeze")
        self.net_name, self.backbone = net, backbone
        if backbone == "pretrained":
            weights = _torchvision_weights(net)
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            if not cached.is_file():
                raise ConfigError(
                    f"LPIPS-{net} needs torchvision's ImageNet weights at {cached} (not downloadable here); "
                    "copy them there, give their path as metrics.lpips.backbone, or use backbone=random for an offline smoke run"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's deprecated 'pretrained'
                self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)
        else:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                torch.manual_seed(0)
                self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
            if backbone != "random":
                self._load_backbone(Path(backbone))
        self.model = self.model.eval().requires_grad_(False).to(device)
        self.device = device

    @property
    def standard(self) -> bool:
        return self.backbone != "random"

    def _load_backbone(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"{path}: no such LPIPS backbone weights file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        target: dict[str, str] = {}
        for slice_name, module in self.model.net.named_children():
            for child, _ in module.named_children():
                target[child] = slice_name
        mapped = {}
        for k, v in state.items():
            idx, _, rest = k.partition(".")
            if idx in target:
                mapped[f"{target[idx]}.{idx}.{rest}"] = v
        missing, unexpected = self.model.net.load_state_dict(mapped, strict=False)
        if missing:
            raise ConfigError(f"{path}: not a torchvision {self.net_name} state dict (missing {missing[0]})")

    @torch.no_grad()
    def __call__(self, preds: Sequence[np.ndarray], target: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
        p, t = _stack(preds).float() / 127.5 - 1.0, _stack(target).float() / 127.5 - 1.0
        out = []
        for i in range(0, len(p), batch):
            d = self.model(p[i : i + batch].to(self.device), t[i : i + batch].to(self.device))
            out.append(d.reshape(-1).cpu())
        return torch.cat(out).numpy().astype(np.float64)


# --------------------------------------------------------------------------- FID / KID


class TinyFeatures(nn.Module):
    """A small convolutional feature network with fixed random weights (seeded).

    For offline smoke runs and tests of the FID / KID plumbing only: its numbers are not
    comparable to published FIDs, which use InceptionV3's 2048-d pool features.
    """

    num_features = 64

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, self.num_features, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        return self.net(x * 2.0 - 1.0).double()


class _ExportedFeatures(nn.Module):
    """A ``torch.export`` program as a feature network: inputs are resized to the size it was
    exported at (its shapes are static but for the batch), and ``num_features`` is known."""

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.inner = program.module()
        example = program.example_inputs[0][0] if getattr(program, "example_inputs", None) else None
        self.size = tuple(example.shape[-2:]) if example is not None else None
        self.in_dtype = example.dtype if example is not None else torch.uint8
        if example is not None:
            with torch.no_grad():
                self.num_features = int(self.inner(example).shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            y = nn.functional.interpolate(x.float(), size=self.size, mode="bilinear", antialias=True, align_corners=False)
            x = y.round().clamp(0, 255).to(torch.uint8) if self.in_dtype == torch.uint8 else y.to(self.in_dtype)
        return self.inner(x)


def feature_network(spec: str) -> int | nn.Module:
    """The ``feature`` argument for torchmetrics' FID / KID (see ``FidConfig``; the spec is
    checked by ``faceveil.evaluate.config.parse_feature_spec``, also when the config loads)."""
    from faceveil.evaluate.config import parse_feature_spec

    kind, arg = parse_feature_spec(spec)
    if kind == "inception":
        return int(arg)
    if kind == "tiny":
        return TinyFeatures()
    if kind in ("torchscript", "exported"):
        path = Path(arg).expanduser()
        if kind == "exported":
            return _ExportedFeatures(torch.export.load(str(path)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still loads
            return torch.jit.load(str(path), map_location="cpu").eval()
    mod_name, _, attr = arg.partition(":")
    return getattr(importlib.import_module(mod_name), attr)()


def fid_kid(
    real: Sequence[np.ndarray], fake: Sequence[np.ndarray], feature: str, kid_subset: int = 1000, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """FID and KID (mean, std) of ``fake`` against ``real`` (uint8 images) with torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    if n < 2:
        raise InputError("FID / KID need at least 2 images per set")
    net = feature_network(feature)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # KID's "will save all extracted features" notice
            fid = FrechetInceptionDistance(feature=net, reset_real_features=True)
            # KID's subsets must be smaller than the set, or every subset is the whole set (std 0).
            subset = min(kid_subset, max(2, n // 2))
            kid = KernelInceptionDistance(feature=net, subset_size=subset, reset_real_features=True) if subset < n else None
    except (ModuleNotFoundError, ImportError, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"FID feature {feature!r} is not available here ({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}); "
            "InceptionV3 needs torch-fidelity (pip install torch-fidelity) and its weights in torch's cache"
        ) from None
    metrics = [m.to(device) for m in (fid, kid) if m is not None]
    r, f = _stack(real).to(torch.uint8), _stack(fake).to(torch.uint8)
    for metric in metrics:
        for i in range(0, len(r), 32):
            metric.update(r[i : i + 32].to(device), real=True)
        for i in range(0, len(f), 32):
            metric.update(f[i : i + 32].to(device), real=False)
    dim = int(metrics[0].real_features_sum.numel())
    out: dict[str, Any] = {"fid": float(metrics[0].compute()), "kid": None, "kid_std": None, "kid_subset": None,
                           "n": n, "feature": feature, "feature_dim": dim}  # fmt: skip
    if kid is not None:
        kid_mean, kid_std = metrics[1].compute()
        out.update(kid=float(kid_mean), kid_std=float(kid_std), kid_subset=subset)
    if n < dim:
        out["warning"] = (f"FID from {n} images with {dim}-d features: the covariance is rank-deficient (n < {dim}), "
                          "so the FID is biased high and not comparable to FIDs from more images")
    return out


# --------------------------------------------------------------------------- utility


def outside_mask_change(image: np.ndarray, original: np.ndarray, mask: np.ndarray) -> int:
    """The largest absolute pixel difference outside the mask (0: untouched)."""
    out = ~np.asarray(mask, dtype=bool)
    if not out.any():
        return 0
    return int(np.abs(image.astype(np.int16) - original.astype(np.int16))[out].max())


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def landmark_drift(points: np.ndarray, reference: np.ndarray, reference5: np.ndarray) -> float:
    """Mean distance between corresponding landmarks, in units of the reference's inter-ocular distance."""
    iod = float(np.linalg.norm(np.asarray(reference5)[1] - np.asarray(reference5)[0]))
    if iod <= 0:
        return math.nan
    return float(np.linalg.norm(np.asarray(points) - np.asarray(reference), axis=1).mean() / iod)


def rank1(similarity: torch.Tensor, gallery_labels: Sequence[str], probe_labels: Sequence[str]) -> float:
    """Rank-1 identification rate: probes (rows) whose most similar gallery entry (columns) has
    their label. A probe whose scores are all NaN counts as a miss."""
    if similarity.shape != (len(probe_labels), len(gallery_labels)):
        raise ValueError("similarity must be (probes, gallery)")
    if not len(probe_labels):
        return math.nan
    s = torch.nan_to_num(similarity.double(), nan=-math.inf)
    hits = 0
    for i, lab in enumerate(probe_labels):
        if torch.isfinite(s[i]).any():
            hits += gallery_labels[int(torch.argmax(s[i]))] == lab
    return hits / len(probe_labels)


def pairwise_mean(values: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of a square similarity matrix (NaN ignored)."""
    n = values.shape[0]
    if n < 2:
        return math.nan
    off = values[~torch.eye(n, dtype=torch.bool)]
    off = off[~torch.isnan(off)]
    return float(off.mean()) if off.numel() else math.nan


def summary(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Mean / median / count of per-image values: NaN left out (counted), ``inf`` counted apart.

    The mean is over finite values; ``n_inf`` says how many were infinite (e.g. a PSNR of
    identical images), and the mean is ``inf`` when all values are.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    nan = np.isnan(arr)
    inf = np.isinf(arr) & ~nan
    finite = arr[~nan & ~inf]
    n_valid = int((~nan).sum())
    if finite.size:
        mean, median = float(finite.mean()), float(np.median(arr[~nan]))
    elif inf.any():
        mean = median = float(arr[inf][0])
    else:
        mean = median = math.nan
    return {"mean": mean, "median": median, "n": n_valid, "n_inf": int(inf.sum()), "n_nan": int(nan.sum())}
