"""The bookkeeping of a data-set job over shards, in one or many processes.

A job turns input shards (webdataset tars written by ``faceveil prepare``) or an
image folder (cut into fixed slices of ``images_per_shard`` files) into output
shards of the same names, one output per input. Shards are split by process rank
(``shards[rank::world]``, as ``webdataset.split_by_node`` does) and then by reader
worker, so every input is read by exactly one reader.

Resuming: an output shard is written to a temporary name and renamed when complete;
then ``.job/<name>.json`` records the settings fingerprint, the input's stamp, the
tar's size and the failures. A re-run skips every shard whose record matches, so a
kill loses at most the shards in progress and never duplicates a sample.

Progress across ranks: each rank writes ``.job/progress-<rank>.json`` now and then;
rank 0 shows the sum and, at the end, waits for every rank to finish.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from faceveil.data.shards import DecodedSample, SHARD_NAME, _readable, decode_sample, read_index, shard_paths, write_json

STATE_DIR = ".job"


@dataclass(frozen=True)
class WorkShard:
    name: str  # output (and, for shard inputs, input) file name
    source: str  # input tar path, or "" for a slice of a folder
    files: tuple[str, ...] = ()  # folder inputs: the image paths of this slice
    first: int = 0  # folder inputs: index of files[0] in the sorted folder
    expected: int = -1  # samples expected (-1: unknown)

    def stamp(self) -> str:
        """Digest of what the shard reads (paths, sizes, mtimes)."""
        h = hashlib.sha256()
        for p in (self.source,) if self.source else self.files:
            try:
                st = os.stat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\0missing\n".encode())
        return h.hexdigest()


@dataclass
class Failure:
    key: str
    reason: str  # a short fixed phrase, counted in the summary
    detail: str


def plan_shards(source: str | os.PathLike[str], images_per_shard: int) -> list[WorkShard]:
    """The work list for a shard folder (its ``index.json`` or ``shard-*.tar``) or an image folder."""
    from faceveil.data.images import iter_image_files
    from faceveil.errors import InputError

    folder = Path(source)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of shards or images")
    tars = shard_paths(folder)
    if tars:
        counts: dict[str, int] = {}
        if (folder / "index.json").is_file():
            counts = {s["name"]: int(s["samples"]) for s in read_index(folder)["shards"]}
        return [WorkShard(t.name, str(t), expected=counts.get(t.name, -1)) for t in tars]
    files = [str(f) for f in iter_image_files([folder])]
    if not files:
        raise InputError(f"{folder}: no shards (shard-NNNNNN.tar) and no images")
    n = max(1, images_per_shard)
    return [
        WorkShard(SHARD_NAME.format(k), "", tuple(files[i : i + n]), i, len(files[i : i + n]))
        for k, i in enumerate(range(0, len(files), n))
    ]


def split(shards: list[WorkShard], rank: int, world: int) -> list[WorkShard]:
    return shards[rank::world]


def read_work_shard(ws: WorkShard, mask_fn) -> Iterator[DecodedSample | Failure]:  # noqa: ANN001
    """The samples of one shard in order; unreadable ones become failures, never exceptions."""
    if ws.source:
        import webdataset as wds

        errors: list[BaseException] = []
        stream = wds.DataPipeline(wds.SimpleShardList([ws.source]), wds.tarfile_to_samples(handler=lambda e: errors.append(e) or True))
        for raw in stream:
            try:
                yield decode_sample(raw)
            except Exception as exc:  # noqa: BLE001 - a bad sample must not stop the shard
                yield Failure(str(raw.get("__key__", "?")), "unreadable sample", f"{exc.__class__.__name__}: {exc}")
        for exc in errors:
            yield Failure("-", "unreadable shard", f"{exc.__class__.__name__}: {exc}")
        return
    from faceveil.data.images import load_image

    for i, path in enumerate(ws.files, start=ws.first):
        key = f"{i:08d}"
        try:
            image = load_image(path)
            yield DecodedSample(key, image, mask_fn(Path(path), image.shape[:2]), {"source_index": i, "size": image.shape[0]})
        except Exception as exc:  # noqa: BLE001
            yield Failure(key, "unreadable sample", f"{exc.__class__.__name__}: {exc}")


class ShardReader(torch.utils.data.IterableDataset):
    """Yields (shard position, chunk of up to ``chunk`` samples/failures, last chunk?) for the
    shards of this rank, split again among DataLoader workers."""

    def __init__(self, shards: list[WorkShard], chunk: int, mask_fn) -> None:  # noqa: ANN001
        self.shards, self.chunk, self.mask_fn = shards, chunk, mask_fn

    def __iter__(self):  # noqa: ANN204
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for pos in range(worker, len(self.shards), workers):
            buf: list[DecodedSample | Failure] = []
            for item in read_work_shard(self.shards[pos], self.mask_fn):
                buf.append(item)
                if len(buf) == self.chunk:
                    yield pos, buf, False
                    buf = []
            yield pos, buf, True


def passthrough(item):  # noqa: ANN001, ANN201 - DataLoader collate: keep items as they are
    return item


class TarSink:
    """An output tar streamed to a temporary name and renamed into place when complete."""

    def __init__(self, path: Path) -> None:
        import webdataset as wds

        self.path = path
        self.tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
        self._stream = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._sink = wds.TarWriter(self._stream, mtime=0.0, user="faceveil", group="faceveil", mode=0o644)
        self.count = 0

    def write(self, sample: dict[str, Any]) -> None:
        self._sink.write(sample)
        self.count += 1

    def commit(self) -> int:
        self._sink.close()  # closes the stream too
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        _readable(self.tmp)
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size


def clean_partials(outdir: Path, shards: list[WorkShard]) -> None:
    """Remove temporary tars a killed run left for these shards."""
    for ws in shards:
        for tmp in outdir.glob(f".{ws.name}.part-*"):
            tmp.unlink(missing_ok=True)


def record_path(outdir: Path, name: str) -> Path:
    return outdir / STATE_DIR / (Path(name).stem + ".json")


def load_record(outdir: Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(outdir, name).read_text())
    except (OSError, ValueError):
        return None


def is_done(outdir: Path, ws: WorkShard, fingerprint: str) -> bool:
    rec = load_record(outdir, ws.name)
    tar = outdir / ws.name
    return (
        rec is not None
        and rec.get("settings") == fingerprint
        and rec.get("inputs") == ws.stamp()
        and tar.is_file()
        and tar.stat().st_size == rec.get("tar_bytes")
    )


def write_record(outdir: Path, ws: WorkShard, fingerprint: str, tar_bytes: int, samples: int, failures: list[Failure], rank: int) -> None:
    write_json(record_path(outdir, ws.name), {
        "settings": fingerprint, "inputs": ws.stamp(), "tar_bytes": tar_bytes, "samples": samples, "rank": rank,
        "failures": [[f.key, f.reason, f.detail] for f in failures],
    })


@dataclass
class ProgressBoard:
    """This rank's progress on disk; rank 0 reads everybody's."""

    outdir: Path
    rank: int
    world: int
    done: float = 0.0
    _last: float = field(default=0.0, repr=False)
    _seen: tuple[float, tuple[float, bool]] | None = field(default=None, repr=False)

    def _path(self, rank: int) -> Path:
        return self.outdir / STATE_DIR / f"progress-{rank}.json"

    def reset(self) -> None:
        self._path(self.rank).unlink(missing_ok=True)

    def add(self, n: float, finished: bool = False, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or finished or now - self._last > 1.0:
            self._last = now
            write_json(self._path(self.rank), {"done": self.done, "finished": finished})

    def others(self) -> tuple[float, bool]:
        """(samples done by the other ranks, whether all of them finished); read at most once a second."""
        now = time.monotonic()
        if self._seen is not None and now - self._seen[0] < 1.0:
            return self._seen[1]
        total, finished = 0.0, True
        for r in range(self.world):
            if r == self.rank:
                continue
            try:
                doc = json.loads(self._path(r).read_text())
            except (OSError, ValueError):
                finished = False
                continue
            total += float(doc.get("done", 0.0))
            finished &= bool(doc.get("finished"))
        self._seen = (now, (total, finished))
        return total, finished
