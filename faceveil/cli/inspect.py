"""faceveil inspect FILE: print the public metadata as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print an anonymized file's public metadata as JSON (nothing sealed)")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faceveil.errors import FormatError
    from faceveil.fileformat import read_header

    header = read_header(args.file) if args.file.is_file() else None
    if header is None:
        raise FormatError(f"{args.file}: no faceveil metadata" if args.file.is_file() else f"{args.file}: no such file")
    # JSON escapes control characters, so a crafted header cannot forge terminal output.
    print(json.dumps(header, indent=2, ensure_ascii=True))
    return 0
