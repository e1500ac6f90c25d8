"""Streaming face batches from shards, for training and evaluation, in one or many processes.

Typical use::

    from faceveil.data.loader import make_loader

    loader = make_loader("shards/", batch_size=8, image_size=256, resampled=True, num_workers=2, seed=0)
    for batch in loader:
        batch["image"]        # (B, 3, H, W) float32 in [-1, 1]
        batch["mask"]         # (B, 1, H, W) float32 in {0, 1}
        batch["mask_latent"]  # (B, 1, H/f, W/f) float32 in {0, 1}, f = latent_factor (max-pooled)
        batch["landmarks5"]   # (B, 5, 2) float32, pixels of the (resized) crop
        batch["label"]        # list of B identity labels ("" when unknown)
        batch["key"], batch["source"]  # lists of B sample keys and source paths
        batch["face_index"]   # (B,) int64

``urls`` is a shard folder (the shards listed in its ``index.json``), a shard
path or URL with brace expansion (``"shards/shard-{000000..000031}.tar"``), a
``pipe:`` source (``"pipe:cat shards/shard-000000.tar"``), or a list of these.

Splitting is the loader's own job, not ``accelerator.prepare``'s: do not pass
the loader through ``accelerate``. With ``resampled=False`` the shard list
(shuffled the same way on every process when ``shuffle > 0``) is split by
process rank (``RANK``/``WORLD_SIZE``, or ``torch.distributed``) and then by
DataLoader worker (webdataset's ``split_by_node`` / ``split_by_worker``), so
every shard is read exactly once per epoch; give at least ``world_size x
num_workers`` shards. For training, ``resampled=True`` draws shards with
replacement forever, seeded per rank and worker, so processes never run dry at
different times; stop after a number of steps.

A sample or shard that cannot be read (truncated tar, bad PNG) is logged on
the ``faceveil.data.loader`` logger and skipped; the run goes on.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds

from faceveil.data.masks import latent_mask
from faceveil.data.shards import decode_sample, shard_paths
from faceveil.errors import InputError

logger = logging.getLogger(__name__)

UrlSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def log_and_continue(exn: BaseException) -> bool:
    """webdataset exception handler: log one line and keep going."""
    logger.warning("skipping unreadable data: %s: %s", exn.__class__.__name__, exn)
    return True


def resolve_urls(urls: UrlSpec) -> list[str]:
    """Expand a shard spec (see the module docstring) into a list of URLs."""
    if isinstance(urls, (str, os.PathLike)):
        items: Sequence[str | os.PathLike[str]] = [urls]
    else:
        items = list(urls)
    out: list[str] = []
    for item in items:
        text = os.fspath(item)
        if not text.startswith("pipe:") and Path(text).is_dir():
            out.extend(str(p) for p in shard_paths(text))
        else:
            out.extend(wds.shardlists.expand_urls(text))
    if not out:
        raise InputError(f"no shards found in {urls!r}")
    return out


def decode_face(sample: dict[str, Any], image_size: int, latent_factor: int) -> dict[str, Any]:
    """A raw webdataset sample to tensors (resized to ``image_size`` if the shard holds another size)."""
    d = decode_sample(sample)
    image = torch.from_numpy(np.array(d.image)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    mask = torch.from_numpy(d.mask).float()[None]
    landmarks5 = torch.tensor(d.meta["landmarks5"], dtype=torch.float32)
    size = image.shape[-1]
    if image.shape[-2:] != (image_size, image_size):
        if image.shape[-2] != image.shape[-1]:
            raise InputError(f"sample {d.key}: crop is not square ({tuple(image.shape[-2:])})")
        image = F.interpolate(image[None], size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)[0].clamp_(-1, 1)
        mask = (F.interpolate(mask[None], size=(image_size, image_size), mode="area" if image_size < size else "nearest")[0] >= 0.5).float()
        scale = image_size / size
        landmarks5 = (landmarks5 + 0.5) * scale - 0.5  # pixel centres at integers
    return {
        "image": image,
        "mask": mask,
        "mask_latent": latent_mask(mask, latent_factor),
        "landmarks5": landmarks5,
        "label": str(d.meta.get("label", "")),
        "key": d.key,
        "source": str(d.meta.get("source", "")),
        "face_index": int(d.meta.get("face_index", 0)),
    }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists."""
    batch: dict[str, Any] = {}
    for name in samples[0]:
        if name.startswith("__"):  # webdataset's own bookkeeping (__key__, __url__)
            continue
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        elif isinstance(values[0], int):
            batch[name] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[name] = values
    return batch


class _ShuffleSamples(wds.PipelineStage):
    """A sample shuffle buffer seeded by (seed, rank, worker, epoch): reproducible,
    different in every process and every epoch."""

    def __init__(self, bufsize: int, seed: int) -> None:
        self.bufsize = bufsize
        self.seed = seed
        self.epoch = -1

    def run(self, src):  # noqa: ANN001, ANN201 - webdataset stage protocol
        self.epoch += 1
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(f"{self.seed}:{rank}:{worker}:{self.epoch}")
        return wds.filters.shuffle(self.bufsize, initial=min(self.bufsize, 100), rng=rng)(src)


def make_dataset(
    urls: UrlSpec,
    image_size: int = 256,
    latent_factor: int = 8,
    shuffle: int = 1000,
    resampled: bool = False,
    seed: int = 0,
    split: bool = True,
    select: Callable[[dict[str, Any]], bool] | None = None,
) -> wds.DataPipeline:
    """The per-sample pipeline (no batching): an iterable of decoded sample dicts.

    ``shuffle``: sample shuffle buffer size (0: keep shard order, and no shard
    shuffling). ``split=False`` reads every shard in every process (e.g. when
    each process evaluates the whole set). ``select``: keep only the decoded
    samples it accepts (e.g. a held-out split).
    """
    if image_size % latent_factor:
        raise InputError(f"image size {image_size} is not a multiple of the latent factor {latent_factor}")
    shards = resolve_urls(urls)
    stages: list[Any] = []
    if resampled:
        stages.append(wds.ResampledShards(shards, seed=seed, deterministic=True))
    else:
        stages.append(wds.SimpleShardList(shards))
        if shuffle > 0:
            # Before splitting, with the same seed everywhere: every process
            # permutes alike, so their slices stay disjoint.
            stages.append(wds.detshuffle(len(shards), len(shards), seed=seed))
        if split:
            stages += [wds.split_by_node, wds.split_by_worker]
    stages.append(wds.tarfile_to_samples(handler=log_and_continue))
    if shuffle > 0:
        stages.append(_ShuffleSamples(shuffle, seed))
    stages.append(wds.map(partial(decode_face, image_size=image_size, latent_factor=latent_factor), handler=log_and_continue))
    if select is not None:
        stages.append(wds.select(select))
    return wds.DataPipeline(*stages)


def make_loader(
    urls: UrlSpec,
    batch_size: int,
    image_size: int = 256,
    latent_factor: int = 8,
    shuffle: int = 1000,
    resampled: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    split: bool = True,
    select: Callable[[dict[str, Any]], bool] | None = None,
) -> wds.WebLoader:
    """Batches of faces (see the module docstring); iterate it directly, do not ``accelerator.prepare`` it."""
    shards = resolve_urls(urls)
    _, world_size, _, _ = wds.utils.pytorch_worker_info()
    readers = world_size * max(num_workers, 1)
    if split and not resampled and len(shards) < readers:
        logger.warning("%d shard(s) for %d readers (%d process(es) x %d worker(s)): some read nothing", len(shards), readers, world_size, max(num_workers, 1))
    dataset = make_dataset(shards, image_size, latent_factor, shuffle, resampled, seed, split, select)
    dataset = dataset.compose(wds.batched(batch_size, collation_fn=collate, partial=not drop_last))
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
