"""``faceveil prepare`` as a library call: photos in, webdataset shards out.

:func:`prepare` splits the ordered photo list into fixed slices of
``images_per_shard`` photos; slice ``k`` becomes ``shard-{k:06d}.tar``, so a
shard's content depends only on its photos and the settings, never on worker
scheduling. Photos are processed in ``workers`` processes (each with its own
detector) and written in order by the calling process.

Resuming: after a shard is written, ``.prepare/shard-NNNNNN.json`` records the
settings fingerprint, a digest of its photos (path, size, mtime, label) and
its rejects. A re-run skips every shard whose record matches; ``index.json``
and ``rejects.tsv`` are then rebuilt from all records.

Nothing about one photo can stop the run: unreadable files, failing
detections and policy skips become rows of ``rejects.tsv``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceveil.data.extract import ExtractConfig, FaceExtractor, Reject
from faceveil.data.images import load_image
from faceveil.data.inputs import Photo, collect_photos
from faceveil.data.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    REJECTS_NAME,
    SHARD_GLOB,
    SHARD_NAME,
    encode_sample,
    sample_key,
    write_json,
    write_rejects,
    write_tar,
)
from faceveil.errors import FaceveilError, InputError

STATE_DIR = ".prepare"


@dataclass
class PhotoResult:
    samples: list[dict[str, Any]]
    rejects: list[Reject]
    faces_found: int
    seconds: float


@dataclass
class PrepareReport:
    out_dir: Path
    photos: int  # in the input list
    processed: int  # photos processed by this run (the rest were in finished shards)
    shards: int
    shards_skipped: int  # finished shards found and kept
    samples: int  # samples in all shards
    faces_found: int  # faces detected in all photos
    rejects: list[Reject]
    seconds: float  # wall time of this run
    work_seconds: float  # summed per-photo processing time of this run
    stale_shards: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(r.kind == "error" for r in self.rejects)

    def reasons(self) -> dict[str, int]:
        """Rejects counted by the reason's leading phrase."""
        return dict(collections.Counter(_reason_category(r.reason) for r in self.rejects).most_common())


def _reason_category(reason: str) -> str:
    return re.split(r" \(|;|:", reason, maxsplit=1)[0].strip()


# ----------------------------------------------------------------------------- per photo

_EXTRACTOR: FaceExtractor | None = None


def _init_worker(config: ExtractConfig) -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    global _EXTRACTOR
    _EXTRACTOR = FaceExtractor(config)


def _strip_source(reason: str, source: str) -> str:
    prefix = f"{source}: "
    return reason[len(prefix) :] if reason.startswith(prefix) else reason


def process_photo(photo: Photo, extractor: FaceExtractor | None = None) -> PhotoResult:
    """Read, detect, align and encode one photo; never raises for a bad photo."""
    extractor = extractor or _EXTRACTOR
    assert extractor is not None, "worker not initialised"
    start = time.perf_counter()
    try:
        image = load_image(photo.path)
        faces, rejects, found = extractor.extract(image, photo.path)
        samples = []
        for face in faces:
            meta = dict(face.meta, source=photo.path, relpath=photo.relpath, source_index=photo.index, label=photo.label)
            samples.append(encode_sample(sample_key(photo.index, face.face_index), face.image, face.mask, meta))
    except FaceveilError as exc:
        samples, found = [], 0
        rejects = [Reject(photo.path, None, "error", _strip_source(str(exc), photo.path))]
    except Exception as exc:  # noqa: BLE001 - one broken photo must not stop a data set
        samples, found = [], 0
        rejects = [Reject(photo.path, None, "error", f"{exc.__class__.__name__}: {exc}")]
    return PhotoResult(samples, rejects, found, time.perf_counter() - start)


def _ordered_map(fn: Callable[[Photo], PhotoResult], photos: list[Photo], pool: ProcessPoolExecutor | None, window: int) -> Iterator[PhotoResult]:
    """Results in input order, with at most ``window`` photos in flight (bounded memory)."""
    if pool is None:
        for photo in photos:
            yield fn(photo)
        return
    pending: collections.deque[Future[PhotoResult]] = collections.deque()
    it = iter(photos)
    for photo in it:
        pending.append(pool.submit(fn, photo))
        if len(pending) >= window:
            break
    while pending:
        yield pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))


# ----------------------------------------------------------------------------- resume records


def _settings(config: ExtractConfig, images_per_shard: int, labels: str, identity_file: str | None) -> dict[str, Any]:
    return {"extract": config.to_dict(), "images_per_shard": images_per_shard, "labels": labels, "identity_file": identity_file, "version": FORMAT_VERSION}


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _inputs_digest(photos: list[Photo]) -> str:
    h = hashlib.sha256()
    for p in photos:
        try:
            st = os.stat(p.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{p.index}\0{p.path}\0{p.relpath}\0{p.label}\0{stamp}\n".encode())
    return h.hexdigest()


def _load_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_done(record: dict[str, Any] | None, tar: Path, fingerprint: str, digest: str) -> bool:
    return (
        record is not None
        and record.get("settings") == fingerprint
        and record.get("inputs") == digest
        and tar.is_file()
        and tar.stat().st_size == record.get("tar_bytes")
    )


def _reject_row(r: Reject) -> list[Any]:
    return [r.source, r.face, r.kind, r.reason]


# ----------------------------------------------------------------------------- the run


def _write_shard(
    tar: Path,
    photos: list[Photo],
    results: Iterator[PhotoResult],
    bar: Any,
    on_error: Callable[[Reject], None] | None,
) -> dict[str, Any]:
    """Consume one result per photo of this shard, streaming its samples into ``tar``."""
    rejects: list[Reject] = []
    stats = {"faces_found": 0, "seconds": 0.0}

    def samples() -> Iterator[dict[str, Any]]:
        for _ in photos:
            result = next(results)
            bar.update(1)
            stats["faces_found"] += result.faces_found
            stats["seconds"] += result.seconds
            for r in result.rejects:
                rejects.append(r)
                if r.kind == "error" and on_error:
                    on_error(r)
            yield from result.samples

    count = write_tar(tar, samples())
    return {
        "name": tar.name,
        "samples": count,
        "images": len(photos),
        "faces_found": stats["faces_found"],
        "seconds": stats["seconds"],
        "tar_bytes": tar.stat().st_size,
        "rejects": [_reject_row(r) for r in rejects],
    }


def prepare(
    inputs: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: ExtractConfig | None = None,
    *,
    images_per_shard: int = 1000,
    workers: int = 1,
    labels: str = "folder",
    identity_file: str | os.PathLike[str] | None = None,
    progress: bool = True,
    on_error: Callable[[Reject], None] | None = None,
) -> PrepareReport:
    """Detect, align and mask the faces of ``inputs`` into shards in ``out_dir``.

    ``on_error`` is called with each ``error`` reject as it happens (the CLI
    prints them). Raises :class:`InputError` only for problems with the run
    itself (no photos, a missing model); never for a single bad photo.
    """
    from tqdm import tqdm

    config = config or ExtractConfig()
    if images_per_shard < 1:
        raise InputError("images per shard must be at least 1")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    photos, missing = collect_photos(list(inputs), labels=labels, identity_file=identity_file)
    missing_rejects = [Reject(m, None, "error", "no such file or folder") for m in missing]
    if not photos:
        raise InputError("no photos found in " + ", ".join(str(i) for i in inputs))
    for r in missing_rejects:
        if on_error:
            on_error(r)
    settings = _settings(config, images_per_shard, labels, str(identity_file) if identity_file else None)
    fingerprint = _fingerprint(settings)
    slices = [photos[i : i + images_per_shard] for i in range(0, len(photos), images_per_shard)]
    state_dir = out / STATE_DIR
    digests = [_inputs_digest(s) for s in slices]
    records = [_load_record(state_dir / f"shard-{k:06d}.json") for k in range(len(slices))]
    todo = [k for k in range(len(slices)) if not _is_done(records[k], out / SHARD_NAME.format(k), fingerprint, digests[k])]

    start = time.perf_counter()
    work_seconds = 0.0
    todo_photos = [p for k in todo for p in slices[k]]
    # Build one extractor here first: a missing model fails the run now, with
    # one clear message, instead of inside every worker.
    local = FaceExtractor(config) if todo_photos else None
    n_workers = max(1, min(workers, len(todo_photos)))
    pool = None
    if n_workers > 1:
        pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(config,))
    try:
        fn = (lambda p: process_photo(p, local)) if pool is None else process_photo
        results = _ordered_map(fn, todo_photos, pool, window=4 * n_workers)
        with tqdm(total=len(todo_photos), unit="img", desc="prepare", disable=not progress, dynamic_ncols=True) as bar:
            for k in todo:
                records[k] = _write_shard(out / SHARD_NAME.format(k), slices[k], results, bar, on_error)
                records[k]["settings"], records[k]["inputs"] = fingerprint, digests[k]
                work_seconds += records[k].pop("seconds")
                write_json(state_dir / f"shard-{k:06d}.json", records[k])
    except BrokenProcessPool:
        raise FaceveilError("a worker process died (out of memory?); finished shards are kept, re-run to resume") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - start

    all_rejects = list(missing_rejects)
    for record in records:
        assert record is not None
        all_rejects += [Reject(src, face, kind, reason) for src, face, kind, reason in record["rejects"]]
    shards = [{"name": r["name"], "samples": r["samples"], "images": r["images"], "faces_found": r["faces_found"]} for r in records if r]
    total = sum(s["samples"] for s in shards)
    faces_found = sum(s["faces_found"] for s in shards)
    index = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "settings": settings,
        "shards": shards,
        "samples": total,
        "photos": len(photos),
        "faces_found": faces_found,
        "rejects": len(all_rejects),
    }
    write_json(out / INDEX_NAME, index)
    write_rejects(out / REJECTS_NAME, [_reject_row(r) for r in all_rejects])
    names = {s["name"] for s in shards}
    stale = sorted(p.name for p in out.glob(SHARD_GLOB) if p.name not in names)
    return PrepareReport(
        out_dir=out,
        photos=len(photos),
        processed=len(todo_photos),
        shards=len(slices),
        shards_skipped=len(slices) - len(todo),
        samples=total,
        faces_found=faces_found,
        rejects=all_rejects,
        seconds=seconds,
        work_seconds=work_seconds,
        stale_shards=stale,
    )
