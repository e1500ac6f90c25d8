"""One training step of the real objective, timed: ``python -m faceveil.train.benchmark``.

Builds a backbone layout with random weights (``build_backbone(name, random_weights=True)``),
adds the LoRA adapter, and runs the training step exactly as the training loop does
(no-gradient lift, inversion and keying with the deployed scheme, then the losses through the
differentiable sampling trajectory, backward, AdamW step) on synthetic faces, under bf16 autocast on CUDA (fp32 weights for
LoRA, frozen weights in bf16). Prints one JSON object: median step time, its no-gradient
and gradient parts, images/s, peak memory. Examples::

    python -m faceveil.train.benchmark --backbone sd2-inpaint --size 512 --batch-size 4 --steps 5
    python -m faceveil.train.benchmark --backbone tiny --size 64 --batch-size 2 --steps 2   # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Sequence


def synthetic_batch(n: int, size: int, seed: int = 0):  # -> Batch
    """Smooth random images with an elliptical face mask and FFHQ-like 5-point landmarks."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from faceveil.data.images import elliptical_mask
    from faceveil.train.objective import Batch

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(4, size // 16), max(4, size // 16), generator=g) * 2 - 1
    images = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    mask = torch.from_numpy(np.stack([elliptical_mask(size, size)] * n)[:, None].astype(np.float32))
    # FFHQ-aligned crops: eyes at ~(0.37, 0.47) and (0.63, 0.47), nose (0.5, 0.6), mouth corners (0.4 / 0.6, 0.72).
    lm = torch.tensor([[0.37, 0.47], [0.63, 0.47], [0.5, 0.6], [0.4, 0.72], [0.6, 0.72]]) * size
    return Batch(images=images, mask=mask, landmarks=lm.expand(n, 5, 2).clone())


def run(args: argparse.Namespace) -> dict:
    import torch

    from faceveil.models.backbones import build_backbone
    from faceveil.models.identity import load_identity_encoder
    from faceveil.models.settings import Settings
    from faceveil.train.config_schema import ObjectiveSection
    from faceveil.train.lora import add_lora, lora_config
    from faceveil.train.objective import Frozen, Objective, VeilModel, build_lpips, draw_keys

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.mixed_precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "no"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    weight_dtype = amp_dtype or torch.float32
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, random_weights=True).to(device=device, dtype=weight_dtype)
    unet = backbone.unet
    params = add_lora(unet, lora_config(args.rank, args.rank, ["to_q", "to_k", "to_v", "to_out.0"]))
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if hasattr(backbone.vae, "enable_gradient_checkpointing"):
            backbone.vae.enable_gradient_checkpointing()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    unet.train()
    if args.compile:
        unet.compile()
    identity = load_identity_encoder(args.identity, device=device)
    lp = build_lpips("alex", "random").to(device) if args.perceptual_weight > 0 else None
    ocfg = ObjectiveSection(grad_steps=args.grad_steps, unroll=args.unroll,
                            checkpoint_steps=args.checkpoint_steps, perceptual_weight=args.perceptual_weight,
                            wrong_key_weight=args.wrong_key_weight)
    frozen = Frozen(backbone=backbone, identity=identity, lpips=lp)
    settings = Settings(scheme=args.scheme, steps=args.anonymize_steps, transform="shuffle")
    model = VeilModel(unet, frozen, ocfg, settings)
    objective = Objective(ocfg, frozen, settings)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = synthetic_batch(args.batch_size, args.size)
    batch.images, batch.mask, batch.landmarks = (t.to(device) for t in (batch.images, batch.mask, batch.landmarks))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    times, inv_times, grad_times = [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    def step(i: int):  # -> (losses, t0, t1, t2)
        keys, nonces = draw_keys(args.batch_size, 0, "bench", i)
        wrong = draw_keys(args.batch_size, 1, "bench", i)[0] if args.wrong_key_weight > 0 else None
        sync()
        t0 = time.perf_counter()
        with autocast():
            inputs = objective.training_inputs(model, batch, keys, nonces, wrong)
        sync()
        t1 = time.perf_counter()
        with autocast():
            out = model("losses", **inputs)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return out, t0, t1, time.perf_counter()

    for i in range(args.warmup + args.steps):
        out, t0, t1, t2 = step(i)
        if i >= args.warmup:
            times.append(t2 - t0)
            inv_times.append(t1 - t0)
            grad_times.append(t2 - t1)
        if not torch.isfinite(out["loss"]):
            raise RuntimeError(f"non-finite loss at step {i}: {out}")
    step_time = statistics.median(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        gpu = torch.cuda.get_device_name(device)
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        gpu = None
    from faceveil.models.perf import bf16_peak_tflops, count_flops, fraction_of_peak

    # Executed FLOPs of one step (forward, backward, recomputation under checkpointing).
    flops = count_flops(lambda: step(args.warmup + args.steps)) if args.count_flops else None
    peak_tflops = bf16_peak_tflops(device, args.peak_tflops)
    return {
        "flops_per_step": flops,
        "achieved_tflops": flops / step_time / 1e12 if flops else None,
        "fraction_of_bf16_peak": fraction_of_peak(flops, step_time, peak_tflops) if flops else None,
        "backbone": args.backbone,
        "device": str(device),
        "gpu": gpu,
        "size": args.size,
        "batch_size": args.batch_size,
        "mixed_precision": precision,
        "weight_dtype": str(weight_dtype).replace("torch.", ""),
        "lora_rank": args.rank,
        "trainable_params": sum(p.numel() for p in params),
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "scheme": args.scheme,
        "anonymize_steps": args.anonymize_steps,
        "grad_steps": args.grad_steps,
        "unroll": args.unroll,
        "wrong_key_branch": args.wrong_key_weight > 0,
        "gradient_checkpointing": args.gradient_checkpointing,
        "checkpoint_steps": args.checkpoint_steps,
        "compile": args.compile,
        "identity": args.identity,
        "steps_timed": args.steps,
        "step_time_s": step_time,
        "step_time_min_s": min(times),
        "no_grad_part_s": statistics.median(inv_times),
        "grad_part_s": statistics.median(grad_times),
        "images_per_s": args.batch_size / step_time,
        "peak_mem_gib": peak,
        "last_losses": {k: float(v.detach()) for k, v in out.items()},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m faceveil.train.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="sd2-inpaint", help="tiny, sd2-inpaint, ldm-ffhq (random weights)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--scheme", default="exact", help="anonymize.scheme (the trajectory trained on)")
    p.add_argument("--anonymize-steps", type=int, default=50, help="anonymize.steps")
    p.add_argument("--grad-steps", type=int, default=8, help="K (shortcut)")
    p.add_argument("--unroll", default="full", choices=("shortcut", "full"), help="objective.unroll")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--identity", default="random:r50", help="identity net spec (random weights: random:r50, tiny)")
    p.add_argument("--perceptual-weight", type=float, default=0.1)
    p.add_argument("--wrong-key-weight", type=float, default=0.5)
    p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"), help="auto: bf16 on CUDA")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--no-checkpoint-steps", dest="checkpoint_steps", action="store_false")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-count-flops", dest="count_flops", action="store_false", help="skip the FLOP count of one step")
    p.add_argument("--peak-tflops", type=float, help="bf16 peak of this device, when it is not in faceveil.models.perf")
    p.add_argument("--find-max-batch", action="store_true", help="CUDA: double the batch until it runs out of memory")
    return p


def largest_batch(args: argparse.Namespace, limit: int = 256) -> int:
    """The largest power-of-two batch (from ``--batch-size``) whose step fits in GPU memory."""
    import torch

    fits, bs = 0, args.batch_size
    while bs <= limit:
        trial = argparse.Namespace(**{**vars(args), "batch_size": bs, "steps": 1, "warmup": 0, "count_flops": False})
        try:
            run(trial)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        fits, bs = bs, bs * 2
    return fits


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    result = run(args)
    if args.find_max_batch:
        result["largest_batch"] = largest_batch(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
