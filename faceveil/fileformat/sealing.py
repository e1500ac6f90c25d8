"""Sealed records: named arrays encrypted with ChaCha20-Poly1305 under a per-record subkey.

A record is safetensors bytes, sealed under ``key.subkey(purpose, nonce)``
(HKDF-SHA256). Version 2 compressed them with zlib and zero-padded to a power of
two, so the length said little about the content; version 3 seals them as they
are (``compressed=False``), so the length is a function of the tensors' shapes
alone, which the public pixels already show. Opening checks the tag first, then
inflates with a hard cap (compressed records), then validates every tensor's dtype
and shape against an expected spec before any array is built.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from faceveil.errors import FormatError
from faceveil.jsonfile import parse_json
from faceveil.keys import SecretKey

_MIN_BUCKET = 4096
_DTYPES = {"U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "F32": np.float32, "F64": np.float64}

# name -> check(dtype, shape) -> error text or None
Spec = Mapping[str, Callable[[str, tuple[int, ...]], "str | None"]]


def _bucket(n: int) -> int:
    return max(_MIN_BUCKET, 1 << (n - 1).bit_length())


def seal_arrays(arrays: Mapping[str, np.ndarray], key: SecretKey, purpose: str, nonce: bytes, compressed: bool = True) -> bytes:
    """Encrypt named arrays. Compressed: the length is a power of two plus the 16-byte tag;
    uncompressed: the safetensors length (set by names, dtypes and shapes) plus the tag."""
    raw = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    if not compressed:
        return key.seal(purpose, nonce, raw, purpose.encode())
    packed = zlib.compress(raw, 9)
    padded = packed + bytes(_bucket(len(packed)) - len(packed))
    return key.seal(purpose, nonce, padded, purpose.encode())


def _tensor_table(raw: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """dtype and shape of each tensor, read from the safetensors header without building arrays."""
    if len(raw) < 8:
        raise ValueError("record too short")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError("record header runs past its end")
    table = parse_json(raw[8 : 8 + n], max_depth=4)
    if not isinstance(table, dict):
        raise ValueError("record header is not an object")
    out = {}
    for name, info in table.items():
        if name == "__metadata__":
            continue
        shape = tuple(int(d) for d in info["shape"])
        out[name] = (str(info["dtype"]), shape)
    return out


def open_arrays(
    sealed: bytes, key: SecretKey, purpose: str, nonce: bytes, max_raw: int, spec: Spec, compressed: bool = True
) -> dict[str, np.ndarray] | None:
    """The arrays of a sealed record, or None when it does not open under ``key`` (wrong key, altered).

    Raises :class:`FormatError` when it opens but is malformed: larger than ``max_raw``
    once inflated, or holding a tensor that ``spec`` does not allow.
    """
    padded = key.open(purpose, nonce, sealed, purpose.encode())
    if padded is None:
        return None
    try:
        raw = _inflate(padded, max_raw) if compressed else padded
        if len(raw) > max_raw:
            raise ValueError(f"larger than its limit of {max_raw} bytes")
        table = _tensor_table(raw)
        for name, (dtype, shape) in table.items():
            check = spec.get(name)
            if check is None:
                raise ValueError(f"unexpected tensor {name!r}")
            if dtype not in _DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {dtype}")
            problem = check(dtype, shape)
            if problem:
                raise ValueError(f"tensor {name!r}: {problem}")
        return st_load(raw)
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise FormatError(f"sealed record is malformed ({exc})") from None


def _inflate(padded: bytes, max_raw: int) -> bytes:
    inflater = zlib.decompressobj()
    raw = inflater.decompress(padded, max_raw + 1)
    if len(raw) > max_raw or not inflater.eof:
        raise ValueError(f"inflates past its limit of {max_raw} bytes")
    if inflater.unused_data.strip(b"\0"):
        raise ValueError("data after the record")
    return raw


def exactly(dtypes: tuple[str, ...], shape: tuple[int, ...]) -> Callable[[str, tuple[int, ...]], str | None]:
    """A spec entry: one of ``dtypes`` and exactly ``shape``."""

    def check(dtype: str, got: tuple[int, ...]) -> str | None:
        if dtype not in dtypes:
            return f"dtype {dtype}, expected {'/'.join(dtypes)}"
        return None if got == tuple(shape) else f"shape {list(got)}, expected {list(shape)}"

    return check


def at_most(dtypes: tuple[str, ...], elements: int, ndim: int | None = None) -> Callable[[str, tuple[int, ...]], str | None]:
    """A spec entry: one of ``dtypes``, at most ``elements`` entries (and ``ndim`` dimensions if given)."""

    def check(dtype: str, got: tuple[int, ...]) -> str | None:
        if dtype not in dtypes:
            return f"dtype {dtype}, expected {'/'.join(dtypes)}"
        if ndim is not None and len(got) != ndim:
            return f"{len(got)} dimensions, expected {ndim}"
        return None if int(np.prod(got, dtype=np.int64)) <= elements and min(got, default=0) >= 0 else f"shape {list(got)} is too large"

    return check
