"""Throughput benchmark of anonymize and recover against a naive diffusers loop, in one run.

    python -m faceveil.evaluate.benchmark --backbone sd2-inpaint:random --size 512 --dtype bfloat16 \\
        --batch-sizes 1 4 8 16 --train                                  # a GPU
    python -m faceveil.evaluate.benchmark --backbone tiny --size 128 --dtype float32 --steps 20  # a CPU

Prints a table, then one JSON document (also written with ``--json``):
- the naive diffusers loop (DDIMInverseScheduler then DDIMScheduler, plain batches) at
  each batch size, and its best;
- faceveil's exact scheme at each batch size: anonymize and recover images/s, whether
  recovery (each file alone) is bit-exact, peak memory, and the time per phase
  (condition, encode, lift, residual, invert, rekey, sample, decode, file write);
- useful FLOPs per image (torch.utils.flop_counter, padding not counted) and the achieved
  fraction of the device's dense bf16 peak (GPUs in ``faceveil.models.perf``, or ``--peak-tflops``);
- with ``--train``, the LoRA training step of ``faceveil.train.benchmark`` (images/s, peak
  memory, fraction of peak, largest batch that fits).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from faceveil.data.images import elliptical_mask, load_image
from faceveil.data.samples import sample_photo_path
from faceveil.evaluate.naive_loop import naive_anonymize
from faceveil.keys import SecretKey
from faceveil.models.backbones import load_backbone
from faceveil.models.perf import bf16_peak_tflops, count_flops, fraction_of_peak, peak_memory_gib, reset_peak_memory, sync
from faceveil.models.pipeline import Anonymizer
from faceveil.models.settings import Settings

PHASES = ("condition", "encode", "lift", "residual", "invert", "rekey", "sample", "decode", "write")


def faces(size: int, n: int) -> list[np.ndarray]:
    """``n`` distinct face images: the astronaut's face, shifted."""
    img = load_image(sample_photo_path("astronaut"))[0:300, 110:410]
    face = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))
    return [np.roll(face, 3 * i, axis=1) for i in range(n)]


def _timed(device: torch.device, fn):  # noqa: ANN001, ANN202
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def bench_faceveil(bb, settings: Settings, bs: int, size: int, compile_unet: bool, tmp: Path) -> dict:  # noqa: ANN001
    from faceveil.fileformat import write_veiled

    device = bb.device
    key = SecretKey(bytes(range(32)))
    imgs, mask = faces(size, bs), elliptical_mask(size, size)
    a = Anonymizer(bb, settings, max_bucket=bs, compile_unet=compile_unet)
    reset_peak_memory(device)
    a.meter.timings = {}
    veiled, t_anon = _timed(device, lambda: a.anonymize(imgs, [mask] * bs, key))
    t_write = time.perf_counter()
    paths = [write_veiled(tmp / f"{bs}-{i}.png", v, key) for i, v in enumerate(veiled)]
    t_write = time.perf_counter() - t_write
    anon_phases = {**a.meter.timings, "write": t_write}
    a.meter.timings = {}
    rec, t_rec = _timed(device, lambda: a.recover(veiled, key))
    rec_phases = dict(a.meter.timings)
    alone = [a.recover([v], key)[0] for v in veiled[: min(bs, 2)]]  # bit-exact without its batch?
    for p in paths:
        p.unlink()
    return {
        "batch": bs,
        "anonymize_img_s": bs / (t_anon + t_write),
        "recover_img_s": bs / t_rec,
        "exact": all(np.array_equal(r.image, im) for r, im in zip(rec, imgs))
        and all(np.array_equal(r.image, im) for r, im in zip(alone, imgs)),
        "peak_memory_gib": peak_memory_gib(device),
        "anonymize_phases_s_per_img": {k: anon_phases.get(k, 0.0) / bs for k in PHASES},
        "recover_phases_s_per_img": {k: rec_phases.get(k, 0.0) / bs for k in PHASES if k in rec_phases},
    }


def bench_naive(bb, steps: int, bs: int, size: int) -> dict:  # noqa: ANN001
    imgs, mask = faces(size, bs), elliptical_mask(size, size)
    reset_peak_memory(bb.device)
    _, t = _timed(bb.device, lambda: naive_anonymize(bb, imgs, [mask] * bs, steps))
    return {"batch": bs, "anonymize_img_s": bs / t, "peak_memory_gib": peak_memory_gib(bb.device)}


def _best(old: dict | None, new: dict) -> dict:
    if old is None:
        return new
    keep = dict(max(old, new, key=lambda r: r["anonymize_img_s"]))
    if "recover_img_s" in new:
        keep["recover_img_s"] = max(old["recover_img_s"], new["recover_img_s"])
        keep["exact"] = old["exact"] and new["exact"]
    return keep


def _fmt_row(cells: list[object]) -> str:
    return " | ".join(f"{c:.3g}" if isinstance(c, float) else str(c) for c in cells)


def report(out: dict) -> str:
    lines = [f"{out['backbone']} {out['size']} px, {out['steps']} steps, {out['dtype']}, {out['device']} "
             f"({out['threads']} CPU threads); useful GFLOP per image: anonymize {out['gflop_per_image']['anonymize']:.1f}, "
             f"recover {out['gflop_per_image']['recover']:.1f}, naive {out['gflop_per_image']['naive']:.1f}"]
    lines.append("naive diffusers loop: " + ", ".join(f"batch {r['batch']}: {r['anonymize_img_s']:.3g} img/s" for r in out["naive"]))
    lines.append("batch | anonymize img/s | recover img/s | x naive best | exact | peak GiB | fraction of bf16 peak (anon)")
    for r in out["faceveil"]:
        lines.append(_fmt_row([r["batch"], r["anonymize_img_s"], r["recover_img_s"], r["vs_naive_best"], r["exact"],
                               r["peak_memory_gib"], r["fraction_of_bf16_peak"] if r["fraction_of_bf16_peak"] is not None else "n/a"]))
    lines.append("anonymize seconds per image by phase: " + ", ".join(PHASES))
    for r in out["faceveil"]:
        lines.append(f"batch {r['batch']}: " + " ".join(f"{r['anonymize_phases_s_per_img'][k]:.3g}" for k in PHASES))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="sd2-inpaint:random")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--transform", default="shuffle")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--naive-batch-sizes", type=int, nargs="+", help="default: --batch-sizes")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats, best kept (use 2-3 on a shared machine)")
    p.add_argument("--compile", action="store_true", help="faceveil with the compiled UNet path")
    p.add_argument("--peak-tflops", type=float, help="bf16 peak of this device, when it is not in the built-in table")
    p.add_argument("--train", action="store_true", help="also the LoRA training step (faceveil.train.benchmark)")
    p.add_argument("--train-args", default="", help="extra arguments for faceveil.train.benchmark, one string")
    p.add_argument("--json", type=Path, help="also write the JSON document here")
    args = p.parse_args(argv)
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bb = load_backbone(args.backbone, device=device, dtype=getattr(torch, args.dtype))
    settings = Settings("exact", args.steps, args.transform)
    peak = bf16_peak_tflops(device, args.peak_tflops)
    img, mask, key = faces(args.size, 1), [elliptical_mask(args.size, args.size)], SecretKey(bytes(32))
    warm = Anonymizer(bb, settings, compile_unet=args.compile)
    veiled = warm.anonymize(img, mask, key)  # warm-up (allocator, kernels, compilation)
    flops = {
        "anonymize": count_flops(lambda: warm.anonymize(img, mask, key)),
        "recover": count_flops(lambda: warm.recover(veiled, key)),
        "naive": count_flops(lambda: naive_anonymize(bb, img, mask, args.steps)),
    }
    out: dict = {"backbone": args.backbone, "size": args.size, "steps": args.steps, "dtype": args.dtype,
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "threads": torch.get_num_threads(), "bf16_peak_tflops": peak, "compile": args.compile,
                 "gflop_per_image": {k: v / 1e9 for k, v in flops.items()}}
    naive_sizes = args.naive_batch_sizes if args.naive_batch_sizes is not None else args.batch_sizes
    naive: dict[int, dict] = {}
    ours: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Interleaved and repeated, best kept: a busy machine's load drifts between runs.
        for _ in range(args.repeats):
            for bs in sorted(set(naive_sizes) | set(args.batch_sizes)):
                if bs in naive_sizes:
                    naive[bs] = _best(naive.get(bs), bench_naive(bb, args.steps, bs, args.size))
                if bs in args.batch_sizes:
                    ours[bs] = _best(ours.get(bs), bench_faceveil(bb, settings, bs, args.size, args.compile, Path(tmp)))
    out["naive"], out["faceveil"] = list(naive.values()), list(ours.values())
    best = max(r["anonymize_img_s"] for r in out["naive"])
    for r in out["faceveil"]:
        r["vs_naive_best"] = r["anonymize_img_s"] / best
        r["fraction_of_bf16_peak"] = fraction_of_peak(flops["anonymize"] * r["anonymize_img_s"], 1.0, peak)
    if args.train:
        from faceveil.train.benchmark import build_parser, run

        targs = build_parser().parse_args(args.train_args.split())
        out["train"] = run(targs)
    text = json.dumps(out, indent=1)
    print(report(out))
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
