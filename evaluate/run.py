"""Run an evaluation: ``python -m faceveil.evaluate.run --config configs/eval/NAME.yaml [key=value ...]``.

Also ``faceveil evaluate --config ...``. The run folder (``output``) receives:

- ``metrics.json``: every number, per method;
- ``report.md``: the tables, methods side by side, and the figures;
- ``figures/*.png``: image grids, similarity histograms, ROC curves, diversity, security;
- ``config.yaml``: the resolved config;
- ``cache/``: per-image work (aligned faces, anonymized files, per-image metric rows and
  embeddings, security and diversity results). A re-run with the same settings skips
  what is there, so an interrupted run resumes; changed settings get new cache folders.

Steps: load faces and pairs; clean embeddings and detections; for each method, anonymize
to files, measure the anonymized image, recover it from the saved file (untouched, JPEG,
metadata stripped) and measure that; then FID/KID, verification (TAR at FAR with the
threshold of clean pairs), rank-1, diversity, the security suite, the nonce scan, and the
report.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from faceveil.errors import ConfigError, FaceveilError
from faceveil.evaluate.config import EvalConfig, load_eval_config
from faceveil.evaluate.context import Context, resolve_key
from faceveil.evaluate.faces import Notes, warn
from faceveil.evaluate.jsonio import clean_json, write_json


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Run the whole evaluation of ``cfg``; returns what ``metrics.json`` holds."""
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: EvalConfig) -> dict[str, Any]:
    from faceveil.cli.common import quiet_libraries, resolve_device, resolve_dtype
    from faceveil.config import dump_config
    from faceveil.data.images import atomic_write
    from faceveil.evaluate.exports import apply_training_size
    from faceveil.evaluate.setup import prepare_context

    t_start = time.perf_counter()
    quiet_libraries()
    notes = Notes()
    cfg = copy.deepcopy(cfg)
    apply_training_size(cfg, notes)  # an export's training size wins over data.size
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    config_text = dump_config(cfg)
    atomic_write(out / "config.yaml", lambda tmp: tmp.write_text(config_text))
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    key = resolve_key(cfg, out, notes)
    ctx, n_faces = prepare_context(cfg, out, notes, key, device, dtype)
    metrics = {"name": cfg.name, "config": json.loads(json.dumps(_asdict(cfg), default=str)), "data": _data_counts(ctx, n_faces)}
    metrics.update(_stages(ctx))
    metrics.update(notes=notes.messages, skipped_inputs=notes.skipped_inputs, seconds=round(time.perf_counter() - t_start, 1),
                   key_fingerprint=key.fingerprint, torch_threads=torch.get_num_threads())  # fmt: skip
    metrics["data"]["skipped_inputs"] = len(notes.skipped_inputs)
    figure_inputs = metrics.pop("_figures")
    metrics = clean_json(metrics, strict=True)
    write_json(out / "metrics.json", metrics, strict=True)

    from faceveil.evaluate import report

    figures: dict[str, str] = {}
    if cfg.figures:
        figures = report.make_figures(ctx, *figure_inputs, out / "figures")
    report_text = report.render(metrics, figures)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(report_text))
    return metrics


def _data_counts(ctx: Context, n_faces: int) -> dict[str, int]:
    pairs = ctx.pairs
    return {"faces": n_faces, "probes": len(ctx.probes), "references": len(ctx.refs), "pairs": len(pairs),
            "genuine_pairs": sum(p.same for p in pairs), "impostor_pairs": sum(not p.same for p in pairs)}  # fmt: skip


def _stages(ctx: Context) -> dict[str, Any]:
    """Every measuring stage in order: methods, baseline sweeps, FID, clean baselines, diversity, security, nonces."""
    from faceveil.evaluate.clean_stage import clean_results
    from faceveil.evaluate.diversity import run_diversity
    from faceveil.evaluate.fid_stage import fid_stage
    from faceveil.evaluate.judges import headline_judge
    from faceveil.evaluate.method_stage import process_method
    from faceveil.evaluate.nonces import scan_nonces
    from faceveil.evaluate.scoring import aggregate_method
    from faceveil.evaluate.security_stage import security_stage
    from faceveil.evaluate.setup import build_methods
    from faceveil.evaluate.sweep import keep_strongest

    cfg = ctx.cfg
    methods = build_methods(cfg, ctx.key, ctx.notes, ctx.device, ctx.dtype)
    variants = ["file", *(f"jpeg{q}" for q in cfg.metrics.jpeg_qualities), *(["stripped"] if cfg.metrics.stripped else [])]
    results: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    folders: dict[str, Path] = {}
    for m in methods:
        rows, embs, folders[m.name] = process_method(ctx, m, variants)
        results[m.name], plots[m.name] = aggregate_method(ctx, m, rows, embs, variants)
    headline = headline_judge(ctx.judges).name
    methods, sweeps = keep_strongest(methods, results, plots, folders, headline)
    if cfg.metrics.fid.enabled:
        fid_stage(ctx, methods, folders, results)
    clean_summary = clean_results(ctx)

    diversity: dict[str, Any] = {}
    div_images: dict[str, Any] = {}
    if cfg.diversity.enabled:
        if cfg.progress:
            warn(f"diversity: {cfg.diversity.faces} face(s) under {cfg.diversity.keys} keys per method")
        diversity, div_images = run_diversity(ctx, methods)
    security: dict[str, Any] = {}
    sec_images: dict[str, Any] = {}
    if cfg.security.enabled:
        if cfg.progress:
            warn(f"security suite on {min(cfg.security.images, len(ctx.probes))} target images")
        security, sec_images = security_stage(ctx, methods, folders)
    # Nonce scan over faceveil's own files of this run.
    nonce_scan = {m.name: scan_nonces([folders[m.name]]).to_dict() for m in methods if m.name.startswith("ours")}
    return {
        "recognizers": [j.name for j in ctx.judges], "headline_recognizer": headline, "variants": variants,
        "clean": clean_summary, "methods": results, "sweeps": sweeps, "diversity": diversity, "security": security,
        "nonce_scan": nonce_scan, "_figures": (methods, folders, plots, div_images, security, sec_images),
    }  # fmt: skip


def _asdict(cfg: Any) -> Any:
    from dataclasses import asdict

    return asdict(cfg)



# --------------------------------------------------------------------------- entry point


def build_parser(prog: str = "python -m faceveil.evaluate.run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate anonymization, recovery, security and utility against baselines.")
    add_arguments(p)
    return p



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="evaluation config (YAML), e.g. configs/eval/tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. output=runs/x data.limit=4")



def resolve_config_path(path: str) -> str:
    """A config path as given; a bare file name (no folder part, e.g. ``tiny.yaml``) that is not
    a file here is the packaged config of that name, so it works from any folder once faceveil is
    installed. Any other path that does not exist is a ``ConfigError`` (never silently another file)."""
    if Path(path).is_file():
        return path
    if Path(path).name == path:
        from importlib import resources

        packaged = resources.files("faceveil.configs").joinpath("eval", path)
        if packaged.is_file():
            return str(packaged)
        raise ConfigError(f"no such config file: {path} (neither here nor among the packaged configs/eval/*.yaml)")
    raise ConfigError(f"no such config file: {path}")



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_from_args(args.config, args.overrides)



def run_from_args(config: str, overrides: Sequence[str]) -> int:
    try:
        cfg = load_eval_config(resolve_config_path(config), list(overrides))
        metrics = run_evaluation(cfg)
    except FaceveilError as exc:
        print(f"faceveil evaluate: error: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.output)
    print(f"faceveil evaluate: {metrics['data']['probes']} faces, {len(metrics['methods'])} methods, {metrics['seconds']} s -> "
          f"{out / 'report.md'}, {out / 'metrics.json'}", file=sys.stderr)  # fmt: skip
    return 0



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
