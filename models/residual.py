"""The autoencoder's residual inside the mask, sealed under the key.

Latent recovery gives back D(z0), not x: the autoencoder loses detail. The
residual r = x - D(z0) (int16) over the masked pixels is sealed with
ChaCha20-Poly1305 under a per-image subkey, so the key holder gets x back bit
for bit, and anyone else learns nothing. Its length is 6 bytes per masked pixel
plus a 16-byte tag, fixed by the public mask, so the ciphertext leaks nothing
through its size. A signed residual (not mod 256) keeps the error of an
inexact latent recovery as small as the latent's own: x' = clip(D(z0') + r).
"""

from __future__ import annotations

import numpy as np
from faceveil.keys import SecretKey

_AAD = b"faceveil/v1/residual"


def seal_residual(image: np.ndarray, reference: np.ndarray, mask: np.ndarray, key: SecretKey, nonce: bytes) -> bytes:
    """Encrypt image - reference (int16) at the masked pixels of (H, W, 3) uint8 arrays."""
    residual = image[mask].astype("<i2") - reference[mask].astype("<i2")
    return key.seal("residual", nonce, residual.tobytes(), _AAD)


def open_residual(sealed: bytes, mask: np.ndarray, key: SecretKey, nonce: bytes) -> np.ndarray | None:
    """The (N, 3) int16 residual, or None when the key is wrong or the data was altered."""
    raw = key.open("residual", nonce, sealed, _AAD)
    n = int(mask.sum())
    if raw is None or len(raw) != 6 * n:
        return None
    return np.frombuffer(raw, dtype="<i2").reshape(n, 3)


def add_residual(decoded: np.ndarray, residual: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """clip(decoded + residual) at the masked pixels."""
    out = decoded.copy()
    out[mask] = np.clip(decoded[mask].astype(np.int16) + residual, 0, 255).astype(np.uint8)
    return out
