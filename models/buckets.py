"""Fixed-size network batches ("buckets"): an image's bits never depend on its batch.

Kernels choose their algorithm (blocking, reduction order) from the tensor shapes,
so the same image run in a batch of 3 and in a batch of 1 can differ in the last
bits, and the exact scheme's recovery must re-evaluate the network bit for bit.
Every UNet / autoencoder call therefore runs at a fixed batch size P, the images'
slots padded with zeros: the shapes, and so the kernels, are the same whatever the
real images are, and no kernel mixes the rows of different images (convolutions,
group norm and attention are per image). Measured on CPU (tiny fp32 / bf16, sd2
fp32): an image's output is bit-identical at any position with any neighbours.

P is a power of two chosen from the number of images (1 image runs at P = 1, so a
single image pays no padding) and is recorded in the file: recovery runs at the
same P, alone or with other files of that P.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MAX_BUCKET = 64  # the largest bucket a file may ask recovery to run



def bucket_for(n: int, max_bucket: int) -> int:
    """The bucket for ``n`` images: the smallest power of two >= n, capped at the largest one <= ``max_bucket``."""
    if n < 1 or not 1 <= max_bucket <= MAX_BUCKET:
        raise ValueError(f"need at least one image and a bucket between 1 and {MAX_BUCKET}")
    p = 1
    while p < n and p * 2 <= max_bucket:
        p *= 2
    return p


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    n = x.shape[0]
    if n == size:
        return x.contiguous()
    return torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))]).contiguous()


Out = torch.Tensor | dict[str, torch.Tensor]


def run_bucketed(fn: Callable[..., Out], bucket: int, *tensors: torch.Tensor) -> Out:
    """``fn(*tensors)`` computed in slices of exactly ``bucket`` rows (the last one zero-padded).

    ``fn`` returns a tensor or a dict of tensors, one row per input row.
    """
    n = tensors[0].shape[0]
    outs = []
    for start in range(0, n, bucket):
        parts = [_pad(t[start : start + bucket], bucket) for t in tensors]
        out = fn(*parts)
        keep = min(bucket, n - start)
        outs.append({k: v[:keep] for k, v in out.items()} if isinstance(out, dict) else out[:keep])
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)
