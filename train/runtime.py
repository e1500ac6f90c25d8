"""Process-level helpers of a training run: signals, files, devices, accelerate and sharded-weight plumbing.

Kept apart from the recipe (:mod:`faceveil.train.recipe`) so the recipe reads as its phases.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from faceveil.errors import InputError
from faceveil.train.config_schema import SAMPLE_SHARDS, TrainConfig

logger = logging.getLogger("faceveil.train")

METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
CONFIG_FILE = "config.yaml"
KEY_SEED_STATE = "key_seed"


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


def metric_name(key: str) -> str:
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


def reset_accelerate_state() -> None:
    # accelerate keeps process-wide singletons; reset them so one Python process can run
    # several trainings one after another (tests, notebooks). Private API, by necessity.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def data_resume_mode(cfg: TrainConfig, state: dict[str, Any], world: int, ckpt: Path, main: bool) -> str:
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


def saved_key_seed(state: dict[str, Any], ckpt: Path) -> int | None:
    raw = state.get(KEY_SEED_STATE)
    if raw is None:
        return None
    try:
        return int(str(raw), 16)
    except ValueError:
        raise InputError(f"{ckpt / 'train_state.json'}: corrupt training state, {KEY_SEED_STATE!r} is not hex") from None


def dlib_judge():  # -> DlibRecognizer | None
    """dlib's face descriptor as a second validation judge, or None (with a warning) where dlib cannot load."""
    try:
        from faceveil.models.recognizers import load_recognizer

        return load_recognizer("dlib", missing="nan")
    except Exception as exc:  # noqa: BLE001 - a missing package or model file: validate without it
        logger.warning("validation without dlib (%s: %s); set output.val_dlib=false to silence this", exc.__class__.__name__, exc)
        return None


def full_params(accelerator, model):  # noqa: ANN001
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
