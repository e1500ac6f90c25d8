"""A keyed watermark that carries 64 bits inside a face region, and nothing outside it.

Recovery from the pixels alone (DESIGN.md, section 11) needs what a file's metadata would hold to
live in the pixels. This module embeds one 8-byte body in the replaced face region of an RGB image:

- sealed: the id is encrypted and authenticated under the key (a deterministic SIV construction
  from HMAC-SHA256: a 64-bit tag of the id, and the id XOR a pad derived from that tag), so a
  wrong key or a damaged mark reads as None, never as another id;
- spread: each of the 128 sealed bits goes to many slots (a repetition code), read back by a soft
  majority vote;
- keyed placement: a slot is one low-frequency DCT coefficient of an 8x8 luminance block lying
  fully inside the mask, on the image's own 8x8 grid (the grid JPEG uses); the key's stream decides
  which bit each slot of a 4 x 8-block tile carries and its dither (dithered quantization index
  modulation, QIM), and the tiles repeat over the image;
- confined: pixels outside the mask are returned bit for bit.

Finding marks needs no mask: a marked block's coefficients sit on the key's lattice, an unmarked
one's anywhere, so a per-block score maps the marked regions (:func:`find`). A crop moves the
grid; :func:`find` then searches the 64 pixel phases and 32 tile phases, and returns where the
tile lattice lies, so that positions carried in the body can be resolved modulo the tile.
A keyless party can tell that a region is marked (the lattice repeats with the tile); it cannot
read, change or forge the body.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from faceveil.errors import InputError
from faceveil.keys import NONCE_BYTES, SecretKey, keystream

ID_BYTES = 8  # the body: what the caller seals (faceveil.models.pixel_geometry packs it)
TAG_BYTES = 8
PAYLOAD_BITS = 8 * (ID_BYTES + TAG_BYTES)
BLOCK = 8
# Low frequencies: they survive JPEG's quantization and a 1/2 resize; (0, 0) would show as blockiness.
COEFFS: tuple[tuple[int, int], ...] = ((0, 1), (1, 0), (1, 1), (0, 2))
TILE = (4, 8)  # blocks; TILE[0] * TILE[1] * len(COEFFS) == PAYLOAD_BITS
STEP = 40.0  # QIM lattice step in orthonormal DCT units: the strength / PSNR trade-off
DOUBTFUL_BITS = 6  # extraction also tries all flips of this many least certain bits
TILE_PX = (TILE[0] * BLOCK, TILE[1] * BLOCK)
MAX_SEARCH_PIXELS = 16 * 2**20  # images are enlarged for reading only up to this size
MARKED = 0.25  # smoothed lattice score above which a block counts as marked (unmarked: ~0)
_DOMAIN = b"faceveil/v2/watermark\0"


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
    """Per slot of one tile (TILE[0] x TILE[1] blocks x len(COEFFS)): the bit it carries and its dither."""

    bit: np.ndarray  # (TILE[0], TILE[1], C) int
    dither: np.ndarray  # (TILE[0], TILE[1], C) float in [0, 1)


def placement(key: SecretKey) -> Placement:
    """The key's tile table; the same for every image, so it can be found without side data."""
    c = len(COEFFS)
    # A fixed nonce: the table must be rebuilt from the key alone.
    stream = np.frombuffer(keystream(key, bytes(NONCE_BYTES), "watermark-placement", 8 * PAYLOAD_BITS), dtype="<u4")
    dither, order = stream[:PAYLOAD_BITS], stream[PAYLOAD_BITS:]
    # Each tile holds every bit once, in a keyed order: any region a few tiles large covers all
    # bits about equally often, wherever its edges fall.
    bit = np.argsort(order, kind="stable").reshape(TILE[0], TILE[1], c)
    return Placement(bit, (dither / 2.0**32).reshape(TILE[0], TILE[1], c))


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


def _coefficients(luma: np.ndarray, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(rows, cols, C) coefficients of every whole 8x8 block of the grid starting at pixel ``phase``."""
    py, px = phase
    h, w = luma.shape
    rows, cols = (h - py) // BLOCK, (w - px) // BLOCK
    blocks = luma[py : py + rows * BLOCK, px : px + cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK)
    return np.einsum("rics,kis->rck", blocks, _BASIS)


def _blocks_inside(mask: np.ndarray) -> np.ndarray:
    """(n, 2) block indices (row, col) of the image grid's 8x8 blocks fully inside ``mask``."""
    h, w = mask.shape
    rows, cols = h // BLOCK, w // BLOCK
    cells = mask[: rows * BLOCK, : cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK)
    return np.argwhere(cells.all(axis=(1, 3)))


def _slots(table: Placement, cells: np.ndarray, tile_phase: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """(n, C) bit indices and dithers of blocks ``cells`` when the grid's block (0, 0) is tile block ``tile_phase``."""
    r = (cells[:, 0] + tile_phase[0]) % TILE[0]
    c = (cells[:, 1] + tile_phase[1]) % TILE[1]
    return table.bit[r, c], table.dither[r, c]


def capacity(mask: np.ndarray) -> int:
    """Slots a region offers (blocks fully inside the mask x coefficients); each bit gets 1/128 of them."""
    return len(_blocks_inside(np.asarray(mask, dtype=bool))) * len(COEFFS)


# --------------------------------------------------------------------------- embed and read


def sealed_bits(key: SecretKey, body: bytes) -> np.ndarray:
    """The 128 bits a mark of ``body`` carries (what :func:`read_bits` should return)."""
    return np.unpackbits(np.frombuffer(seal_id(key, body), dtype=np.uint8))


def embed(image: np.ndarray, mask: np.ndarray, key: SecretKey, body: bytes) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with ``body`` sealed under ``key`` inside ``mask`` (H, W) bool.

    Raises InputError when the region has fewer slots than payload bits. Every pixel outside
    ``mask`` keeps its value.
    """
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or mask.shape != image.shape[:2]:
        raise InputError(f"expected an (H, W, 3) uint8 image and an (H, W) mask, got {image.shape} and {mask.shape}")
    cells = _blocks_inside(mask)
    if len(cells) * len(COEFFS) < PAYLOAD_BITS:
        raise InputError(
            f"the region holds {len(cells)} whole 8x8 blocks, too few for a {PAYLOAD_BITS}-bit mark "
            f"(needs {-(-PAYLOAD_BITS // len(COEFFS))}); faces under about 100 px cannot carry one"
        )
    bits, dither = _slots(placement(key), cells)
    want = sealed_bits(key, body)[bits]  # (n, C)
    coef = _coefficients(_luma(image))[cells[:, 0], cells[:, 1]]
    offset = dither + want / 2.0
    target = STEP * (np.round(coef / STEP - offset) + offset)
    delta = np.einsum("nc,cij->nij", target - coef, _BASIS)
    # Equal change in R, G and B changes luminance by the same amount (the weights sum to 1).
    out = image.astype(np.float64)
    y = cells[:, 0, None, None] * BLOCK + np.arange(BLOCK)[None, :, None]
    x = cells[:, 1, None, None] * BLOCK + np.arange(BLOCK)[None, None, :]
    out[y, x] += delta[..., None]
    marked = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return np.where(mask[..., None], marked, image)


def _votes(coef: np.ndarray, dither: np.ndarray) -> np.ndarray:
    # +1 on a bit-0 lattice point, -1 on a bit-1 point, 0 halfway.
    return np.cos(2 * np.pi * (coef / STEP - dither))


def _soft(coef: np.ndarray, cells: np.ndarray, table: Placement, tile_phase: tuple[int, int]) -> np.ndarray:
    bits, dither = _slots(table, cells, tile_phase)
    votes = _votes(coef[cells[:, 0], cells[:, 1]], dither)
    return np.bincount(bits.ravel(), weights=votes.ravel(), minlength=PAYLOAD_BITS)


def read_bits(image: np.ndarray, mask: np.ndarray, key: SecretKey) -> np.ndarray | None:
    """The raw 128 sealed bits read inside ``mask`` on the image's own grid (for bit accuracy)."""
    mask = np.asarray(mask, dtype=bool)
    cells = _blocks_inside(mask)
    if len(cells) == 0:
        return None
    soft = _soft(_coefficients(_luma(np.asarray(image))), cells, placement(key), (0, 0))
    return (soft < 0).astype(np.uint8)


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


def extract(image: np.ndarray, mask: np.ndarray, key: SecretKey, doubtful: int = DOUBTFUL_BITS) -> bytes | None:
    """The body sealed in ``image`` inside ``mask`` under ``key`` (on the image's own grid), or None."""
    mask = np.asarray(mask, dtype=bool)
    cells = _blocks_inside(mask)
    if len(cells) == 0:
        return None
    return _decode(key, _soft(_coefficients(_luma(np.asarray(image))), cells, placement(key), (0, 0)), doubtful)


# --------------------------------------------------------------------------- finding marks without a mask


@dataclass(frozen=True)
class Mark:
    """A mark :func:`find` read. Coordinates are in the input image's pixels."""

    body: bytes
    scale: float  # the factor the image was resized by before reading (2.0: read at twice its size)
    # The tile lattice: pixel (y, x) of the input lies at tile pixel ((y * scale + origin[0]) % TILE_PX[0], ...).
    origin: tuple[int, int]
    centroid: tuple[float, float]  # (y, x) of the marked blocks' centres
    blocks: int


def _lattice_score(coef: np.ndarray, table: Placement, tile_phase: tuple[int, int]) -> np.ndarray:
    """(rows, cols): how near each block's coefficients lie to the key's lattice (either bit); ~0 unmarked."""
    rows, cols, _ = coef.shape
    r = (np.arange(rows)[:, None] + tile_phase[0]) % TILE[0]
    c = (np.arange(cols)[None, :] + tile_phase[1]) % TILE[1]
    return np.cos(4 * np.pi * (coef / STEP - table.dither[r, c])).mean(axis=-1)


def _smooth(score: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.blur(score.astype(np.float32), (3, 3), borderType=cv2.BORDER_CONSTANT)


def _marks_at(luma: np.ndarray, key: SecretKey, table: Placement, phase: tuple[int, int], tile_phase: tuple[int, int],
              coef: np.ndarray, doubtful: int) -> list[tuple[bytes, np.ndarray]]:
    """(body, block cells) of every marked region that decodes at this grid."""
    import cv2

    marked = (_smooth(_lattice_score(coef, table, tile_phase)) > MARKED).astype(np.uint8)
    n, labels = cv2.connectedComponents(marked, connectivity=4)
    out = []
    for label in range(1, n):
        cells = np.argwhere(labels == label)
        if len(cells) * len(COEFFS) < PAYLOAD_BITS:
            continue
        body = _decode(key, _soft(coef, cells, table, tile_phase), doubtful)
        if body is not None:
            out.append((body, cells))
    return out


def _best_grids(luma: np.ndarray, table: Placement, tries: int = 3) -> list[tuple[float, tuple[int, int], tuple[int, int]]]:
    """The (score, pixel phase, tile phase) grids where the most blocks sit on the lattice, best first."""
    found = []
    for py in range(BLOCK):
        for px in range(BLOCK):
            coef = _coefficients(luma, (py, px))
            for ty in range(TILE[0]):
                for tx in range(TILE[1]):
                    s = _smooth(_lattice_score(coef, table, (ty, tx)))
                    found.append((float(np.count_nonzero(s > MARKED)), (py, px), (ty, tx)))
    found.sort(key=lambda f: -f[0])
    return [f for f in found[:tries] if f[0] > 0]


def find(image: np.ndarray, key: SecretKey, scales: Sequence[float] = (1.0,), search_grid: bool = True,
         doubtful: int = DOUBTFUL_BITS) -> list[Mark]:
    """Every region of ``image`` carrying a mark under ``key``, with its body; [] when none.

    Each scale in ``scales`` resizes the image by that factor first (2.0 undoes a 1/2 resize).
    The image's own grid is read first; ``search_grid`` then tries every pixel and tile phase
    (a cropped copy) when that finds nothing.
    """
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    table = placement(key)
    h, w = image.shape[:2]
    for scale in scales:
        if scale > 1 and h * w * scale * scale > MAX_SEARCH_PIXELS:
            continue  # a shrunk copy is small; enlarging a large image would only cost memory
        if min(h, w) * scale < 4 * BLOCK:
            continue  # smaller than any region a mark fits in (32 whole blocks)
        img = image if scale == 1 else cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        luma = _luma(img)
        grids = [((0, 0), (0, 0))]
        found = _marks_at(luma, key, table, (0, 0), (0, 0), _coefficients(luma), doubtful)
        if not found and search_grid:
            for _, phase, tile_phase in _best_grids(luma, table):
                found = _marks_at(luma, key, table, phase, tile_phase, _coefficients(luma, phase), doubtful)
                if found:
                    grids = [(phase, tile_phase)]
                    break
        if found:
            (py, px), (ty, tx) = grids[0]
            marks = []
            for body, cells in found:
                cy = (py + (cells[:, 0] + 0.5) * BLOCK).mean() / scale
                cx = (px + (cells[:, 1] + 0.5) * BLOCK).mean() / scale
                # Block (0, 0) of this grid starts at pixel (py, px) of the scaled image and is tile block (ty, tx).
                origin = ((ty * BLOCK - py) % TILE_PX[0], (tx * BLOCK - px) % TILE_PX[1])
                marks.append(Mark(body, float(scale), origin, (float(cy), float(cx)), len(cells)))
            return marks
    return []
