"""The photo's own pixels over its face regions, sealed under the key.

Recovering each face crop gives the crops back exactly, but pasting a crop into
the photo resamples it, and the blended edge mixes it with the context. The
difference ``r = original - rebuilt`` over every face region closes that gap:
recovery adds it back and returns the photo bit for bit.

``r`` is taken modulo 256 (one byte per channel): recovery rebuilds exactly
what anonymization rebuilt, so the wrap-around is exact, and the length, 3 bytes
per region pixel plus a 16-byte tag, is fixed by the public regions and says
nothing about the pixels. Sealed with ChaCha20-Poly1305 under a per-photo
subkey, as :mod:`faceveil.models.residual` seals a crop's residual.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faceveil.data.photo_align import Region
from faceveil.keys import SecretKey

_AAD = b"faceveil/v1/photo-residual"


def residual_length(regions: Sequence[Region]) -> int:
    """Plaintext bytes: 3 per pixel of each region, regions in face order."""
    return 3 * sum(r.pixels for r in regions)


def seal_photo_residual(original: np.ndarray, rebuilt: np.ndarray, regions: Sequence[Region], key: SecretKey, nonce: bytes) -> bytes:
    """Seal ``original - rebuilt`` over the regions. ``rebuilt`` is brought to ``original`` in place
    region by region, as :func:`apply_photo_residual` will, so overlapping regions add up right."""
    parts = []
    for r in regions:
        view, inside = rebuilt[r.slices()], r.inside
        target = original[r.slices()][inside]
        parts.append((target - view[inside]).tobytes())  # uint8 arithmetic wraps modulo 256
        view[inside] = target
    plain = b"".join(parts)
    return key.seal("photo-residual", nonce, plain, _AAD)


def open_photo_residual(sealed: bytes, regions: Sequence[Region], key: SecretKey, nonce: bytes) -> bytes | None:
    """The plaintext, or None for a wrong key, altered data or regions that do not match."""
    plain = key.open("photo-residual", nonce, sealed, _AAD)
    return plain if plain is not None and len(plain) == residual_length(regions) else None


def apply_photo_residual(rebuilt: np.ndarray, plain: bytes, regions: Sequence[Region]) -> None:
    """``rebuilt += r`` (mod 256) over the regions, in place, in face order."""
    pos = 0
    for r in regions:
        n = 3 * r.pixels
        delta = np.frombuffer(plain, dtype=np.uint8, count=n, offset=pos).reshape(-1, 3)
        view = rebuilt[r.slices()]
        inside = r.inside
        view[inside] = view[inside] + delta  # uint8 arithmetic wraps modulo 256
        pos += n
