"""The fine-tuning recipe, in the shape of torchtune's recipe protocol.

``recipe = FinetuneRecipe(cfg, run_dir, resume_ckpt)``; ``recipe.setup()``; ``recipe.train()``;
``recipe.summary()``; ``recipe.cleanup()``:

- setup (:mod:`faceveil.train.recipe_setup`): accelerator, model, optimizer, run state, data,
  and the checkpoint on resume; :meth:`save_checkpoint` / :meth:`load_checkpoint` live there too;
- :meth:`FinetuneRecipe.step`: one micro-batch of the objective, backward, optimizer step;
- :meth:`FinetuneRecipe.validate`: the real pipeline from written files on held-out faces;
- :meth:`FinetuneRecipe.train`: the loop -- steps, logging, validation and checkpoint cadence,
  ``train.stop_at_step`` and SIGTERM / SIGINT (finish the step, checkpoint, stop);
- :meth:`FinetuneRecipe.summary`: what ``final.json`` holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import time
from typing import Any

from faceveil.train import runtime as rt
from faceveil.train.recipe_setup import RecipeSetup

logger = logging.getLogger("faceveil.train")


class FinetuneRecipe(RecipeSetup):
    """One training run segment: :meth:`setup`, :meth:`train`, :meth:`summary`, :meth:`cleanup`."""

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
            with rt.full_params(acc, self.model), acc.autocast(), torch.random.fork_rng(devices=[]):  # never moves the training RNG
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
        stop = rt.StopFlag().install()
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

    def _after_step(self, stop: rt.StopFlag, pbar: Any) -> bool:
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
        record = {rt.metric_name(k): float(v) for k, v in zip(names, means.tolist(), strict=True)}
        record.update({
            "train/lr": self.lr_scheduler.get_last_lr()[0],
            "perf/images_per_s": self._images_log / max(elapsed, 1e-9),
            "perf/step_time_s": elapsed / max(1, self._count / cfg.train.gradient_accumulation_steps),
            "perf/peak_mem_gib": rt.peak_memory_gib(self.device),
        })
        self.log(record, self.step_no)
        self.history["train"] = record
        pbar.set_postfix(loss=f"{record['loss/total']:.4f}", id_cos=f"{record.get('train/identity_cos', math.nan):.3f}")
        self._sums, self._count = {}, 0
        self._t_log, self._images_log = time.perf_counter(), 0

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
            atomic_write(self.run_dir / rt.FINAL_FILE, lambda tmp: tmp.write_text(final_text))
            logger.info("done: step %d in %.1f s; run dir %s", self.step_no, summary["wall_time_s"], self.run_dir)
        return summary

    def cleanup(self) -> None:
        self.accelerator.end_training()
