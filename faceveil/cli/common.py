"""Shared pieces of the CLI: model options, device choice, per-file error reporting."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BACKBONE = os.environ.get("FACEVEIL_BACKBONE", "sd2-inpaint")
DTYPES = ("auto", "float32", "float16", "bfloat16")


def add_model_args(p: argparse.ArgumentParser, backbone_default: str | None = DEFAULT_BACKBONE) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        default=backbone_default,
        help="backbone name (tiny, sd2-inpaint, ldm-ffhq), NAME:HUB_ID_OR_FOLDER, NAME:random[:SEED], "
        f"or an export folder (default: {backbone_default or 'the one recorded in the file'})",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    g.add_argument("--dtype", default="auto", choices=DTYPES, help="UNet/autoencoder dtype (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4)")


def add_scheme_args(p: argparse.ArgumentParser) -> None:
    from faceveil.models.settings import SCHEMES, TRANSFORMS

    g = p.add_argument_group("inversion")
    g.add_argument("--scheme", default="exact", choices=SCHEMES, help="inversion scheme (default: exact)")
    g.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    g.add_argument("--transform", default="shuffle", choices=tuple(TRANSFORMS), help="key transform (default: shuffle)")


def resolve_device(name: str):  # -> torch.device
    import torch

    if name == "auto":
        from accelerate import PartialState

        return PartialState().device
    return torch.device(name)


def resolve_dtype(name: str, device):  # -> torch.dtype
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def quiet_libraries() -> None:
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()


@dataclass
class Report:
    """Counts outcomes and prints one line per failed input: ``faceveil CMD: PATH: reason``."""

    command: str
    ok: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)

    def fail(self, path: str | Path, reason: object) -> None:
        self.failed.append(str(path))
        msg = str(reason)
        prefix = f"{path}: "
        print(f"faceveil {self.command}: {msg if msg.startswith(prefix) else prefix + msg}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        print(f"faceveil {self.command}: {message}", file=sys.stderr, flush=True)

    def finish(self, verb: str, outdir: Path) -> int:
        parts = [f"{verb} {self.ok}"]
        if self.skipped:
            parts.append(f"skipped {self.skipped}")
        parts.append(f"failed {len(self.failed)}")
        print(f"faceveil {self.command}: {', '.join(parts)} -> {outdir}", file=sys.stderr)
        return 1 if self.failed else 0


def output_path(src: Path, root: Path | None, outdir: Path, suffix: str = ".png") -> Path:
    """OUTDIR/<name>.png for a file given directly; OUTDIR/<path relative to the folder> for folder inputs."""
    rel = src.relative_to(root) if root is not None else Path(src.name)
    return (outdir / rel).with_suffix(suffix)


def expand_inputs(inputs: list[str]) -> list[tuple[Path, Path | None]]:
    """(file, folder it came from or None) for files and folders given on the command line."""
    from faceveil.data.images import iter_image_files

    out: list[tuple[Path, Path | None]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend((f, p) for f in iter_image_files([p]))
        else:
            out.append((p, None))
    return out


def planned_outputs(inputs: list[str], outdir: Path, overwrite: bool, report: Report):
    """Yield (input, output) pairs; refuse outputs that are an input, skip existing ones."""
    for src, root in expand_inputs(inputs):
        dst = output_path(src, root, outdir)
        if same_file(src, dst):
            report.fail(src, "output would overwrite the input; choose another -o")
        elif dst.exists() and not overwrite:
            report.note(f"{dst}: exists, skipped (use --overwrite)")
            report.skipped += 1
        else:
            yield src, dst


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def batches_by(items: list, key, batch_size: int) -> list[list]:
    """Split ``items`` into batches whose members share ``key(item)`` (e.g. image size), order kept."""
    groups: dict[object, list] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    size = max(1, batch_size)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=total <= 1 or None)
