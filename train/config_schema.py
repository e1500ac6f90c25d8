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
UNROLL = ("shortcut", "full")
# Keys that no longer exist, with what replaced them (a config that sets one fails at load).
REMOVED_KEYS = {
    "objective.steps": "training now samples over anonymize.steps, the deployed trajectory",
    "objective.invert_scheme": "training now inverts with anonymize.scheme, the deployed trajectory",
}
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
    identity_crop: str = "ffhq"  # the shards are FFHQ-aligned (faceveil.data.align); used when identity_landmarks is false
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
    # Acts only in the differentiable training forward: inversion, keying and validation run the UNet in eval mode.
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
    # Training runs the deployed trajectory: anonymize.scheme over anonymize.steps (inversion and
    # keying without gradients, then sampling with gradients; faceveil.train.trajectory).
    # shortcut: gradients through the first K = grad_steps UNet calls of sampling (the high-noise
    #   steps that decide identity), then the DDIM x0-prediction as the clean end; cost K calls.
    # full: the whole sampling trajectory with gradients (anonymize's own clean latents); cost
    #   anonymize.steps calls, memory bounded by checkpoint_steps.
    # Default full: on tiny (20 exact steps) the K = 2 shortcut's identity gradient has cosine 0.18 with the
    # full trajectory's and its clean latents miss anonymize's by 4.3 (mean abs, inside the mask);
    # see README "Training" and python -m faceveil.train.unroll_study.
    unroll: str = "full"
    # K: differentiable UNet calls for the shortcut (unused by full).
    grad_steps: int = 2
    # Checkpoint each differentiable UNet call (keep only its input latent; recompute it in backward).
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
    # Pixel recoverability (README "Recovery from the pixels alone"): the anonymized face goes through a
    # differentiable stand-in for what websites do (kornia's differentiable JPEG at pixel_jpeg_quality,
    # then a resize by pixel_resize and back) and is encoded again; the loss is that latent's error
    # against the anonymized latent inside the mask. It is the lossy link of pixel-only recovery:
    # given the latent, the scheme inverts it with the key as exactly as it does from a file.
    pixel_weight: float = 0.0
    pixel_jpeg_quality: float = 75.0
    pixel_resize: float = 0.5
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
    # Validation images: the first val_images faces of val_shards; with val_shards unset, of the
    # faces held out of training: the identities (labels; the source photo for unlabelled faces)
    # whose fixed hash falls below val_holdout (faceveil.data.splits.held_out).
    val_shards: str | None = None
    val_holdout: float = 0.25
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
    # Also judge validation with dlib's face descriptor (an independent recognizer; offline).
    val_dlib: bool = True
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
    for key in ("identity_weight", "prior_weight", "perceptual_weight", "wrong_key_weight", "pixel_weight"):
        if getattr(cfg.objective, key) < 0:
            raise ConfigError(f"{at('objective.' + key)}: must be >= 0")
    if not 1 <= cfg.objective.pixel_jpeg_quality <= 100:
        raise ConfigError(f"{at('objective.pixel_jpeg_quality')}: must be in [1, 100]")
    if not 0 < cfg.objective.pixel_resize <= 1:
        raise ConfigError(f"{at('objective.pixel_resize')}: must be in (0, 1]")
    if cfg.objective.grad_steps > cfg.anonymize.steps:
        raise ConfigError(f"{at('objective.grad_steps')}: K = {cfg.objective.grad_steps} exceeds anonymize.steps = {cfg.anonymize.steps}")
    if cfg.anonymize.scheme == "exact" and cfg.anonymize.steps < 2:
        raise ConfigError(f"{at('anonymize.steps')}: the exact scheme needs at least 2 steps")
    if not 0 <= cfg.data.val_holdout < 1:
        raise ConfigError(f"{at('data.val_holdout')}: must be in [0, 1)")
    if cfg.data.val_shards is None and cfg.data.val_holdout == 0:
        raise ConfigError(f"{at('data.val_holdout')}: 0 holds no faces out; set data.val_shards to validate on other data")
    if not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"{at('lora.dropout')}: must be in [0, 1)")
    if cfg.data.num_workers < 0 or cfg.optim.warmup_steps < 0 or cfg.data.shuffle < 0 or cfg.train.cpu_threads < 0:
        raise ConfigError(f"{where}: data.num_workers, data.shuffle, optim.warmup_steps and train.cpu_threads must be >= 0")
    if not cfg.lora.targets and not cfg.lora.conv_targets:
        raise ConfigError(f"{at('lora.targets')}: no LoRA target modules")
    return cfg


def _refuse_removed_keys(path: str | os.PathLike[str] | None, overrides: Sequence[str], where: str) -> None:
    from omegaconf import OmegaConf

    given = {o.split("=", 1)[0].strip() for o in overrides}
    if path is not None and os.path.isfile(path):
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(path))
        except Exception:  # noqa: BLE001 - load_config reports unreadable YAML with its own message
            loaded = None
        if isinstance(loaded, dict):
            given |= {f"{sec}.{k}" for sec, body in loaded.items() if isinstance(body, dict) for k in body}
    for key in sorted(given & set(REMOVED_KEYS)):
        raise ConfigError(f"{where}: key {key!r} was removed: {REMOVED_KEYS[key]}; delete it from the config")


def load_train_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load, type-check and semantically check a training config."""
    where = str(path) if path is not None else "<defaults>"
    if overrides:
        where += " + overrides"
    _refuse_removed_keys(path, overrides, where)
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
