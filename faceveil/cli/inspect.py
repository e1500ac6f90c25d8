"""faceveil inspect FILE_OR_FOLDER...: print each anonymized file's public metadata as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print anonymized files' public metadata as JSON (nothing sealed)")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="anonymized PNGs, sidecar records (.fvrec) or folders")
    p.set_defaults(func=run)


def _header(src: Path) -> dict | None:
    from faceveil.errors import FormatError
    from faceveil.fileformat import read_header
    from faceveil.fileformat.sidecar import SUFFIX, read_sidecar_header, sidecar_path

    if src.suffix == SUFFIX:
        return read_sidecar_header(src)
    if sidecar_path(src).is_file():
        return read_sidecar_header(sidecar_path(src))
    if not src.is_file():
        raise FormatError(f"{src}: no such file")
    return read_header(src)


def run(args: argparse.Namespace) -> int:
    """One JSON document per file: ``{"file": ..., "header": ...}``, or one line per file that has none."""
    from faceveil.cli.common import Report, expand_inputs
    from faceveil.errors import FaceveilError, escape

    report = Report("inspect")
    files = [src for src, _ in expand_inputs(args.inputs)] + [
        f for item in args.inputs if Path(item).is_dir() for f in sorted(Path(item).rglob("*.fvrec")) if f.is_file()
    ]
    if not files:
        report.fail(" ".join(args.inputs), "no input files")
    for src in files:
        try:
            header = _header(src)
            if header is None:
                raise FaceveilError(f"{src}: no faceveil metadata")
        except (FaceveilError, OSError, ValueError) as exc:
            report.fail(src, exc)
            continue
        report.ok += 1
        # JSON escapes control characters, so a crafted header cannot forge terminal output.
        doc = header if len(args.inputs) == 1 and Path(args.inputs[0]).is_file() else {"file": escape(src, None), "header": header}
        print(json.dumps(doc, indent=2, ensure_ascii=True))
    return report.status()
