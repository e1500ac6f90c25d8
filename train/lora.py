"""LoRA adapters on the UNet: add, extract, save in diffusers' format, load back.

Adapters are added with diffusers' ``add_adapter`` (peft under the hood) where the
model has it (UNet2DConditionModel), else with peft's ``inject_adapter_in_model``
(UNet2DModel of ldm-ffhq). The saved file is ``pytorch_lora_weights.safetensors``
as ``StableDiffusionInpaintPipeline.save_lora_weights`` writes it: keys
``unet.<module>.lora_A.weight`` / ``lora_B.weight``, the peft LoraConfig in the
safetensors metadata (so rank and alpha load right). diffusers loads it with
``pipe.load_lora_weights(folder)`` or ``unet.load_lora_adapter(folder, prefix="unet")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from faceveil.errors import InputError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "default"


def lora_config(rank: int, alpha: float, targets: list[str], conv_targets: list[str] = (), dropout: float = 0.0,
                init: str = "gaussian"):  # -> peft.LoraConfig
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=sorted({*targets, *conv_targets}),
        init_lora_weights="gaussian" if init == "gaussian" else True,
    )


def add_lora(unet: nn.Module, config) -> list[nn.Parameter]:  # noqa: ANN001 - peft.LoraConfig
    """Freeze ``unet``, add the adapter; returns the (only) trainable parameters, cast to fp32."""
    unet.requires_grad_(False)
    if hasattr(unet, "add_adapter"):
        unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    else:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, unet, adapter_name=ADAPTER_NAME)
    params = []
    for name, p in unet.named_parameters():
        is_lora = ".lora_" in name
        p.requires_grad_(is_lora)
        if is_lora:
            p.data = p.data.float()
            params.append(p)
    if not params:
        raise InputError(f"no module of the UNet matches the LoRA targets {sorted(config.target_modules)}")
    return params


def peft_state_dict(full_state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """LoRA tensors of a (possibly wrapped) model's state dict, peft-named (adapter name removed)."""
    out = {}
    tag = f".{ADAPTER_NAME}."
    for k, v in full_state.items():
        if ".lora_" not in k or not k.startswith(prefix):
            continue
        out[k[len(prefix):].replace(tag, ".")] = v.detach().to("cpu", torch.float32).contiguous()
    return out


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """peft-named LoRA tensors of ``unet`` (fp32, CPU)."""
    return peft_state_dict(unet.state_dict())


def config_metadata(config) -> dict[str, Any]:  # noqa: ANN001
    meta = config.to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])
    return meta


def save_lora(folder: str | os.PathLike[str], peft_sd: dict[str, torch.Tensor], config) -> Path:  # noqa: ANN001
    """Write ``folder/pytorch_lora_weights.safetensors`` in diffusers' LoRA format."""
    from diffusers import StableDiffusionInpaintPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionInpaintPipeline.save_lora_weights(
        folder,
        # peft key names (lora_A / lora_B), which diffusers' loaders read as they are. (Its older
        # lora.down / lora.up names cover attention projections only, not convolutions.)
        unet_lora_layers=peft_sd,
        weight_name=LORA_WEIGHTS,
        unet_lora_adapter_metadata=config_metadata(config),
    )
    return folder / LORA_WEIGHTS


def read_lora_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(peft-named LoRA tensors, peft config dict from the metadata or None) of a diffusers LoRA file."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no LoRA weights file")
    sd = load_file(path)
    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    meta = None
    if raw:
        meta = {k.split(".", 1)[1]: v for k, v in json.loads(raw).items() if k.startswith("unet.")}
    unet_sd = {k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}
    if not unet_sd:
        raise InputError(f"{path}: holds no UNet LoRA weights")
    return convert_unet_state_dict_to_peft(unet_sd), meta


def config_from_metadata(meta: dict[str, Any]):  # -> peft.LoraConfig
    from peft import LoraConfig

    keep = {"r", "lora_alpha", "lora_dropout", "target_modules", "init_lora_weights", "use_dora", "use_rslora",
            "rank_pattern", "alpha_pattern", "bias"}
    return LoraConfig(**{k: v for k, v in meta.items() if k in keep})


def set_lora_weights(unet: nn.Module, peft_sd: dict[str, torch.Tensor], source: str | os.PathLike[str] | None = None) -> None:
    """Copy peft-named LoRA tensors into ``unet``'s existing adapter; every tensor must land, with its shape.

    Nothing is copied unless all fit; ``source`` (the weights file) names the error.
    """
    params = dict(unet.named_parameters())
    tag = f".{ADAPTER_NAME}."
    where = f"{source}: " if source is not None else ""
    missing, targets = [], {}
    for k, v in peft_sd.items():
        stem, _, leaf = k.rpartition(".")
        base, _, kind = stem.rpartition(".")  # ....to_q, lora_A
        name = f"{base}.{kind}{tag}{leaf}"
        if name not in params:
            missing.append(k)
            continue
        if tuple(v.shape) != tuple(params[name].shape):
            raise InputError(f"{where}LoRA tensor {k} has shape {tuple(v.shape)}, the model's adapter expects "
                             f"{tuple(params[name].shape)} (a different lora.rank or targets than the weights were trained with?)")
        targets[name] = v
    expected = sum(1 for n in params if ".lora_" in n)
    if missing or expected != len(peft_sd):
        raise InputError(f"{where}LoRA weights do not match the model's adapter ({len(missing)} unknown tensors, "
                         f"{len(peft_sd)} given, {expected} expected)")
    with torch.no_grad():
        for name, v in targets.items():
            params[name].copy_(v.to(params[name].dtype))


def load_lora(unet: nn.Module, path: str | os.PathLike[str], config=None) -> None:  # noqa: ANN001
    """Add an adapter described by the file's metadata (or ``config``) to ``unet`` and load its weights."""
    peft_sd, meta = read_lora_file(path)
    if config is None:
        if meta is None:
            raise InputError(f"{path}: no LoRA config in the file's metadata; pass it explicitly")
        config = config_from_metadata(meta)
    add_lora(unet, config)
    set_lora_weights(unet, peft_sd, source=path)
    unet.requires_grad_(False)
