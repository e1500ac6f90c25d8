"""Ordinary photos in and out: every face aligned, anonymized in batches, blended back.

For each photo (see DESIGN.md section 8):

1. faces are detected (:mod:`faceveil.data.photo_detect`) and each is aligned
   to the backbone's native crop by the FFHQ similarity of its 5 points;
2. the facial mask is computed on the crop (:mod:`faceveil.data.photo_mask`);
3. the crops of all photos are anonymized together, in batches, by
   :class:`~faceveil.models.pipeline.Anonymizer`; a crop's pixels outside its
   mask come from the *context photo* (faces greyed out), which recovery can
   rebuild from the anonymized photo, so recovery sees the same conditioning;
4. each anonymized crop is blended back inside its face region
   (:mod:`faceveil.data.photo_align`); every other pixel stays bit-identical;
5. the photo's pixels over the face regions are sealed as a residual
   (:mod:`faceveil.models.photo_residual`), so recovery is bit for bit.

:class:`PhotoFace` is one face's record (public: transform, crop mask and the
crop's :class:`~faceveil.models.pipeline.Veiled` with its nonce and sealed
state); :class:`VeiledPhoto` is the photo with its records and sealed residual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from faceveil.data.align import ffhq_matrix, warp_face
from faceveil.data.faces import Face
from faceveil.data.photo_align import Region, context_crop, context_photo, face_crop, face_region, paste_face
from faceveil.data.photo_cover import COVERS, apply_cover, cover_region, mark_region
from faceveil.data.photo_detect import LEFT, FacePolicy, face_treatments
from faceveil.data.photo_mask import crop_mask
from faceveil.errors import InputError
from faceveil.keys import SecretKey, new_nonce
from faceveil.models.backbones import Backbone
from faceveil.models.pixel_geometry import pixel_nonce
from faceveil.models.photo_residual import apply_photo_residual, open_photo_residual, seal_photo_residual
from faceveil.models.pipeline import Anonymizer, Veiled


def native_size(backbone: Backbone) -> int:
    """The crop side photos are anonymized at: the size an export's adapters were trained (and are
    evaluated) at, from its manifest; else the size the backbone was built for, the UNet sample size
    times the autoencoder factor."""
    trained = ((backbone.extra or {}).get("export") or {}).get("image_size")
    if isinstance(trained, int) and trained > 0 and trained % backbone.size_multiple == 0:
        return trained
    sample = backbone.unet.config.sample_size
    sample = sample[0] if isinstance(sample, (tuple, list)) else sample
    return int(sample) * backbone.vae_factor


@dataclass
class PhotoFace:
    """One face of a photo and what it gets (``treatment``): ``"diffusion"`` (aligned by
    ``matrix``, photo pixels -> crop pixels, inside the crop ``mask``), an irreversible cover
    (``"blur"``, ``"pixelate"``, ``"box"``: an ellipse around ``bbox``, ``veiled`` None), or
    ``"left"`` as it was (only on request; no region). ``why`` says why a face does not get the
    method asked for."""

    index: int  # rank among the faces detected in the photo, left to right
    matrix: np.ndarray | None  # (2, 3) float64; None for a covered or left face
    mask: np.ndarray | None  # (S, S) bool crop mask; None for a covered or left face
    bbox: np.ndarray | None = None  # (4,) detector box in photo pixels (not stored in files)
    score: float | None = None
    veiled: Veiled | None = None  # the anonymized crop and its recovery data
    treatment: str = "diffusion"
    why: str | None = None
    body: bytes | None = None  # pixel recovery: the watermark body (geometry + random), never written in clear

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def region(self, hw: tuple[int, int]) -> Region | None:
        """Every photo pixel this face's treatment may change (``None``: none)."""
        if self.treatment == "diffusion":
            return face_region(self.mask, self.matrix, hw)
        if self.treatment in COVERS and self.bbox is not None:
            return cover_region(self.bbox, hw)
        return None


@dataclass
class VeiledPhoto:
    image: np.ndarray  # (H, W, 3) uint8 anonymized photo
    faces: list[PhotoFace]
    nonce: bytes  # per-photo nonce of the sealed residual
    sealed_residual: bytes | None
    authenticated: bool | None = None  # set by readers
    meta: dict[str, object] = field(default_factory=dict)
    original: np.ndarray | None = None  # the input photo, in memory only: files seal its face regions


def plan_faces(photo: np.ndarray, faces: Sequence[Face], size: int, policy: FacePolicy | None = None) -> list[PhotoFace]:
    """One :class:`PhotoFace` per found face, with its treatment (:func:`face_treatments`). A face
    the diffusion cannot take (alignment fails, its mask misses the photo) gets ``policy.cover``."""
    policy = policy or FacePolicy()
    hw = photo.shape[:2]
    out = []
    for i, (f, (treatment, why)) in enumerate(zip(faces, face_treatments(list(faces), policy))):
        pf = PhotoFace(index=i, matrix=None, mask=None, bbox=np.asarray(f.bbox, dtype=np.float64), score=f.score,
                       treatment=treatment, why=why)
        if treatment == "diffusion":
            try:
                pf.matrix = ffhq_matrix(f.landmarks5, size)
                if policy.pixel_recovery:
                    _pixel_placement(pf, size, policy.mask_extent)
                else:
                    pf.mask = crop_mask(f, pf.matrix, warp_face(photo, pf.matrix, size), policy.mask_extent)
                if pf.region(hw) is None:
                    raise ValueError("its mask does not reach the photo")
            except ValueError as exc:
                pf.matrix = pf.mask = None
                pf.treatment, pf.why = policy.cover, f"alignment failed: {exc}"
        if pf.treatment in COVERS and pf.region(hw) is None:
            pf.treatment, pf.why = LEFT, "its box lies outside the photo"
        out.append(pf)
    return out


def _pixel_placement(pf: PhotoFace, size: int, extent: str) -> None:
    """Quantized geometry and the template mask: what pixel-only recovery can rebuild from the mark."""
    from faceveil.models.pixel_geometry import pack, quantize, template_mask

    g = quantize(pf.matrix, size, extent)
    if g is None:
        raise ValueError("its scale is outside what a recovery mark can carry")
    pf.matrix, pf.mask, pf.body = g.matrix(size), template_mask(size, extent), pack(g)


def embed_marks(image: np.ndarray, faces: Sequence[PhotoFace], key: SecretKey) -> list[str]:
    """Seal each pixel-recoverable face's body in its region of ``image`` (in place); the faces too
    small to carry a mark, as notes."""
    from faceveil.watermark import embed, find

    notes, marked = [], []
    for f in faces:
        region = f.region(image.shape[:2]) if f.body is not None else None
        if region is None:
            continue
        inside = np.zeros(image.shape[:2], dtype=bool)
        inside[region.slices()] = region.inside
        try:
            image[...] = embed(image, inside, key, f.body)
            marked.append(f)
        except InputError:
            notes.append(f"face {f.index} is too small to carry a recovery mark: only the file's record recovers it")
    if marked:
        # Read back as recovery will (no mask, the photo's own grid): a mark that does not, says so now.
        read = {m.body for m in find(image, key, scales=(1.0,), search_grid=False)}
        notes += [f"face {f.index}'s recovery mark does not read back (too small or too flat a region): only the file's "
                  "record recovers it" for f in marked if f.body not in read]
    return notes


def treatment_summary(faces: Sequence[PhotoFace]) -> str:
    """One line: what the faces got, and why where it is not the method asked for, e.g.
    ``6 faces: 4 diffusion, 2 blur (under --min-face 20 px: faces 3, 5)``."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for f in faces:
        groups.setdefault((f.treatment, f.why), []).append(f.index)
    parts = []
    for (treatment, why), idx in groups.items():
        who = f"face{'s' if len(idx) > 1 else ''} {', '.join(map(str, idx))}"
        parts.append(f"{len(idx)} {treatment}" + (f" ({why}: {who})" if why else ""))
    return f"{len(faces)} face{'s' if len(faces) != 1 else ''}: {', '.join(parts)}"


@dataclass
class _Job:
    original: np.ndarray  # the input photo
    photo: np.ndarray  # the photo with its covers already on
    all_faces: list[PhotoFace]
    faces: list[PhotoFace]  # those the diffusion takes
    regions: list[Region]
    context: np.ndarray
    crops: list[np.ndarray]


def cover_faces(photo: np.ndarray, faces: Sequence[PhotoFace]) -> np.ndarray:
    """A copy of ``photo`` with the covered faces' covers on (the photo itself when there are none)."""
    covered = [f for f in faces if f.treatment in COVERS]
    if not covered:
        return photo
    out = photo.copy()
    for f in covered:
        apply_cover(out, f.region(out.shape[:2]), f.treatment)
    return out


def mark_synthetic(vp: VeiledPhoto) -> None:
    """Draw the ``--mark`` edge inside each diffusion face's region of ``vp.image`` (in place)."""
    for f in vp.faces:
        if f.treatment == "diffusion":
            mark_region(vp.image, f.region(vp.image.shape[:2]))


@contextlib.contextmanager
def keyed_region(anonymizer: Anonymizer, bodies: Sequence[bytes | None]) -> Iterator[None]:
    """Key only the face region for pixel-recoverable faces: the noise outside it cannot be read back
    from pixels (the photo's own pixels are pasted there), so keying it would make them unrecoverable.
    The cost: that outside noise is the original's own, steering the face drawn inside (README, threat model)."""
    pixel = {b is not None for b in bodies}
    if len(pixel) > 1:
        raise InputError("pixel-recoverable and ordinary faces cannot share a batch")
    before = anonymizer.key_region
    anonymizer.key_region = "mask" if pixel == {True} else before
    try:
        yield
    finally:
        anonymizer.key_region = before


class PhotoAnonymizer:
    """Anonymize and recover whole photos with one :class:`Anonymizer` (crops at its native size)."""

    def __init__(self, anonymizer: Anonymizer | None, batch_size: int = 4) -> None:
        """``anonymizer`` may be None when every face gets a cover (no model is loaded)."""
        self.anonymizer = anonymizer
        self.batch_size = max(1, int(batch_size))
        self.size = native_size(anonymizer.backbone) if anonymizer is not None else 0
        # (photo index, note) of the last anonymize: what it could not do as asked (faces too small for a mark)
        self.notes: list[tuple[int, str]] = []

    def _crops(self, items: list[tuple[np.ndarray, list[PhotoFace]]]) -> list[_Job]:
        jobs = []
        for original, all_faces in items:
            photo = cover_faces(original, all_faces)
            faces = [f for f in all_faces if f.treatment == "diffusion"]
            regions = [f.region(photo.shape[:2]) for f in faces]
            if any(r is None for r in regions):
                raise InputError("a face's mask does not reach the photo")
            context = context_photo(photo, regions)
            crops = [face_crop(photo, context, f.matrix, f.mask) for f in faces]
            jobs.append(_Job(original, photo, list(all_faces), faces, regions, context, crops))
        return jobs

    def anonymize(self, items: Sequence[tuple[np.ndarray, list[PhotoFace]]], key: SecretKey) -> list[VeiledPhoto]:
        """Anonymize photos, each with its planned faces (:func:`plan_faces`); crops of all photos
        share batches. Covers go on first, so the diffusion's context is what the output shows; the
        sealed residual covers the diffusion regions only (a covered face's original pixels are for
        the v3 file format to seal)."""
        jobs = self._crops(list(items))
        flat = [(j, k) for j, job in enumerate(jobs) for k in range(len(job.faces))]
        if flat and self.anonymizer is None:
            raise InputError("faces planned for the diffusion, but no backbone was loaded")
        for start in range(0, len(flat), self.batch_size):
            chunk = flat[start : start + self.batch_size]
            bodies = [jobs[j].faces[k].body for j, k in chunk]
            nonces = [pixel_nonce(key, b) if b is not None else new_nonce() for b in bodies]
            with keyed_region(self.anonymizer, bodies):
                veiled = self.anonymizer.anonymize(
                    [jobs[j].crops[k] for j, k in chunk], [jobs[j].faces[k].mask for j, k in chunk], key,
                    nonces=nonces, allow_caller_nonces=True,
                )
            for (j, k), v in zip(chunk, veiled):
                jobs[j].faces[k].veiled = v
        out = []
        self.notes = []
        for n, job in enumerate(jobs):
            image = job.photo.copy()
            for f, r in zip(job.faces, job.regions):
                paste_face(image, f.veiled.image, f.matrix, r)
            self.notes += [(n, note) for note in embed_marks(image, job.faces, key)]
            # What recovery rebuilds from the recovered crops, then closed to the photo by the residual.
            rebuilt = job.context
            for f, crop, r in zip(job.faces, job.crops, job.regions):
                paste_face(rebuilt, crop, f.matrix, r)
            nonce = new_nonce()
            sealed = seal_photo_residual(job.photo, rebuilt, job.regions, key, nonce) if job.faces else None
            out.append(VeiledPhoto(image, job.all_faces, nonce, sealed, original=job.original))
        return out

    def recover(self, photos: Sequence[VeiledPhoto], key: SecretKey, force: bool = False) -> list[np.ndarray]:
        """The original photos. Faces are recovered from their crops (exactly from untouched files);
        the sealed residual then gives the photo back bit for bit. A residual that does not open
        under ``key`` leaves the rebuilt photo (close, not exact)."""
        jobs = []
        for vp in photos:
            hw = vp.image.shape[:2]
            faces = [f for f in vp.faces if f.treatment == "diffusion"]
            regions = [f.region(hw) for f in faces]
            if any(r is None for r in regions):
                raise InputError("a face record does not reach the photo")
            context = context_photo(vp.image, regions)
            for f in faces:
                if f.veiled is None:
                    raise InputError(f"face {f.index} has no recovery record")
                f.veiled.image = context_crop(context, f.matrix, f.size)
            jobs.append((vp, faces, regions, context))
        flat = [(vp, f) for vp, faces, _, _ in jobs for f in faces]
        recovered: dict[int, np.ndarray] = {}
        for start in range(0, len(flat), self.batch_size):
            chunk = flat[start : start + self.batch_size]
            rec = self.anonymizer.recover([f.veiled for _, f in chunk], key, force=force)
            for (_, f), r in zip(chunk, rec):
                recovered[id(f)] = r.image
        out = []
        for vp, faces, regions, rebuilt in jobs:
            for f, r in zip(faces, regions):
                paste_face(rebuilt, recovered[id(f)], f.matrix, r)
            plain = open_photo_residual(vp.sealed_residual, regions, key, vp.nonce) if vp.sealed_residual else None
            if plain is not None:
                apply_photo_residual(rebuilt, plain, regions)
            out.append(rebuilt)
        return out
