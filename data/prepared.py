"""Reading ``faceveil prepare``'s output back as (name, aligned face, mask) for anonymization.

``faceveil anonymize PREPARED_DIR -o OUT --key KEY`` takes a folder written by
``prepare`` (it holds ``index.json``) and anonymizes every aligned face with the
mask stored beside it in the shard; outputs are named ``OUT/<sample key>.png``.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from faceveil.data.shards import INDEX_NAME, DecodedSample, decode_sample, shard_paths
from faceveil.errors import InputError


def is_prepared_folder(path: str | os.PathLike[str]) -> bool:
    return Path(path).is_dir() and (Path(path) / INDEX_NAME).is_file()


def iter_prepared(folder: str | os.PathLike[str]) -> Iterator[DecodedSample]:
    """Samples of every shard of ``folder``, in shard order."""
    for shard in shard_paths(folder):
        try:
            with tarfile.open(shard) as tar:
                groups: dict[str, dict[str, object]] = {}
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, field = Path(member.name).name.partition(".")
                    f = tar.extractfile(member)
                    if f is not None:
                        groups.setdefault(key, {"__key__": key, "__url__": str(shard)})[field] = f.read()
        except (OSError, tarfile.TarError) as exc:
            raise InputError(f"{shard}: unreadable shard ({exc.__class__.__name__})") from None
        for sample in groups.values():
            yield decode_sample(sample)


def prepared_count(folder: str | os.PathLike[str]) -> int:
    """Samples in a prepared folder, from its index."""
    from faceveil.data.shards import read_index

    return sum(int(s.get("samples", 0)) for s in read_index(folder).get("shards", []))
