"""A small set of real faces, built from photos that ship inside installed packages.

:func:`build_sample_shards` detects and aligns the faces of skimage's
astronaut (Eileen Collins), matplotlib's Grace Hopper and insightface's ``t1``
group photo (6 people), each as found and mirrored: 16 samples with 8
identities, so verification code gets genuine pairs (a face and its mirror
image) as well as impostor pairs. The shards have the same format as
``faceveil prepare``'s (:mod:`faceveil.data.shards`) and feed the tiny demo,
evaluation smoke runs and the tests::

    from faceveil.data.sample_set import build_sample_shards
    from faceveil.data.loader import make_loader

    folder = build_sample_shards("/tmp/faceveil-samples", size=256)
    loader = make_loader(folder, batch_size=4, image_size=256)

insightface's ``Tom_Hanks_54745.png`` is left out: it is already a 112 px
ArcFace crop, and an FFHQ-style crop needs about 1.3 times more context than
it holds (a quarter of the crop would be reflection padding, upscaled 2.3x).

Mirrored copies are detected afresh on the flipped photo (``meta["mirrored"]``
is true and the meta's source coordinates refer to the flipped photo); each
is matched to its original face by position to give it the same label.

The call is idempotent: a folder that already holds the set, built with the
same settings from the same photos, is returned untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from faceveil.data.backends import DetectorSpec
from faceveil.data.extract import AlignedFace, ExtractConfig, FaceExtractor
from faceveil.data.images import load_image
from faceveil.data.samples import sample_photo_path
from faceveil.data.shards import FORMAT_NAME, FORMAT_VERSION, INDEX_NAME, REJECTS_NAME, SHARD_NAME, encode_sample, read_index, write_json, write_rejects, write_tar
from faceveil.errors import InputError

# photo name -> identity label of its one face (None: a group photo, one label per face)
SAMPLE_SET_PHOTOS: dict[str, str | None] = {"astronaut": "eileen_collins", "grace_hopper": "grace_hopper", "t1_group": None}


def _face_centre(face: AlignedFace) -> np.ndarray:
    b = face.meta["bbox"]
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])


def _settings(size: int, samples_per_shard: int, mirror: bool, detector: DetectorSpec) -> dict[str, Any]:
    photos = {}
    for name in SAMPLE_SET_PHOTOS:
        path = sample_photo_path(name)
        photos[name] = {"file": path.name, "bytes": path.stat().st_size}
    return {"sample_set": {"size": size, "samples_per_shard": samples_per_shard, "mirror": mirror, "detector": detector.to_dict(), "photos": photos}, "version": FORMAT_VERSION}


def _is_built(out: Path, settings: dict[str, Any]) -> bool:
    try:
        index = read_index(out)
    except InputError:
        return False
    if index.get("settings") != settings:
        return False
    return all((out / s["name"]).is_file() and (out / s["name"]).stat().st_size == s.get("tar_bytes") for s in index["shards"])


def _label(name: str, fixed: str | None, face_index: int) -> str:
    return fixed if fixed is not None else f"{name}_face{face_index}"


def build_sample_shards(
    out_dir: str | os.PathLike[str],
    size: int = 256,
    samples_per_shard: int = 4,
    mirror: bool = True,
    detector: DetectorSpec | None = None,
) -> Path:
    """Build (or find) the sample shards in ``out_dir``; returns the folder.

    With the defaults: 16 samples in 4 shards of 4, ``size`` px crops, dlib
    detection (offline). Every face of at least 64 px is kept.
    """
    detector = detector or DetectorSpec()
    out = Path(out_dir)
    settings = _settings(size, samples_per_shard, mirror, detector)
    if _is_built(out, settings):
        return out
    extractor = FaceExtractor(ExtractConfig(size=size, faces="all", detector=detector))
    samples: list[dict[str, Any]] = []
    rejects: list[list[Any]] = []
    faces_found = 0
    for source_index, (name, fixed_label) in enumerate(SAMPLE_SET_PHOTOS.items()):
        path = sample_photo_path(name)
        photo = load_image(path)
        originals, orig_rejects, found = extractor.extract(photo, str(path))
        faces_found += found
        rejects += [[r.source, r.face, r.kind, r.reason] for r in orig_rejects]
        variants: list[tuple[str, list[AlignedFace]]] = [("orig", originals)]
        if mirror:
            flipped, flip_rejects, found = extractor.extract(np.ascontiguousarray(photo[:, ::-1]), str(path))
            faces_found += found
            rejects += [[f"{r.source} (mirrored)", r.face, r.kind, r.reason] for r in flip_rejects]
            variants.append(("mirror", flipped))
        width = photo.shape[1]
        for variant, faces in variants:
            for face in faces:
                if variant == "orig":
                    label = _label(name, fixed_label, face.face_index)
                else:
                    # The original face whose centre lands nearest this one's after flipping back.
                    c = _face_centre(face)
                    c[0] = width - 1 - c[0]
                    nearest = min(originals, key=lambda o: float(np.linalg.norm(_face_centre(o) - c)), default=None)
                    label = _label(name, fixed_label, nearest.face_index) if nearest is not None else ""
                meta = dict(face.meta, source=str(path), relpath=path.name, source_index=source_index, label=label, mirrored=variant == "mirror")
                samples.append(encode_sample(f"{name}-{variant}-{face.face_index:02d}", face.image, face.mask, meta))
    if not samples:
        raise InputError("no faces found in the bundled sample photos")
    shards = []
    for k in range(0, len(samples), samples_per_shard):
        tar = out / SHARD_NAME.format(k // samples_per_shard)
        count = write_tar(tar, samples[k : k + samples_per_shard])
        shards.append({"name": tar.name, "samples": count, "images": None, "faces_found": None, "tar_bytes": tar.stat().st_size})
    write_rejects(out / REJECTS_NAME, rejects)
    index = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "settings": settings,
        "shards": shards,
        "samples": len(samples),
        "photos": len(SAMPLE_SET_PHOTOS),
        "faces_found": faces_found,
        "rejects": len(rejects),
        "labels": sorted({json.loads(s["meta.json"])["label"] for s in samples}),
        "digest": hashlib.sha256(b"".join(s["image.png"] for s in samples)).hexdigest(),
    }
    write_json(out / INDEX_NAME, index)
    return out
