"""Devices, precision and processes under accelerate: the frozen weights' dtype, peak memory,
whole weights under FSDP / ZeRO-3, and resetting accelerate's process-wide state.

Not for: choosing the launch (the launcher and ``accelerate config`` do that, never this code).
"""

from __future__ import annotations

from faceveil.train.config_schema import TrainConfig


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


def reset_accelerate_state() -> None:
    # accelerate keeps process-wide singletons; reset them so one Python process can run
    # several trainings one after another (tests, notebooks). Private API, by necessity.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


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
