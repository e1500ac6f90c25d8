"""The faces an evaluation runs on: aligned crops with masks, landmarks and identity labels.

:func:`load_faces` reads them from the bundled sample set, a shard folder, a folder
of photos (detected, aligned and masked here) or a folder of aligned crops, and
caches the crops in the run folder, so a resumed run does not detect again.
A photo or sample that cannot be used is reported in one line naming it and the
reason, and the rest goes on.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faceveil.errors import FaceveilError, InputError

PROG = "faceveil evaluate"


def warn(message: str) -> None:
    """One line on stderr, in the CLI's ``faceveil COMMAND: PATH: reason`` form."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


@dataclass
class Notes:
    """One-line notices that also go into the report (skipped inputs, skipped metrics)."""

    skipped_inputs: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def bad_input(self, where: str, reason: str) -> None:
        line = reason if reason.startswith(f"{where}: ") else f"{where}: {reason}"
        self.skipped_inputs.append(line)
        warn(line)

    def note(self, message: str) -> None:
        if message not in self.messages:
            self.messages.append(message)
            warn(message)


@dataclass
class EvalFace:
    id: str  # unique and safe as a file name
    image: np.ndarray  # (S, S, 3) uint8, aligned crop
    mask: np.ndarray  # (S, S) bool face mask
    label: str = ""  # identity ("" when unknown)
    source: str = ""
    relpath: str = ""  # path inside the input folder, without suffix (pairs files name photos by it)
    landmarks5: np.ndarray | None = None  # (5, 2) crop pixels, insightface order
    landmarks: np.ndarray | None = None  # dense landmarks, crop pixels

    def meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "source": self.source,
            "relpath": self.relpath,
            "landmarks5": None if self.landmarks5 is None else np.round(self.landmarks5, 3).tolist(),
            "landmarks": None if self.landmarks is None else np.round(self.landmarks, 3).tolist(),
        }


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", text).strip("._") or "face"


def _resize(face: EvalFace, size: int) -> EvalFace:
    h, w = face.image.shape[:2]
    if (h, w) == (size, size):
        return face
    if h != w:
        raise InputError(f"crop is {w}x{h}, not square")
    scale = size / h
    img = np.asarray(Image.fromarray(face.image).resize((size, size), Image.Resampling.LANCZOS))
    mask = np.asarray(Image.fromarray(face.mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)) >= 128

    def sc(p: np.ndarray | None) -> np.ndarray | None:
        return None if p is None else (np.asarray(p, dtype=np.float64) + 0.5) * scale - 0.5

    return EvalFace(face.id, img, mask, face.label, face.source, face.relpath, sc(face.landmarks5), sc(face.landmarks))


# --------------------------------------------------------------------------- sources


def _from_shards(urls: Any, notes: Notes) -> list[EvalFace]:
    import webdataset as wds

    from faceveil.data.loader import resolve_urls
    from faceveil.data.shards import decode_sample

    def handler(exn: BaseException) -> bool:
        notes.bad_input("shards", f"unreadable data skipped ({exn.__class__.__name__}: {exn})")
        return True

    faces: list[EvalFace] = []
    pipeline = wds.DataPipeline(wds.SimpleShardList(resolve_urls(urls)), wds.tarfile_to_samples(handler=handler))
    for sample in pipeline:
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            d = decode_sample(sample)
        except (FaceveilError, OSError, ValueError) as exc:
            notes.bad_input(where, str(exc))
            continue
        meta = d.meta
        rel = str(meta.get("relpath", ""))
        faces.append(
            EvalFace(
                id=safe_id(d.key),
                image=np.ascontiguousarray(d.image),
                mask=np.ascontiguousarray(d.mask),
                label=str(meta.get("label", "")),
                source=str(meta.get("source", "")),
                relpath=str(Path(rel).with_suffix("")) if rel else "",
                landmarks5=np.asarray(meta["landmarks5"], dtype=np.float64) if meta.get("landmarks5") else None,
                landmarks=np.asarray(meta["landmarks"], dtype=np.float64) if meta.get("landmarks") else None,
            )
        )
    return faces


def _extractor(cfg: Any):  # -> FaceExtractor
    from faceveil.data.backends import DetectorSpec
    from faceveil.data.extract import ExtractConfig, FaceExtractor

    spec = DetectorSpec(name=cfg.detector, threshold=cfg.threshold, upsample=cfg.upsample)
    return FaceExtractor(ExtractConfig(size=cfg.size, faces=cfg.faces, min_face=cfg.min_face, detector=spec))


def _from_folder(cfg: Any, wanted: set[str] | None, notes: Notes, progress: bool) -> list[EvalFace]:
    from tqdm.auto import tqdm

    from faceveil.data.images import load_image
    from faceveil.data.inputs import collect_photos

    photos, missing = collect_photos([cfg.path], labels="folder")
    for m in missing:
        notes.bad_input(m, "no such file or folder")
    if wanted is not None:
        photos = [p for p in photos if str(Path(p.relpath).with_suffix("")) in wanted]
    extractor = _extractor(cfg)
    faces: list[EvalFace] = []
    for photo in tqdm(photos, desc="detect+align", unit="photo", disable=not progress):
        try:
            image = load_image(photo.path)
        except FaceveilError as exc:
            notes.bad_input(photo.path, str(exc))
            continue
        aligned, rejects, _ = extractor.extract(image, photo.path)
        for r in rejects:
            if r.face is None or r.kind == "error":
                notes.bad_input(photo.path, r.reason if r.face is None else f"face {r.face}: {r.reason}")
        stem = str(Path(photo.relpath).with_suffix(""))
        for a in aligned:
            fid = stem if cfg.faces == "largest" or len(aligned) == 1 else f"{stem}#{a.face_index}"
            faces.append(
                EvalFace(
                    id=safe_id(fid),
                    image=a.image,
                    mask=a.mask,
                    label=photo.label,
                    source=photo.path,
                    relpath=stem,
                    landmarks5=np.asarray(a.meta["landmarks5"], dtype=np.float64),
                    landmarks=np.asarray(a.meta["landmarks"], dtype=np.float64),
                )
            )
    return faces


def _from_aligned(cfg: Any, wanted: set[str] | None, notes: Notes) -> list[EvalFace]:
    from faceveil.data.detect_dlib import DlibDetector
    from faceveil.data.images import elliptical_mask, load_image, load_mask
    from faceveil.data.inputs import collect_photos

    photos, missing = collect_photos([cfg.path], labels="folder")
    for m in missing:
        notes.bad_input(m, "no such file or folder")
    if wanted is not None:
        photos = [p for p in photos if str(Path(p.relpath).with_suffix("")) in wanted]
    detector = DlibDetector(upsample=cfg.upsample)
    faces: list[EvalFace] = []
    for photo in photos:
        try:
            image = load_image(photo.path)
            h, w = image.shape[:2]
            if h != w:
                raise InputError(f"{photo.path}: aligned crops must be square, this one is {w}x{h}")
            mask = None
            stem = Path(photo.path).stem
            if cfg.mask_dir:
                for suffix in ("", "_mask", ".mask"):
                    cand = Path(cfg.mask_dir) / f"{stem}{suffix}.png"
                    if cand.is_file():
                        mask = load_mask(cand, (h, w))
                        break
                if mask is None:
                    raise InputError(f"{photo.path}: no mask {stem}.png or {stem}_mask.png in {cfg.mask_dir}")
            else:
                mask = elliptical_mask(h, w)
            found = detector.detect(image)
            best = max(found, key=lambda f: f.area) if found else None
        except FaceveilError as exc:
            notes.bad_input(photo.path, str(exc))
            continue
        rel = str(Path(photo.relpath).with_suffix(""))
        faces.append(
            EvalFace(
                id=safe_id(rel),
                image=image,
                mask=mask,
                label=photo.label,
                source=photo.path,
                relpath=rel,
                landmarks5=None if best is None else best.landmarks5,
                landmarks=None if best is None else best.landmarks,
            )
        )
    return faces


# --------------------------------------------------------------------------- cache


def _save_cache(folder: Path, faces: list[EvalFace]) -> None:
    from faceveil.data.images import save_image
    from faceveil.evaluate.jsonio import write_json

    for f in faces:
        save_image(folder / f"{f.id}.png", f.image)
        save_image(folder / f"{f.id}.mask.png", np.where(f.mask, 255, 0).astype(np.uint8))
    write_json(folder / "faces.json", [f.meta() for f in faces])


def _load_cache(folder: Path) -> list[EvalFace] | None:
    from faceveil.evaluate.jsonio import read_json

    index = read_json(folder / "faces.json")
    if not isinstance(index, list):
        return None
    try:
        faces = []
        for m in index:
            image = np.asarray(Image.open(folder / f"{m['id']}.png").convert("RGB"))
            mask = np.asarray(Image.open(folder / f"{m['id']}.mask.png").convert("L")) >= 128
            faces.append(
                EvalFace(
                    id=m["id"],
                    image=image,
                    mask=mask,
                    label=m["label"],
                    source=m["source"],
                    relpath=m["relpath"],
                    landmarks5=None if m["landmarks5"] is None else np.asarray(m["landmarks5"], dtype=np.float64),
                    landmarks=None if m["landmarks"] is None else np.asarray(m["landmarks"], dtype=np.float64),
                )
            )
        return faces
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged cache is rebuilt


def load_faces(cfg: Any, cache_dir: Path, notes: Notes, wanted: set[str] | None = None, progress: bool = True) -> list[EvalFace]:
    """All usable faces of ``cfg`` (an ``evaluate.config.DataConfig``), resized to ``cfg.size``.

    ``wanted``: relpaths (without suffix) to restrict a photo folder to (the photos a
    pairs file names). The crops are cached in ``cache_dir``.
    """
    cached = _load_cache(cache_dir)
    if cached is not None:
        return cached
    if cfg.source == "sample-set":
        from faceveil.data.sample_set import build_sample_shards

        faces = _from_shards(build_sample_shards(cache_dir / "sample-set", size=cfg.size), notes)
    elif cfg.source == "shards":
        faces = _from_shards(cfg.path, notes)
    elif cfg.source == "folder":
        faces = _from_folder(cfg, wanted, notes, progress)
    elif cfg.source == "aligned":
        faces = _from_aligned(cfg, wanted, notes)
    else:  # validated before
        raise InputError(f"unknown data source {cfg.source!r}")
    out: list[EvalFace] = []
    seen: set[str] = set()
    for f in faces:
        try:
            f = _resize(f, cfg.size)
        except FaceveilError as exc:
            notes.bad_input(f.source or f.id, str(exc))
            continue
        if not f.mask.any():
            notes.bad_input(f.source or f.id, "the face mask is empty")
            continue
        if f.id in seen:
            notes.bad_input(f.source or f.id, f"duplicate face id {f.id}; kept the first")
            continue
        seen.add(f.id)
        out.append(f)
    if not out:
        raise InputError("no usable faces in the evaluation data")
    _save_cache(cache_dir, out)
    return out
