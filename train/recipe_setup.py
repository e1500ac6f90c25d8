"""The recipe's setup and checkpoint phases (:class:`faceveil.train.recipe.FinetuneRecipe` runs them).

- :meth:`RecipeSetup.setup`: the accelerator; the model (backbone, LoRA adapter, identity and LPIPS nets, the
  objective); the optimizer and LR schedule (``accelerator.prepare``); the run state (step,
  data position, training-key seed); the data (training split and held-out validation faces);
  then :meth:`load_checkpoint` on resume. The order is the RNG's: a resumed run repeats it.
- :meth:`save_checkpoint` / :meth:`load_checkpoint`: the adapter, optimizer, LR schedule, RNG and
  the training state (see :mod:`faceveil.train.checkpointing`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from faceveil.errors import ConfigError
from faceveil.train import runtime as rt
from faceveil.train.config_schema import SAMPLE_SHARDS, TrainConfig, config_yaml, flat_hparams

logger = logging.getLogger("faceveil.train")


class RecipeSetup:
    """Building a run segment (fresh or resumed) and saving / loading its checkpoints; collective under a launcher."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume_ckpt: Path | None) -> None:
        self.cfg, self.run_dir, self.resume_ckpt = cfg, run_dir, resume_ckpt
        self.t_start = time.perf_counter()
        self.history: dict[str, dict[str, float]] = {}
        self.step_no, self.batches, self.images_seen = 0, 0, 0
        # What train() fills in; here so that summary() works on a run that never trained.
        self.stopped_by: str | None = None
        self.last_ckpt: Path | None = None
        self.first_digest: int | None = None
        self._sums: dict[str, float] = {}
        self._count = 0

    # ================================================================ setup
    def setup(self) -> None:
        self._setup_accelerator()
        self._setup_model()
        self._setup_optimizer()
        self._setup_state()
        self._setup_data()
        self.load_checkpoint()
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
            atomic_write(self.run_dir / rt.CONFIG_FILE, lambda tmp: tmp.write_text(yaml_text))
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
        wdtype = rt.weight_dtype(cfg)
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
        cfg = self.cfg
        self.data_seed, self.data_resume = cfg.train.seed, cfg.data.resume
        self.run_key_seed: int | None = None  # the per-run key-derivation seed when objective.key_seed is unset
        if self.resume_ckpt is not None:
            from faceveil.train.checkpointing import read_train_state

            st = read_train_state(self.resume_ckpt)
            self.step_no, self.batches, self.images_seen = int(st["step"]), int(st["batches"]), int(st["images"])
            self.data_resume = rt.data_resume_mode(cfg, st, self.world, self.resume_ckpt, self.main)
            if self.data_resume == "reseed":
                self.data_seed = int.from_bytes(hashlib.sha256(f"{cfg.train.seed}/{self.step_no}".encode()).digest()[:4], "little")
            if cfg.objective.key_seed is None:
                self.run_key_seed = rt.saved_key_seed(st, self.resume_ckpt)
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

        cfg, acc, factor = self.cfg, self.accelerator, self.backbone.vae_factor
        shards = rt.resolve_shards(cfg.data.shards, cfg.data.image_size, acc)
        val_src = cfg.data.val_shards or shards
        if val_src == SAMPLE_SHARDS:
            val_src = rt.resolve_shards(val_src, cfg.data.image_size, acc)
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
        self.dlib = rt.dlib_judge() if cfg.output.val_dlib and (self.main or self.sharded) else None

    # ================================================================ checkpoints
    def _load_adapter_hook(self, models: list[Any], input_dir: str) -> None:
        from faceveil.train.checkpointing import ADAPTER_DIR
        from faceveil.train.lora import LORA_WEIGHTS, read_lora_file, set_lora_weights

        if self.sharded:
            return  # FSDP / DeepSpeed restore their own (sharded) model files
        while models:
            m = models.pop()
            weights_file = Path(input_dir) / ADAPTER_DIR / LORA_WEIGHTS
            set_lora_weights(self.accelerator.unwrap_model(m).unet, read_lora_file(weights_file)[0], source=weights_file)

    def load_checkpoint(self) -> None:
        """On resume: adapter, optimizer, LR schedule, every process's RNG; else per-process RNG streams."""
        from accelerate.utils import set_seed

        if self.resume_ckpt is None:
            set_seed(self.cfg.train.seed, device_specific=True)  # per-process streams for the prior-loss noise
            return
        self.accelerator.load_state(str(self.resume_ckpt))
        if self.main:
            logger.info("resumed from %s at step %d (%d micro-batches consumed)", self.resume_ckpt, self.step_no, self.batches)

    def _lora_state(self) -> dict[str, Any]:
        from faceveil.train.lora import peft_state_dict

        acc = self.accelerator
        if self.sharded:
            return peft_state_dict(acc.get_state_dict(self.model) or {}, prefix="unet.")  # collective
        return peft_state_dict(acc.unwrap_model(self.model).state_dict(), prefix="unet.")

    def save_checkpoint(self, at: int) -> Path:
        from faceveil.train.checkpointing import save_checkpoint
        from faceveil.train.lora import save_lora

        lora_sd = self._lora_state()
        state = {"batches": self.batches, "images": self.images_seen, "world_size": self.world,
                 "num_workers": self.cfg.data.num_workers, "data_seed": self.data_seed}
        if self.run_key_seed is not None:
            state[rt.KEY_SEED_STATE] = f"{self.run_key_seed:064x}"  # training-key derivation only; never logged

        def write_adapter(folder: Path) -> None:
            save_lora(folder, lora_sd, self.lora_cfg)
            (folder.parent / rt.CONFIG_FILE).write_text(config_yaml(self.cfg))

        path = save_checkpoint(self.accelerator, self.run_dir, at, state, write_adapter, self.cfg.output.keep_checkpoints)
        if self.main:
            logger.info("step %d: checkpoint %s", at, path)
        return path

    def log(self, record: dict[str, float], at: int) -> None:
        self.accelerator.log(record, step=at)
        if self.main:
            rt.append_jsonl(self.run_dir / rt.METRICS_FILE, {"step": at, **record})
