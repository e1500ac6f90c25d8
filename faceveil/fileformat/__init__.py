"""The anonymized PNG: public pixels, an authenticated header, sealed face records.

Version 3 (written since this release) seals each face region's original pixels, so recovery
needs only the key: see :mod:`faceveil.fileformat.v3`, :mod:`faceveil.fileformat.original`
(:func:`~faceveil.fileformat.original.open_original`) and :mod:`faceveil.fileformat.sidecar`.
What follows describes version 2, still read (its recovery replays the model).

A file is a container of 1..n face records (an aligned crop has one; a photo one per
face) plus an optional sealed photo-level record. Two private ancillary chunks, so
viewers show the image and ignore them:

- ``fvHd``: UTF-8 JSON, the public header, authenticated by an HMAC-SHA256 tag (``mac``)
  under the key over its canonical form. It holds only what is not tied to the original:
  ``format``/``version``, ``backbone`` (an id, never a local path), ``adapter``
  (``{"name", "sha256"}`` or null), ``scheme``/``steps``/``transform``, ``compute``
  (dtype, device type), ``image_size`` [H, W], ``crop_size`` [h, w], ``state_shape`` and
  ``state_encoding`` (``lattice`` or ``float32``, or null when no state is kept),
  ``pixels_sha256`` (all output pixels, so an edited face or background is detected),
  ``faces``: a list of ``{"nonce", "check", "sealed_bytes"}`` (``check`` is
  ``SecretKey.check_value(nonce)``, a per-file value: files under one key share nothing),
  ``photo``: ``{"nonce", "sealed_bytes"}`` or null, and ``payload_sha256``.
- ``fvDt``: the sealed records back to back, faces in header order, then the photo record.
  Each is ChaCha20-Poly1305 under ``key.subkey(purpose, nonce)`` (see :mod:`faceveil.fileformat.sealing`)
  of safetensors with, per face: ``mask`` (crop mask, uint8), ``state`` (the exact clean-end
  latents: int32/int64 lattice counts or float32), ``residual_sealed`` (the autoencoder
  residual) and ``affine`` (2x3 float64, photo -> crop; absent for aligned crops). The
  photo record holds whatever arrays the photo pipeline stores (e.g. its pixel residual).

Reading an untrusted file (:func:`read_file`): a strict chunk scan that never decodes
pixels (IHDR checked against the header and a pixel limit), the header's MAC, then the
payload hash, then each record's AEAD tag, a capped inflate, dtypes and shapes checked
before arrays are built, and only then the pixels, whose hash must match. Any failure is
one :class:`FormatError` line naming the file; an authentication failure is a
:class:`TamperedError` unless ``force``, which lists what it bypassed instead.

API: :func:`write_file` / :func:`read_file` / :func:`verify_file` for records;
:func:`write_veiled` / :func:`read_veiled` for one aligned crop (a :class:`Veiled`);
:func:`read_header` for the public header alone. Version 1 files are still read.
"""

from __future__ import annotations

import importlib
from typing import Any

# Exported names and the module each lives in. Loaded on first use, so that opening a version 3
# file (``faceveil.fileformat.original``) never imports torch or the model code.
_EXPORTS = {
    "MAX_PIXELS": "png", "read_chunks": "read", "read_file": "read", "read_header": "read", "verify_file": "read",
    "DATA_CHUNK": "v3", "FORMAT": "records", "HEADER_CHUNK": "v3", "VERSION": "records", "FaceRecord": "records",
    "FileInfo": "records", "VeiledFile": "records", "canonical": "records", "header_authentic": "records",
    "pixels_sha256": "v3", "read_veiled": "veiled", "veiled_from_file": "veiled", "veiled_from_header": "veiled",
    "write_file": "write", "write_veiled": "write",
}  # fmt: skip
__all__ = sorted([*_EXPORTS, "escape"])


def __getattr__(name: str) -> Any:
    if name == "escape":
        from faceveil.errors import escape

        return escape
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
