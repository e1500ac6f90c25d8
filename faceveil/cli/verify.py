"""faceveil verify FILE... --key KEYFILE: authenticate anonymized files without recovering them."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check that files were made with this key and not edited since (metadata, sealed records, every pixel, "
        "every PNG chunk)",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help="anonymized PNGs, published images with a .fvrec record, or folders")
    p.add_argument("--key", required=True, type=Path, help="the key file used to anonymize")
    p.set_defaults(func=run)


def verify_one(src: Path, key) -> str:
    """What ``src`` is, in plain words, once it verified; raises FaceveilError when it does not."""
    from faceveil.errors import FormatError
    from faceveil.fileformat.original import file_version, has_sidecar, open_original

    from faceveil.video import VIDEO_SUFFIXES

    if src.suffix.lower() in VIDEO_SUFFIXES:
        raise FormatError(f"{src}: verifying videos is not supported yet; 'faceveil recover' checks a video against its "
                          "record (NAME.fvvid) and exits 3 when either was edited")
    sidecar = has_sidecar(src)
    version = 3 if sidecar else file_version(src)
    if version == 3:
        o = open_original(src, key)
        faces = f"{o.faces} face{'s' if o.faces != 1 else ''}"
        if sidecar:
            tail = "faces exact, the rest as published (lossy image)" if o.lossy else "restores the original bit for bit"
            return f"ok ({faces}, version 3 with a sidecar record; {tail})"
        return f"ok ({faces}, version 3; restores the original bit for bit)"
    if version is None:
        raise FormatError(f"{src}: cannot be authenticated: it carries no faceveil record (stripped or re-encoded?); "
                          "faces anonymized with --pixel-recovery still come back approximately with 'faceveil recover'")
    from faceveil.fileformat import verify_file

    vf = verify_file(src, key)
    n = vf.face_count
    faces = f"{n} face{'s' if n != 1 else ''}"
    return f"ok ({faces}, version {vf.version}; recovery replays the model: exact only on the kind of machine that made it)"


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every file verifies, 3 when one was edited, 1 for other failures (wrong key, unreadable)."""
    from faceveil.cli.common import Report, expand_inputs
    from faceveil.errors import FaceveilError, escape
    from faceveil.keys import load_key

    report = Report("verify")
    key = load_key(args.key)
    files = [src for src, _ in expand_inputs(args.inputs)]
    if not files:
        report.fail(" ".join(args.inputs), "no input images")
    for src in files:
        try:
            what = verify_one(src, key)
        except (FaceveilError, OSError, ValueError) as exc:
            report.fail(src, exc)
            continue
        report.ok += 1
        print(f"{escape(src, None)}: {what}")
    print(f"faceveil verify: verified {report.ok}, failed {len(report.failed)}", flush=True)
    return report.status()
