"""The fine-tuning recipe: one class, read top to bottom, in the shape of torchtune's recipes.

:func:`recipe_main` runs it: ``FinetuneRecipe(cfg, run_dir, resume_ckpt)``, :meth:`~FinetuneRecipe.setup`,
:meth:`~FinetuneRecipe.train`, :meth:`~FinetuneRecipe.summary`, :meth:`~FinetuneRecipe.cleanup`.
Not for: the command line (:mod:`faceveil.train.loop`), the objective (:mod:`faceveil.train.objective`),
the checkpoint layout (:mod:`faceveil.train.checkpointing`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceveil.errors import ConfigError
from faceveil.train.config_schema import SAMPLE_SHARDS, TrainConfig, config_yaml, flat_hparams
from faceveil.train.distributed import full_params, peak_memory_gib, reset_accelerate_state, weight_dtype
from faceveil.train.resume import KEY_SEED_STATE, data_resume_mode, saved_key_seed
from faceveil.train.run_log import CONFIG_FILE, FINAL_FILE, METRICS_FILE, append_jsonl, metric_name
from faceveil.train.sample_shards import resolve_shards
from faceveil.train.signals import StopFlag

logger = logging.getLogger("faceveil.train")


class FinetuneRecipe:
    """One training run segment (fresh or resumed) of faceveil's LoRA adapters; collective under a launcher.

    Features, and the config flags that turn them on:

    - one process, DDP, FSDP or DeepSpeed: chosen by the launcher (``accelerate launch``), never here;
    - mixed precision and the frozen weights' dtype: ``train.mixed_precision``, ``model.weight_dtype``;
      TF32 matmuls on CUDA: ``train.allow_tf32``; CPU threads: ``train.cpu_threads``;
    - activation checkpointing: ``model.gradient_checkpointing``; ``torch.compile``: ``model.compile``;
    - gradient accumulation and clipping: ``train.gradient_accumulation_steps``, ``optim.max_grad_norm``;
      LR scaled by the global batch: ``optim.scale_lr``; schedule: ``optim.schedule``, ``optim.warmup_steps``;
    - the objective's optional terms: ``objective.wrong_key_weight``, ``objective.perceptual_weight``
      (an LPIPS net), ``objective.pixel_weight``; fixed training keys: ``objective.key_seed``;
    - validation on held-out faces: ``output.validate_every``, ``output.validate_at_start``, the held-out
      split ``data.val_holdout`` or separate ``data.val_shards``; dlib as a second judge: ``output.val_dlib``;
    - the bundled sample faces as training data: ``data.shards: samples``;
    - checkpoints: ``output.checkpoint_every``, ``output.keep_checkpoints``; resume (``--resume``) replays
      or reseeds the data stream: ``data.resume``;
    - a planned stop: ``train.stop_at_step``; SIGTERM / SIGINT finish the step, checkpoint and stop;
    - logging: ``output.log_every`` (tensorboard, ``metrics.jsonl``), a progress bar: ``output.progress``.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume_ckpt: Path | None) -> None:
        self.cfg, self.run_dir, self.resume_ckpt = cfg, run_dir, resume_ckpt
        self.t_start = time.perf_counter()
        self.history: dict[str, dict[str, float]] = {}
        # The run's position; a resume overwrites it from the checkpoint (_setup_state).
        self.step_no, self.batches, self.images_seen = 0, 0, 0
        self.data_seed, self.data_resume = cfg.train.seed, cfg.data.resume
        self.run_key_seed: int | None = None  # the per-run key-derivation seed when objective.key_seed is unset
        self.key_seed: int | None = cfg.objective.key_seed
        # What train() fills in; here so that summary() works on a run that never trained.
        self.stopped_by: str | None = None
        self.last_ckpt: Path | None = None
        self.first_digest: int | None = None
        self._sums: dict[str, float] = {}
        self._count = 0
        self._t_log, self._images_log = 0.0, 0
        # setup() builds the rest: the accelerator, model, optimizer, LR schedule and data.

    # ================================================================ setup
    def setup(self) -> None:
        """Builds the run; the order is the RNG's, so a resumed run repeats it exactly."""
        self._setup_accelerator()  # first: the device, the process count and the run directory
        self._setup_model()  # seeds the RNG, then draws the LoRA init and the random nets
        self._setup_optimizer()  # over the LoRA parameters; accelerator.prepare wraps model and optimizer
        self._setup_state()  # needs the process count (a changed world size reseeds the data)
        self._setup_data()  # needs the VAE factor, and the data seed and position from the state
        self.load_checkpoint()  # after prepare: load_state fills the prepared objects and the registered hooks
        self.accelerator.init_trackers("tensorboard", config=flat_hparams(self.cfg))

    def _setup_accelerator(self) -> None:
        import torch
        from accelerate import Accelerator, DistributedType
        from accelerate.utils import ProjectConfiguration
        from diffusers.utils import logging as dlogging

        dlogging.set_verbosity_error()
        cfg = self.cfg
        # Several processes and no GPU: ask for gloo on CPU explicitly. (accelerate 1.x only picks
        # MULTI_CPU with cpu=True; `accelerate launch --multi_gpu` / torchrun would otherwise start
        # independent single processes.)
        multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        acc = self.accelerator = Accelerator(
            cpu=multi_cpu, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
            mixed_precision=cfg.train.mixed_precision, log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
        )
        self.main = acc.is_main_process
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
        logger.setLevel(logging.INFO if self.main else logging.WARNING)
        self.device = acc.device
        if self.device.type == "cpu" and cfg.train.cpu_threads > 0:
            torch.set_num_threads(cfg.train.cpu_threads)
        self.world = acc.num_processes
        self.sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if self.device.type == "cuda" and cfg.train.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.main:
            from faceveil.data.images import atomic_write

            self.run_dir.mkdir(parents=True, exist_ok=True)
            yaml_text = config_yaml(cfg)
            atomic_write(self.run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(yaml_text))
            logger.info("run %s: %d process(es), %s, mixed precision %s", self.run_dir, self.world, acc.distributed_type,
                        cfg.train.mixed_precision)

    def _setup_model(self) -> None:
        import torch
        from accelerate import DistributedType
        from accelerate.utils import set_seed

        from faceveil.models.backbones import load_backbone
        from faceveil.models.identity import load_identity_encoder
        from faceveil.models.pipeline import Settings
        from faceveil.train.lora import add_lora, lora_config
        from faceveil.train.objective import Frozen, Objective, VeilModel, build_lpips

        cfg, acc = self.cfg, self.accelerator
        set_seed(cfg.train.seed)  # the same on every process: LoRA init, random LPIPS / identity nets
        wdtype = weight_dtype(cfg)
        if acc.distributed_type == DistributedType.FSDP and not getattr(acc, "is_fsdp2", False):
            # FSDP1 flattens each wrapped unit into one tensor of one dtype: frozen weights must match
            # the fp32 LoRA weights (FSDP's own mixed precision still computes in bf16/fp16).
            wdtype = torch.float32
        with acc.main_process_first():  # downloads, if any, once
            bb = load_backbone(cfg.model.backbone, device=self.device, dtype=wdtype, local_files_only=cfg.model.local_files_only)
        if cfg.data.image_size % bb.size_multiple:
            raise ConfigError(f"data.image_size = {cfg.data.image_size} is not a multiple of {bb.size_multiple} ({bb.name})")
        unet = bb.unet
        self.lora_cfg = lora_config(cfg.lora.rank, cfg.lora.alpha, list(cfg.lora.targets), list(cfg.lora.conv_targets),
                                    cfg.lora.dropout, cfg.lora.init)
        self.params = add_lora(unet, self.lora_cfg)
        if cfg.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            if hasattr(bb.vae, "enable_gradient_checkpointing"):
                bb.vae.enable_gradient_checkpointing()  # frozen, but the losses back-propagate through its decoder
        unet.train()
        if cfg.model.compile:
            unet.compile()
        self.identity = load_identity_encoder(cfg.model.identity, seed=cfg.model.identity_seed, crop=cfg.model.identity_crop,
                                              device=self.device)
        lpips_net = None
        if cfg.objective.perceptual_weight > 0:
            lpips_net = build_lpips(cfg.objective.perceptual_net, cfg.objective.perceptual_backbone).to(self.device)
        self.backbone = bb
        frozen = Frozen(backbone=bb, identity=self.identity, lpips=lpips_net)
        self.settings = Settings(scheme=cfg.anonymize.scheme, steps=cfg.anonymize.steps, transform=cfg.anonymize.transform)
        self.model = VeilModel(unet, frozen, cfg.objective, self.settings)
        self.objective = Objective(cfg.objective, frozen, self.settings)

    def _setup_optimizer(self) -> None:
        import torch
        from diffusers.optimization import get_scheduler

        cfg, acc = self.cfg, self.accelerator
        lr = cfg.optim.lr
        if cfg.optim.scale_lr:
            lr *= self.world * cfg.data.batch_size * cfg.train.gradient_accumulation_steps
        optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
                                      weight_decay=cfg.optim.weight_decay)
        # Not prepared (accelerate would step it once per process); stepped once per optimizer step.
        self.lr_scheduler = get_scheduler(cfg.optim.schedule if cfg.optim.schedule != "constant" else "constant_with_warmup",
                                          optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=cfg.train.max_steps)
        if acc.state.deepspeed_plugin is not None:
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        acc.register_for_checkpointing(self.lr_scheduler)
        acc.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())  # only the adapter is state
        acc.register_load_state_pre_hook(self._load_adapter_hook)

    def _setup_state(self) -> None:
        """On resume: the position, data-stream mode and key seed saved in the checkpoint; the run's key seed."""
        cfg = self.cfg
        if self.resume_ckpt is not None:
            from faceveil.train.checkpointing import read_train_state

            st = read_train_state(self.resume_ckpt)
            self.step_no, self.batches, self.images_seen = int(st["step"]), int(st["batches"]), int(st["images"])
            self.data_resume = data_resume_mode(cfg, st, self.world, self.resume_ckpt, self.main)
            if self.data_resume == "reseed":
                self.data_seed = int.from_bytes(hashlib.sha256(f"{cfg.train.seed}/{self.step_no}".encode()).digest()[:4], "little")
            if cfg.objective.key_seed is None:
                self.run_key_seed = saved_key_seed(st, self.resume_ckpt)
                if self.run_key_seed is None and self.main:
                    logger.warning("%s holds no training key seed (an older checkpoint): drawing a new one; the "
                                   "continuation is not bit-identical to an uninterrupted run", self.resume_ckpt)
        if cfg.objective.key_seed is None and self.run_key_seed is None:
            self.run_key_seed = int.from_bytes(os.urandom(32), "little")
            if self.world > 1:  # one seed for the run: the main process's
                from accelerate.utils import broadcast_object_list

                self.run_key_seed = broadcast_object_list([self.run_key_seed])[0]
        self.key_seed = cfg.objective.key_seed if cfg.objective.key_seed is not None else self.run_key_seed

    def _setup_data(self) -> None:
        import torch

        from faceveil.data.loader import make_loader
        from faceveil.data.splits import held_out
        from faceveil.train.validation import dlib_judge

        cfg, acc, factor = self.cfg, self.accelerator, self.backbone.vae_factor
        shards = resolve_shards(cfg.data.shards, cfg.data.image_size, acc)
        val_src = cfg.data.val_shards or shards
        if val_src == SAMPLE_SHARDS:
            val_src = resolve_shards(val_src, cfg.data.image_size, acc)
        train_select = val_select = None
        if cfg.data.val_shards is None:  # validate on identities held out of training
            train_select = lambda s: not held_out(s, cfg.data.val_holdout)  # noqa: E731
            val_select = lambda s: held_out(s, cfg.data.val_holdout)  # noqa: E731
        if train_select is not None:  # a resampled stream with nothing to give would wait forever
            from faceveil.data.loader import make_dataset

            if next(iter(make_dataset(shards, cfg.data.image_size, factor, shuffle=0, split=False, select=train_select)), None) is None:
                raise ConfigError(f"every face in {shards} is held out at data.val_holdout = {cfg.data.val_holdout}; lower it")
        self.val_batch = None
        # Starting a DataLoader draws a base seed from torch's RNG: keep that out of the training stream,
        # so a resumed run's stream is exactly the saved one.
        with torch.random.fork_rng(devices=[]):
            loader = make_loader(shards, batch_size=cfg.data.batch_size, image_size=cfg.data.image_size, latent_factor=factor,
                                 shuffle=cfg.data.shuffle, resampled=True, num_workers=cfg.data.num_workers,
                                 seed=self.data_seed, drop_last=True, select=train_select)
            self.data_iter = iter(loader)
            if self.resume_ckpt is not None and self.data_resume == "skip":
                for _ in range(self.batches):  # replay the stream to the saved position
                    next(self.data_iter)
            if self.main or self.sharded:
                val_loader = make_loader(val_src, batch_size=cfg.data.val_images, image_size=cfg.data.image_size,
                                         latent_factor=factor, shuffle=0, resampled=False, split=False, select=val_select)
                self.val_batch = next(iter(val_loader), None)
                if self.val_batch is None:
                    raise ConfigError(f"no validation faces in {val_src}" + (
                        f" held out at data.val_holdout = {cfg.data.val_holdout}; raise it, or set data.val_shards"
                        if val_select else ""))
        self.dlib = dlib_judge() if cfg.output.val_dlib and (self.main or self.sharded) else None

    # ================================================================ checkpoints
    def load_checkpoint(self) -> None:
        """On resume: adapter, optimizer, LR schedule, every process's RNG; else per-process RNG streams."""
        from accelerate.utils import set_seed

        if self.resume_ckpt is None:
            set_seed(self.cfg.train.seed, device_specific=True)  # per-process streams for the prior-loss noise
            return
        self.accelerator.load_state(str(self.resume_ckpt))
        if self.main:
            logger.info("resumed from %s at step %d (%d micro-batches consumed)", self.resume_ckpt, self.step_no, self.batches)

    def _load_adapter_hook(self, models: list[Any], input_dir: str) -> None:
        from faceveil.train.checkpointing import ADAPTER_DIR
        from faceveil.train.lora import LORA_WEIGHTS, read_lora_file, set_lora_weights

        if self.sharded:
            return  # FSDP / DeepSpeed restore their own (sharded) model files
        while models:
            m = models.pop()
            weights_file = Path(input_dir) / ADAPTER_DIR / LORA_WEIGHTS
            set_lora_weights(self.accelerator.unwrap_model(m).unet, read_lora_file(weights_file)[0], source=weights_file)

    def save_checkpoint(self, at: int) -> Path:
        """The adapter, optimizer, LR schedule, RNG and train state (position, key seed) as checkpoint ``at``."""
        from faceveil.train.checkpointing import save_checkpoint
        from faceveil.train.lora import save_lora

        lora_sd = self._lora_state()
        state = {"batches": self.batches, "images": self.images_seen, "world_size": self.world,
                 "num_workers": self.cfg.data.num_workers, "data_seed": self.data_seed}
        if self.run_key_seed is not None:
            state[KEY_SEED_STATE] = f"{self.run_key_seed:064x}"  # training-key derivation only; never logged

        def write_adapter(folder: Path) -> None:
            save_lora(folder, lora_sd, self.lora_cfg)
            (folder.parent / CONFIG_FILE).write_text(config_yaml(self.cfg))

        path = save_checkpoint(self.accelerator, self.run_dir, at, state, write_adapter, self.cfg.output.keep_checkpoints)
        if self.main:
            logger.info("step %d: checkpoint %s", at, path)
        return path

    def _lora_state(self) -> dict[str, Any]:
        from faceveil.train.lora import peft_state_dict

        acc = self.accelerator
        if self.sharded:
            return peft_state_dict(acc.get_state_dict(self.model) or {}, prefix="unet.")  # collective
        return peft_state_dict(acc.unwrap_model(self.model).state_dict(), prefix="unet.")

    # ================================================================ training
    def step(self, raw: dict[str, Any]) -> dict[str, Any]:
        """One micro-batch: the objective's inputs (no gradients), the losses, backward, optimizer step."""
        from faceveil.train.objective import Batch, draw_keys

        cfg, acc = self.cfg, self.accelerator
        self.batches += 1
        batch = Batch.from_loader(raw, self.device, cfg.model.identity_landmarks)
        n = batch.images.shape[0]
        rank = acc.process_index
        keys, nonces = draw_keys(n, self.key_seed, "key", rank, self.batches)
        wrong_keys = draw_keys(n, self.key_seed, "wrong", rank, self.batches)[0] if cfg.objective.wrong_key_weight > 0 else None
        with acc.accumulate(self.model):
            inputs = self.objective.training_inputs(self.model, batch, keys, nonces, wrong_keys)
            out = self.model("losses", **inputs)
            acc.backward(out["loss"])
            if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.images_seen += n * self.world
        return out

    def validate(self, at: int) -> dict[str, float]:
        """Validation metrics on the held-out faces (main process), logged with the image grid."""
        import torch

        from faceveil.data.images import save_image
        from faceveil.train.validation import backbone_view, validate

        acc, out = self.accelerator, {}
        if self.main or self.sharded:
            with full_params(acc, self.model), acc.autocast(), torch.random.fork_rng(devices=[]):  # never moves the training RNG
                bb = backbone_view(self.backbone, acc.unwrap_model(self.model).unet)
                out, grid = validate(bb, self.identity, self.val_batch, self.settings, self.cfg.model.identity_landmarks,
                                     workdir=self.run_dir, dlib=self.dlib)
            if self.main:
                self.log(out, at)
                (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
                save_image(self.run_dir / "samples" / f"step-{at:06d}.png", grid)
                tb = acc.get_tracker("tensorboard", unwrap=True)
                tb.add_image("val/grid original|anonymized|recovered|wrong key", grid, at, dataformats="HWC")
                logger.info("step %d validation: %s", at, " ".join(f"{k[4:]}={v:.4g}" for k, v in out.items()))
        acc.wait_for_everyone()
        return out

    def train(self) -> None:
        """Steps until max_steps, train.stop_at_step or a signal (then a checkpoint and ``self.stopped_by``)."""
        import torch
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg, acc, device = self.cfg, self.accelerator, self.device
        self.stopped_by, self.last_ckpt, self.first_digest = None, None, None
        self._sums, self._count = {}, 0
        stop = StopFlag().install()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if self.step_no == 0 and cfg.output.validate_at_start:
            self.history["first_val"] = self.validate(0)
        if self.main:
            logger.info("training %d LoRA parameters; %d image(s) per step on %d process(es)", sum(p.numel() for p in self.params),
                        cfg.data.batch_size * cfg.train.gradient_accumulation_steps * self.world, self.world)
        self._t_log, self._images_log = time.perf_counter(), 0
        pbar = tqdm(total=cfg.train.max_steps, initial=self.step_no, desc="train", unit="step", dynamic_ncols=True,
                    disable=not (self.main and cfg.output.progress))
        # Log lines go above the progress bar instead of into it.
        redirect = logging_redirect_tqdm() if not pbar.disable else contextlib.nullcontext()
        redirect.__enter__()
        try:
            while self.step_no < cfg.train.max_steps:
                raw = next(self.data_iter)
                if self.first_digest is None:
                    self.first_digest = int.from_bytes(hashlib.sha256("\n".join(raw["key"]).encode()).digest()[:7], "little")
                out = self.step(raw)
                for k, v in out.items():
                    self._sums[k] = self._sums.get(k, 0.0) + float(v.detach())
                self._count += 1
                self._images_log += raw["image"].shape[0] * self.world
                if not acc.sync_gradients:
                    continue
                self.lr_scheduler.step()
                self.step_no += 1
                pbar.update(1)
                if self._after_step(stop, pbar):
                    break
        finally:
            stop.restore()
            redirect.__exit__(None, None, None)
            pbar.close()

    def _after_step(self, stop: StopFlag, pbar: Any) -> bool:
        """Logging, validation and checkpoints after an optimizer step; True to stop."""
        import torch

        cfg, acc, step = self.cfg, self.accelerator, self.step_no
        flag = torch.tensor([1.0 if stop.signum is not None else 0.0], device=self.device)
        if self.world > 1:
            flag = acc.reduce(flag, "sum")
        want_stop = bool(flag.item() > 0)
        planned_stop = step == cfg.train.stop_at_step and step < cfg.train.max_steps
        if step % cfg.output.log_every == 0 or step == cfg.train.max_steps or want_stop:
            self._log_train(pbar)
        t_aside = time.perf_counter()  # validation and checkpoints do not count against images/s
        if step % cfg.output.validate_every == 0 or step == cfg.train.max_steps:
            self.history["val"] = self.validate(step)
        if step % cfg.output.checkpoint_every == 0 or step == cfg.train.max_steps or want_stop or planned_stop:
            self.last_ckpt = self.save_checkpoint(step)
        self._t_log += time.perf_counter() - t_aside
        if planned_stop and not want_stop:
            self.stopped_by = "train.stop_at_step"
            if self.main:
                logger.info("stopping at step %d (train.stop_at_step); continue with --resume latest", step)
            return True
        if want_stop:
            self.stopped_by = signal.Signals(stop.signum).name if stop.signum is not None else "signal on another process"
            if self.main:
                logger.warning("stopped at step %d by %s; continue with --resume latest", step, self.stopped_by)
            return True
        return False

    def _log_train(self, pbar: Any) -> None:
        import torch

        cfg = self.cfg
        names = sorted(self._sums)
        means = torch.tensor([self._sums[k] / self._count for k in names], device=self.device, dtype=torch.float64)
        if self.world > 1:
            means = self.accelerator.reduce(means, "mean")
        elapsed = time.perf_counter() - self._t_log
        record = {metric_name(k): float(v) for k, v in zip(names, means.tolist(), strict=True)}
        record.update({
            "train/lr": self.lr_scheduler.get_last_lr()[0],
            "perf/images_per_s": self._images_log / max(elapsed, 1e-9),
            "perf/step_time_s": elapsed / max(1, self._count / cfg.train.gradient_accumulation_steps),
            "perf/peak_mem_gib": peak_memory_gib(self.device),
        })
        self.log(record, self.step_no)
        self.history["train"] = record
        pbar.set_postfix(loss=f"{record['loss/total']:.4f}", id_cos=f"{record.get('train/identity_cos', math.nan):.3f}")
        self._sums, self._count = {}, 0
        self._t_log, self._images_log = time.perf_counter(), 0

    def log(self, record: dict[str, float], at: int) -> None:
        self.accelerator.log(record, step=at)
        if self.main:
            append_jsonl(self.run_dir / METRICS_FILE, {"step": at, **record})

    def summary(self) -> dict[str, Any]:
        """The run segment's summary, written to ``final.json`` by the main process."""
        import torch

        acc = self.accelerator
        summary: dict[str, Any] = {
            "step": self.step_no, "max_steps": self.cfg.train.max_steps, "stopped_by": self.stopped_by,
            "world_size": self.world, "distributed_type": str(acc.distributed_type), "images_seen": self.images_seen,
            "trainable_parameters": sum(p.numel() for p in self.params), "wall_time_s": time.perf_counter() - self.t_start,
            "checkpoint": str(self.last_ckpt) if self.last_ckpt else None, "train": self.history.get("train", {}),
            "first_val": self.history.get("first_val", {}), "val": self.history.get("val", {}),
        }
        if not self.sharded:
            # Every process must hold the same adapter (DDP keeps them in sync); check it, and that
            # the processes read different data.
            vec = torch.cat([p.detach().float().flatten() for p in self.params]).to(self.device)
            allv = acc.gather(vec[None])
            summary["lora_rank_max_abs_diff"] = float((allv - allv[0:1]).abs().max())
            summary["lora_abs_mean"] = float(vec.abs().mean())
            dig = acc.gather(torch.tensor([self.first_digest or 0], device=self.device, dtype=torch.int64))
            summary["first_batch_digest_per_rank"] = [int(d) for d in dig.tolist()]
        if self.main:
            from faceveil.data.images import atomic_write
            from faceveil.train.export import strict_json

            final_text = json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n"
            atomic_write(self.run_dir / FINAL_FILE, lambda tmp: tmp.write_text(final_text))
            logger.info("done: step %d in %.1f s; run dir %s", self.step_no, summary["wall_time_s"], self.run_dir)
        return summary

    def cleanup(self) -> None:
        self.accelerator.end_training()


@dataclass
class TrainResult:
    """What :func:`recipe_main` returns: the run segment's outcome and its last metrics."""

    run_dir: Path
    step: int
    stopped_by: str | None
    checkpoint: Path | None
    train_metrics: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    first_val_metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def recipe_main(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
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
        recipe = FinetuneRecipe(cfg, run_dir, resume_ckpt)
        recipe.setup()
        recipe.train()
        summary = recipe.summary()
        recipe.cleanup()
        h = recipe.history
        return TrainResult(run_dir=run_dir, step=recipe.step_no, stopped_by=recipe.stopped_by, checkpoint=recipe.last_ckpt,
                           train_metrics=h.get("train", {}), val_metrics=h.get("val", {}),
                           first_val_metrics=h.get("first_val", {}), summary=summary)
    finally:
        torch.set_num_threads(threads)
        reset_accelerate_state()
