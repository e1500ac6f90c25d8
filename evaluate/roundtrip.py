"""How exact is recovery on this setup? Anonymize, replay the model backwards, and open the file.

Reported: the latent round-trip error (max abs and relative L2) of the clean latent the
model's inversion gives back against E(x) (the exactness of the scheme on these kernels);
the PSNR of that latent, decoded, against the autoencoder reconstruction D(E(x)) pasted
into the original (the best any latent-only method can do); the PSNR of the replayed image
with the residual against the original; the same numbers with a wrong random key; and the
file: its size, and whether opening it with the key (no model) gives the original exactly.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceveil.fileformat import read_file, write_veiled
from faceveil.keys import SecretKey
from faceveil.models.backbones import Backbone
from faceveil.models.pipeline import Anonymizer, Settings, psnr, to_tensor, to_uint8


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


@torch.no_grad()
def measure_roundtrip(backbone: Backbone, image: np.ndarray, mask: np.ndarray, settings: Settings) -> dict[str, Any]:
    key, wrong = SecretKey.generate(), SecretKey.generate()
    anonymizer = Anonymizer(backbone, settings)
    x = to_tensor([image]).to(backbone.device)
    z0 = backbone.encode(x).double().cpu()[0]
    recon = np.where(mask[..., None], to_uint8(backbone.decode(z0[None].to(backbone.device)))[0], image)

    t0 = time.perf_counter()
    veiled = anonymizer.anonymize([image], [mask], key)[0]
    t_anon = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "anon.png"
        write_veiled(path, veiled, key)
        size = path.stat().st_size
        t0 = time.perf_counter()
        opened = read_file(path, key)
        t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = anonymizer.recover([veiled], key)[0]
    t_rec = time.perf_counter() - t0
    bad = anonymizer.recover([veiled], wrong, force=True)[0]

    def errors(latent: torch.Tensor, img: np.ndarray) -> dict[str, Any]:
        diff = latent.double() - z0
        # The latent alone, decoded: what recovery gives without the sealed residual.
        from_latent = np.where(mask[..., None], to_uint8(backbone.decode(latent[None].to(backbone.device)))[0], image)
        return {
            "latent_max_abs_error": float(diff.abs().max()),
            "latent_rel_error": float(diff.norm() / z0.norm()),
            "psnr_latent_only_vs_autoencoder_db": _finite(psnr(from_latent, recon)),
            "psnr_vs_original_db": _finite(psnr(img, image)),
        }

    return {
        "backbone": backbone.spec,
        "scheme": settings.scheme,
        "steps": settings.steps,
        "transform": settings.transform,
        "image_size": list(image.shape[:2]),
        "mask_fraction": round(float(mask.mean()), 4),
        "device": str(backbone.device),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "file_bytes": size,
        "file_recovers_original_exactly": bool(opened.exact) and bool(np.array_equal(opened.original, image)),
        "seconds_open_file": round(t_open, 3),
        "seconds_anonymize": round(t_anon, 3),
        "seconds_recover": round(t_rec, 3),
        "anonymized_psnr_vs_original_db": _finite(psnr(veiled.image, image)),
        "recovered": errors(rec.latent, rec.image),
        "wrong_key": errors(bad.latent, bad.image),
    }
