"""Detect nonce reuse in a set of anonymized files.

Every faceveil file records, per face, its nonce and a check value of (key, nonce) (version 1:
the key's fingerprint); both are public. Two faces with the same nonce under the same key
have the same check value and share their key stream:
one known (original, anonymized) pair then opens the other (the security suite shows it),
and the sealed residuals share a cipher stream. :func:`scan_nonces` reads only the headers
and flags every (fingerprint, nonce) that occurs more than once.

Command line: ``python -m faceveil.evaluate.nonces FILE_OR_FOLDER...`` prints a summary and
exits with status 1 when it finds reuse.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from faceveil.errors import FaceveilError


@dataclass(frozen=True)
class NonceReuse:
    key_fingerprint: str
    nonce: str  # hex
    files: tuple[str, ...]


@dataclass
class NonceScan:
    files: int = 0
    with_metadata: int = 0
    without_metadata: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    reused: list[NonceReuse] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reused

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "with_metadata": self.with_metadata,
            "without_metadata": len(self.without_metadata),
            "unreadable": len(self.unreadable),
            "reused_nonces": len(self.reused),
            "files_sharing_a_nonce": sum(len(r.files) for r in self.reused),
            "reuse": [{"key_fingerprint": r.key_fingerprint, "nonce": r.nonce, "files": list(r.files)} for r in self.reused],
        }


def _expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*.png") if f.is_file()))
        else:
            out.append(p)
    return out


def scan_nonces(paths: Iterable[str | os.PathLike[str]]) -> NonceScan:
    """Scan files and folders (``*.png``, recursively) for repeated (key fingerprint, nonce)."""
    from faceveil.fileformat import read_header

    scan = NonceScan()
    seen: dict[tuple[str, str], list[str]] = {}
    for path in _expand(paths):
        scan.files += 1
        try:
            header = read_header(path)
        except (FaceveilError, OSError) as exc:
            scan.unreadable.append((str(path), str(exc)))
            continue
        if header is None:
            scan.without_metadata.append(str(path))
            continue
        try:
            if header.get("version") == 1:
                keys = [(str(header["key_fingerprint"]), str(header["nonce"]))]
            else:
                keys = [(str(f["check"]), str(f["nonce"])) for f in header["faces"]]
        except (KeyError, TypeError) as exc:
            scan.unreadable.append((str(path), f"header lacks {exc}"))
            continue
        scan.with_metadata += 1
        for key in keys:
            seen.setdefault(key, []).append(str(path))
    scan.reused = [NonceReuse(fp, nonce, tuple(files)) for (fp, nonce), files in seen.items() if len(files) > 1]
    return scan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faceveil.evaluate.nonces", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="anonymized files or folders")
    args = parser.parse_args(argv)
    scan = scan_nonces(args.paths)
    for path, reason in scan.unreadable:
        print(f"nonces: {path}: {reason}", file=sys.stderr)
    for r in scan.reused:
        print(f"REUSED nonce {r.nonce} under key {r.key_fingerprint}: {', '.join(r.files)}")
    print(
        f"{scan.files} files, {scan.with_metadata} with faceveil metadata, {len(scan.without_metadata)} without, "
        f"{len(scan.unreadable)} unreadable; {len(scan.reused)} reused nonces"
    )
    return 0 if scan.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
