"""One aligned crop as a :class:`Veiled`: the single-record case that the CLI, validation and evaluation use."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from faceveil.errors import FormatError, KeyMismatchError
from faceveil.fileformat.read import read_file
from faceveil.fileformat.records import VeiledFile, escape, file_info
from faceveil.fileformat.v1 import veiled_from_v1_header
from faceveil.keys import SecretKey
from faceveil.models.pipeline import Veiled

def veiled_from_file(vf: VeiledFile, index: int = 0) -> Veiled:
    """A :class:`Veiled` for face ``index`` of an aligned-crop file (the image is the crop).

    From a version 3 file it holds no latent state (files keep none): ``original`` is the
    recovered crop, exact; replaying the model from it re-encodes the pixels."""
    if vf.version == 3:
        return _veiled_v3(vf, index)
    r = vf.records[index]
    if r.affine is not None or vf.image is None or vf.image.shape[:2] != r.mask.shape:
        raise FormatError(f"{vf.path}: a photo file; read it with read_file and crop each face")
    i = vf.info
    return Veiled(
        image=vf.image, mask=r.mask, nonce=r.nonce, settings=i.settings, key_check=r.check, backbone=i.backbone,
        adapter_hash=i.adapter_hash, adapter_name=i.adapter_name, state=r.state, sealed_residual=r.sealed_residual,
        compute=dict(i.compute), authenticated=vf.authenticated, background_intact=bool(vf.pixels_intact),
        key_fingerprint=vf.header.get("key_fingerprint"),
    )


def _veiled_v3(vf: VeiledFile, index: int) -> Veiled:
    f = vf.faces[index]
    if vf.image is None or f.box != (0, 0, *vf.image.shape[:2]) or f.affine is not None or vf.info is None:
        raise FormatError(f"{vf.path}: a photo file; its original is read_file(path, key).original")
    i = vf.info
    return Veiled(
        image=vf.image, mask=f.inside, nonce=f.nonce, settings=i.settings, key_check=f.check, backbone=i.backbone,
        adapter_hash=i.adapter_hash, adapter_name=i.adapter_name, state=None, compute=dict(i.compute),
        authenticated=vf.authenticated, background_intact=bool(vf.pixels_intact), original=vf.original,
        base_sha256=i.base_sha256,
    )


def read_veiled(path: str | os.PathLike[str], key: SecretKey | None = None, allow_unverified: bool = False) -> Veiled:
    """Read a one-face file written by :func:`write_veiled` (the key opens its sealed record).

    ``allow_unverified`` is ``force``: failed authentication is recorded
    (``authenticated``/``background_intact`` False) instead of raised.
    """
    if key is None:
        raise FormatError(f"{path}: the face record is sealed; reading it needs the key")
    vf = read_file(path, key, force=allow_unverified)
    if not vf.records and not vf.faces:
        raise KeyMismatchError(f"{path}: the sealed face record does not open under this key (--force cannot bypass encryption)")
    if len(vf.header.get("faces") or [None]) != 1:
        raise FormatError(f"{path}: a photo with {len(vf.header['faces'])} faces; read it with read_file")
    return veiled_from_file(vf)


def veiled_from_header(header: dict[str, Any], image: np.ndarray, mask: np.ndarray, state: torch.Tensor | None) -> Veiled:
    """A :class:`Veiled` from a public header (e.g. the JSON ``faceveil inspect`` printed) and pixels."""
    try:
        if header.get("version") == 1:
            return veiled_from_v1_header(header, image, mask, state)
        info = file_info(header)
        faces = header["faces"]
        if len(faces) != 1:
            raise ValueError(f"it describes {len(faces)} faces; give one face's crop")
        if list(header.get("image_size", image.shape[:2])) != list(image.shape[:2]):
            raise ValueError(f"it describes a {header['image_size']} image, not {list(image.shape[:2])}")
        return Veiled(
            image=image, mask=mask, nonce=bytes.fromhex(faces[0]["nonce"]), settings=info.settings,
            key_check=str(faces[0]["check"]), backbone=info.backbone, adapter_hash=info.adapter_hash,
            adapter_name=info.adapter_name, state=state, compute=dict(info.compute),
        )
    except KeyError as exc:
        raise FormatError(f"faceveil header lacks the field {escape(exc.args[0])}") from None
    except (TypeError, ValueError) as exc:
        raise FormatError(f"faceveil header is invalid: {escape(exc)}") from None
