"""Batched anonymize / recover with a backbone, an inversion scheme and a key transform.

Anonymize: z0 = E(x); invert z0 to noise with the scheme; apply the key inside the
latent face mask; sample back; decode; paste the original pixels back outside the
mask. Recover runs the same steps backwards with the key's inverse, starting from
the exact stored latents when the file carries them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from faceveil.errors import InputError, KeyMismatchError
from faceveil.keys import SecretKey, new_nonce, tags_equal
from faceveil.data.masks import latent_mask
from faceveil.models.backbones import Backbone
from faceveil.models.buckets import MAX_BUCKET, bucket_for, run_bucketed
from faceveil.models.compiled import compiled_backbone
from faceveil.models.meter import Meter
from faceveil.models.inversion import EpsFn, LatentFn, Scheme, make_scheme
from faceveil.models.key_transforms import apply_key, get_transform
from faceveil.models.residual import add_residual, open_residual, seal_residual
from faceveil.models.schedule import Schedule
from faceveil.models.settings import Settings


@dataclass
class Veiled:
    """One anonymized image and what its recovery needs (the file seals all but the pixels)."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, pixel face mask
    nonce: bytes
    settings: Settings
    key_check: str  # per-file check value, SecretKey.check_value(nonce); "" for version 1 files
    backbone: str  # backbone id (an export's base, never a local path)
    adapter_hash: str | None = None
    state: torch.Tensor | None = None  # (S, C, h, w) clean-end scheme state; None when stripped
    sealed_residual: bytes | None = None  # encrypted pixel residual (see faceveil.models.residual)
    compute: dict[str, str] = field(default_factory=dict)  # dtype and device type the UNet ran in
    authenticated: bool | None = None  # header MAC verified under the key (None: not checked)
    background_intact: bool = True  # the file's pixels match the hash its header records
    adapter_name: str | None = None  # the adapter's folder name, recorded with its hash
    key_fingerprint: str | None = None  # version 1 files only: the key's global fingerprint
    original: np.ndarray | None = None  # (H, W, 3) uint8 input, in memory only: files seal its masked pixels
    base_sha256: str | None = None  # hash of the base weights (Backbone.extra["base_sha256"])

    def key_matches(self, key: SecretKey) -> bool:
        """Whether ``key`` is the one this image was anonymized with (by its check value)."""
        if self.key_check:
            return tags_equal(key.check_value(self.nonce), self.key_check)
        return self.key_fingerprint == key.fingerprint


@dataclass
class Recovered:
    image: np.ndarray  # (H, W, 3) uint8
    latent: torch.Tensor  # (C, h, w) recovered clean latent
    residual_opened: bool | None = None  # the sealed residual opened (None: the file had none)


def to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    # One memory layout, whatever the caller's strides: kernels choose algorithms by layout.
    return (torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounded."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def public_backbone_id(bb: Backbone) -> str:
    """The backbone a file records: an export's base spec, never the export's local path."""
    return str((bb.extra or {}).get("base_spec") or bb.spec)


MAX_CPU_THREADS = 1024


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (0: leave as is), then restore the count."""
    if n <= 0 or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Anonymizer:
    """Anonymize and recover batches of same-sized images with one backbone."""

    def __init__(
        self,
        backbone: Backbone,
        settings: Settings | None = None,
        progress: bool = False,
        batch_invariant: bool = True,
        max_bucket: int = 8,
        compile_unet: bool = False,
        on_progress: Callable[[float], None] | None = None,
    ) -> None:
        self.backbone = backbone
        # Kernels give slightly different bits for different batch sizes. Running the networks at
        # fixed, zero-padded batch sizes (buckets, see faceveil.models.buckets) makes a file's
        # recovery bit-exact however the images are batched; False runs plain batches.
        self.batch_invariant = batch_invariant
        self.max_bucket = max_bucket
        self.settings = settings or Settings()
        if backbone.device.type == "cuda":
            # The exact scheme needs eps(x) to give the same bits when recovery re-evaluates it.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.progress = progress
        # Progress (``on_progress`` gets images' worth of work as each network call ends) and
        # phase timings (set ``meter.timings = {}``).
        self.meter = Meter(on_progress)
        self.unet_path = "compiled" if compile_unet else "eager"
        self._bucket = 1
        self._unets: dict[str, Backbone] = {"eager": backbone}
        # "mask" keys only the face region, as the published method does: measurements only
        # (it leaves the outside noise the original's own, a public fingerprint).
        self.key_region = "whole"
        self.transform = get_transform(self.settings.transform)
        self.scheme: Scheme = make_scheme(
            self.settings.scheme, Schedule.from_scheduler(backbone.scheduler, self.settings.steps), progress=progress
        )

    # ------------------------------------------------------------------ helpers
    def _check_sizes(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        if len(images) != len(masks):
            raise ValueError("one mask per image")
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise InputError("a batch needs images of one size")
        h, w, c = next(iter(shapes))
        m = self.backbone.size_multiple
        if c != 3 or h % m or w % m:
            raise InputError(f"image is {w}x{h}; {self.backbone.name} needs RGB sides that are multiples of {m}: "
                             f"pad or crop it to {w + -w % m}x{h + -h % m} ('faceveil anonymize --aligned' pads and cuts back "
                             f"for you; for shards, prepare them again with a --size that is a multiple of {m})")
        for mask in masks:
            if mask.shape != (h, w):
                raise InputError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}")

    def _bucket_of(self, n: int) -> int:
        return bucket_for(n, self.max_bucket) if self.batch_invariant else n

    def _net(self, path: str) -> Backbone:
        """The backbone whose UNet runs on ``path`` ("eager" or "compiled"); same weights."""
        if path not in self._unets:
            if path != "compiled":
                raise ValueError(f"unknown UNet path {path[:20]!r}")
            self._unets[path] = compiled_backbone(self.backbone)
        return self._unets[path]

    def _run(self, fn, *tensors: torch.Tensor):
        """A network call at the current bucket size; advances the progress."""
        out = run_bucketed(fn, self._bucket, *tensors)
        self.meter.tick(tensors[0].shape[0])
        return out

    def _prepare(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], unet_path: str | None = None):
        self._check_sizes(images, masks)
        bb = self.backbone
        net = self._net(unet_path or self.unet_path)
        x = to_tensor(images).to(bb.device)
        mask_px = torch.from_numpy(np.stack(list(masks))[:, None].astype(np.float32)).to(bb.device)
        cond = self._run(bb.conditioning, x, mask_px)
        names = list(cond)
        values = [cond[k] for k in names]

        def eps(z: torch.Tensor, t: int) -> torch.Tensor:
            return self._run(lambda zz, *cs: net.eps(zz, t, dict(zip(names, cs))), z, *values)

        return x, mask_px, latent_mask(mask_px, bb.vae_factor) > 0, eps

    def _each(self, fn, x: torch.Tensor) -> torch.Tensor:
        return self._run(fn, x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._each(self.backbone.encode, x)

    def _decode(self, state: torch.Tensor) -> np.ndarray:
        return to_uint8(self._each(self.backbone.decode, self.scheme.endpoint(state)))

    def _start(self, n: int, bucket: int, anonymize: bool, lift: bool) -> None:
        """Set the bucket for a batch of ``n`` images and the expected network calls (for progress)."""
        self._bucket = bucket
        steps, iters = self.settings.steps, getattr(self.scheme, "lift_iterations", 0)
        if self.settings.scheme == "exact":
            calls = 2 * (steps - 1) + 2 + (2 + iters if lift else 0)
        else:
            calls = steps * (2 + getattr(self.scheme, "iterations", 0)) + (1 if lift else 0)
        self.meter.start(n, 2 + calls + (1 if anonymize and self.settings.residual else 0))

    def _phase(self, name: str):
        return self.meter.phase(name, self.backbone.device)

    @staticmethod
    def _paste(decoded: np.ndarray, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
        return np.where(np.stack(list(masks))[..., None], decoded, np.stack(list(images)))

    def key_fn(
        self,
        mask_lat: torch.Tensor,
        keys: SecretKey | Sequence[SecretKey],
        nonces: Sequence[bytes],
        inverse: bool = False,
    ) -> LatentFn:
        """The keyed latent bijection (or its inverse) for a batch: one key for all, or one key per image.

        The one place that decides where and how the key acts; anonymize, recover and the
        training objective all key through it, so they run the same trajectory.

        The key acts on the whole starting noise, not only inside the face mask: the inverted
        noise outside the mask depends on the face through the UNet, so leaving it unkeyed
        would publish a fingerprint of the original. (The outside pixels are pasted back, and an
        inpainting UNet is conditioned on them.)
        """
        if self.key_region == "whole":
            mask_lat = torch.ones_like(mask_lat, dtype=torch.bool)
        if isinstance(keys, SecretKey):
            return lambda z: apply_key(z, mask_lat, self.transform, keys, nonces, inverse)
        keys = list(keys)
        if len(keys) != len(nonces):
            raise ValueError("one key per nonce")
        return lambda z: torch.cat(
            [apply_key(z[i : i + 1], mask_lat[i : i + 1], self.transform, keys[i], [nonces[i]], inverse) for i in range(len(keys))]
        )

    def keyed_noise(self, clean: torch.Tensor, eps: EpsFn, key_fn: LatentFn) -> torch.Tensor:
        """Clean-end state -> keyed noise-end state: the start of sampling (no gradients needed)."""
        with self._phase("invert"):
            noise = self.scheme.invert(clean, eps)
        with self._phase("rekey"):
            return self.scheme.rekey(noise, key_fn, eps)

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def anonymize(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        key: SecretKey,
        nonces: Sequence[bytes] | None = None,
        allow_caller_nonces: bool = False,
        allow_nonce_reuse: bool = False,
    ) -> list[Veiled]:
        """Anonymize same-sized uint8 RGB images inside their boolean face masks.

        Nonces are drawn fresh. A caller's ``nonces`` are used only with ``allow_caller_nonces``
        (tests, reproductions), and never one twice unless ``allow_nonce_reuse`` (the security
        suite's demonstration of why reuse is fatal).
        """
        if nonces is None:
            nonces = [new_nonce() for _ in images]
        elif not allow_caller_nonces:
            raise ValueError("caller-chosen nonces are refused; pass allow_caller_nonces=True if you must")
        nonces = list(nonces)
        if len(set(nonces)) != len(nonces) and not allow_nonce_reuse:
            raise ValueError("a nonce occurs twice in one call: files would share their key stream")
        bucket = self._bucket_of(len(images))
        self._start(len(images), bucket, anonymize=True, lift=True)
        with self._phase("condition"):
            x, _, mask_lat, eps = self._prepare(images, masks)
        with self._phase("encode"):
            z0 = self.encode(x)
        with self._phase("lift"):
            clean = self.scheme.lift(z0, eps)
        sealed: list[bytes | None] = [None] * len(images)
        if self.settings.residual:
            with self._phase("residual"):
                ref = self._decode(clean)
                sealed = [seal_residual(images[i], ref[i], masks[i], key, nonces[i]) for i in range(len(images))]
        keyed = self.keyed_noise(clean, eps, self.key_fn(mask_lat, key, nonces))
        with self._phase("sample"):
            out = self.scheme.sample(keyed, eps)
        with self._phase("decode"):
            anon = self._paste(self._decode(out), images, masks)
        self.meter.finish()
        bb = self.backbone
        compute = {"dtype": str(bb.dtype).removeprefix("torch."), "device": bb.device.type, "unet": self.unet_path}
        if bb.device.type == "cpu":
            compute["threads"] = str(torch.get_num_threads())  # recovery runs with the same count
        if self.batch_invariant:
            compute["bucket"] = str(bucket)  # recovery must run the networks at this batch size
        return [
            Veiled(
                image=anon[i],
                mask=np.asarray(masks[i], dtype=bool),
                nonce=nonces[i],
                settings=self.settings,
                key_check=key.check_value(nonces[i]),
                backbone=public_backbone_id(bb),
                adapter_hash=bb.adapter_hash,
                adapter_name=Path(bb.spec).name if bb.adapter_hash else None,
                state=out[i].cpu(),
                sealed_residual=sealed[i],
                compute=dict(compute),
                original=np.asarray(images[i], dtype=np.uint8),
                base_sha256=(bb.extra or {}).get("base_sha256"),
            )
            for i in range(len(images))
        ]

    def _recorded_path(self, v: Veiled, n: int) -> tuple[int, str, int]:
        """(bucket, UNet path, CPU threads) that ``v`` was anonymized with. Files without a bucket ran
        their networks one image at a time (bucket 1); threads 0 means "as this process has them"."""
        threads = 0
        if self.backbone.device.type == "cpu" and v.compute.get("device") == "cpu":
            # CPU kernels split their sums by thread count, so the last bits follow it.
            text = str(v.compute.get("threads", "0"))
            if not (text.isdigit() and 0 <= int(text) <= MAX_CPU_THREADS):  # untrusted: bounded
                raise InputError(f"recorded CPU thread count {text[:20]!r} is not a number up to {MAX_CPU_THREADS}")
            threads = int(text)
        if not self.batch_invariant:
            return n, v.compute.get("unet", "eager"), threads
        text = str(v.compute.get("bucket", "1"))
        # From an untrusted header: bounded, so a file cannot make us pad to any size.
        if text not in {str(2**i) for i in range(MAX_BUCKET.bit_length())}:
            raise InputError(f"recorded batch bucket {text[:20]!r} is not a power of two up to {MAX_BUCKET}")
        return int(text), v.compute.get("unet", "eager"), threads

    @torch.no_grad()
    def recover(self, veiled: Sequence[Veiled], key: SecretKey, force: bool = False) -> list[Recovered]:
        """Recover originals. A key whose fingerprint differs is refused unless ``force``."""
        if not force:
            for v in veiled:
                if not v.key_matches(key):
                    raise KeyMismatchError(
                        "the key is not the one this image was anonymized with (its check value differs); "
                        "use --force to try anyway"
                    )
        groups: dict[tuple[int, str, int], list[int]] = {}
        for i, v in enumerate(veiled):
            groups.setdefault(self._recorded_path(v, len(veiled)), []).append(i)
        if len(groups) > 1:  # files made at other bucket sizes or UNet paths: each group at its own
            out: list[Recovered | None] = [None] * len(veiled)
            for idx in groups.values():
                for i, r in zip(idx, self.recover([veiled[i] for i in idx], key, force=True)):
                    out[i] = r
            return out  # type: ignore[return-value]
        bucket, unet_path, threads = next(iter(groups))
        with cpu_threads(threads):
            return self._recover_group(veiled, key, bucket, unet_path)

    def _unkey(self, state: torch.Tensor, mask_lat: torch.Tensor, eps: EpsFn, key: SecretKey, nonces: Sequence[bytes]
               ) -> tuple[torch.Tensor, np.ndarray]:
        """Keyed clean-end state -> (recovered state, decoded images): the key's inverse, then sampling."""
        unkeyed = self.keyed_noise(state, eps, self.key_fn(mask_lat, key, nonces, inverse=True))
        with self._phase("sample"):
            out = self.scheme.sample(unkeyed, eps)
        with self._phase("decode"):
            return out, self._decode(out)

    @torch.no_grad()
    def recover_latents(self, latents: torch.Tensor, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                        key: SecretKey, nonces: Sequence[bytes]) -> np.ndarray:
        """Recover from clean latents found some other way (pixel-only recovery inverts the decoder);
        ``images`` give the context outside ``masks``. Returns the recovered images (N, H, W, 3)."""
        self._start(len(images), self._bucket_of(len(images)), anonymize=False, lift=True)
        with self._phase("condition"):
            _, _, mask_lat, eps = self._prepare(images, masks)
        state = self.scheme.lift(latents.to(self.backbone.device, self.backbone.dtype), eps)
        _, decoded = self._unkey(state, mask_lat, eps, key, nonces)
        self.meter.finish()
        return self._paste(decoded, images, masks)

    def _recover_group(self, veiled: Sequence[Veiled], key: SecretKey, bucket: int, unet_path: str) -> list[Recovered]:
        """Recover files that share their bucket, UNet path and thread count."""
        images = [v.image for v in veiled]
        masks = [v.mask for v in veiled]
        stripped = all(v.state is None for v in veiled)
        self._start(len(veiled), bucket, anonymize=False, lift=stripped)
        with self._phase("condition"):
            _, _, mask_lat, eps = self._prepare(images, masks, unet_path)
        if all(v.state is not None for v in veiled):
            state = torch.stack([v.state for v in veiled]).to(self.backbone.device, self.scheme.state_dtype)
        elif any(v.state is not None for v in veiled):
            raise ValueError("mix of stripped and intact files in one batch")
        else:
            state = self.scheme.lift(self.encode(to_tensor(images).to(self.backbone.device)), eps)
        out, decoded = self._unkey(state, mask_lat, eps, key, [v.nonce for v in veiled])
        opened: list[bool | None] = [None] * len(veiled)
        with self._phase("residual"):
            for i, v in enumerate(veiled):
                residual = open_residual(v.sealed_residual, v.mask, key, v.nonce) if v.sealed_residual else None
                opened[i] = None if not v.sealed_residual else residual is not None
                if residual is not None:
                    decoded[i] = add_residual(decoded[i], residual, v.mask)
        rec = self._paste(decoded, images, masks)
        self.meter.finish()
        latents = self.scheme.endpoint(out).cpu()
        return [Recovered(image=rec[i], latent=latents[i], residual_opened=opened[i]) for i in range(len(veiled))]
