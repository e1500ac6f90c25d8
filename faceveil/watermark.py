"""A keyed watermark that carries a 64-bit recovery id inside a face region, and nothing outside it.

Recovery from the pixels alone (DESIGN.md, section 11) needs what a file's metadata would hold to
live in the pixels. This module embeds one 8-byte id in the replaced face region of an RGB image:

- sealed: the id is encrypted and authenticated under the key (a deterministic SIV construction
  from HMAC-SHA256: a 64-bit tag of the id, and the id XOR a pad derived from that tag), so a
  wrong key or a damaged mark reads as None, never as another id;
- spread: each of the 128 sealed bits goes to many slots (a repetition code), read back by a soft
  majority vote;
- keyed placement: a slot is one low-frequency DCT coefficient of an 8x8 luminance block lying
  fully inside the mask, on a grid anchored at the mask's bounding box; the key's stream decides
  which bit each slot carries and its dither (dithered quantization index modulation, QIM);
- confined: pixels outside the mask are returned bit for bit.

Extraction takes a mask of the region (re-found from the pixels, it may be off by a few pixels or
at another scale) and searches small grid offsets and scale factors until the tag verifies.
This module is not a face detector, and it does not choose ids or derive nonces from them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from faceveil.errors import InputError
from faceveil.keys import NONCE_BYTES, SecretKey, keystream

ID_BYTES = 8
TAG_BYTES = 8
PAYLOAD_BITS = 8 * (ID_BYTES + TAG_BYTES)
BLOCK = 8
# Low frequencies: they survive JPEG's quantization and a 1/2 resize; (0, 0) would show as blockiness.
COEFFS: tuple[tuple[int, int], ...] = ((0, 1), (1, 0), (1, 1), (0, 2))
TILE = (4, 8)  # blocks; TILE[0] * TILE[1] * len(COEFFS) == PAYLOAD_BITS
STEP = 40.0  # QIM lattice step in orthonormal DCT units: the strength / PSNR trade-off
DOUBTFUL_BITS = 6  # extraction also tries all flips of this many least certain bits
GRID = 128  # the keyed table covers regions up to GRID * BLOCK = 1024 px a side
_DOMAIN = b"faceveil/v1/watermark\0"


# --------------------------------------------------------------------------- sealing the id


def _prf(key: SecretKey, purpose: str, data: bytes) -> bytes:
    return hmac.new(key.subkey(purpose, b""), _DOMAIN + data, hashlib.sha256).digest()


def seal_id(key: SecretKey, recovery_id: bytes) -> bytes:
    """16 bytes: ciphertext || tag. Deterministic (one id, one mark), so no nonce is needed."""
    if len(recovery_id) != ID_BYTES:
        raise InputError(f"a recovery id has {ID_BYTES} bytes, got {len(recovery_id)}")
    tag = _prf(key, "watermark-tag", recovery_id)[:TAG_BYTES]
    pad = _prf(key, "watermark-pad", tag)[:ID_BYTES]
    return bytes(a ^ b for a, b in zip(recovery_id, pad)) + tag


def open_id(key: SecretKey, sealed: bytes) -> bytes | None:
    """The id :func:`seal_id` sealed, or None for a wrong key or altered bits."""
    if len(sealed) != ID_BYTES + TAG_BYTES:
        return None
    ct, tag = sealed[:ID_BYTES], sealed[ID_BYTES:]
    pad = _prf(key, "watermark-pad", tag)[:ID_BYTES]
    recovery_id = bytes(a ^ b for a, b in zip(ct, pad))
    if not hmac.compare_digest(_prf(key, "watermark-tag", recovery_id)[:TAG_BYTES], tag):
        return None
    return recovery_id


# --------------------------------------------------------------------------- keyed placement


@dataclass(frozen=True)
class Placement:
    """Per slot of the GRID x GRID x len(COEFFS) table: the payload bit it carries and its dither."""

    bit: np.ndarray  # (GRID, GRID, C) int
    dither: np.ndarray  # (GRID, GRID, C) float in [0, 1)


def placement(key: SecretKey) -> Placement:
    """The key's slot table; the same for every image, so it can be found without side data."""
    c = len(COEFFS)
    n = GRID * GRID * c
    # A fixed nonce: the table must be rebuilt from the key alone.
    stream = np.frombuffer(keystream(key, bytes(NONCE_BYTES), "watermark-placement", 4 * (n + PAYLOAD_BITS)), dtype="<u4")
    dither, order = stream[:n], stream[n:]
    # Each TILE of blocks holds every bit once, in a keyed order: any region a few tiles large
    # covers all bits about equally often, wherever its edges fall.
    perm = np.argsort(order, kind="stable")
    rows, cols = np.meshgrid(np.arange(GRID) % TILE[0], np.arange(GRID) % TILE[1], indexing="ij")
    bit = perm[((rows * TILE[1] + cols) * c)[..., None] + np.arange(c)]
    return Placement(bit, (dither / 2.0**32).reshape(GRID, GRID, c))


# --------------------------------------------------------------------------- blocks and coefficients


def _dct_matrix(n: int = BLOCK) -> np.ndarray:
    k = np.arange(n)
    d = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_D = _dct_matrix()
_BASIS = np.stack([np.outer(_D[u], _D[v]) for u, v in COEFFS])  # (C, 8, 8), orthonormal


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _blocks_inside(mask: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """(n, 2) grid indices (row, col) of the 8x8 blocks, anchored at ``origin``, fully inside ``mask``."""
    h, w = mask.shape
    oy, ox = origin
    rows, cols = (h - oy) // BLOCK, (w - ox) // BLOCK
    if oy < 0 or ox < 0 or rows <= 0 or cols <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    rows, cols = min(rows, GRID), min(cols, GRID)
    cells = mask[oy : oy + rows * BLOCK, ox : ox + cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK)
    return np.argwhere(cells.all(axis=(1, 3)))


def _bbox_origin(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputError("the watermark region's mask is empty")
    return int(ys.min()), int(xs.min())


def _gather(luma: np.ndarray, cells: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """The (n, 8, 8) luminance blocks at grid ``cells``."""
    y = origin[0] + cells[:, 0, None, None] * BLOCK + np.arange(BLOCK)[None, :, None]
    x = origin[1] + cells[:, 1, None, None] * BLOCK + np.arange(BLOCK)[None, None, :]
    return luma[y, x]


def capacity(mask: np.ndarray) -> int:
    """Slots a region offers (blocks fully inside the mask x coefficients); each bit gets ~1/128 of them."""
    mask = np.asarray(mask, dtype=bool)
    return len(_blocks_inside(mask, _bbox_origin(mask))) * len(COEFFS)


# --------------------------------------------------------------------------- embed and extract


def sealed_bits(key: SecretKey, recovery_id: bytes) -> np.ndarray:
    """The 128 bits a mark of ``recovery_id`` carries (what :func:`read_bits` should return)."""
    return np.unpackbits(np.frombuffer(seal_id(key, recovery_id), dtype=np.uint8))


def embed(image: np.ndarray, mask: np.ndarray, key: SecretKey, recovery_id: bytes) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with ``recovery_id`` sealed under ``key`` inside ``mask`` (H, W) bool.

    Raises InputError when the region has fewer slots than payload bits. Every pixel outside
    ``mask`` keeps its value.
    """
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or mask.shape != image.shape[:2]:
        raise InputError(f"expected an (H, W, 3) uint8 image and an (H, W) mask, got {image.shape} and {mask.shape}")
    origin = _bbox_origin(mask)
    cells = _blocks_inside(mask, origin)
    if len(cells) * len(COEFFS) < PAYLOAD_BITS:
        raise InputError(
            f"the region holds {len(cells)} whole 8x8 blocks, too few for a {PAYLOAD_BITS}-bit mark "
            f"(needs {-(-PAYLOAD_BITS // len(COEFFS))}); faces under about 100 px cannot carry one"
        )
    table = placement(key)
    want = sealed_bits(key, recovery_id)[table.bit[cells[:, 0], cells[:, 1]]]  # (n, C)
    dither = table.dither[cells[:, 0], cells[:, 1]]
    blocks = _gather(_luma(image), cells, origin)
    coef = np.einsum("nij,cij->nc", blocks, _BASIS)
    offset = dither + want / 2.0
    target = STEP * (np.round(coef / STEP - offset) + offset)
    delta = np.einsum("nc,cij->nij", target - coef, _BASIS)
    # Equal change in R, G and B changes luminance by the same amount (the weights sum to 1).
    out = image.astype(np.float64)
    y = origin[0] + cells[:, 0, None, None] * BLOCK + np.arange(BLOCK)[None, :, None]
    x = origin[1] + cells[:, 1, None, None] * BLOCK + np.arange(BLOCK)[None, None, :]
    out[y, x] += delta[..., None]
    marked = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return np.where(mask[..., None], marked, image)


def _soft_bits(luma: np.ndarray, mask: np.ndarray, origin: tuple[int, int], table: Placement) -> np.ndarray | None:
    cells = _blocks_inside(mask, origin)
    if len(cells) == 0:
        return None
    coef = np.einsum("nij,cij->nc", _gather(luma, cells, origin), _BASIS)
    # +1 on a bit-0 lattice point, -1 on a bit-1 point, 0 halfway.
    vote = np.cos(2 * np.pi * (coef / STEP - table.dither[cells[:, 0], cells[:, 1]]))
    return np.bincount(table.bit[cells[:, 0], cells[:, 1]].ravel(), weights=vote.ravel(), minlength=PAYLOAD_BITS)


def read_bits(image: np.ndarray, mask: np.ndarray, key: SecretKey) -> np.ndarray | None:
    """The raw 128 sealed bits as read at the mask's own grid (for measuring bit accuracy)."""
    mask = np.asarray(mask, dtype=bool)
    soft = _soft_bits(_luma(np.asarray(image)), mask, _bbox_origin(mask), placement(key))
    return None if soft is None else (soft < 0).astype(np.uint8)


def _candidates(image: np.ndarray, mask: np.ndarray, scales: Sequence[float], max_shift: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    import cv2

    for scale in scales:
        if scale == 1:
            img, msk = image, mask
        else:
            h, w = mask.shape
            size = (round(w * scale), round(h * scale))
            img = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
            msk = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        luma = _luma(img)
        oy, ox = _bbox_origin(msk)
        # Nearest offsets first: the unshifted grid is the likeliest.
        shifts = sorted(((dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)),
                        key=lambda s: (abs(s[0]) + abs(s[1]), s))
        for dy, dx in shifts:
            yield luma, msk, (oy + dy, ox + dx)


def _decode(key: SecretKey, soft: np.ndarray, doubtful: int) -> bytes | None:
    """Hard bits, then every flip pattern of the ``doubtful`` least certain bits, until the tag verifies.

    The 64-bit tag is the error check (Chase decoding): 2**doubtful tries cost 2**(doubtful - 64)
    in false acceptance, and fix errors a repetition vote alone cannot.
    """
    hard = (soft < 0).astype(np.uint8)
    weakest = np.argsort(np.abs(soft), kind="stable")[:doubtful]
    for pattern in range(1 << doubtful):
        bits = hard.copy()
        flip = weakest[[(pattern >> i) & 1 == 1 for i in range(doubtful)]]
        bits[flip] ^= 1
        found = open_id(key, np.packbits(bits).tobytes())
        if found is not None:
            return found
    return None


def extract(image: np.ndarray, mask: np.ndarray, key: SecretKey, scales: Sequence[float] = (1.0,),
            max_shift: int = 0, doubtful: int = DOUBTFUL_BITS) -> bytes | None:
    """The recovery id sealed in ``image`` inside ``mask`` under ``key``, or None.

    ``mask`` locates the region in ``image`` as it is now. If the image was resized since the mark
    went in, pass the factors that undo it in ``scales`` (2.0 after a 1/2 resize); ``max_shift``
    searches grid offsets of up to that many pixels, for a region re-found a little off. None when
    no candidate's tag verifies: a wrong key, no mark, or a mark too damaged to read.
    """
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    table = placement(key)
    for luma, msk, origin in _candidates(image, mask, scales, max_shift):
        soft = _soft_bits(luma, msk, origin, table)
        if soft is None:
            continue
        found = _decode(key, soft, doubtful)
        if found is not None:
            return found
    return None
