"""faceveil verify FILE... --key KEYFILE: authenticate anonymized files without recovering them."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check that files were made with this key and not edited since (metadata, sealed records, every pixel)",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help="anonymized PNGs or folders")
    p.add_argument("--key", required=True, type=Path, help="the key file used to anonymize")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every file verifies, 3 when one was edited, 1 for other failures (wrong key, unreadable)."""
    from faceveil.cli.common import Report, expand_inputs
    from faceveil.errors import FaceveilError
    from faceveil.fileformat import verify_file
    from faceveil.keys import load_key

    report = Report("verify")
    key = load_key(args.key)
    files = [src for src, _ in expand_inputs(args.inputs)]
    if not files:
        report.fail(" ".join(args.inputs), "no input images")
    for src in files:
        try:
            vf = verify_file(src, key)
        except FaceveilError as exc:
            report.fail(src, exc)
            continue
        report.ok += 1
        print(f"{src}: ok ({len(vf.records)} face{'s' if len(vf.records) != 1 else ''}, version {vf.header['version']})")
    print(f"faceveil verify: verified {report.ok}, failed {len(report.failed)}", flush=True)
    return report.status()
