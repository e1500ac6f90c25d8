"""Setup stage: the faces and pairs of a run, and the methods it compares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faceveil.errors import ConfigError, FaceveilError
from faceveil.evaluate.config import EvalConfig, digest
from faceveil.evaluate.context import Context
from faceveil.evaluate.faces import EvalFace, Notes
from faceveil.evaluate.pairs import Pair, pairs_from_labels, resolve_pairs


def build_methods(cfg: EvalConfig, key: Any, notes: Notes, device: Any, dtype: Any) -> list[Any]:
    from faceveil.evaluate.baselines import BlackBoxMethod, BlurMethod, PixelateMethod
    from faceveil.evaluate.exports import adapter_settings
    from faceveil.evaluate.methods import ObfuscationMethod, OursMethod, PublishedMethod
    from faceveil.models.backbones import load_backbone
    from faceveil.models.pipeline import Settings

    backbones: dict[str, Any] = {}

    def backbone(spec: str) -> Any:
        if spec not in backbones:
            backbones[spec] = load_backbone(spec, device=device, dtype=dtype)
        return backbones[spec]

    def settings() -> Settings:
        kwargs = dict(scheme=cfg.model.scheme, steps=cfg.model.steps, transform=cfg.model.transform)
        if "residual" in Settings.__dataclass_fields__:
            kwargs["residual"] = cfg.model.residual
        return Settings(**kwargs)

    methods: list[Any] = []
    for name in cfg.methods:
        if name == "ours":
            methods.append(OursMethod("ours", "faceveil (base weights)", backbone(cfg.model.backbone), settings(), key))
        elif name == "ours-adapters":
            if not cfg.model.adapter:
                notes.note("method ours-adapters skipped: no export folder with trained adapters (model.adapter)")
                continue
            adapted = backbone(cfg.model.adapter)
            methods.append(OursMethod("ours-adapters", "faceveil (trained adapters)", adapted, adapter_settings(cfg, adapted, notes), key))
        elif name == "published":
            methods.append(
                PublishedMethod(
                    backbone(cfg.published.backbone or cfg.model.backbone), cfg.published.steps or cfg.model.steps, cfg.published.seed,
                    cfg.published.mask_fallback, cfg.metrics.detector_upsample,
                )
            )  # fmt: skip
        elif name == "blur":
            methods += [ObfuscationMethod(BlurMethod(s), f"Gaussian blur (sigma {s:g} x side)", s) for s in cfg.baselines.blur_sigma]
        elif name == "pixelate":
            methods += [ObfuscationMethod(PixelateMethod(b), f"pixelation ({b} blocks across)", b) for b in cfg.baselines.pixel_blocks]
        elif name == "blackbox":
            methods.append(ObfuscationMethod(BlackBoxMethod(cfg.baselines.box_value), "black box"))
    return methods


def select_faces(cfg: EvalConfig, faces: list[EvalFace], specs: list | None, notes: Notes) -> tuple[dict[str, EvalFace], list[Pair], list[str], list[str]]:
    """Faces by id, pairs, probes (anonymized) and references (clean only)."""
    by_id = {f.id: f for f in faces}
    if specs is not None:
        rel = {f.relpath: f.id for f in faces if f.relpath}
        pairs, missing = resolve_pairs(specs, rel)
        if missing:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
            notes.note(f"{len(missing)} photos named in the pairs file are not among the usable faces ({shown}); their pairs are left out")
    elif cfg.pairs.synthetic == "labels":
        pairs = pairs_from_labels([(f.id, f.label) for f in faces], cfg.pairs.max_impostors)
    else:
        pairs = []
    if specs is None and cfg.pairs.synthetic == "labels" and not any(p.same for p in pairs):
        notes.note("no identity has two faces: no verification pairs; TAR and rank-1 are not measured")
        pairs = []
    if pairs:
        probes = list(dict.fromkeys(p.probe for p in pairs))
    else:
        probes = [f.id for f in faces]
    if cfg.data.limit is not None:
        probes = probes[: cfg.data.limit]
        keep = set(probes)
        pairs = [p for p in pairs if p.probe in keep]
    refs = [i for i in dict.fromkeys(p.ref for p in pairs) if i not in set(probes)]
    return by_id, pairs, probes, refs


def held_out_faces(cfg: EvalConfig, faces: list[EvalFace], notes: Notes) -> list[EvalFace]:
    """With trained adapters (``ours-adapters``), only the faces their training held out: scores on
    training identities would measure memory, not anonymization. Every method runs on the same faces."""
    if "ours-adapters" not in cfg.methods or not cfg.model.adapter:
        return faces
    from faceveil.data.splits import held_out
    from faceveil.models.backbones import read_manifest

    try:
        fraction = (read_manifest(Path(cfg.model.adapter)).get("training") or {}).get("val_holdout")
    except (OSError, ValueError, FaceveilError):
        fraction = None
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        notes.note("the adapters' export does not say which faces its training held out: scores may include training identities")
        return faces
    kept = [f for f in faces if held_out({"label": f.label, "source": f.source, "key": f.id}, float(fraction))]
    if not kept:
        raise ConfigError(f"none of the {len(faces)} faces was held out of the adapters' training (val_holdout {fraction}); "
                          "evaluate on other data (data.source)")
    notes.note(f"evaluated on the {len(kept)} of {len(faces)} faces held out of the adapters' training (val_holdout {fraction})")
    return kept


def prepare_context(cfg: EvalConfig, out: Path, notes: Notes, key: Any, device: Any, dtype: Any) -> tuple[Context, int]:
    """Load the faces and pairs, the judges, LPIPS and the detector, and embed the clean faces: the run's
    context, and how many usable faces were found."""
    from faceveil.data.detect_dlib import DlibDetector
    from faceveil.evaluate.clean_stage import clean_stage
    from faceveil.evaluate.faces import load_faces
    from faceveil.evaluate.judges import load_judges
    from faceveil.evaluate.metrics import Lpips
    from faceveil.evaluate.pairs import read_lfw_pairs

    specs = read_lfw_pairs(cfg.pairs.file, warn=notes.note) if cfg.pairs.file else None
    wanted = None
    if specs is not None and cfg.data.only_pairs and cfg.data.source in ("folder", "aligned"):
        wanted = {s.first for s in specs} | {s.second for s in specs}
    face_dir = out / "cache" / f"faces-{digest(cfg.data, sorted(wanted) if wanted else None)}"
    faces = held_out_faces(cfg, load_faces(cfg.data, face_dir, notes, wanted, cfg.progress), notes)
    by_id, pairs, probes, refs = select_faces(cfg, faces, specs, notes)

    judges = load_judges(cfg.metrics.recognizers, notes, cfg.metrics.skip_unavailable, device=str(device))
    if not judges:
        raise ConfigError("no recognizer could be loaded (metrics.recognizers)")
    lpips_metric = Lpips(cfg.metrics.lpips.net, cfg.metrics.lpips.backbone, device)
    if not lpips_metric.standard:
        notes.note("LPIPS runs with a random backbone (metrics.lpips.backbone=random): a smoke-test number, not comparable to published LPIPS")
    detector = DlibDetector(upsample=cfg.metrics.detector_upsample)
    clean_dir = out / "cache" / f"clean-{digest(face_dir.name, cfg.metrics.recognizers, cfg.metrics.detector_upsample)}"
    clean = clean_stage(by_id, list(dict.fromkeys(probes + refs)), judges, detector, clean_dir, cfg.progress)
    return Context(cfg, out, notes, by_id, probes, refs, pairs, judges, clean, lpips_metric, detector, key, device, dtype), len(faces)
