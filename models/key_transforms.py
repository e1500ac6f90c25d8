"""Key injection: keyed bijections of the starting noise (where the pipeline's key region says).

Every transform here maps i.i.d. N(0, 1) entries to i.i.d. N(0, 1) entries, so a
keyed latent is still a plausible starting noise, and ``inverse(forward(z)) == z``
bit for bit on the exact scheme's lattice (multiples of 2**-20 in float64).

- ``rotation`` (default): many rounds of keyed Givens rotations over keyed pairings of
  the entries, each written as three integer-rounded lifting shears on the lattice
  counts, then keyed signs. Bijective on the lattice, norm-preserving to lattice
  precision, and it mixes magnitudes: only the total norm survives, not |z| or its
  multiset. Off the lattice (the float32 DDIM schemes) it is exact to float rounding.
  Runs with torch on z's device; the key stream stays device-independent bytes, and
  the shear coefficients are dyadic or computed with IEEE +,*,/ on the CPU, so every
  device rounds the same.
- ``shuffle``: a keyed permutation followed by sign flips; keeps the multiset of
  magnitudes, a fingerprint of the original noise.
- ``signflip``: z' = s * z with Rademacher s, the published method's transform, kept
  only to reproduce it. **Insecure**: keeps |z| in place, so a keyless prior
  (|z'| x sign(prior mean)) restores most signs, and one known pair reveals the signs.

Per image, the key stream is ``keystream(key, nonce, "<transform>/<part>")``, so two
images never share a stream even under one key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from faceveil.keys import SecretKey, keystream
from faceveil.models.settings import LATTICE
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


class Rotation:
    """Keyed Givens rotations as integer lifting shears (see the module docstring)."""

    name = "rotation"
    rounds = 16

    def _plan(self, key: SecretKey, nonce: bytes, n: int, device: torch.device):
        half = n // 2
        stream = np.frombuffer(keystream(key, nonce, "rotation/v1", self.rounds * (4 * n + 4 * half) + (n + 7) // 8), dtype=np.uint8)
        pos, plan = 0, []
        for _ in range(self.rounds):
            draws = stream[pos : pos + 4 * n].view("<u4").astype(np.int64)
            pos += 4 * n
            # t = tan(theta / 2), dyadic in (-1, 1); s = sin(theta) = 2t / (1 + t^2) with correctly rounded ops.
            t = (stream[pos : pos + 4 * half].view("<u4").astype(np.float64) + 0.5) / 2.0**31 - 1.0
            pos += 4 * half
            s = 2.0 * t / (1.0 + t * t)
            perm = torch.argsort(torch.from_numpy(draws).to(device), stable=True)
            plan.append((perm[0 : 2 * half : 2], perm[1 : 2 * half : 2], torch.from_numpy(-t).to(device), torch.from_numpy(s).to(device)))
        bits = np.unpackbits(stream[pos:])[:n]
        signs = torch.from_numpy(1.0 - 2.0 * bits.astype(np.float64)).to(device)
        return plan, signs

    def apply(self, values: torch.Tensor, key: SecretKey, nonce: bytes, inverse: bool = False) -> torch.Tensor:
        """Rotate a 1-D tensor of entries (any device); returns float64."""
        c = values.detach().to(torch.float64) / LATTICE  # lattice counts: integers for the exact scheme
        plan, signs = self._plan(key, nonce, c.numel(), c.device)
        if inverse:
            c = c * signs
        for i_a, i_b, p, s in reversed(plan) if inverse else plan:
            a, b = c[i_a], c[i_b]
            sign = -1.0 if inverse else 1.0
            a = a + sign * torch.round(p * b)
            b = b + sign * torch.round(s * a)
            a = a + sign * torch.round(p * b)
            c = c.index_put((i_a,), a).index_put((i_b,), b)
        if not inverse:
            c = c * signs
        return c * LATTICE

    def forward(self, values: np.ndarray, key: SecretKey, nonce: bytes) -> np.ndarray:
        return self.apply(torch.from_numpy(np.asarray(values, dtype=np.float64)), key, nonce).numpy()

    def inverse(self, values: np.ndarray, key: SecretKey, nonce: bytes) -> np.ndarray:
        return self.apply(torch.from_numpy(np.asarray(values, dtype=np.float64)), key, nonce, inverse=True).numpy()


TRANSFORMS: dict[str, type[KeyTransform]] = {"rotation": Rotation, "shuffle": Shuffle, "signflip": SignFlip}
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
    on_device = getattr(transform, "apply", None)
    for i, nonce in enumerate(nonces):
        idx = sel[i].flatten().nonzero().squeeze(1)
        if on_device is not None:
            new = on_device(z[i].flatten()[idx], key, nonce, inverse).to(z.dtype)
        else:
            values = z[i].flatten()[idx].detach().cpu().double().numpy()
            new = torch.from_numpy(np.ascontiguousarray(fn(values, key, nonce))).to(device=z.device, dtype=z.dtype)
        out[i].view(-1)[idx] = new
    return out
