"""Validation during training: the real pipeline, from written files, on held-out faces.

The faces are a split held out of training (:func:`held_out`: by identity label, by source
photo where a face has none), so the numbers measure what users will see on faces the
adapter never trained on. For them: anonymize with the current adapted UNet (in eval mode:
no dropout) and the inference settings (``anonymize.*``) under a fixed validation key, so
every step is measured on the same keys; write each result as a faceveil PNG, read it
back, recover with the right key and with a wrong one (``force``), and measure

- ``val/recovery_latent_error``: max |recovered latent - E(original)| over the batch (the
  exact scheme keeps it at the 2**-21 lattice rounding, far below 1e-4, after training too);
- ``val/recovery_psnr``: recovered vs original pixels (dB; inf when identical);
- ``val/identity_cos``: cosine of the training identity network's embeddings, anonymized
  (read back from its file) vs original;
- ``val/wrong_key_cos`` / ``val/recovered_cos``: the same for the wrong-key and right-key recoveries;
- ``val/pixel_psnr`` / ``val/pixel_cos``: recovery from a JPEG-75 copy's pixels alone (re-encoded, no
  record), mean dB and identity cosine;
- with a dlib judge: ``val/dlib_cos`` (cosine of dlib's descriptors, anonymized vs original) and
  ``val/dlib_distance`` (dlib's own unit, the Euclidean distance; below 0.6 dlib calls two faces
  one person).

It also returns the image grid, one row per face: original | anonymized | recovered | wrong key.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from faceveil.fileformat import read_file, write_veiled
from faceveil.models.backbones import Backbone
from faceveil.models.pipeline import Anonymizer, Settings, psnr, to_tensor, to_uint8
from faceveil.train.objective import draw_keys, eval_mode

GRID_COLUMNS = ("original", "anonymized", "recovered", "wrong key")


def _cos(identity: nn.Module, images: np.ndarray, landmarks: torch.Tensor | None, ref: torch.Tensor) -> float:
    emb = identity.embed(to_tensor(images), landmarks).float()
    return float((emb * ref).sum(-1).mean())


def _dlib(judge: Any, anon: np.ndarray, images: np.ndarray) -> dict[str, float]:
    from faceveil.models.recognizers import cosine_similarity, euclidean_distance

    h, w = images.shape[1:3]
    boxes = [(0, 0, w - 1, h - 1)] * len(images)  # aligned crops: the face fills the crop
    a, o = judge.embed(list(anon), boxes), judge.embed(list(images), boxes)
    return {"val/dlib_cos": float(cosine_similarity(a, o).nanmean()), "val/dlib_distance": float(euclidean_distance(a, o).nanmean())}


def jpeg_copy(image: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.ascontiguousarray(np.asarray(Image.open(buf).convert("RGB")))


def make_grid(columns: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows of images: ``columns[j][i]`` is row i, column j (uint8 (B, H, W, 3) each)."""
    b, h, w, _ = columns[0].shape
    grid = np.full((b * (h + pad) + pad, len(columns) * (w + pad) + pad, 3), 255, np.uint8)
    for j, col in enumerate(columns):
        for i in range(b):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = col[i]
    return grid


@torch.no_grad()
def validate(backbone: Backbone, identity: nn.Module, batch: dict[str, Any], settings: Settings,
             use_landmarks: bool = True, workdir: str | Path | None = None,
             dlib: Any = None) -> tuple[dict[str, float], np.ndarray]:
    """Metrics (see the module docstring) and the image grid for one validation batch."""
    # Contiguous (B, H, W, 3), as images loaded from files are: the autoencoder's result depends on
    # the input's memory layout in the last bits, and recovery re-encodes contiguous PNG pixels.
    images = np.ascontiguousarray(to_uint8(batch["image"]))
    masks = (batch["mask"][:, 0] > 0.5).cpu().numpy()
    landmarks = batch["landmarks5"].float() if use_landmarks else None
    (key, wrong), _ = draw_keys(2, 0, "validation")  # fixed: every step is measured on the same keys
    nonces = draw_keys(len(images), 0, "validation-nonces")[1]
    anonymizer = Anonymizer(backbone, settings)
    with eval_mode(backbone.unet):
        veiled = anonymizer.anonymize(list(images), list(masks), key, nonces, allow_caller_nonces=True)  # a fixed validation key: files never leave the run
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            paths = [write_veiled(Path(tmp) / f"val-{i:03d}.png", v, key) for i, v in enumerate(veiled)]
            read = [read_file(p, key) for p in paths]
        # The model's own way back (the files open exactly without it: val/file_exact).
        recovered = anonymizer.recover(veiled, key)
        wrong_rec = anonymizer.recover(veiled, wrong, force=True)
        # Pixels only: a JPEG-75 copy, re-encoded (what objective.pixel_weight trains for).
        copies = [dataclasses.replace(v, image=jpeg_copy(v.image, 75), state=None, sealed_residual=None) for v in veiled]
        from_pixels = np.stack([r.image for r in anonymizer.recover(copies, key)])
    anon = np.stack([vf.image for vf in read])
    rec = np.stack([r.image for r in recovered])
    wimg = np.stack([r.image for r in wrong_rec])
    z0 = backbone.encode(to_tensor(images).to(backbone.device)).double().cpu()
    rec_lat = torch.stack([r.latent for r in recovered]).double()
    ref = identity.embed(to_tensor(images), landmarks).float()
    p = [psnr(rec[i], images[i]) for i in range(len(images))]
    metrics = {
        "val/recovery_latent_error": float((rec_lat - z0).abs().max()),
        "val/file_exact": float(np.mean([bool(vf.exact) and np.array_equal(vf.original, im) for vf, im in zip(read, images)])),
        "val/recovery_psnr": float(min(p)) if p else math.nan,
        "val/identity_cos": _cos(identity, anon, landmarks, ref),
        "val/wrong_key_cos": _cos(identity, wimg, landmarks, ref),
        "val/recovered_cos": _cos(identity, rec, landmarks, ref),
        "val/pixel_psnr": float(np.mean([psnr(from_pixels[i], images[i]) for i in range(len(images))])) if len(images) else math.nan,
        "val/pixel_cos": _cos(identity, from_pixels, landmarks, ref),
    }
    if dlib is not None:
        metrics.update(_dlib(dlib, anon, images))
    return metrics, make_grid([images, anon, rec, wimg])


def backbone_view(backbone: Backbone, unet: nn.Module) -> Backbone:
    """The frozen backbone with the training UNet (LoRA active) in place of the base one."""
    return dataclasses.replace(backbone, unet=unet)
