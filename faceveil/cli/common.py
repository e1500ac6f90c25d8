"""Shared pieces of the CLI: model options, device choice, per-file error reporting."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from faceveil.cli.progress import progress  # noqa: F401 - the CLI's name
from faceveil.errors import escape
from faceveil.machine import apply_threads, default_backbone, default_threads  # noqa: F401 - the CLI's names

DEFAULT_BACKBONE = default_backbone()
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
    g.add_argument("--batch-size", type=positive_int, default=4, help="images per batch (default: 4)")
    g.add_argument(
        "--compile",
        action="store_true",
        help="run the UNet through torch.compile (minutes to compile; faster after). Its bits differ from "
        "the eager path's, so the file records the path and recovery follows it",
    )
    g.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for the networks (default: $OMP_NUM_THREADS if set, else the CPUs this process may use "
        "that other processes leave idle, shared among the processes of a launch)",
    )


def add_scheme_args(p: argparse.ArgumentParser) -> None:
    from faceveil.models.settings import SCHEMES, TRANSFORMS

    g = p.add_argument_group("inversion (defaults: an export's recorded settings, else exact / 50 / rotation)")
    g.add_argument("--scheme", choices=SCHEMES, help="inversion scheme")
    g.add_argument("--steps", type=positive_int, help="DDIM steps (exact needs >= 2)")
    g.add_argument(
        "--transform",
        choices=tuple(TRANSFORMS),
        help="key transform: rotation (keyed Givens rotations; hides magnitudes), shuffle (keyed permutation and "
        "signs; keeps the multiset of magnitudes), signflip (the published method's: INSECURE, only to reproduce it)",
    )


def resolve_settings(args: argparse.Namespace, backbone, residual: bool = False):  # -> Settings
    """Explicit options win, then the settings an export recorded, then the defaults.

    ``residual`` is off for commands that write files: version 3 files seal the original pixels,
    so the autoencoder residual, and the decode it costs, buy nothing there."""
    from faceveil.errors import InputError
    from faceveil.models.settings import Settings

    recorded = (backbone.extra or {}).get("settings") or {}
    default = Settings()
    try:
        return Settings(
            scheme=args.scheme or recorded.get("scheme", default.scheme),
            steps=args.steps or int(recorded.get("steps", default.steps)),
            transform=args.transform or recorded.get("transform", default.transform),
            residual=residual,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None


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
    import warnings

    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    # diffusers passes huggingface_hub a deprecated argument; the warning (with a site-packages
    # path) would break the one-line contract of our errors.
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)


@dataclass
class Report:
    """Counts outcomes and prints one line per failed input: ``faceveil CMD: PATH: reason``."""

    command: str
    ok: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    tampered: list[str] = field(default_factory=list)  # failed authentication: exit status 3
    left_visible: list[str] = field(default_factory=list)  # written with a found face left as it was: exit 1

    def fail(self, path: str | Path, reason: object) -> None:
        from faceveil.errors import TamperedError

        self.failed.append(str(path))
        if isinstance(reason, TamperedError):
            self.tampered.append(str(path))
        msg = str(reason)
        prefix = f"{path}: "
        line = msg if msg.startswith(prefix) else prefix + msg
        # File names and header strings are untrusted: a newline or an escape sequence in one
        # must not forge an output line or reach the terminal.
        print(f"faceveil {self.command}: {escape(line, None)}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        print(f"faceveil {self.command}: {escape(message, None)}", file=sys.stderr, flush=True)

    def finish(self, verb: str, outdir: Path) -> int:
        parts = [f"{verb} {self.ok}"]
        if self.skipped:
            parts.append(f"skipped {self.skipped}")
        parts.append(f"failed {len(self.failed)}")
        if self.left_visible:
            parts.append(f"with faces left visible {len(self.left_visible)}")
        print(f"faceveil {self.command}: {', '.join(parts)} -> {escape(outdir, None)}", file=sys.stderr)
        return self.status()

    def status(self) -> int:
        """0 all well; 3 a file failed authentication (edited pixels or metadata); 1 other failures,
        or an output written with a found face left visible."""
        from faceveil.errors import TAMPERED_EXIT

        return TAMPERED_EXIT if self.tampered else 1 if self.failed or self.left_visible else 0


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


def check_output_folder(inputs: list[str], outdir: Path, private: bool = False) -> None:
    """Refuse, before any work, an output folder that is an input folder or inside one, or
    the folder of an input file: the outputs would become inputs of the next run.

    ``private`` (recovered originals): also any folder inside an input file's folder, so an
    original never lands among the files meant for publishing."""
    from faceveil.errors import InputError

    if Path(outdir).exists() and not Path(outdir).is_dir():
        raise InputError(f"-o {outdir} is a file, not a folder")
    out = Path(outdir).resolve()
    for item in inputs:
        p = Path(item)
        folder = p.resolve() if p.is_dir() else p.parent.resolve()
        if out == folder or ((p.is_dir() or private) and folder in out.parents):
            what = "the input folder" if p.is_dir() else "the folder of the input"
            raise InputError(f"output folder {outdir} is {what} {item} or inside it; choose an -o outside it")


def is_mask_name(path: Path) -> bool:
    """NAME_mask.* or NAME.mask.*: a mask beside its photo."""
    return path.stem.endswith(("_mask", ".mask"))


def _below(folder: Path, outdir: Path) -> list[Path]:
    """The folders from ``outdir`` (exclusive) down to ``folder`` (inclusive)."""
    try:
        rel = folder.relative_to(outdir)
    except ValueError:
        return []
    return [outdir.joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts))]


def planned_outputs(inputs: list[str], outdir: Path, overwrite: bool, report: Report, skip=None, suffix: str = ".png"):
    """Yield (input, output) pairs. Refuse an output that is any input or that two inputs
    would share; skip outputs that exist unless ``overwrite``, and inputs for which
    ``skip(path)`` is true. No input at all is a failure."""
    pairs = [(src, root) for src, root in expand_inputs(inputs) if skip is None or not skip(src)]
    if not pairs:
        report.fail(" ".join(inputs), "no input images")
    input_paths = {src.resolve() for src, _ in pairs}
    taken: dict[Path, Path] = {}
    for src, root in pairs:
        dst = output_path(src, root, outdir, suffix)
        real = dst.resolve()
        if any(p.is_symlink() for p in _below(dst.parent, Path(outdir))):
            report.fail(src, f"output {dst} passes through a symbolic link under -o; faceveil does not follow it")
        elif real in input_paths:
            report.fail(src, f"output {dst} would overwrite an input; choose another -o")
        elif real in taken:
            # Checked before "exists": on a re-run the clash must fail again, not hide as a skip.
            report.fail(src, f"output {dst} is also the output of {taken[real]}; rename one of them")
        elif dst.exists() and not overwrite:
            taken[real] = src
            report.note(f"{src}: output {dst} exists, skipped (use --overwrite)")
            report.skipped += 1
        else:
            taken[real] = src
            yield src, dst


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def hub_source(spec: str) -> str | None:
    """The hub id a backbone spec downloads from, or None (tiny, random, a local folder, an export)."""
    from faceveil.models.backbones import LAYOUTS

    if Path(spec).is_dir():
        return None
    name, _, rest = spec.partition(":")
    layout = LAYOUTS.get(name)
    if layout is None or layout.pretrained is None or rest.startswith("random"):
        return None
    source = rest or layout.default_source
    return None if source is None or Path(source).exists() else source


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers a TCP connection within ``timeout`` (never when HF_HUB_OFFLINE)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_backbone_for_cli(spec: str, device, dtype):  # -> Backbone
    """load_backbone with load failures (missing files, no network) as one-line errors.

    Hub weights are looked up in the local cache first; when they are not there and
    the hub does not answer within seconds, one line names the offline choices."""
    from faceveil.errors import FaceveilError, InputError
    from faceveil.models.backbones import load_backbone

    def one_line(exc: BaseException) -> str:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__

    source = hub_source(spec)
    try:
        if source is None:
            return load_backbone(spec, device=device, dtype=dtype)
        try:
            return load_backbone(spec, device=device, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            if not hub_reachable():
                raise InputError(
                    f"backbone {spec!r}: the weights of {source} are not in the local cache and the hub is unreachable; "
                    f"offline choices: --backbone tiny (toy weights), --backbone {spec.partition(':')[0]}:/path/to/local/folder, "
                    "or an export folder from 'faceveil export'"
                ) from None
            del exc
            return load_backbone(spec, device=device, dtype=dtype)
    except FaceveilError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot load backbone {spec!r}: {one_line(exc)}") from None


MASK_SUFFIXES = ("_mask", ".mask", "")


def find_mask(src: Path, mask_arg: Path | None, shape: tuple[int, int]):  # -> np.ndarray
    """The mask for ``src``: a file for all inputs, NAME[_mask].png in a folder, or the default ellipse."""
    from faceveil.data.images import elliptical_mask, load_mask
    from faceveil.errors import InputError

    if mask_arg is None:
        return elliptical_mask(*shape)
    if mask_arg.is_dir():
        for suffix in MASK_SUFFIXES:
            for ext in (".png", ".jpg", ".bmp"):
                cand = mask_arg / f"{src.stem}{suffix}{ext}"
                if cand.is_file() and cand.resolve() != src.resolve():  # never the photo as its own mask
                    return load_mask(cand, shape)
        raise InputError(f"{src}: no mask named {src.stem}.png or {src.stem}_mask.png in {mask_arg}")
    return load_mask(mask_arg, shape)


def batches_by(items: list, key, batch_size: int) -> list[list]:
    """Split ``items`` into batches whose members share ``key(item)`` (e.g. image size), order kept."""
    groups: dict[object, list] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    size = max(1, batch_size)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def settle(bar, start: float, count: int) -> None:
    """Bring ``bar`` to exactly ``start + count`` after a batch, whatever it reported on the way."""
    bar.update(start + count - bar.n)


class Writer:
    """Writes outputs on worker threads while the next batch computes (PNG encoding, compression,
    the AEAD and the disk release the GIL). At most ``2 * workers`` writes wait, so memory stays
    bounded; :meth:`close` waits for the rest. Each write's outcome goes to the report."""

    def __init__(self, report: Report, workers: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.report = report
        self.limit = 2 * workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="faceveil-write")
        self._pending: list = []

    def submit(self, src: str | Path, fn, *args) -> None:
        self._pending.append((src, self._pool.submit(fn, *args)))
        while len(self._pending) > self.limit:
            self._collect(*self._pending.pop(0))

    def _collect(self, src, future) -> None:
        from faceveil.errors import FaceveilError

        try:
            future.result()
            self.report.ok += 1
        except (FaceveilError, OSError, ValueError) as exc:
            self.report.fail(src, exc)

    def close(self) -> None:
        for src, future in self._pending:
            self._collect(src, future)
        self._pending.clear()
        self._pool.shutdown()
