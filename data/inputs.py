"""Turning the command line's inputs into an ordered list of photos with identity labels.

An input is a folder (searched recursively, sorted), a photo file, or a list
file (``.txt``, ``.lst``, ``.list``: one path per line, ``#`` comments, paths
relative to the list file's folder). The order is deterministic: inputs in the
order given, files sorted inside each folder, duplicates dropped.

Identity labels (``labels="folder"``): the name of the folder a photo is in,
as in LFW (``lfw/George_W_Bush/George_W_Bush_0001.jpg``) and in identity-folder
layouts; photos lying directly in a given input folder, and photo files given
one by one, have no label (``""``). ``identity_file`` (CelebA's
``identity_CelebA.txt``: ``000001.jpg 2880`` per line) overrides it by file name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from faceveil.data.images import iter_image_files
from faceveil.errors import InputError

LIST_SUFFIXES: frozenset[str] = frozenset({".txt", ".lst", ".list"})
LABEL_MODES: tuple[str, ...] = ("folder", "none")


@dataclass(frozen=True)
class Photo:
    index: int  # position in the whole input list: the key's source index
    path: str  # as found (relative to the working folder when the input was)
    relpath: str  # inside its input folder or list file
    label: str


def read_identity_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``NAME LABEL`` per line (CelebA identity files); header lines with one token are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the identity file ({exc.strerror or exc})") from None
    table = {}
    for line in lines:
        tokens = line.split()
        if len(tokens) == 2:
            table[Path(tokens[0]).name] = tokens[1]
    if not table:
        raise InputError(f"{path}: no 'NAME LABEL' lines found")
    return table


def _read_list(path: Path) -> list[tuple[Path, str]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the list file ({exc.strerror or exc})") from None
    entries = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            entries.append((p if p.is_absolute() else path.parent / p, line))
    return entries


def collect_photos(
    inputs: list[str | os.PathLike[str]],
    labels: str = "folder",
    identity_file: str | os.PathLike[str] | None = None,
) -> tuple[list[Photo], list[str]]:
    """The photos, and the inputs that do not exist (to be reported as rejects)."""
    if labels not in LABEL_MODES:
        raise InputError(f"unknown label mode {labels!r}; choose one of {', '.join(LABEL_MODES)}")
    identities = read_identity_file(identity_file) if identity_file else None
    found: list[tuple[Path, str, str]] = []  # path, relpath, folder label
    missing: list[str] = []
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            for f in iter_image_files([root]):
                rel = f.relative_to(root)
                found.append((f, rel.as_posix(), rel.parent.name if len(rel.parts) > 1 else ""))
        elif root.is_file() and root.suffix.lower() in LIST_SUFFIXES:
            for f, written in _read_list(root):
                found.append((f, written, Path(written).parent.name))
        elif root.exists():
            found.append((root, root.name, ""))
        else:
            missing.append(str(item))
    photos, seen = [], set()
    for path, rel, folder_label in found:
        resolved = os.path.realpath(path)
        if resolved in seen:
            continue
        seen.add(resolved)
        if identities is not None:
            label = identities.get(path.name, "")
        else:
            label = folder_label if labels == "folder" else ""
        photos.append(Photo(index=len(photos), path=str(path), relpath=rel, label=label))
    return photos, missing
