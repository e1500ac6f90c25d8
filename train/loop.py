"""The training run: ``accelerate launch train/finetune.py --config configs/NAME.yaml [key=value ...] [--resume latest]``.

One process, one GPU, several GPUs (DDP) or FSDP / DeepSpeed, all chosen by the
launcher (``accelerate launch`` / ``accelerate config``), never by this code. The
data loader splits by process and worker itself and is not passed to
``accelerator.prepare``. See :mod:`faceveil.train.objective` for the objective,
:mod:`faceveil.train.checkpointing` for the checkpoint layout.

The run directory (``output.run_dir``) receives:

- ``config.yaml``: the whole resolved config (no secrets: training keys are drawn per image);
- ``logs/``: tensorboard event files (every loss, lr, identity cosines, recovery error,
  images/s, peak memory, the validation grid);
- ``samples/step-XXXXXX.png``: the validation grids, original | anonymized | recovered | wrong key;
- ``metrics.jsonl``: every logged record, one JSON object a line;
- ``checkpoints/step-XXXXXX/``: the last ``output.keep_checkpoints`` checkpoints;
- ``final.json``: the summary of the last run segment.

``config.yaml`` and ``final.json`` are written atomically (temp file, fsync, rename).

Training keys: with ``objective.key_seed`` unset, one random 256-bit key-derivation seed is
drawn per run (``os.urandom``, on the main process, shared with the others) and every key
and nonce is derived from it and the batch coordinates. It is stored in the checkpoints'
``train_state.json`` only -- never in ``config.yaml``, ``metrics.jsonl``, tensorboard,
``final.json`` or an export -- so ``--resume`` draws the same keys as an uninterrupted run.
(It derives training keys only; no anonymized file is ever keyed with it.)

Resume (``--resume``) continues bit for bit -- weights, optimizer, LR schedule, RNG, data
position (``data.resume: skip``) and keys -- when the process count (world size) and
``data.num_workers`` are those of the run that wrote the checkpoint: the data stream is
split by process and worker, so a different count gives a different stream. When either
differs, the run warns and resumes the data with ``reseed`` (a fresh stream seeded by the
step: statistically equivalent, not identical). A checkpoint whose LoRA tensors do not fit
this config's adapter (``lora.rank``, targets) is refused with one line naming the file.

SIGTERM / SIGINT: the current step finishes, a checkpoint is saved, the run exits
with status 0 (``--resume latest`` continues). A second signal stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceveil.errors import ConfigError, FaceveilError, InputError
from faceveil.train.config_schema import SAMPLE_SHARDS, TrainConfig, config_yaml, flat_hparams, load_train_config

logger = logging.getLogger("faceveil.train")

METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
CONFIG_FILE = "config.yaml"


# --------------------------------------------------------------------------- helpers


class StopFlag:
    """SIGTERM / SIGINT set a flag that the loop checks after every step; a second signal interrupts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: finishing this step, saving a checkpoint, then stopping", signal.Signals(signum).name)

    def install(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()


def sample_shards_dir(image_size: int) -> Path:
    from faceveil.models.backbones import cache_dir

    return cache_dir() / "sample-shards" / f"{image_size}px"


def resolve_shards(spec: str, image_size: int, accelerator) -> str:  # noqa: ANN001
    """The shard source for a config value; ``samples`` builds the bundled sample set once (main process first)."""
    if spec != SAMPLE_SHARDS:
        return spec
    folder = sample_shards_dir(image_size)
    with accelerator.main_process_first():
        from faceveil.data.sample_set import build_sample_shards

        build_sample_shards(folder, size=image_size)
    return str(folder)


def weight_dtype(cfg: TrainConfig):  # -> torch.dtype
    import torch

    name = cfg.model.weight_dtype
    if name == "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.mixed_precision, torch.float32)
    return getattr(torch, name)


def peak_memory_gib(device) -> float:  # noqa: ANN001
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _metric_name(key: str) -> str:
    """Tensorboard tag of a VeilModel output: the losses under loss/, diagnostics under train/."""
    if key == "loss":
        return "loss/total"
    return f"loss/{key}" if key in ("identity", "wrong_key", "prior", "perceptual") else f"train/{key}"


def _json_default(o: Any) -> Any:
    return str(o)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_by: str | None
    checkpoint: Path | None
    train_metrics: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    first_val_metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _reset_accelerate_state() -> None:
    # accelerate keeps process-wide singletons; reset them so one Python process can run
    # several trainings one after another (tests, notebooks). Private API, by necessity.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# --------------------------------------------------------------------------- the run


def train(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    """Run (or continue) a training run described by ``cfg``; collective under a launcher."""
    from faceveil.train.checkpointing import list_checkpoints, resolve_resume

    run_dir = Path(cfg.output.run_dir)
    resume_ckpt = resolve_resume(run_dir, resume)
    if resume_ckpt is None and list_checkpoints(run_dir):
        raise ConfigError(
            f"{run_dir} already holds checkpoints; continue it with --resume latest, or choose another output.run_dir"
        )
    import torch

    threads = torch.get_num_threads()
    try:
        return _train(cfg, run_dir, resume_ckpt)
    finally:
        torch.set_num_threads(threads)
        _reset_accelerate_state()


def _train(cfg: TrainConfig, run_dir: Path, resume_ckpt: Path | None) -> TrainResult:  # noqa: C901, PLR0915
    import torch
    from accelerate import Accelerator, DistributedType
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.utils import logging as dlogging
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from faceveil.data.images import save_image
    from faceveil.data.loader import make_loader
    from faceveil.models.backbones import load_backbone
    from faceveil.models.identity import load_identity_encoder
    from faceveil.models.pipeline import Settings
    from faceveil.train.checkpointing import ADAPTER_DIR, read_train_state, save_checkpoint
    from faceveil.train.lora import LORA_WEIGHTS, add_lora, lora_config, peft_state_dict, read_lora_file, save_lora, set_lora_weights
    from faceveil.train.objective import Batch, Frozen, Objective, VeilModel, build_lpips, draw_keys
    from faceveil.train.validation import backbone_view, validate

    dlogging.set_verbosity_error()
    t_start = time.perf_counter()
    # Several processes and no GPU: ask for gloo on CPU explicitly. (accelerate 1.x only picks
    # MULTI_CPU with cpu=True; `accelerate launch --multi_gpu` / torchrun would otherwise start
    # independent single processes.)
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_cpu,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        mixed_precision=cfg.train.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    main = accelerator.is_main_process
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO if main else logging.WARNING)
    device = accelerator.device
    if device.type == "cpu" and cfg.train.cpu_threads > 0:
        torch.set_num_threads(cfg.train.cpu_threads)
    world = accelerator.num_processes
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if device.type == "cuda" and cfg.train.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if main:
        from faceveil.data.images import atomic_write

        run_dir.mkdir(parents=True, exist_ok=True)
        yaml_text = config_yaml(cfg)
        atomic_write(run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(yaml_text))
        logger.info("run %s: %d process(es), %s, mixed precision %s", run_dir, world, accelerator.distributed_type,
                    cfg.train.mixed_precision)

    # ---------------------------------------------------------------- model
    set_seed(cfg.train.seed)  # the same on every process: LoRA init, random LPIPS / identity nets
    wdtype = weight_dtype(cfg)
    if accelerator.distributed_type == DistributedType.FSDP and not getattr(accelerator, "is_fsdp2", False):
        # FSDP1 flattens each wrapped unit into one tensor of one dtype: frozen weights must match
        # the fp32 LoRA weights (FSDP's own mixed precision still computes in bf16/fp16).
        wdtype = torch.float32
    with accelerator.main_process_first():  # downloads, if any, once
        backbone = load_backbone(cfg.model.backbone, device=device, dtype=wdtype, local_files_only=cfg.model.local_files_only)
    if cfg.data.image_size % backbone.size_multiple:
        raise ConfigError(f"data.image_size = {cfg.data.image_size} is not a multiple of {backbone.size_multiple} ({backbone.name})")
    unet = backbone.unet
    lcfg = lora_config(cfg.lora.rank, cfg.lora.alpha, list(cfg.lora.targets), list(cfg.lora.conv_targets), cfg.lora.dropout, cfg.lora.init)
    params = add_lora(unet, lcfg)
    if cfg.model.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if hasattr(backbone.vae, "enable_gradient_checkpointing"):
            backbone.vae.enable_gradient_checkpointing()  # frozen, but the losses back-propagate through its decoder
    unet.train()
    if cfg.model.compile:
        unet.compile()
    identity = load_identity_encoder(cfg.model.identity, seed=cfg.model.identity_seed, crop=cfg.model.identity_crop, device=device)
    lpips_net = None
    if cfg.objective.perceptual_weight > 0:
        lpips_net = build_lpips(cfg.objective.perceptual_net, cfg.objective.perceptual_backbone).to(device)
    frozen = Frozen(backbone=backbone, identity=identity, lpips=lpips_net)
    settings = Settings(scheme=cfg.anonymize.scheme, steps=cfg.anonymize.steps, transform=cfg.anonymize.transform)
    model = VeilModel(unet, frozen, cfg.objective, settings)
    objective = Objective(cfg.objective, frozen, settings)
    n_trainable = sum(p.numel() for p in params)

    lr = cfg.optim.lr
    if cfg.optim.scale_lr:
        lr *= world * cfg.data.batch_size * cfg.train.gradient_accumulation_steps
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    # Not prepared (accelerate would step it once per process); stepped once per optimizer step.
    lr_scheduler = get_scheduler(cfg.optim.schedule if cfg.optim.schedule != "constant" else "constant_with_warmup",
                                 optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=cfg.train.max_steps)
    if accelerator.state.deepspeed_plugin is not None:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)

    def save_hook(models, weights, output_dir):  # noqa: ANN001, ARG001
        # Only the adapter is state; the frozen base weights are not written with each checkpoint.
        weights.clear()

    def load_hook(models, input_dir):  # noqa: ANN001
        if sharded:
            return  # FSDP / DeepSpeed restore their own (sharded) model files
        while models:
            m = models.pop()
            weights_file = Path(input_dir) / ADAPTER_DIR / LORA_WEIGHTS
            set_lora_weights(accelerator.unwrap_model(m).unet, read_lora_file(weights_file)[0], source=weights_file)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    def gather_lora() -> dict[str, torch.Tensor]:
        if sharded:
            full = accelerator.get_state_dict(model)  # collective
            return peft_state_dict(full or {}, prefix="unet.")
        return peft_state_dict(accelerator.unwrap_model(model).state_dict(), prefix="unet.")

    # ---------------------------------------------------------------- state
    step, batches, images_seen = 0, 0, 0
    data_seed = cfg.train.seed
    data_resume = cfg.data.resume
    run_key_seed: int | None = None  # the per-run key-derivation seed when objective.key_seed is unset
    if resume_ckpt is not None:
        st = read_train_state(resume_ckpt)
        step, batches, images_seen = int(st["step"]), int(st["batches"]), int(st["images"])
        data_resume = _data_resume_mode(cfg, st, world, resume_ckpt, main)
        if data_resume == "reseed":
            data_seed = int.from_bytes(hashlib.sha256(f"{cfg.train.seed}/{step}".encode()).digest()[:4], "little")
        if cfg.objective.key_seed is None:
            run_key_seed = _saved_key_seed(st, resume_ckpt)
            if run_key_seed is None and main:
                logger.warning("%s holds no training key seed (an older checkpoint): drawing a new one; the "
                               "continuation is not bit-identical to an uninterrupted run", resume_ckpt)
    if cfg.objective.key_seed is None and run_key_seed is None:
        run_key_seed = int.from_bytes(os.urandom(32), "little")
        if world > 1:  # one seed for the run: the main process's
            from accelerate.utils import broadcast_object_list

            run_key_seed = broadcast_object_list([run_key_seed])[0]
    key_seed = cfg.objective.key_seed if cfg.objective.key_seed is not None else run_key_seed

    # ---------------------------------------------------------------- data
    shards = resolve_shards(cfg.data.shards, cfg.data.image_size, accelerator)
    val_src = cfg.data.val_shards or shards
    if val_src == SAMPLE_SHARDS:
        val_src = resolve_shards(val_src, cfg.data.image_size, accelerator)
    val_batch = None
    # Starting a DataLoader draws a base seed from torch's RNG: keep that out of the training stream,
    # so a resumed run's stream is exactly the saved one.
    with torch.random.fork_rng(devices=[]):
        loader = make_loader(shards, batch_size=cfg.data.batch_size, image_size=cfg.data.image_size,
                             latent_factor=backbone.vae_factor, shuffle=cfg.data.shuffle, resampled=True,
                             num_workers=cfg.data.num_workers, seed=data_seed, drop_last=True)
        data_iter = iter(loader)
        if resume_ckpt is not None and data_resume == "skip":
            for _ in range(batches):  # replay the stream to the saved position
                next(data_iter)
        if main or sharded:
            val_loader = make_loader(val_src, batch_size=cfg.data.val_images, image_size=cfg.data.image_size,
                                     latent_factor=backbone.vae_factor, shuffle=0, resampled=False, split=False)
            val_batch = next(iter(val_loader))

    if resume_ckpt is not None:
        accelerator.load_state(str(resume_ckpt))  # adapter, optimizer, LR schedule, every process's RNG
        if main:
            logger.info("resumed from %s at step %d (%d micro-batches consumed)", resume_ckpt, step, batches)
    else:
        set_seed(cfg.train.seed, device_specific=True)  # per-process streams for the prior-loss noise

    # ---------------------------------------------------------------- logging
    accelerator.init_trackers("tensorboard", config=flat_hparams(cfg))
    metrics_path = run_dir / METRICS_FILE
    samples_dir = run_dir / "samples"
    history: dict[str, dict[str, float]] = {}

    def log(record: dict[str, float], at: int) -> None:
        accelerator.log(record, step=at)
        if main:
            append_jsonl(metrics_path, {"step": at, **record})

    def run_validation(at: int) -> dict[str, float]:
        out: dict[str, float] = {}
        if main or sharded:
            ctx = _full_params(accelerator, model)
            with ctx, accelerator.autocast(), torch.random.fork_rng(devices=[]):  # validation never moves the training RNG
                bb = backbone_view(backbone, accelerator.unwrap_model(model).unet)
                out, grid = validate(bb, identity, val_batch, settings, cfg.model.identity_landmarks, workdir=run_dir)
            if main:
                log(out, at)
                samples_dir.mkdir(parents=True, exist_ok=True)
                save_image(samples_dir / f"step-{at:06d}.png", grid)
                tb = accelerator.get_tracker("tensorboard", unwrap=True)
                tb.add_image("val/grid original|anonymized|recovered|wrong key", grid, at, dataformats="HWC")
                logger.info("step %d validation: %s", at, " ".join(f"{k[4:]}={v:.4g}" for k, v in out.items()))
        accelerator.wait_for_everyone()
        return out

    def checkpoint(at: int) -> Path:
        lora_sd = gather_lora()
        state = {"batches": batches, "images": images_seen, "world_size": world, "num_workers": cfg.data.num_workers,
                 "data_seed": data_seed}
        if run_key_seed is not None:
            state[KEY_SEED_STATE] = f"{run_key_seed:064x}"  # training-key derivation only; never logged

        def write_adapter(folder: Path) -> None:
            save_lora(folder, lora_sd, lcfg)
            (folder.parent / CONFIG_FILE).write_text(config_yaml(cfg))

        path = save_checkpoint(accelerator, run_dir, at, state, write_adapter, cfg.output.keep_checkpoints)
        if main:
            logger.info("step %d: checkpoint %s", at, path)
        return path

    # ---------------------------------------------------------------- loop
    stop = StopFlag().install()
    stopped_by: str | None = None
    last_ckpt: Path | None = None
    sums: dict[str, float] = {}
    count = 0
    t_log, images_log = time.perf_counter(), 0
    first_digest: int | None = None
    rank = accelerator.process_index
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if step == 0 and cfg.output.validate_at_start:
        history["first_val"] = run_validation(0)
    if main:
        logger.info("training %d LoRA parameters; %d image(s) per step on %d process(es)", n_trainable,
                    cfg.data.batch_size * cfg.train.gradient_accumulation_steps * world, world)
    t_log = time.perf_counter()
    pbar = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                disable=not (main and cfg.output.progress))
    # Log lines go above the progress bar instead of into it.
    redirect = logging_redirect_tqdm() if not pbar.disable else contextlib.nullcontext()
    redirect.__enter__()
    try:
        while step < cfg.train.max_steps:
            raw = next(data_iter)
            batches += 1
            if first_digest is None:
                first_digest = int.from_bytes(hashlib.sha256("\n".join(raw["key"]).encode()).digest()[:7], "little")
            batch = Batch.from_loader(raw, device, cfg.model.identity_landmarks)
            n = batch.images.shape[0]
            keys, nonces = draw_keys(n, key_seed, "key", rank, batches)
            wrong_keys = None
            if cfg.objective.wrong_key_weight > 0:
                wrong_keys = draw_keys(n, key_seed, "wrong", rank, batches)[0]
            with accelerator.accumulate(model):
                inputs = objective.training_inputs(model, batch, keys, nonces, wrong_keys)
                out = model("losses", **inputs)
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients and cfg.optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
            images_seen += n * world
            images_log += n * world
            if not accelerator.sync_gradients:
                continue
            lr_scheduler.step()
            step += 1
            pbar.update(1)
            flag = torch.tensor([1.0 if stop.signum is not None else 0.0], device=device)
            if world > 1:
                flag = accelerator.reduce(flag, "sum")
            want_stop = bool(flag.item() > 0)
            planned_stop = step == cfg.train.stop_at_step and step < cfg.train.max_steps
            if step % cfg.output.log_every == 0 or step == cfg.train.max_steps or want_stop:
                names = sorted(sums)
                means = torch.tensor([sums[k] / count for k in names], device=device, dtype=torch.float64)
                if world > 1:
                    means = accelerator.reduce(means, "mean")
                elapsed = time.perf_counter() - t_log
                record = {_metric_name(k): float(v) for k, v in zip(names, means.tolist(), strict=True)}
                record.update({
                    "train/lr": lr_scheduler.get_last_lr()[0],
                    "perf/images_per_s": images_log / max(elapsed, 1e-9),
                    "perf/step_time_s": elapsed / max(1, count / cfg.train.gradient_accumulation_steps),
                    "perf/peak_mem_gib": peak_memory_gib(device),
                })
                log(record, step)
                history["train"] = record
                pbar.set_postfix(loss=f"{record['loss/total']:.4f}", id_cos=f"{record.get('train/identity_cos', math.nan):.3f}")
                sums, count = {}, 0
                t_log, images_log = time.perf_counter(), 0
            t_aside = time.perf_counter()  # validation and checkpoints do not count against images/s
            if step % cfg.output.validate_every == 0 or step == cfg.train.max_steps:
                history["val"] = run_validation(step)
            if step % cfg.output.checkpoint_every == 0 or step == cfg.train.max_steps or want_stop or planned_stop:
                last_ckpt = checkpoint(step)
            t_log += time.perf_counter() - t_aside
            if planned_stop and not want_stop:
                stopped_by = "train.stop_at_step"
                if main:
                    logger.info("stopping at step %d (train.stop_at_step); continue with --resume latest", step)
                break
            if want_stop:
                stopped_by = signal.Signals(stop.signum).name if stop.signum is not None else "signal on another process"
                if main:
                    logger.warning("stopped at step %d by %s; continue with --resume latest", step, stopped_by)
                break
    finally:
        stop.restore()
        redirect.__exit__(None, None, None)
        pbar.close()

    # ---------------------------------------------------------------- summary
    summary: dict[str, Any] = {
        "step": step,
        "max_steps": cfg.train.max_steps,
        "stopped_by": stopped_by,
        "world_size": world,
        "distributed_type": str(accelerator.distributed_type),
        "images_seen": images_seen,
        "trainable_parameters": n_trainable,
        "wall_time_s": time.perf_counter() - t_start,
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "train": history.get("train", {}),
        "val": history.get("val", {}),
    }
    if not sharded:
        # Every process must hold the same adapter (DDP keeps them in sync); check it, and that
        # the processes read different data.
        vec = torch.cat([p.detach().float().flatten() for p in params]).to(device)
        allv = accelerator.gather(vec[None])
        summary["lora_rank_max_abs_diff"] = float((allv - allv[0:1]).abs().max())
        summary["lora_abs_mean"] = float(vec.abs().mean())
        dig = accelerator.gather(torch.tensor([first_digest or 0], device=device, dtype=torch.int64))
        summary["first_batch_digest_per_rank"] = [int(d) for d in dig.tolist()]
    if main:
        from faceveil.train.export import strict_json

        from faceveil.data.images import atomic_write

        final_text = json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n"
        atomic_write(run_dir / FINAL_FILE, lambda tmp: tmp.write_text(final_text))
        logger.info("done: step %d in %.1f s; run dir %s", step, summary["wall_time_s"], run_dir)
    accelerator.end_training()
    return TrainResult(run_dir=run_dir, step=step, stopped_by=stopped_by, checkpoint=last_ckpt,
                       train_metrics=history.get("train", {}), val_metrics=history.get("val", {}),
                       first_val_metrics=history.get("first_val", {}), summary=summary)


def _data_resume_mode(cfg: TrainConfig, state: dict[str, Any], world: int, ckpt: Path, main: bool) -> str:
    """``data.resume``, or ``reseed`` when the checkpoint's world size or data.num_workers differ from this run's
    (the stream is split by process and worker: replaying it would not reproduce the saved position)."""
    differ = []
    saved_world = state.get("world_size")
    if saved_world is not None and int(saved_world) != world:
        differ.append(f"world size {saved_world} -> {world}")
    saved_workers = state.get("num_workers")
    if saved_workers is not None and int(saved_workers) != cfg.data.num_workers:
        differ.append(f"data.num_workers {saved_workers} -> {cfg.data.num_workers}")
    if not differ:
        return cfg.data.resume
    if main:
        logger.warning("resuming %s with %s: the data stream is split by process and worker, so this continuation "
                       "is NOT equivalent to an uninterrupted run%s", ckpt, ", ".join(differ),
                       "; data.resume switched from skip to reseed (a fresh stream seeded by the step)"
                       if cfg.data.resume == "skip" else "")
    return "reseed"


KEY_SEED_STATE = "key_seed"


def _saved_key_seed(state: dict[str, Any], ckpt: Path) -> int | None:
    raw = state.get(KEY_SEED_STATE)
    if raw is None:
        return None
    try:
        return int(str(raw), 16)
    except ValueError:
        raise InputError(f"{ckpt / 'train_state.json'}: corrupt training state, {KEY_SEED_STATE!r} is not hex") from None


def _full_params(accelerator, model):  # noqa: ANN001
    """A context in which the unwrapped UNet holds whole weights (FSDP / ZeRO-3 gather them)."""
    import contextlib

    from accelerate import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and getattr(accelerator, "is_fsdp2", False):
        from torch.distributed.fsdp import FSDPModule

        @contextlib.contextmanager
        def unsharded():
            sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
            for m in sharded:
                m.unshard()
            try:
                yield
            finally:
                for m in sharded:
                    m.reshard()

        return unsharded()
    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(model, writeback=False)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- CLI


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The training command line, shared by train/finetune.py and 'faceveil train'."""
    p.add_argument("--config", required=True, help="YAML config (e.g. configs/tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. train.max_steps=200")
    p.add_argument("--resume", metavar="latest|auto|STEP|DIR",
                   help="continue from a checkpoint of output.run_dir (auto: the latest if any, else start)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def build_parser(prog: str = "finetune.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune faceveil's LoRA adapters (identity shift, exact recovery). "
        "Run under 'accelerate launch' for several processes.",
    )
    add_train_arguments(p)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "finetune.py") -> int:
    return run_parsed(build_parser(prog).parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Run training for parsed :func:`add_train_arguments` options; the exit code."""
    try:
        cfg = load_train_config(args.config, args.overrides)
        if args.print_config:
            print(config_yaml(cfg), end="")
            return 0
        result = train(cfg, resume=args.resume)
    except FaceveilError as exc:
        print(f"faceveil train: error: {exc}", file=sys.stderr)
        return 2
    if result.stopped_by:
        print(f"faceveil train: stopped by {result.stopped_by} at step {result.step}; checkpoint {result.checkpoint}; "
              "continue with --resume latest", file=sys.stderr)
    return 0
