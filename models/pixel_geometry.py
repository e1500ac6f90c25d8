"""What pixel-only recovery must rebuild of a face, packed into the 64-bit watermark body.

A face anonymized for pixel recovery (``--pixel-recovery``) is fixed by public, reproducible
values only: its crop mask is a template (:func:`template_mask`, no landmarks), and its
photo -> crop similarity is quantized (:func:`quantize`) to values the body carries:

======  ====  ================================================================
bits    what
======  ====  ================================================================
1       mask extent (face / head)
9       log2 of the scale, 1/64 octave steps over [2**-6, 2**2)
9       rotation, 1/512 turn steps
7       the template centre's row in quarter pixels, modulo the 32 px watermark tile
8       its column in quarter pixels, modulo the 64 px tile
30      random: with the geometry, it derives the face's nonce (:func:`pixel_nonce`)
======  ====  ================================================================

The centre is only known modulo the tile; :func:`resolve` picks the one next to the marked
region that :func:`faceveil.watermark.find` located, in the coordinates of the image as it is
now (cropped or resized copies included).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass

import cv2
import numpy as np

from faceveil.keys import NONCE_BYTES, SecretKey
from faceveil.watermark import ID_BYTES, TILE_PX, Mark

# Template crop masks (centre and half axes as fractions of the crop side). Measured against the
# landmark masks of the bundled faces: "face" covers 96 % of their "face" masks on average.
TEMPLATES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "face": ((0.5, 0.52), (0.42, 0.48)),
    "head": ((0.5, 0.5), (0.48, 0.5)),
}
EXTENT_BITS = ("face", "head")
SCALE_STEPS, SCALE_MIN = 64, -6  # log2 scale = q / 64 - 6, q in [0, 512)
ANGLE_STEPS = 512
QUARTERS = 4
RANDOM_BITS = 30
# The body's fields, most significant first: extent, scale, angle, centre row and column (quarter
# pixels modulo the tile), random. 64 bits in all.
FIELD_BITS = (1, 9, 9, 7, 8, RANDOM_BITS)


def template_mask(size: int, extent: str = "face") -> np.ndarray:
    """``(size, size)`` bool: the crop mask every pixel-recoverable face uses."""
    (cx, cy), (ax, ay) = TEMPLATES[extent]
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.ellipse(mask, (round(cx * size), round(cy * size)), (round(ax * size), round(ay * size)), 0, 0, 360, 1, thickness=-1)
    return mask.astype(bool)


def _anchor(size: int, extent: str) -> np.ndarray:
    """The template's centre in crop pixels: the point whose photo position the body carries."""
    (cx, cy), _ = TEMPLATES[extent]
    return np.array([round(cx * size), round(cy * size)], dtype=np.float64)


@dataclass(frozen=True)
class Geometry:
    """A quantized face placement: the template centre at photo pixel (cy4 / 4, cx4 / 4)."""

    cy4: int
    cx4: int
    scale_q: int
    angle_q: int
    extent: str = "face"

    def linear(self) -> np.ndarray:
        s = 2.0 ** (self.scale_q / SCALE_STEPS + SCALE_MIN)
        a = 2 * math.pi * self.angle_q / ANGLE_STEPS
        return s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    def matrix(self, size: int) -> np.ndarray:
        """The ``(2, 3)`` photo -> crop similarity (the same bits wherever it is rebuilt)."""
        a = self.linear()
        centre = np.array([self.cx4 / QUARTERS, self.cy4 / QUARTERS])
        return np.concatenate([a, (_anchor(size, self.extent) - a @ centre)[:, None]], axis=1)


def quantize(matrix: np.ndarray, size: int, extent: str = "face") -> Geometry | None:
    """The nearest :class:`Geometry` to a similarity ``matrix``; None when its scale is out of range."""
    m = np.asarray(matrix, dtype=np.float64)
    s = math.hypot(m[0, 0], m[1, 0])
    q = round((math.log2(s) - SCALE_MIN) * SCALE_STEPS)
    if not 0 <= q < 8 * SCALE_STEPS:
        return None
    angle = round(math.atan2(m[1, 0], m[0, 0]) / (2 * math.pi) * ANGLE_STEPS) % ANGLE_STEPS
    centre = np.linalg.solve(m[:, :2], _anchor(size, extent) - m[:, 2])  # photo (x, y) of the anchor
    return Geometry(round(centre[1] * QUARTERS), round(centre[0] * QUARTERS), q, angle, extent)


def pack(g: Geometry, random_bits: int | None = None) -> bytes:
    """The 8-byte watermark body of ``g`` (30 fresh random bits unless given)."""
    rnd = secrets.randbits(RANDOM_BITS) if random_bits is None else random_bits
    ty, tx = TILE_PX[0] * QUARTERS, TILE_PX[1] * QUARTERS
    fields = (EXTENT_BITS.index(g.extent), g.scale_q, g.angle_q, g.cy4 % ty, g.cx4 % tx, rnd)
    value = 0
    for field, bits in zip(fields, FIELD_BITS):
        value = (value << bits) | (field & ((1 << bits) - 1))
    return value.to_bytes(ID_BYTES, "big")


@dataclass(frozen=True)
class Body:
    extent: str
    scale_q: int
    angle_q: int
    cy4_mod: int  # quarter pixels modulo the tile
    cx4_mod: int


def unpack(body: bytes) -> Body:
    value = int.from_bytes(body, "big")
    fields = []
    for bits in reversed(FIELD_BITS):
        fields.append(value & ((1 << bits) - 1))
        value >>= bits
    extent, scale, angle, cy, cx, _ = reversed(fields)
    return Body(EXTENT_BITS[extent], scale, angle, cy, cx)


def _nearest(residue: int, period: int, estimate: float) -> int:
    return residue + period * round((estimate - residue) / period)


def resolve(mark: Mark, size: int) -> Geometry:
    """The geometry of ``mark``'s face in the coordinates of the image :func:`find` read at ``mark.scale``
    (the input resized by that factor)."""
    b = unpack(mark.body)
    ty, tx = TILE_PX[0] * QUARTERS, TILE_PX[1] * QUARTERS
    # Photo pixel Y was tile pixel Y % 32; here, pixel y sits at tile pixel (y + origin) % 32.
    cy_res = (b.cy4_mod - QUARTERS * mark.origin[0]) % ty
    cx_res = (b.cx4_mod - QUARTERS * mark.origin[1]) % tx
    # The marked blocks' centre lies near the template's centre: both are the middle of the ellipse.
    est_y, est_x = (c * mark.scale * QUARTERS for c in mark.centroid)
    return Geometry(_nearest(cy_res, ty, est_y), _nearest(cx_res, tx, est_x), b.scale_q, b.angle_q, b.extent)


def pixel_nonce(key: SecretKey, body: bytes) -> bytes:
    """The face's nonce, from its body: recovery reads the body from the pixels, so needs no header."""
    return hmac.new(key.subkey("pixel-nonce", b""), b"faceveil/v1/pixel-nonce\0" + body, hashlib.sha256).digest()[:NONCE_BYTES]
