"""The model card (``README.md``) of an export: base model, data, training config, measured numbers, licenses."""

from __future__ import annotations

import math
from typing import Any

from faceveil.models.backbones import LAYOUTS
from faceveil.train.config_schema import TrainConfig, config_yaml

BASE_LICENSES = {
    "sd2-inpaint": ("openrail++", "Stable Diffusion 2 inpainting weights: CreativeML Open RAIL++-M license "
                    "(https://huggingface.co/stabilityai/stable-diffusion-2/blob/main/LICENSE-MODEL); its use "
                    "restrictions carry over to this adapter."),
    "ldm-ffhq": ("other", "The latent-diffusion face weights (CompVis) come under their own license; check it before use."),
    "tiny": ("apache-2.0", "The tiny backbone has random weights from a fixed seed (faceveil, Apache-2.0): a demo, not a model."),
}

METRIC_NAMES = {
    "val/identity_cos": "identity cosine, anonymized vs original (lower is better)",
    "val/wrong_key_cos": "identity cosine, wrong-key recovery vs original (lower is better)",
    "val/recovered_cos": "identity cosine, right-key recovery vs original (1 = same identity)",
    "val/recovery_latent_error": "max latent error of right-key recovery from the written file",
    "val/recovery_psnr": "PSNR of right-key recovery vs original (dB, worst image)",
}


# The sections of a 'faceveil evaluate' metrics.json that hold measurements. Everything else (its
# config with local paths and key file, notes, skipped inputs, names) never reaches an export.
EVAL_METRIC_SECTIONS = ("data", "clean", "methods", "diversity", "security", "nonce_scan")
_NON_FINITE = ("inf", "-inf", "nan")


def _numbers_only(d: Any) -> Any:
    """``d`` with every leaf that is not a number dropped (strings, paths, booleans, nulls); None if nothing is left."""
    if isinstance(d, dict):
        kept = {str(k): v for k, v in ((k, _numbers_only(v)) for k, v in d.items()) if v is not None}
        return kept or None
    if isinstance(d, bool):
        return None
    if isinstance(d, (int, float)) or d in _NON_FINITE:
        return d
    return None


def evaluation_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The measured numbers of an evaluation report: its metric sections, numeric leaves only (lists dropped)."""
    out = {}
    for section in EVAL_METRIC_SECTIONS:
        kept = _numbers_only(report.get(section))
        if isinstance(kept, dict):
            out[section] = kept
    return out


def _fmt(v: Any) -> str:
    if v == "inf":
        return "inf (bit-identical)"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf (bit-identical)"
        return f"{v:.4g}"
    return str(v)


def _base_id(manifest: dict[str, Any]) -> str | None:
    name, _, source = manifest["base"]["spec"].partition(":")
    layout = LAYOUTS.get(name)
    if layout is None or layout.pretrained is None or source.startswith("random"):
        return None
    return source or layout.default_source


def render_model_card(manifest: dict[str, Any], cfg: TrainConfig, final: dict[str, Any]) -> str:
    base_name = manifest["base"]["name"]
    base_id = _base_id(manifest)
    license_id, license_note = BASE_LICENSES.get(base_name, ("other", "See the base model's license."))
    tags = ["faceveil", "lora", "face-anonymization", "privacy", "diffusers", base_name]
    front = ["---", f"license: {license_id}"]
    if base_id and "/" in base_id and not base_id.startswith(("/", ".")):
        front.append(f"base_model: {base_id}")
    front += ["library_name: diffusers", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    s = manifest["settings"]
    lora = manifest["lora"]
    tr = manifest["training"]
    data = tr.get("data") or {}
    lines = front + [
        f"# faceveil LoRA adapter on {base_name}",
        "",
        "LoRA adapters for faceveil reversible face anonymization: a key-modified "
        "starting noise produces a realistic face of somebody else, and only the holder of the secret key "
        "recovers the original. The adapters were trained so that keyed faces land far from the original "
        "identity (ArcFace loss) while the UNet stays a diffusion model (denoising prior, LPIPS) and a wrong "
        "key does not bring the identity back. Recovery with the right key is exact by construction of the "
        f"`{s['scheme']}` inversion scheme, whatever the weights.",
        "",
        "## Base model",
        "",
        f"- backbone: `{manifest['base']['spec']}` ({base_name})" + (f", weights `{base_id}`" if base_id else ""),
        f"- image size: {manifest['image_size']} px",
        "",
        "## Adapter",
        "",
        f"- file: `{lora['file']}` (diffusers LoRA format), SHA-256 `{lora['sha256']}`",
        f"- rank {lora['rank']}, alpha {lora['alpha']}, target modules: {', '.join(f'`{t}`' for t in lora['target_modules'])}",
        "- merged UNet: `unet/`" if manifest.get("merged_unet") else "- merged UNet: not included",
        "",
        "## Anonymization settings (recovery must repeat them; files record them)",
        "",
        f"- scheme `{s['scheme']}`, {s['steps']} steps, key transform `{s['transform']}`",
        "",
        "## Training data",
        "",
        f"- shards: `{data.get('shards')}`",
    ]
    for key in ("samples", "identities", "photos"):
        if key in data:
            lines.append(f"- {key}: {data[key]}")
    if data.get("description"):
        lines.append(f"- {data['description']}")
    lines += [
        "",
        "## Training",
        "",
        f"- checkpoint `{tr.get('checkpoint')}`: step {tr.get('step')}, {tr.get('images_seen')} images seen, "
        f"{tr.get('world_size')} process(es)",
        f"- identity network for the losses: `{tr.get('identity_network')}` (not included, see the license notes)",
    ]
    if final.get("wall_time_s") is not None:
        lines.append(f"- wall time of the last run segment: {final['wall_time_s']:.0f} s")
    lines += ["", "<details><summary>training config</summary>", "", "```yaml", config_yaml(cfg).rstrip(), "```", "", "</details>", ""]
    metrics = manifest.get("metrics") or {}
    lines += ["## Evaluation (measured)", ""]
    if metrics:
        lines += [f"Validation at step {metrics.get('step')} on the run's validation faces, through the real "
                  "pipeline (anonymize, write the file, read it, recover):", "", "| metric | value |", "|---|---|"]
        for k, desc in METRIC_NAMES.items():
            if k in metrics:
                lines.append(f"| {desc} | {_fmt(metrics[k])} |")
        lines.append("")
    else:
        lines += [f"No validation numbers were recorded at step {tr.get('step')}, the exported checkpoint's step "
                  "(validation at other steps measured other weights and is not reported here).", ""]
    if manifest.get("evaluation"):
        lines += ["Evaluation report (`faceveil evaluate`):", "", "| metric | value |", "|---|---|"]
        for k, v in _flatten(evaluation_metrics(manifest["evaluation"])).items():
            lines.append(f"| {k} | {_fmt(v)} |")
        lines.append("")
    if base_name == "tiny":
        lines += ["**These numbers come from a random toy backbone and a random identity network: they test the "
                  "machinery, not anonymization quality.**", ""]
    lines += [
        "## Use",
        "",
        "```bash",
        "faceveil keygen -o my.key",
        "faceveil anonymize photos/ -o veiled/ --key my.key --backbone THIS_FOLDER "
        f"--scheme {s['scheme']} --steps {s['steps']} --transform {s['transform']}",
        "faceveil recover veiled/ -o recovered/ --key my.key   # the files name this folder and the adapter hash",
        "```",
        "",
        "With diffusers: `pipe.load_lora_weights(THIS_FOLDER)` on a `StableDiffusionInpaintPipeline`, or "
        "`unet.load_lora_adapter(THIS_FOLDER, prefix=\"unet\")`.",
        "",
        "## License notes",
        "",
        f"- Base model: {license_note}",
        "- Identity networks: insightface model-zoo weights (buffalo_l, antelopev2, ...) and arcface_torch "
        "checkpoints are licensed for non-commercial research only. They were used as frozen loss networks during "
        "training; they are not part of this folder and are never redistributed by faceveil.",
        "- LPIPS: the linear heads ship with the `lpips` package (BSD-2-Clause); its backbone uses torchvision's "
        "ImageNet weights.",
        "- Training faces: check the license and consent terms of the data set named above before publishing.",
        "",
    ]
    return "\n".join(lines)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float, str, bool)) or d is None:
        out[prefix.rstrip(".")] = d
    return out
