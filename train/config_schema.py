"""The typed training config: an OmegaConf structured schema.

``load_train_config(path, overrides)`` merges a YAML file and ``dotted.key=value``
overrides onto these defaults; a misspelt key or a value of the wrong type fails
at start with one line naming the file and the key (``ConfigError``), and
:func:`check_config` then rejects values that parse but make no sense (an
unknown scheme, K larger than the trajectory, ...), again naming the key.

Every field is documented here; ``configs/*.yaml`` only set what differs.
Secrets never belong in a config: training keys are drawn per image at run time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from faceveil.config import dump_config, load_config
from faceveil.errors import ConfigError

MIXED_PRECISION = ("no", "fp16", "bf16")
WEIGHT_DTYPES = ("auto", "float32", "float16", "bfloat16")
UNROLL = ("shortcut", "truncated")
PERCEPTUAL_NETS = ("alex", "vgg", "squeeze")
PERCEPTUAL_BACKBONES = ("pretrained", "random")
LR_SCHEDULES = ("constant", "linear", "cosine")
DATA_RESUME = ("skip", "reseed")
SAMPLE_SHARDS = "samples"


@dataclass
class ModelSection:
    # Backbone spec for faceveil.models.backbones.load_backbone: tiny, sd2-inpaint[:HUB_ID_OR_FOLDER],
    # sd2-inpaint:random[:SEED] (random weights, benchmarks), ldm-ffhq[:...].
    backbone: str = "tiny"
    local_files_only: bool = False
    # Dtype of the frozen weights (UNet base, autoencoder, identity net). auto: bf16/fp16 following
    # train.mixed_precision, fp32 otherwise. LoRA weights are always fp32.
    weight_dtype: str = "auto"
    # Identity network for the identity losses (faceveil.models.identity.load_identity_encoder spec):
    # tiny / random:r50 (random weights), insightface:buffalo_l, onnx:PATH, arcface_torch:[ARCH:]PATH.
    identity: str = "tiny"
    identity_seed: int = 0
    identity_crop: str = "arcface112"
    # Align faces for the identity net with the shards' 5-point landmarks (else a fixed crop).
    identity_landmarks: bool = True
    # Activation checkpointing inside the UNet blocks and the autoencoder (the losses back-propagate
    # through its frozen decoder) -- diffusers enable_gradient_checkpointing.
    gradient_checkpointing: bool = True
    # torch.compile the UNet (in place; state-dict keys unchanged).
    compile: bool = False


@dataclass
class LoraSection:
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    # Attention projections of every diffusers Attention block.
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # Optional convolutions as well, e.g. [conv1, conv2] (ResNet blocks), conv_shortcut, proj_in, proj_out.
    conv_targets: list[str] = field(default_factory=list)
    # peft init_lora_weights: gaussian or default (kaiming). Both start with B = 0: the adapter is
    # the identity at step 0, so training starts from the base model.
    init: str = "gaussian"


@dataclass
class AnonymizeSection:
    """The inference settings: used by validation and recorded in exports."""

    scheme: str = "exact"
    steps: int = 50
    transform: str = "rotation"


@dataclass
class ObjectiveSection:
    # DDIM steps of the training trajectory (inversion, then sampling from the keyed noise).
    steps: int = 10
    # Inversion scheme used (without gradients) to reach the noise end during training. Any scheme
    # works: exactness at inference does not depend on it. ddim is cheapest (1 UNet call per step).
    invert_scheme: str = "ddim"
    # K: sampling steps run with gradients through the LoRA UNet.
    grad_steps: int = 2
    # shortcut: from the keyed noise, K-1 DDIM steps then one DDIM jump to the clean end (the x0
    #   prediction), all with gradients: trains the high-noise steps that decide identity; cost K.
    # truncated: steps - K steps without gradients, then the last K steps with gradients (truncated
    #   back-propagation): trains the low-noise steps; cost = steps, memory K.
    unroll: str = "shortcut"
    # Checkpoint each UNet call of the K steps (keep only its input; recompute in backward).
    checkpoint_steps: bool = True
    identity_weight: float = 1.0
    # loss = relu(cos(anonymized, original) - margin): no push once a face is this far.
    identity_margin: float = 0.0
    # Standard denoising loss (eps-MSE at random timesteps) on clean latents, with the inpainting
    # conditioning: keeps the adapted UNet a diffusion model whose faces stay realistic.
    prior_weight: float = 1.0
    # LPIPS(anonymized, original): keeps pose, expression, lighting.
    perceptual_weight: float = 0.1
    perceptual_net: str = "alex"
    # pretrained: torchvision ImageNet weights for the LPIPS backbone (downloaded once to
    # ~/.cache/torch; the LPIPS linear heads ship with the lpips package). random: random backbone,
    # offline (tests, tiny), a weak perceptual signal.
    perceptual_backbone: str = "pretrained"
    # Recovery with a wrong key must not bring the identity back: relu(cos(wrong-key recovery, original) - margin).
    wrong_key_weight: float = 0.5
    wrong_key_margin: float = 0.0
    # Keys and nonces are derived with SHA-256 from (seed, rank, micro-batch, image), never torch's RNG.
    # None: the seed is drawn once per run from os.urandom and kept only in the checkpoints'
    # train_state.json (never in config.yaml or the logs), so --resume continues bit for bit.
    # An int: a fixed seed, for runs reproducible from scratch (tests).
    key_seed: int | None = None


@dataclass
class DataSection:
    # "samples": the bundled real-face sample set, built into the faceveil cache on first use.
    # Otherwise a shard folder from `faceveil prepare`, a brace-expanded URL or a pipe: source.
    shards: str = SAMPLE_SHARDS
    image_size: int = 128
    # Images per process per micro-batch.
    batch_size: int = 4
    num_workers: int = 0
    shuffle: int = 1000
    # On --resume: skip replays the stream to the saved position (bit-identical continuation, costs
    # decoding time); reseed starts a fresh stream seeded by the step (instant, statistically equivalent).
    resume: str = "skip"
    # Validation images: the first val_images faces of val_shards (default: shards).
    val_shards: str | None = None
    val_images: int = 4


@dataclass
class OptimSection:
    lr: float = 1e-4
    weight_decay: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    # Scale lr by processes x batch size x accumulation (relative to one image per step).
    scale_lr: bool = False


@dataclass
class TrainSection:
    # Optimizer steps (each of gradient_accumulation_steps micro-batches on every process).
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    seed: int = 0
    allow_tf32: bool = True
    # Intra-op threads when training on CPU (torch.set_num_threads); 0 keeps torch's default. Small
    # models on a shared or small machine run far faster with 1 (no OpenMP stalls under load).
    cpu_threads: int = 0
    # End the run segment that reaches this step with a checkpoint, as SIGTERM would (time-slotted
    # clusters); --resume latest continues. None: run to max_steps.
    stop_at_step: int | None = None


@dataclass
class OutputSection:
    run_dir: str = "runs/default"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    # Validation (real anonymize -> file -> recover with the right and a wrong key, metrics and the
    # image grid original | anonymized | recovered | wrong key) every N steps, at step 0 and at the end.
    validate_every: int = 500
    validate_at_start: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    anonymize: AnonymizeSection = field(default_factory=AnonymizeSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: OutputSection = field(default_factory=OutputSection)


def _choice(where: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(options)}")


def check_config(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    """Semantic checks that typing cannot express; each error names the key."""
    from faceveil.models.inversion import SCHEMES
    from faceveil.models.key_transforms import TRANSFORMS

    def at(key: str) -> str:
        return f"{where}: key {key!r}"

    _choice(at("model.weight_dtype"), cfg.model.weight_dtype, WEIGHT_DTYPES)
    _choice(at("anonymize.scheme"), cfg.anonymize.scheme, SCHEMES)
    _choice(at("anonymize.transform"), cfg.anonymize.transform, tuple(TRANSFORMS))
    _choice(at("objective.invert_scheme"), cfg.objective.invert_scheme, SCHEMES)
    _choice(at("objective.unroll"), cfg.objective.unroll, UNROLL)
    _choice(at("objective.perceptual_net"), cfg.objective.perceptual_net, PERCEPTUAL_NETS)
    _choice(at("objective.perceptual_backbone"), cfg.objective.perceptual_backbone, PERCEPTUAL_BACKBONES)
    _choice(at("optim.schedule"), cfg.optim.schedule, LR_SCHEDULES)
    _choice(at("train.mixed_precision"), cfg.train.mixed_precision, MIXED_PRECISION)
    _choice(at("data.resume"), cfg.data.resume, DATA_RESUME)
    _choice(at("lora.init"), cfg.lora.init, ("gaussian", "default"))
    positive = {
        "lora.rank": cfg.lora.rank,
        "lora.alpha": cfg.lora.alpha,
        "anonymize.steps": cfg.anonymize.steps,
        "objective.steps": cfg.objective.steps,
        "objective.grad_steps": cfg.objective.grad_steps,
        "data.image_size": cfg.data.image_size,
        "data.batch_size": cfg.data.batch_size,
        "data.val_images": cfg.data.val_images,
        "optim.lr": cfg.optim.lr,
        "train.max_steps": cfg.train.max_steps,
        "train.gradient_accumulation_steps": cfg.train.gradient_accumulation_steps,
        "output.checkpoint_every": cfg.output.checkpoint_every,
        "output.keep_checkpoints": cfg.output.keep_checkpoints,
        "output.log_every": cfg.output.log_every,
        "output.validate_every": cfg.output.validate_every,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{at(key)}: must be > 0, got {value}")
    for key in ("identity_weight", "prior_weight", "perceptual_weight", "wrong_key_weight"):
        if getattr(cfg.objective, key) < 0:
            raise ConfigError(f"{at('objective.' + key)}: must be >= 0")
    if cfg.objective.grad_steps > cfg.objective.steps:
        raise ConfigError(f"{at('objective.grad_steps')}: K = {cfg.objective.grad_steps} exceeds objective.steps = {cfg.objective.steps}")
    if cfg.anonymize.scheme == "exact" and cfg.anonymize.steps < 2:
        raise ConfigError(f"{at('anonymize.steps')}: the exact scheme needs at least 2 steps")
    if cfg.objective.invert_scheme == "exact" and cfg.objective.steps < 2:
        raise ConfigError(f"{at('objective.steps')}: the exact scheme needs at least 2 steps")
    if not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"{at('lora.dropout')}: must be in [0, 1)")
    if cfg.data.num_workers < 0 or cfg.optim.warmup_steps < 0 or cfg.data.shuffle < 0 or cfg.train.cpu_threads < 0:
        raise ConfigError(f"{where}: data.num_workers, data.shuffle, optim.warmup_steps and train.cpu_threads must be >= 0")
    if not cfg.lora.targets and not cfg.lora.conv_targets:
        raise ConfigError(f"{at('lora.targets')}: no LoRA target modules")
    return cfg


def load_train_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load, type-check and semantically check a training config."""
    where = str(path) if path is not None else "<defaults>"
    if overrides:
        where += " + overrides"
    return check_config(load_config(TrainConfig, path, overrides), where)


def config_yaml(cfg: TrainConfig) -> str:
    return dump_config(cfg)


def flat_hparams(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flat ``{dotted.key: scalar}`` view of a config (for tensorboard hparams)."""
    from dataclasses import fields, is_dataclass

    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(flat_hparams(value, key + "."))
        elif isinstance(value, (int, float, str, bool)):
            out[key] = value
        else:
            out[key] = str(value)
    return out
