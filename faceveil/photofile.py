"""Anonymized photos in files: version 3 (written) and version 2 (read, replayed).

Version 3 (:func:`write_photo`): per face, the region of the photo its treatment changed,
with the original pixels there, sealed (:mod:`faceveil.fileformat.v3`); recovery is a
paste. What follows describes version 2, still read for replay: one sealed face record
per face, one photo record.

An adapter between :class:`~faceveil.models.photo.VeiledPhoto` and the record API of
:mod:`faceveil.fileformat` (:func:`~faceveil.fileformat.write_file` /
:func:`~faceveil.fileformat.read_file`). Per face, the sealed record holds the crop
mask, the exact latents, the crop's sealed residual and ``affine``, the photo -> crop
similarity. The photo record (sealed too) holds:

- ``residual_sealed``: the photo's pixels over the face regions
  (:mod:`faceveil.models.photo_residual`, itself AEAD-sealed under its own nonce);
- ``residual_nonce``: that nonce;
- ``face_index``: each face's rank among the faces detected in the photo.

A file is a photo file when it has a photo record (``header["photo"]``); an aligned
crop has none.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from faceveil.errors import FormatError, KeyMismatchError
from faceveil.fileformat import FaceRecord, FileInfo, read_file, write_file
from faceveil.fileformat.records import model_description
from faceveil.fileformat.v3 import SealedFace
from faceveil.fileformat.write import write_v3
from faceveil.keys import SecretKey, new_nonce
from faceveil.models.photo import PhotoFace, VeiledPhoto
from faceveil.models.pipeline import Veiled


def sealed_faces(vp: VeiledPhoto) -> list[SealedFace]:
    """Each face's region of the photo (every pixel its treatment may change) for the version 3 record."""
    hw = vp.image.shape[:2]
    out = []
    for f in vp.faces:
        r = f.region(hw)
        if r is None:
            raise ValueError(f"face {f.index}: its region does not reach the photo")
        nonce = f.veiled.nonce if f.veiled is not None else new_nonce()
        diffusion = f.veiled is not None
        out.append(SealedFace(nonce, (r.y0, r.x0, r.y1, r.x1), r.inside, index=f.index,
                              treatment=getattr(f, "treatment", "diffusion" if diffusion else "cover"),
                              affine=np.asarray(f.matrix, np.float64) if diffusion else None,
                              crop_mask=f.mask if diffusion else None))
    return out


def write_photo(path: str | os.PathLike[str], vp: VeiledPhoto, key: SecretKey, record: str = "embedded", quality: int = 95,
                original_file: bytes | None = None, original_suffix: str | None = None) -> Path:
    """Atomically write an anonymized photo (version 3): each face region's original pixels, sealed."""
    if not vp.faces:
        raise ValueError("a photo file needs at least one face")
    if vp.original is None:
        raise ValueError("writing a photo file needs the original (VeiledPhoto.original, set by PhotoAnonymizer.anonymize)")
    drawn = [f.veiled for f in vp.faces if f.veiled is not None]
    model = model_description(FileInfo.of(drawn[0])) if drawn else None
    return write_v3(path, vp.image, vp.original, sealed_faces(vp), model, key, record, quality, original_file, original_suffix)


def write_photo_v2(path: str | os.PathLike[str], vp: VeiledPhoto, key: SecretKey) -> Path:
    """The version 2 layout (replayed through the model on recovery); kept to test reading old files."""
    if not vp.faces or any(f.veiled is None for f in vp.faces):
        raise ValueError("a photo file needs at least one anonymized face")
    records = [FaceRecord(f.veiled.nonce, f.mask, f.veiled.state, f.veiled.sealed_residual, np.asarray(f.matrix, np.float64))
               for f in vp.faces]
    extra = {
        "residual_sealed": np.frombuffer(vp.sealed_residual or b"", dtype=np.uint8),
        "residual_nonce": np.frombuffer(vp.nonce, dtype=np.uint8),
        "face_index": np.array([f.index for f in vp.faces], dtype=np.int32),
        # Faces of one photo may run in batches of different bucket sizes; exact recovery needs each one's.
        "face_bucket": np.array([int(f.veiled.compute.get("bucket", 1)) for f in vp.faces], dtype=np.int32),
    }
    return write_file(path, vp.image, records, FileInfo.of(vp.faces[0].veiled), key, photo_extra=extra)


def is_photo_header(header: dict | None) -> bool:
    """A version 2 photo file (replayed face by face); version 3 files of any kind open alike."""
    return bool(header) and header.get("version") == 2 and header.get("photo") is not None


def read_photo(path: str | os.PathLike[str], key: SecretKey, force: bool = False) -> VeiledPhoto:
    """Read and authenticate a version 2 photo file for replay (see :func:`faceveil.fileformat.read_file`);
    ``force`` lets failed authentication through (listed in ``meta["bypassed"]``). Version 3 files
    need no replay: ``read_file(path, key).original`` is the photo."""
    vf = read_file(path, key, force=force)
    if not vf.records:
        raise KeyMismatchError(f"{path}: the sealed face records do not open under this key (--force cannot bypass encryption)")
    extra = vf.photo_extra or {}
    if any(r.affine is None for r in vf.records) or "residual_nonce" not in extra:
        raise FormatError(f"{path}: not a photo file (an aligned crop?); recover it without photo handling")
    index = extra.get("face_index", np.arange(len(vf.records)))
    buckets = extra.get("face_bucket")
    faces = []
    for i, r in enumerate(vf.records):
        size = r.mask.shape[0]
        info = vf.info
        v = Veiled(
            image=np.zeros((size, size, 3), np.uint8), mask=r.mask, nonce=r.nonce, settings=info.settings, key_check=r.check,
            backbone=info.backbone, adapter_hash=info.adapter_hash, adapter_name=info.adapter_name, state=r.state,
            sealed_residual=r.sealed_residual, compute=dict(info.compute), authenticated=vf.authenticated,
        )
        if buckets is not None and i < len(buckets):
            v.compute["bucket"] = str(int(buckets[i]))  # validated by the Anonymizer on recovery
        faces.append(PhotoFace(index=int(index[i]) if i < len(index) else i, matrix=np.asarray(r.affine, np.float64), mask=r.mask, veiled=v))
    sealed = extra["residual_sealed"].tobytes() or None
    vp = VeiledPhoto(vf.image, faces, extra["residual_nonce"].tobytes(), sealed)
    vp.authenticated = vf.authenticated
    vp.meta = {"pixels_intact": vf.pixels_intact, "bypassed": list(vf.bypassed), "header": vf.header}
    return vp
