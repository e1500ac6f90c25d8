"""faceveil anonymize-shards INPUT -o OUTDIR --key KEYFILE: anonymize a data set, in one or many processes.

INPUT is a shard folder written by ``faceveil prepare`` or a folder of aligned face
images (default elliptical masks). Each input shard becomes an output shard of the
same name whose samples hold ``image.png`` (the anonymized faceveil PNG, with its
public recovery record and sealed data: ``faceveil recover`` opens it once extracted),
``mask.png`` and ``meta.json`` (only the fields in ``--keep-meta``: a source path
or an identity label would defeat the anonymization).

Many processes: ``torchrun --nproc_per_node N -m faceveil.cli anonymize-shards ...``
or ``accelerate launch --multi_gpu --num_processes N -m faceveil.cli anonymize-shards ...``
(see the README for CPU and multi-node notes). See :mod:`faceveil.data.shard_job`
for the split, the resume records and the progress files.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from faceveil.cli.common import (
    add_model_args,
    add_scheme_args,
    batches_by,
    find_mask,
    load_backbone_for_cli,
    positive_int,
    quiet_libraries,
    resolve_dtype,
    resolve_settings,
)

DEFAULT_META = ("size", "face_index", "source_index", "faces_in_source", "detector", "mask_source", "outside_fraction", "landmarks5")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anonymize-shards", help="anonymize a data set of shards or a folder, resumable, on many processes")
    p.add_argument("input", metavar="INPUT", help="shard folder from 'faceveil prepare', or a folder of aligned face images")
    p.add_argument("-o", "--output", required=True, type=Path, help="output shard folder")
    p.add_argument("--key", required=True, type=Path, help="key file from 'faceveil keygen'")
    p.add_argument("--mask", type=Path, help="folder inputs: mask folder (NAME.png, NAME_mask.png); default: an ellipse")
    p.add_argument("--images-per-shard", type=positive_int, default=1000, help="folder inputs: images per output shard (default 1000)")
    p.add_argument("--keep-meta", default=",".join(DEFAULT_META), metavar="FIELDS",
                   help="comma-separated meta.json fields to carry over (default: %(default)s); 'label' or 'source' reveal identity")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="reader processes per rank (0: read in the main process; default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_scheme_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def _rank() -> tuple[int, int, int]:
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def _device(name: str, local_rank: int):  # -> torch.device
    import torch

    if name != "auto":
        return torch.device(name)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _fingerprint(backbone, settings, key, keep: list[str], dtype) -> str:  # noqa: ANN001
    doc = {"backbone": backbone.spec, "adapter": backbone.adapter_hash, "settings": settings.__dict__,
           "key": key.fingerprint, "meta": keep, "dtype": str(dtype)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _mask_for(mask_arg: Path | None, path: Path, shape: tuple[int, int]):  # -> np.ndarray; picklable for workers
    return find_mask(path, mask_arg, shape)


def _encode(v, key, sample, keep: list[str], scratch: Path) -> dict:  # noqa: ANN001
    """One output sample; runs on a writer thread."""
    from faceveil.data.shards import png_bytes
    from faceveil.fileformat import write_veiled

    path = scratch / f"{sample.key}.png"
    try:
        write_veiled(path, v, key)
        data = path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
    meta = {k: sample.meta[k] for k in keep if k in sample.meta}
    return {"__key__": sample.key, "image.png": data, "mask.png": png_bytes(sample.mask.astype("uint8") * 255),
            "meta.json": json.dumps(meta, sort_keys=True).encode()}


def run(args: argparse.Namespace) -> int:
    import torch
    from concurrent.futures import ThreadPoolExecutor

    from faceveil.data.shard_job import (Failure, ProgressBoard, ShardReader, TarSink, clean_partials, is_done,
                                         passthrough, plan_shards, split, write_record)
    from faceveil.errors import FaceveilError, InputError
    from faceveil.keys import load_key
    from faceveil.models.pipeline import Anonymizer

    quiet_libraries()
    rank, world, local_rank = _rank()
    key = load_key(args.key)
    out: Path = args.output
    if out.resolve() == Path(args.input).resolve():
        raise InputError("the output folder is the input folder; choose another -o")
    shards = plan_shards(args.input, args.images_per_shard)
    device = _device(args.device, local_rank)
    dtype = resolve_dtype(args.dtype, device)
    backbone = load_backbone_for_cli(args.backbone, device, dtype)
    settings = resolve_settings(args, backbone)
    keep = [k for k in args.keep_meta.split(",") if k]
    fp = _fingerprint(backbone, settings, key, keep, dtype)
    mine = split(shards, rank, world)
    (out / ".job").mkdir(parents=True, exist_ok=True)
    clean_partials(out, mine)
    todo = [ws for ws in mine if not is_done(out, ws, fp)]
    board = ProgressBoard(out, rank, world)
    board.reset()
    board.add(sum(max(ws.expected, 0) for ws in mine if ws not in todo), force=True)
    done_before, started = board.done, time.perf_counter()
    pending_all = [ws for ws in shards if ws in todo or (ws not in mine and not is_done(out, ws, fp))] if rank == 0 else []
    total = sum(max(ws.expected, 0) for ws in shards)
    bar = None
    if rank == 0 and not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total or None, desc=f"anonymize-shards ({world} process{'es' * (world > 1)})", unit="img",
                   bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}, {rate_fmt}]")

    def show() -> None:
        if bar is not None:
            bar.update(board.done + board.others()[0] - bar.n)

    anonymizer = Anonymizer(backbone, settings, on_progress=lambda n: (board.add(n), show()), compile_unet=args.compile)
    mask_fn = functools.partial(_mask_for, args.mask)
    loader = torch.utils.data.DataLoader(ShardReader(todo, args.batch_size, mask_fn), batch_size=None,
                                         num_workers=args.workers if todo else 0, collate_fn=passthrough)
    sinks: dict[int, tuple[TarSink, list[Failure], list]] = {}
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="faceveil-shard-write")
    scratch = Path(tempfile.mkdtemp(prefix=f".scratch-{rank}-", dir=out / ".job"))

    def drain(state, limit: int) -> None:  # noqa: ANN001 - write finished samples in order
        sink, failures, pending = state
        while len(pending) > limit:
            k, fut = pending.pop(0)
            try:
                sink.write(fut.result())
            except (FaceveilError, OSError, ValueError) as exc:
                failures.append(Failure(k, "write error", str(exc)))

    for pos, chunk, last in loader:
        ws = todo[pos]
        if pos not in sinks:
            sinks[pos] = (TarSink(out / ws.name), [], [])
        sink, failures, pending = state = sinks[pos]
        failures.extend(x for x in chunk if isinstance(x, Failure))
        good = [x for x in chunk if not isinstance(x, Failure)]
        for batch in batches_by(good, lambda s: s.image.shape, args.batch_size):
            start = board.done
            try:
                veiled = anonymizer.anonymize([s.image for s in batch], [s.mask for s in batch], key)
            except InputError as exc:
                failures.extend(Failure(s.key, "rejected by the anonymizer", str(exc)) for s in batch)
                veiled = []
            except (FaceveilError, ValueError, RuntimeError) as exc:
                failures.extend(Failure(s.key, "anonymize error", f"{exc.__class__.__name__}: {exc}") for s in batch)
                veiled = []
            for s, v in zip(batch, veiled):
                pending.append((s.key, pool.submit(_encode, v, key, s, keep, scratch)))
            board.add(start + len(batch) - board.done)
            show()
            drain(state, 8)
        if last:
            drain(state, 0)
            write_record(out, ws, fp, sink.commit(), sink.count, failures, rank)
            del sinks[pos]
            if ws.expected < 0:
                board.add(0, force=True)
    pool.shutdown()
    work = board.done - done_before
    scratch.rmdir()
    board.add(0, finished=True)
    if rank != 0:
        return 0
    while not all(is_done(out, ws, fp) for ws in shards):  # the other ranks' shards
        show()
        time.sleep(0.2)
    show()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    done_all = sum(max(ws.expected, 0) for ws in pending_all)
    print(f"faceveil anonymize-shards: this run: {done_all} samples in {seconds:.1f} s after loading "
          f"({done_all / max(seconds, 1e-9):.2f} img/s; rank 0 did {work:.0f})", flush=True)
    return _summary(out, shards, world)


def _summary(out: Path, shards, world: int) -> int:  # noqa: ANN001
    from faceveil.data.shard_job import load_record
    from faceveil.data.shards import FORMAT_NAME, FORMAT_VERSION, write_json

    records = {ws.name: load_record(out, ws.name) or {} for ws in shards}
    reasons: Counter[str] = Counter()
    rows = ["shard\tkey\treason\tdetail"]
    for name, rec in records.items():
        for k, reason, detail in rec.get("failures", []):
            reasons[reason] += 1
            rows.append("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in (name, k, reason, detail)))
    samples = sum(int(r.get("samples", 0)) for r in records.values())
    write_json(out / "index.json", {"format": FORMAT_NAME, "version": FORMAT_VERSION, "anonymized": True,
                                    "shards": [{"name": n, "samples": int(r.get("samples", 0))} for n, r in records.items()],
                                    "samples": samples, "failures": dict(reasons)})
    from faceveil.data.images import atomic_write

    atomic_write(out / "failures.tsv", lambda tmp: tmp.write_text("\n".join(rows) + "\n"))
    failed = sum(reasons.values())
    detail = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) if failed else "none"
    print(f"faceveil anonymize-shards: {samples} samples in {len(shards)} shard(s) by {world} process(es) -> {out}; "
          f"failed {failed} ({detail}){'; see failures.tsv' if failed else ''}", flush=True)
    return 1 if failed else 0
