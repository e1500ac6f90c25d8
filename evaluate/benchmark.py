"""Benchmark anonymize/recover exactness and speed on a real layout (random weights are fine).

    python -m faceveil.evaluate.benchmark --backbone sd2-inpaint:random --size 512 --dtype bfloat16

Prints one JSON document: per scheme, the ``faceveil roundtrip`` numbers plus
peak GPU memory, and the anonymize throughput at each batch size. Meant for a
GPU; on a CPU use ``--backbone tiny --size 128``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

from faceveil.data.images import elliptical_mask, load_image
from faceveil.data.samples import sample_photo_path
from faceveil.evaluate.roundtrip import measure_roundtrip
from faceveil.keys import SecretKey
from faceveil.models.backbones import load_backbone
from faceveil.models.pipeline import Anonymizer
from faceveil.models.settings import SCHEMES, Settings


def _face(size: int) -> np.ndarray:
    img = load_image(sample_photo_path("astronaut"))[0:300, 110:410]
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="sd2-inpaint:random")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    p.add_argument("--transform", default="shuffle")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 4], help="anonymize throughput batch sizes")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    backbone = load_backbone(args.backbone, device=device, dtype=getattr(torch, args.dtype))
    out: dict[str, object] = {
        "backbone": args.backbone,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "unet_params_m": round(sum(p.numel() for p in backbone.unet.parameters()) / 1e6, 1),
        "load_seconds": round(time.perf_counter() - t0, 1),
    }
    face, mask = _face(args.size), elliptical_mask(args.size, args.size)
    results = {}
    for scheme in args.schemes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = measure_roundtrip(backbone, face, mask, Settings(scheme, args.steps, args.transform))
        if device.type == "cuda":
            r["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        results[scheme] = r
    out["roundtrip"] = results
    throughput = {}
    key = SecretKey.generate()
    for bs in args.batch_sizes:
        anonymizer = Anonymizer(backbone, Settings("exact", args.steps, args.transform))
        _sync(device)
        t = time.perf_counter()
        anonymizer.anonymize([face] * bs, [mask] * bs, key)
        _sync(device)
        throughput[str(bs)] = round(bs / (time.perf_counter() - t), 3)
    out["anonymize_images_per_s_exact"] = throughput
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
