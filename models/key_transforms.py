"""Key injection: keyed bijections of the starting noise inside the face mask.

Every transform here maps i.i.d. N(0, 1) entries to i.i.d. N(0, 1) entries, so a
keyed latent is still a plausible starting noise, and is exact in floating point
(it only permutes entries and flips signs), so ``inverse(forward(z)) == z`` bit
for bit and lattice-valued latents stay on their lattice.

- ``signflip``: z' = s * z with Rademacher s, the published method's transform.
  Leaks |z| and, given one (original, anonymized) pair, the signs.
- ``shuffle``: a keyed permutation of the masked entries followed by sign flips;
  |z| is no longer aligned with the original positions.

Per image, the key stream is ``keystream(key, nonce, "<transform>/<part>")``, so two
images never share a stream even under one key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from faceveil.keys import SecretKey, keystream
from faceveil.models.settings import TRANSFORMS as TRANSFORM_NAMES


class KeyTransform(Protocol):
    name: str

    def forward(self, values: np.ndarray, key: SecretKey, nonce: bytes) -> np.ndarray: ...

    def inverse(self, values: np.ndarray, key: SecretKey, nonce: bytes) -> np.ndarray: ...


def _signs(key: SecretKey, nonce: bytes, purpose: str, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(keystream(key, nonce, purpose, (n + 7) // 8), dtype=np.uint8))[:n]
    return 1.0 - 2.0 * bits.astype(np.float64)


def _permutation(key: SecretKey, nonce: bytes, purpose: str, n: int) -> np.ndarray:
    # argsort of 64-bit uniform keys: uniform over permutations up to ties (p ~ n^2 / 2^65).
    draws = np.frombuffer(keystream(key, nonce, purpose, 8 * n), dtype="<u8")
    return np.argsort(draws, kind="stable")


class SignFlip:
    name = "signflip"

    def forward(self, values: np.ndarray, key: SecretKey, nonce: bytes) -> np.ndarray:
        return values * _signs(key, nonce, "signflip/signs", values.size).astype(values.dtype)

    inverse = forward  # an involution


class Shuffle:
    name = "shuffle"

    def forward(self, values: np.ndarray, key: SecretKey, nonce: bytes) -> np.ndarray:
        perm = _permutation(key, nonce, "shuffle/perm", values.size)
        return values[perm] * _signs(key, nonce, "shuffle/signs", values.size).astype(values.dtype)

    def inverse(self, values: np.ndarray, key: SecretKey, nonce: bytes) -> np.ndarray:
        perm = _permutation(key, nonce, "shuffle/perm", values.size)
        unsigned = values * _signs(key, nonce, "shuffle/signs", values.size).astype(values.dtype)
        out = np.empty_like(unsigned)
        out[perm] = unsigned
        return out


TRANSFORMS: dict[str, type[KeyTransform]] = {"signflip": SignFlip, "shuffle": Shuffle}
assert tuple(sorted(TRANSFORMS)) == tuple(sorted(TRANSFORM_NAMES))


def get_transform(name: str) -> KeyTransform:
    try:
        return TRANSFORMS[name]()
    except KeyError:
        raise ValueError(f"unknown key transform {name!r}; choose from {', '.join(TRANSFORMS)}") from None


def apply_key(
    z: torch.Tensor,
    mask: torch.Tensor,
    transform: KeyTransform,
    key: SecretKey,
    nonces: Sequence[bytes],
    inverse: bool = False,
) -> torch.Tensor:
    """Apply the keyed transform to the entries of ``z`` (B, C, h, w) where ``mask`` (B, 1, h, w) is set.

    Entries are taken in channel-major order, so the stream positions are the
    same on every device. Entries outside the mask are returned unchanged.
    """
    if z.shape[0] != len(nonces) or mask.shape[0] != z.shape[0]:
        raise ValueError("z, mask and nonces must have the same batch size")
    sel = mask.to(torch.bool).expand_as(z)
    out = z.clone(memory_format=torch.contiguous_format)
    fn = transform.inverse if inverse else transform.forward
    for i, nonce in enumerate(nonces):
        idx = sel[i].flatten().nonzero().squeeze(1)
        values = z[i].flatten()[idx].detach().cpu().double().numpy()
        new = torch.from_numpy(np.ascontiguousarray(fn(values, key, nonce))).to(device=z.device, dtype=z.dtype)
        out[i].view(-1)[idx] = new
    return out
