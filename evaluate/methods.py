"""The methods an evaluation compares, behind one interface: anonymize to files, recover from pixels.

Each method writes its anonymized images as files (faceveil's self-describing PNG for
ours, plain PNG for the others); recovery is measured from those files, untouched and
degraded (:func:`degrade`): re-compressed as JPEG, or with the metadata stripped.

For faceveil, a degraded file keeps its *public* header and mask (as if kept beside it,
e.g. the output of ``faceveil inspect``) but loses the exact latents and the sealed
residual, so recovery re-encodes the pixels. The published method never stores anything:
all its recoveries start from the pixels.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from faceveil.evaluate.baselines import BlackBoxMethod, BlurMethod, PixelateMethod, PublishedScheme
from faceveil.evaluate.faces import EvalFace


@dataclass
class Recovery:
    image: np.ndarray  # (H, W, 3) uint8
    latent: torch.Tensor | None = None  # recovered clean latent (C, h, w)
    extra: dict[str, Any] = field(default_factory=dict)


def read_pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.ascontiguousarray(np.asarray(img.convert("RGB")))


def degrade(path: str | Path, variant: str) -> np.ndarray:
    """The pixels of a saved file after ``variant``: ``file`` (untouched), ``jpegQ`` (re-saved as
    JPEG at quality Q, PIL's default 4:2:0 chroma subsampling) or ``stripped`` (re-saved as PNG
    without any metadata: the same pixels)."""
    pixels = read_pixels(path)
    if variant in ("file", "stripped"):
        if variant == "stripped":
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            buf.seek(0)
            pixels = np.asarray(Image.open(buf).convert("RGB"))
        return pixels
    if variant.startswith("jpeg"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=int(variant[4:]))
        buf.seek(0)
        return np.ascontiguousarray(np.asarray(Image.open(buf).convert("RGB")))
    raise ValueError(f"unknown file variant {variant!r}")


class EvalMethod(ABC):
    name: str
    label: str
    recoverable: bool = False
    backbone: Any = None

    @abstractmethod
    def tag(self) -> dict[str, Any]:
        """Settings that identify this method's outputs (they name its cache folder)."""

    @abstractmethod
    def anonymize_files(self, faces: Sequence[EvalFace], paths: Sequence[Path]) -> None:
        """Anonymize ``faces`` (same size) and write one file per face."""

    def recover(self, faces: Sequence[EvalFace], paths: Sequence[Path], variant: str, pixels: Sequence[np.ndarray]) -> list[Recovery]:
        raise NotImplementedError(f"{self.name} cannot recover")


class ObfuscationMethod(EvalMethod):
    """A classic obfuscation at one strength; ``family`` names the method it is a setting of."""

    def __init__(self, impl: BlurMethod | PixelateMethod | BlackBoxMethod, label: str, strength: float | None = None) -> None:
        self.impl = impl
        self.family = impl.name
        self.strength = strength
        self.name = impl.name if strength is None else f"{impl.name}-{strength:g}"
        self.label = label

    def tag(self) -> dict[str, Any]:
        return {"method": self.family, **{k: v for k, v in vars(self.impl).items() if k != "name"}}

    def anonymize_files(self, faces: Sequence[EvalFace], paths: Sequence[Path]) -> None:
        from faceveil.data.images import save_image

        for f, p in zip(faces, paths):
            save_image(p, self.impl.apply(f.image, f.mask))


class OursMethod(EvalMethod):
    """faceveil: anonymize with :class:`~faceveil.models.pipeline.Anonymizer`, write the
    self-describing PNG, recover from it."""

    recoverable = True

    def __init__(self, name: str, label: str, backbone: Any, settings: Any, key: Any) -> None:
        from faceveil.models.pipeline import Anonymizer

        self.name, self.label = name, label
        self.backbone = backbone
        self.settings = settings
        self.key = key
        self.anonymizer = Anonymizer(backbone, settings)
        self.written: dict[Path, Any] = {}  # path -> Veiled of the files this run wrote

    def tag(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "backbone": self.backbone.spec,
            "adapter": self.backbone.adapter_hash,
            "settings": vars(self.settings),
            "key": self.key.fingerprint,
        }

    def anonymize_files(self, faces: Sequence[EvalFace], paths: Sequence[Path]) -> None:
        from faceveil.fileformat import write_veiled

        veiled = self.anonymizer.anonymize([f.image for f in faces], [f.mask for f in faces], self.key)
        for v, p in zip(veiled, paths):
            write_veiled(p, v, self.key)
            self.written[Path(p)] = v  # the in-memory result, with the exact latent state files no longer hold

    def recover(self, faces: Sequence[EvalFace], paths: Sequence[Path], variant: str, pixels: Sequence[np.ndarray]) -> list[Recovery]:
        """From the file as written: its sealed original (exact, no model), with the latent the
        scheme's inversion gives from the in-memory state (how exact the model's own way back is).
        From altered pixels: the key's inverse through the model, re-encoding the pixels (approximate)."""
        import dataclasses

        from faceveil.fileformat import read_veiled

        stored = [read_veiled(p, self.key) for p in paths]
        if variant == "file":
            # Files reused from an earlier run have no in-memory state: their latent error is not measured.
            mem = [self.written.get(Path(p)) for p in paths]
            have = [v for v in mem if v is not None]
            replay = iter(self.anonymizer.recover(have, self.key) if have else [])
            return [Recovery(v.original, None if m is None else next(replay).latent) for v, m in zip(stored, mem)]
        veiled = [dataclasses.replace(v, image=np.ascontiguousarray(px), state=None, original=None)
                  for v, px in zip(stored, pixels)]
        return [Recovery(r.image, r.latent) for r in self.anonymizer.recover(veiled, self.key)]


class PublishedMethod(EvalMethod):
    """The published method (see :mod:`faceveil.evaluate.baselines`): pixels only, seed key."""

    recoverable = True

    def __init__(self, backbone: Any, steps: int, seed: int, mask_fallback: str, detector_upsample: int) -> None:
        self.name, self.label = "published", "published (sign flip, DDIM, re-detected mask)"
        self.backbone = backbone
        self.seed = seed
        self.steps = steps
        self.scheme = PublishedScheme(backbone, steps, mask_fallback, detector_upsample)

    def tag(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "backbone": self.backbone.spec,
            "steps": self.steps,
            "seed": self.seed,
            "fallback": self.scheme.mask_fallback,
            "upsample": self.scheme.detector_upsample,
        }

    def anonymize_files(self, faces: Sequence[EvalFace], paths: Sequence[Path]) -> None:
        from faceveil.data.images import save_image

        anon = self.scheme.anonymize([f.image for f in faces], [f.mask for f in faces], self.seed)
        for img, p in zip(anon, paths):
            save_image(p, img)

    def recover(self, faces: Sequence[EvalFace], paths: Sequence[Path], variant: str, pixels: Sequence[np.ndarray]) -> list[Recovery]:
        images, latents, found = self.scheme.recover([np.ascontiguousarray(p) for p in pixels], self.seed, [f.mask for f in faces])
        return [Recovery(images[i], latents[i], {"mask_found": found[i]}) for i in range(len(faces))]
