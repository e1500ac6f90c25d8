"""The evaluation config: a typed schema, loaded with ``faceveil.config.load_config``.

Every field has a default, so a YAML file only states what differs. Paths in a
config are relative to the working folder the run starts in. Secrets never go
in a config: ``key`` is the path of a key file (``faceveil keygen``); left
empty, the run generates a throw-away evaluation key in its run folder.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from faceveil.config import load_config
from faceveil.errors import ConfigError
from faceveil.models.settings import SCHEMES, TRANSFORMS

METHODS: tuple[str, ...] = ("ours", "ours-adapters", "published", "blur", "pixelate", "blackbox")


@dataclass
class DataConfig:
    """Where the faces come from.

    ``source``:
    - ``sample-set``: the real faces bundled with installed packages, built into
      shards by ``faceveil.data.sample_set`` (face + mirrored face per identity);
    - ``shards``: a shard folder or spec written by ``faceveil prepare`` (``path``);
    - ``folder``: photos under ``path`` (LFW layout: one folder per person),
      detected, aligned and masked here at ``size`` px (dlib by default);
    - ``aligned``: already aligned crops under ``path``; masks from ``mask_dir``
      (``NAME.png`` / ``NAME_mask.png``) or the default ellipse.
    """

    source: str = "sample-set"
    path: str | None = None
    size: int = 128
    faces: str = "largest"  # face policy for ``folder``: largest | all | single
    min_face: float = 40.0
    detector: str = "dlib"
    upsample: int = 1
    threshold: float | None = None
    mask_dir: str | None = None
    limit: int | None = None  # at most this many probe (anonymized) faces
    only_pairs: bool = True  # with a pairs file, load only the photos the pairs name


@dataclass
class PairsConfig:
    """Verification pairs. ``file``: LFW ``pairs.txt`` (10-fold header or plain lines).

    Without a file, ``synthetic: labels`` pairs faces by identity label: per label
    the first face (sorted by id) is the reference, the last the probe; impostor
    pairs take the reference of one identity and the probe of another.
    """

    file: str | None = None
    synthetic: str = "labels"  # labels | none
    far: float = 0.001
    max_impostors: int | None = None


@dataclass
class ModelConfig:
    backbone: str = "tiny"
    adapter: str | None = None  # export folder with trained adapters ("ours-adapters")
    scheme: str = "exact"
    steps: int = 10
    transform: str = "rotation"
    residual: bool = True  # seal the autoencoder residual (pixel-exact recovery from intact files)


@dataclass
class PublishedConfig:
    """The published method (arXiv 2510.01031): seed-keyed sign flip, plain DDIM, re-detected mask."""

    seed: int = 20251001  # the 32-bit torch seed that is the key
    backbone: str | None = None  # default: model.backbone (the paper used ldm-ffhq, no adapters)
    steps: int | None = None  # default: model.steps
    mask_fallback: str = "ellipse"  # when no face is found on the anonymized image: ellipse | stored


@dataclass
class BaselineConfig:
    blur_sigma: float = 0.05  # Gaussian sigma as a fraction of the image side
    pixel_blocks: int = 8  # pixelation blocks across the image side
    box_value: int = 0  # black box gray level


@dataclass
class LpipsConfig:
    """``net``: alex (standard), vgg or squeeze. ``backbone``: ``pretrained`` (torchvision's
    ImageNet weights, the standard LPIPS; must be in torch's cache), ``random`` (offline smoke
    runs only: numbers are not comparable to published LPIPS), or a path to a state dict of
    the torchvision backbone's ``features``."""

    net: str = "alex"
    backbone: str = "pretrained"


@dataclass
class FidConfig:
    """``feature``: ``inception`` (torchmetrics' InceptionV3 pool features, 2048-d: the standard
    FID; needs torch-fidelity and its weights), ``inception:<64|192|768|2048>``, ``tiny`` (a small
    seeded random conv net: offline smoke runs only), ``exported:<path>`` (a ``torch.export`` program
    saved with ``torch.export.save``, dynamic in the batch dimension), ``torchscript:<path>``, both
    mapping uint8 (N, 3, H, W) to (N, D), or ``module:<pkg.mod>:<factory>`` (returns an ``nn.Module``)."""

    enabled: bool = True
    feature: str = "inception"
    kid_subset: int = 1000


@dataclass
class MetricsConfig:
    recognizers: list[str] = field(default_factory=lambda: ["dlib", "arcface:tiny"])
    skip_unavailable: bool = True  # a recognizer whose weights are missing is skipped with a note
    jpeg_qualities: list[int] = field(default_factory=lambda: [95, 90, 75])
    stripped: bool = True
    lpips: LpipsConfig = field(default_factory=LpipsConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    detector_upsample: int = 1


@dataclass
class SecurityConfig:
    enabled: bool = True
    images: int = 6  # targets (first faces); the rest of the probes is the averaging attack's public reference
    opened_fraction: float = 0.9  # an attack "opens" images when it restores at least this fraction of their key stream
    linking: bool = True  # linking / keyless-estimation attacks (faceveil.evaluate.linking) on targets + reference
    linking_backgrounds: int = 1  # trials, each with another face as the shared background
    linking_reconstruct: int = 0  # gradient steps of the latent reconstruction attack (0: skip)


@dataclass
class DiversityConfig:
    enabled: bool = True
    keys: int = 10
    faces: int = 1


@dataclass
class EvalConfig:
    name: str = "eval"
    output: str = "runs/eval"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    key: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None  # torch CPU threads (1 is fastest for the tiny backbone on a busy CPU)
    batch_size: int = 8
    progress: bool = True
    figures: bool = True
    grid_faces: int = 6
    data: DataConfig = field(default_factory=DataConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    published: PublishedConfig = field(default_factory=PublishedConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)


DATA_SOURCES: tuple[str, ...] = ("sample-set", "shards", "folder", "aligned")
FACE_POLICIES: tuple[str, ...] = ("largest", "all", "single")  # faceveil.data.extract.FACE_POLICIES
EVAL_DETECTORS: tuple[str, ...] = ("dlib", "insightface")  # the ``precomputed`` detector needs a landmark file
INCEPTION_DIMS: tuple[str, ...] = ("64", "192", "768", "2048")


def parse_feature_spec(spec: str) -> tuple[str, str]:
    """Check an FID/KID feature network spec (see ``FidConfig``) and split it into (kind, argument).

    Files must exist and ``module:`` factories must import; the network itself is built later
    (``faceveil.evaluate.metrics.feature_network``). Raises ``ConfigError`` naming the key.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"metrics.fid.feature must be a string, got {spec!r}")
    if spec == "inception":
        return "inception", "2048"
    if spec.startswith("inception:"):
        dims = spec.partition(":")[2]
        if dims not in INCEPTION_DIMS:
            raise ConfigError(f"metrics.fid.feature {spec!r}: InceptionV3 features are {', '.join(INCEPTION_DIMS)}")
        return "inception", dims
    if spec == "tiny":
        return "tiny", ""
    if spec.startswith(("torchscript:", "exported:")):
        kind, _, rest = spec.partition(":")
        path = Path(rest).expanduser()
        if not rest or not path.is_file():
            raise ConfigError(f"metrics.fid.feature {spec!r}: {path}: no such {kind} feature network")
        return kind, rest
    if spec.startswith("module:"):
        target = spec.partition(":")[2]
        mod_name, _, attr = target.partition(":")
        if not mod_name or not attr:
            raise ConfigError(f"metrics.fid.feature {spec!r}: use module:<pkg.mod>:<factory>")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"metrics.fid.feature {spec!r}: {exc}") from None
        if not callable(factory):
            raise ConfigError(f"metrics.fid.feature {spec!r}: {attr} is not callable")
        return "module", target
    raise ConfigError(
        f"metrics.fid.feature {spec!r}: use inception[:DIMS], tiny, exported:<path>, torchscript:<path> or module:<pkg.mod>:<factory>"
    )


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} {value!r}: choose from {', '.join(choices)}")


def validate(cfg: EvalConfig) -> EvalConfig:
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    if cfg.data.source not in DATA_SOURCES:
        raise ConfigError(f"data.source {cfg.data.source!r}: use sample-set, shards, folder or aligned")
    _one_of("data.faces", cfg.data.faces, FACE_POLICIES)
    _one_of("data.detector", cfg.data.detector, EVAL_DETECTORS)
    _one_of("model.scheme", cfg.model.scheme, SCHEMES)
    _one_of("model.transform", cfg.model.transform, TRANSFORMS)
    least = 2 if cfg.model.scheme == "exact" else 1
    if cfg.model.steps < least:
        raise ConfigError(f"model.steps must be at least {least} for the {cfg.model.scheme} scheme, got {cfg.model.steps}")
    if cfg.published.steps is not None and cfg.published.steps < 1:
        raise ConfigError(f"published.steps must be at least 1, got {cfg.published.steps}")
    if cfg.data.source in ("shards", "folder", "aligned") and not cfg.data.path:
        raise ConfigError(f"data.source {cfg.data.source} needs data.path")
    if cfg.pairs.synthetic not in ("labels", "none"):
        raise ConfigError(f"pairs.synthetic {cfg.pairs.synthetic!r}: use labels or none")
    if not 0.0 < cfg.pairs.far < 1.0:
        raise ConfigError(f"pairs.far must be in (0, 1), got {cfg.pairs.far}")
    if not 0 <= cfg.published.seed < 2**32:
        raise ConfigError("published.seed must be a 32-bit unsigned integer (the published key space)")
    if cfg.published.mask_fallback not in ("ellipse", "stored"):
        raise ConfigError("published.mask_fallback: use ellipse or stored")
    for q in cfg.metrics.jpeg_qualities:
        if not 1 <= q <= 100:
            raise ConfigError(f"metrics.jpeg_qualities: {q} is not a JPEG quality (1..100)")
    if cfg.diversity.keys < 2:
        raise ConfigError("diversity.keys must be at least 2")
    if cfg.diversity.faces < 1:
        raise ConfigError(f"diversity.faces must be at least 1, got {cfg.diversity.faces}")
    if cfg.security.images < 1:
        raise ConfigError(f"security.images must be at least 1, got {cfg.security.images}")
    if not 0.0 < cfg.security.opened_fraction <= 1.0:
        raise ConfigError(f"security.opened_fraction must be in (0, 1], got {cfg.security.opened_fraction}")
    if cfg.metrics.fid.enabled:
        parse_feature_spec(cfg.metrics.fid.feature)
    if cfg.batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    return cfg


def load_eval_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    return validate(load_config(EvalConfig, path, list(overrides)))


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able settings (names cache folders)."""
    text = json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
