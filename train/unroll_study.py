"""How the two training unrolls compare: ``python -m faceveil.train.unroll_study``.

For each mode (``full``, and ``shortcut`` at each K) on the same faces, keys and LoRA weights,
with only the identity loss on: the time of the differentiable part (forward + backward), the
bytes the autograd graph holds for backward, the LoRA gradient norm, the cosine between that
gradient and the ``full`` trajectory's (the true gradient of the deployed images' identity, up
to the straight-through rounding) and the gap between the mode's clean latents and
``anonymize``'s (mean abs error inside the mask, and the per-image identity-cosine difference).
Prints one JSON object. The tiny backbone on CPU by default::

    python -m faceveil.train.unroll_study --steps 20 --ks 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any


def _saved_bytes():  # -> (context manager, counter)
    import torch

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), seen


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from faceveil.data.loader import make_loader
    from faceveil.data.masks import latent_mask
    from faceveil.data.sample_set import build_sample_shards
    from faceveil.models.backbones import build_backbone
    from faceveil.models.identity import load_identity_encoder
    from faceveil.models.pipeline import Anonymizer, Settings, to_tensor, to_uint8
    from faceveil.train.config_schema import ObjectiveSection
    from faceveil.train.sample_shards import sample_shards_dir
    from faceveil.train.lora import add_lora, lora_config
    from faceveil.train.objective import Batch, Frozen, Objective, VeilModel, draw_keys

    torch.set_num_threads(args.threads)
    faces = next(iter(make_loader(build_sample_shards(sample_shards_dir(args.size), size=args.size), batch_size=args.batch_size,
                                  image_size=args.size, latent_factor=8, shuffle=0)))
    images = np.ascontiguousarray(to_uint8(faces["image"]))
    masks = (faces["mask"][:, 0] > 0.5).numpy()
    faces["image"] = to_tensor(images)
    torch.manual_seed(0)
    bb = build_backbone("tiny")
    params = add_lora(bb.unet, lora_config(8, 8, ["to_q", "to_k", "to_v", "to_out.0"], ["conv1", "conv2"]))
    with torch.no_grad():  # a trained-looking adapter: B != 0, so every LoRA weight gets a gradient
        for p in params:
            p.add_(torch.randn_like(p) * args.lora_scale)
    identity = load_identity_encoder("tiny")
    settings = Settings("exact", args.steps, "shuffle")
    batch = Batch.from_loader(faces, torch.device("cpu"))
    keys, nonces = draw_keys(len(images), 0, "study")
    veiled = Anonymizer(bb, settings, batch_invariant=False).anonymize(list(images), list(masks), keys[0], nonces, allow_caller_nonces=True)
    real = torch.stack([v.state[0] for v in veiled]).float()
    mask_lat = (latent_mask(batch.mask, bb.vae_factor) > 0).expand_as(real)
    with torch.no_grad():
        ref = identity.embed(batch.images, batch.landmarks).float()
        real_cos = (identity.embed(to_tensor(np.stack([v.image for v in veiled])), batch.landmarks).float() * ref).sum(-1)

    results: dict[str, Any] = {}
    full_grad = None
    for mode, k in [("full", args.steps)] + [("shortcut", k) for k in args.ks]:
        cfg = ObjectiveSection(unroll=mode, grad_steps=k, checkpoint_steps=args.checkpoint_steps, prior_weight=0.0,
                               perceptual_weight=0.0, wrong_key_weight=0.0)
        frozen = Frozen(bb, identity)
        model = VeilModel(bb.unet, frozen, cfg, settings)
        inputs = Objective(cfg, frozen, settings).training_inputs(model, batch, [keys[0]] * len(images), nonces)
        bb.unet.zero_grad(set_to_none=True)
        hooks, seen = _saved_bytes()
        t0 = time.perf_counter()
        with hooks:
            x0 = model.unroll(inputs["start"], inputs["cond"])
            faces_out = model.faces(x0, batch.images, batch.mask)
            cos = model.identity_cos(faces_out, batch.landmarks, inputs["emb_orig"])
        cos.mean().backward()
        elapsed = time.perf_counter() - t0
        grad = torch.cat([p.grad.flatten() for p in params])
        if full_grad is None:
            full_grad = grad.clone()
        name = mode if mode == "full" else f"shortcut-K{k}"
        results[name] = {
            "unet_calls_with_grad": model.trajectory.unet_calls,
            "grad_part_s": round(elapsed, 3),
            "saved_for_backward_mib": round(sum(seen.values()) / 2**20, 2),
            "identity_grad_norm": float(grad.norm()),
            "grad_cos_to_full": float(torch.nn.functional.cosine_similarity(grad, full_grad, dim=0)),
            "clean_latent_mae_in_mask": float((x0.detach() - real).abs()[mask_lat].mean()),
            "identity_cos_max_abs_diff": float((cos.detach() - real_cos).abs().max()),
        }
        print(name, json.dumps(results[name]), file=sys.stderr)
    return {"backbone": "tiny", "size": args.size, "batch_size": args.batch_size, "steps": args.steps, "modes": results}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m faceveil.train.unroll_study", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="anonymize.steps (exact scheme)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="shortcut K values")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lora-scale", type=float, default=0.05, help="std of the random LoRA weights")
    p.add_argument("--no-checkpoint-steps", dest="checkpoint_steps", action="store_false")
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    print(json.dumps(run(build_parser().parse_args(argv)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
