"""What the page's buttons do, in the library's terms; the only module of :mod:`faceveil.web` that
calls the library.

Each action runs inside a job (:mod:`faceveil.web.jobs`) on the worker thread. Uploads arrive as
bytes; what the library reads from a path is written into a :class:`Workspace`, a private folder
removed when the action returns, under neutral names (``in0.jpg``), never a key's or a user's
file name. Keys are derived from the request's form fields inside the action
(:meth:`KeyInput.derive`) and live only as long as it runs.

Every recovery goes through :func:`recover_one`; videos go through :func:`anonymize_video` and
:func:`recover_video` (:mod:`faceveil.video`).
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from faceveil.errors import FaceveilError, FormatError, InputError, KeyMismatchError, TamperedError, escape
from faceveil.keys import SecretKey, parse_key_file

from faceveil.video import RECORD_SUFFIX as VIDEO_RECORD_SUFFIX
from faceveil.video import VIDEO_SUFFIXES

RECORD_SUFFIX = ".fvrec"
VIDEO_NOT_VERIFIED = "verifying a video is not supported yet; Recover checks it against its sealed digest"
NO_RECORD = "no faceveil record in this file; pixel-only recovery is not available"
NO_MARK = ("no faceveil record in this file, and no face marked under this key in its pixels (not anonymized with "
           "pixel recovery, another key, or too damaged); nothing to recover")
EXACT = "exact (checked against the sealed digest)"
PREVIEW_SIDE = 1600  # the longest side of the photo previews the page draws boxes on
OUTPUT_FORMATS = {"png": ("embedded", ".png"), "jpg": ("sidecar", ".jpg")}


# ---------------------------------------------------------------- inputs


@dataclass
class Upload:
    """One file from the browser: ``name`` as it gave it (a relative path for a folder), for display only."""

    name: str
    data: bytes
    content_type: str = ""

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix.lower()

    @property
    def is_video(self) -> bool:
        return self.suffix in VIDEO_SUFFIXES or self.content_type.startswith("video/")

    @property
    def is_record(self) -> bool:
        return self.name.lower().endswith((RECORD_SUFFIX, VIDEO_RECORD_SUFFIX))

    @property
    def label(self) -> str:
        return escape(self.name, 200)


@dataclass
class KeyInput:
    """The key as the page sends it: a key file's text, or a passphrase and its salt (hex)."""

    key_file: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    salt: str | None = None

    def derive(self) -> SecretKey:
        """The key, in memory. Errors never hold the key file's content or the passphrase."""
        if self.key_file:
            return parse_key_file(self.key_file.encode("utf-8", "replace"), "the key file")
        if self.passphrase:
            text = (self.salt or "").strip().lower()
            if not text:
                raise InputError("a passphrase needs its salt (hex): press 'New salt' once and keep it with your files")
            try:
                salt = bytes.fromhex(text)
            except ValueError:
                raise InputError("the salt must be hex digits (0-9, a-f)") from None
            if len(salt) < 8:
                raise InputError("the salt is too short: use at least 16 hex digits ('New salt' makes 32)")
            return SecretKey.from_passphrase(self.passphrase, salt=salt)
        raise InputError("no key: generate or choose a key file, or enter a passphrase and its salt")


@dataclass(frozen=True)
class PhotoOptions:
    """The page's choices, as ``faceveil anonymize``'s options of the same names."""

    method: str = "diffusion"
    cover: str = "blur"
    mask_extent: str = "face"
    min_face: float = 20.0
    output: str = "png"  # png: record embedded; jpg: JPEG + NAME.jpg.fvrec
    mark: bool = False
    keep_original_file: bool = False  # also seal the uploaded file's bytes (EXIF and all)
    pixel_recovery: bool = False  # a keyed mark in each face: copies without the record recover approximately

    def policy(self):  # -> FacePolicy
        from faceveil.data.photo_detect import FacePolicy

        if not 0 <= self.min_face <= 10_000:
            raise InputError("the smallest face for the diffusion must be between 0 and 10000 px")
        return FacePolicy(self.method, self.cover, self.min_face, mask_extent=self.mask_extent,
                          pixel_recovery=self.pixel_recovery)

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_FORMATS:
            raise InputError(f"unknown output {escape(self.output)!r}; choose png or jpg")
        self.policy()  # every choice checked before the job is queued


def parse_regions(doc: object, count: int) -> dict[int, list[np.ndarray]]:
    """Faces added by hand, per photo: ``{"0": [[x0, y0, x1, y1], ...]}`` (photo pixels)."""
    if doc in (None, ""):
        return {}
    if not isinstance(doc, dict):
        raise InputError("regions: expected {\"photo index\": [[x0, y0, x1, y1], ...]}")
    out: dict[int, list[np.ndarray]] = {}
    for k, boxes in doc.items():
        if not str(k).isdigit() or int(k) >= count or not isinstance(boxes, list) or len(boxes) > 1000:
            raise InputError("regions: expected {\"photo index\": [[x0, y0, x1, y1], ...]}")
        for b in boxes:
            if (not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
                    or not (b[2] > b[0] and b[3] > b[1]) or not all(abs(v) < 1e6 for v in b)):
                raise InputError("regions: each box is [x0, y0, x1, y1] in pixels, with x1 > x0 and y1 > y0")
            out.setdefault(int(k), []).append(np.asarray(b, dtype=np.float64))
    return out


class Workspace:
    """A private folder for one action's files, removed when the action ends."""

    def __init__(self, root: str | Path | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="job-", dir=root))
        self._n = 0

    def put(self, upload: Upload, suffix: str | None = None) -> Path:
        """Write an upload under a neutral name (``inN`` and its suffix) and return the path."""
        suffix = suffix if suffix is not None else _safe_suffix(upload.suffix)
        path = self.dir / f"in{self._n}{suffix}"
        self._n += 1
        path.write_bytes(upload.data)
        return path

    def path(self, name: str) -> Path:
        return self.dir / name

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _safe_suffix(suffix: str) -> str:
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def download_name(name: str, suffix: str | None = None, tag: str = "") -> str:
    """A file name for the browser's download: the upload's base name, tagged, with a new suffix."""
    stem_name = PurePosixPath(name.replace("\\", "/")).name or "file"
    p = PurePosixPath(stem_name)
    stem = p.stem if suffix is not None else stem_name
    stem = re.sub(r"[^A-Za-z0-9._\- ]+", "_", stem).strip("._ ") or "file"  # ASCII: it goes in a header
    return f"{stem[:120]}{tag}{suffix or ''}"


def _said(exc: BaseException, path: Path | None, upload: Upload) -> str:
    """The library's one line, naming the upload instead of its workspace path."""
    text = str(exc)
    if path is not None:
        text = text.replace(str(path), upload.name)
        # Its record beside it (NAME.fvvid, NAME.png.fvrec): the workspace folder and name never show.
        text = text.replace(str(path.parent) + "/", "").replace(path.stem, PurePosixPath(upload.name).stem)
    text = text.replace(" (use --allow-anonymized)", "")
    return escape(text.strip().replace("\n", " "), 400)


def _preview_jpeg(image: np.ndarray) -> tuple[bytes, float]:
    """A JPEG of ``image`` no larger than :data:`PREVIEW_SIDE`, and its scale."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(1.0, PREVIEW_SIDE / max(h, w))
    pil = Image.fromarray(image)
    if scale < 1.0:
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=88)
    return buf.getvalue(), pil.width / w


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", compress_level=3)
    return buf.getvalue()


# ---------------------------------------------------------------- the model side


class Engine:
    """The backbone and settings anonymize runs with (the server's options), loaded on first use."""

    def __init__(self, backbone: str, device: str = "auto", dtype: str = "auto", batch_size: int = 4,
                 scheme: str | None = None, steps: int | None = None, transform: str | None = None,
                 detector: str = "centerface", threads: int | None = None, inversion_steps: int = 200,
                 scales: tuple[float, ...] = (1.0, 2.0), compile_unet: bool = False) -> None:
        self.spec, self.device, self.dtype = backbone, device, dtype
        self.batch_size, self.detector, self.threads = int(batch_size), detector, threads
        self.scheme, self.steps, self.transform = scheme, steps, transform
        self.inversion_steps, self.scales = int(inversion_steps), tuple(scales)  # pixel-only recovery
        self.compile_unet = compile_unet
        self._backbone = None

    def backbone(self):
        if self._backbone is None:
            from argparse import Namespace

            from faceveil.cli.common import load_backbone_for_cli, quiet_libraries, resolve_device, resolve_dtype
            from faceveil.machine import apply_threads

            quiet_libraries()
            apply_threads(self.threads)
            device = resolve_device(self.device)
            self._backbone = load_backbone_for_cli(self.spec, device, resolve_dtype(self.dtype, device))
            self._settings_args = Namespace(scheme=self.scheme, steps=self.steps, transform=self.transform)
        return self._backbone

    def photos(self, method: str, on_faces):  # -> PhotoAnonymizer
        from faceveil.models.photo import PhotoAnonymizer

        if method != "diffusion":
            return PhotoAnonymizer(None)  # covers only: no model to load
        from faceveil.cli.common import resolve_settings
        from faceveil.models.pipeline import Anonymizer

        bb = self.backbone()
        try:
            anonymizer = Anonymizer(bb, resolve_settings(self._settings_args, bb), on_progress=on_faces,
                                    compile_unet=self.compile_unet)
            return PhotoAnonymizer(anonymizer, self.batch_size)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def pixel_recoverer(self):  # -> PixelRecoverer
        from faceveil.cli.common import resolve_settings
        from faceveil.models.pipeline import Anonymizer
        from faceveil.models.pixel_recovery import PixelRecoverer

        bb = self.backbone()
        return PixelRecoverer(Anonymizer(bb, resolve_settings(self._settings_args, bb)), self.inversion_steps)

    def finder(self, size: int, policy):  # -> PhotoFinder
        from faceveil.models.photo_api import PhotoFinder

        return PhotoFinder(size, self.detector, policy)


PLAN_SIZE = 512  # detection previews plan alignment at sd2-inpaint's crop, as 'faceveil detect' does


def _load(upload: Upload, ws: Workspace, max_pixels: int) -> tuple[np.ndarray, Path]:
    from faceveil.data.photo_io import load_photo

    if upload.is_video:
        raise InputError("a video: Find faces takes photos; Anonymize runs the video through")
    path = ws.put(upload)
    try:
        return load_photo(path, max_pixels), path
    except FaceveilError as exc:
        raise InputError(_said(exc, path, upload)) from None
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- detect


def detect_photos(job, engine: Engine, uploads: Sequence[Upload], options: PhotoOptions,
                  regions: dict[int, list[np.ndarray]], max_pixels: int, workdir: Path | None) -> dict:
    """Each photo's faces and the treatment each will get, drawn by the page on a preview."""
    from faceveil.cli.detect import face_entries
    from faceveil.data.photo_detect import NoFaceError
    from faceveil.models.photo import treatment_summary

    finder = engine.finder(PLAN_SIZE, options.policy())
    items = []
    with Workspace(workdir) as ws:
        for i, up in enumerate(uploads):
            job.progress(f"detecting faces in {up.label} ({i + 1}/{len(uploads)})", i, len(uploads))
            path = None
            try:
                image, path = _load(up, ws, max_pixels)
                try:
                    faces = finder.find(image, None, regions.get(i, ()))
                except NoFaceError:
                    faces = []
                preview, scale = _preview_jpeg(image)
                n = job.add_file(download_name(up.name, ".jpg", ".preview"), "image/jpeg", preview, preview=True)
                items.append({"index": i, "name": up.label, "width": image.shape[1], "height": image.shape[0],
                              "preview": n, "scale": scale, "faces": face_entries(faces),
                              "summary": treatment_summary(faces) if faces else "no face found"})
            except (FaceveilError, OSError, ValueError) as exc:
                items.append({"index": i, "name": up.label, "error": _said(exc, path, up)})
    job.progress("done", len(uploads), len(uploads))
    return {"items": items}


# ---------------------------------------------------------------- anonymize


def anonymize_video(job, engine: Engine, upload: Upload, key: SecretKey, options: PhotoOptions, ws: Workspace,
                    max_pixels: int) -> dict:
    """One video through :class:`faceveil.video.anonymize.VideoAnonymizer`: the lossless MKV and its
    sealed record (``NAME.fvvid``) to download, and one line of what its faces got."""
    from faceveil.video import record_path
    from faceveil.video.anonymize import VideoAnonymizer, VideoOptions
    from faceveil.video.streams import MAX_PIXELS, probe

    src = ws.put(upload)
    try:
        total = probe(src).frames
    except FaceveilError as exc:
        raise InputError(_said(exc, src, upload)) from None
    photos = engine.photos(options.method, None)
    finder = engine.finder(photos.size or PLAN_SIZE, options.policy())
    videos = VideoAnonymizer(finder, photos.anonymizer, engine.batch_size, VideoOptions(max_pixels=min(max_pixels, MAX_PIXELS)))
    done = [0]

    def on_frames(n: int) -> None:
        done[0] += n
        job.progress(f"video {upload.label}: {done[0]}/{total or '?'} frames", done[0], total or None)

    job.progress(f"video {upload.label}: detecting and tracking faces", 0, total)
    dst = ws.path(f"{src.stem}-out.mkv")
    report = videos.run(src, dst, key, on_frames=on_frames)
    files = [job.add_file(download_name(upload.name, ".mkv"), "video/x-matroska", dst.read_bytes()),
             job.add_file(download_name(upload.name, VIDEO_RECORD_SUFFIX), "application/octet-stream",
                          record_path(dst).read_bytes())]
    return {"files": files, "video": True, "summary": "; ".join([report.summary(), *report.notes]),
            "left": bool(report.faces_left)}


def anonymize_uploads(job, engine: Engine, uploads: Sequence[Upload], key_input: KeyInput, options: PhotoOptions,
                      regions: dict[int, list[np.ndarray]], max_pixels: int, workdir: Path | None) -> dict:
    """Detect and plan every photo, then anonymize and write each one: the file(s) to download, a
    preview of the photo before, and one line of what its faces got."""
    from faceveil.cli.detect import face_entries
    from faceveil.data.photo_detect import LEFT, NoFaceError
    from faceveil.fileformat.sidecar import sidecar_path
    from faceveil.models.photo import mark_synthetic, treatment_summary
    from faceveil.models.photo_api import save_result

    policy = options.policy()
    job.progress("deriving the key")
    key = key_input.derive()
    items: list[dict] = [{"index": i, "name": up.label} for i, up in enumerate(uploads)]
    faces_done, photos_done = [0.0], [0]
    state = {"total": 0, "photo": ""}

    def on_faces(n: float) -> None:
        faces_done[0] += n
        job.progress(f"diffusion {min(faces_done[0], state['total']):.1f}/{state['total']} faces{state['photo']}",
                     faces_done[0] + photos_done[0])

    if options.method == "diffusion":
        job.progress("loading the model")
    photos = engine.photos(options.method, on_faces)
    size = photos.size or PLAN_SIZE
    finder = engine.finder(size, policy)
    planned: dict[int, list] = {}
    with Workspace(workdir) as ws:
        # Pass 1: find and plan every face (the images are not kept), so the bar knows the total.
        for i, up in enumerate(uploads):
            job.progress(f"detecting faces in {up.label} ({i + 1}/{len(uploads)})")
            path = None
            if up.is_video:
                continue  # after the photos
            try:
                image, path = _load(up, ws, max_pixels)
                planned[i] = finder.find(image, None, regions.get(i, ()))
            except NoFaceError:
                items[i]["error"] = f"{up.label}: no face found; nothing to anonymize"
            except (FaceveilError, OSError, ValueError) as exc:
                items[i]["error"] = _said(exc, path, up)
        state["total"] = sum(f.treatment == "diffusion" for faces in planned.values() for f in faces)
        job.progress("anonymizing", 0, state["total"] + len(planned))
        record, suffix = OUTPUT_FORMATS[options.output]
        # Pass 2: one photo at a time, so memory holds one photo whatever their number.
        for i, faces in planned.items():
            up = uploads[i]
            state["photo"] = f" · photo {photos_done[0] + 1}/{len(planned)}"
            job.progress(f"anonymizing {up.label}")
            path = None
            try:
                image, path = _load(up, ws, max_pixels)
                [vp] = photos.anonymize([(image, faces)], key)
                notes = [note for _, note in getattr(photos, "notes", [])]
                if options.mark:
                    mark_synthetic(vp)
                job.progress(f"writing {up.label}")
                out = ws.path(f"out{i}{suffix}")
                save_result(out, vp, key, record=record, original_file=up.data if options.keep_original_file else None,
                            original_suffix=_safe_suffix(up.suffix) if options.keep_original_file else None)
                files = [job.add_file(download_name(up.name, suffix), "image/png" if suffix == ".png" else "image/jpeg",
                                      out.read_bytes())]
                if record == "sidecar":
                    files.append(job.add_file(download_name(up.name, suffix + RECORD_SUFFIX), "application/octet-stream",
                                              sidecar_path(out).read_bytes()))
                before, _ = _preview_jpeg(image)
                items[i].update(files=files, before=job.add_file(download_name(up.name, ".jpg", ".before"), "image/jpeg", before, preview=True),
                                summary="; ".join([treatment_summary(vp.faces), *notes]), faces=face_entries(vp.faces),
                                left=any(f.treatment == LEFT for f in vp.faces))
            except (FaceveilError, OSError, ValueError, RuntimeError) as exc:
                items[i]["error"] = _said(exc, path, up)
            photos_done[0] += 1
            job.progress(f"done {photos_done[0]}/{len(planned)} photos", faces_done[0] + photos_done[0])
        for i, up in enumerate(uploads):
            if not up.is_video:
                continue
            try:
                items[i].update(anonymize_video(job, engine, up, key, options, ws, max_pixels))
            except (FaceveilError, OSError, ValueError, RuntimeError) as exc:
                items[i]["error"] = _said(exc, None, up)
    ok = sum("files" in it for it in items)
    job.progress("done", job.total, job.total)
    return {"items": items, "summary": f"anonymized {ok} of {len(uploads)}", "key_fingerprint": key.fingerprint}


# ---------------------------------------------------------------- recover


@dataclass
class Recovered:
    image: np.ndarray | None  # a photo; None for a video (``video`` holds the recovered file)
    exact: bool
    how: str  # one line for the page
    original_file: bytes | None = None
    original_suffix: str | None = None
    video: bytes | None = None  # a recovered video: FFV1 MKV, with the sound it had


def recover_video(path: Path, key: SecretKey) -> Recovered:
    """An anonymized video (MKV with its ``.fvvid`` record beside it): every original frame back,
    checked against the sealed digest (:func:`faceveil.video.recover.recover_video`)."""
    from faceveil.video.recover import recover_video as recover

    dst = path.with_name(f"{path.stem}-recovered.mkv")
    try:
        result = recover(path, dst, key)
        return Recovered(None, result.exact, f"{EXACT}: {result.said()}", video=dst.read_bytes())
    finally:
        dst.unlink(missing_ok=True)


def recover_pixels(path: Path, key: SecretKey, engine: Engine | None, max_pixels: int) -> Recovered:
    """A copy without its record (stripped, re-encoded, resized, cropped): the faces that carry a
    mark under ``key`` are found and recovered through the model, approximately."""
    from faceveil.data.photo_io import load_photo
    from faceveil.watermark import find

    if engine is None:
        raise FormatError(NO_RECORD)
    image = load_photo(path, max_pixels, allow_anonymized=True)
    marks = find(image, key, engine.scales)  # before loading a model for nothing
    if not marks:
        raise FormatError(NO_MARK)
    result = engine.pixel_recoverer().recover(image, key, engine.scales, marks=marks)
    if result is None:
        raise FormatError(NO_MARK)
    return Recovered(result.image, False, result.summary())


def recover_one(path: Path, key: SecretKey, engine: Engine | None = None, max_pixels: int | None = None) -> Recovered:
    """Every recovery of the page: a version 3 file (record embedded, or a ``.fvrec`` beside it)
    opens with the key alone and is checked against the sealed digest of the original; a file
    without a record goes to pixel-only recovery (:func:`recover_pixels`), which needs ``engine``."""
    from faceveil.data.photo_io import DEFAULT_MAX_PIXELS
    from faceveil.fileformat.original import file_version, has_sidecar, open_original

    if path.suffix.lower() in VIDEO_SUFFIXES:
        return recover_video(path, key)
    version = 3 if has_sidecar(path) else file_version(path)
    if version == 3:
        o = open_original(path, key)
        if o.exact:
            how = EXACT
        elif o.lossy:
            how = "approximate: the faces are exact, the rest is the published (lossy) image's pixels"
        else:
            how = "approximate"
        return Recovered(o.image, o.exact, how, o.original_file, o.original_suffix)
    if version is None:
        return recover_pixels(path, key, engine, max_pixels or DEFAULT_MAX_PIXELS)
    raise FormatError(f"a version {escape(version)} file: recover it with 'faceveil recover' (it replays the model that made it)")


def pair_records(uploads: Sequence[Upload]) -> list[tuple[Upload, Upload | None]]:
    """Each file with its sidecar record (``NAME.fvrec`` beside ``NAME``), if one was given."""
    records = {up.name[: -len(RECORD_SUFFIX)]: up for up in uploads if up.name.lower().endswith(RECORD_SUFFIX)}
    records |= {up.name[: -len(VIDEO_RECORD_SUFFIX)] + "/video": up for up in uploads
                if up.name.lower().endswith(VIDEO_RECORD_SUFFIX)}

    def record_of(up: Upload) -> Upload | None:
        if up.is_video:
            return records.pop(str(PurePosixPath(up.name).with_suffix("")) + "/video", None)
        return records.pop(up.name, None)

    out = [(up, record_of(up)) for up in uploads if not up.is_record]
    out += [(rec, None) for rec in records.values()]  # a record without its image: said per file
    return out


def _put_pair(ws: Workspace, up: Upload, record: Upload | None) -> Path:
    if up.is_record:
        raise InputError("a recovery record without its image: drop the image it belongs to with it")
    path = ws.put(up)
    if record is not None and up.is_video:
        from faceveil.video import record_path

        record_path(path).write_bytes(record.data)
    elif record is not None:
        from faceveil.fileformat.sidecar import sidecar_path

        sidecar_path(path).write_bytes(record.data)
    return path


def _each_pair(job, uploads: Sequence[Upload], key_input: KeyInput, workdir: Path | None, verb: str
               ) -> Iterator[tuple[int, Upload, Upload | None, Workspace, SecretKey]]:
    """Each upload with its record, in one private workspace, under the key derived once; with progress."""
    pairs = pair_records(uploads)
    job.progress("deriving the key", 0, len(pairs))
    key = key_input.derive()
    with Workspace(workdir) as ws:
        for i, (up, record) in enumerate(pairs):
            job.progress(f"{verb} {up.label} ({i + 1}/{len(pairs)})", i)
            yield i, up, record, ws, key


def recover_uploads(job, engine: Engine | None, uploads: Sequence[Upload], key_input: KeyInput, max_pixels: int,
                    workdir: Path | None) -> dict:
    """The original of each file, and whether it is exact, in one line each."""
    items = []
    for i, up, record, ws, key in _each_pair(job, uploads, key_input, workdir, "recovering"):
        path = None
        item: dict = {"index": i, "name": up.label}
        try:
            path = _put_pair(ws, up, record)
            r = recover_one(path, key, engine, max_pixels)
            if r.video is not None:
                item.update(exact=r.exact, status=r.how, video=True,
                            file=job.add_file(download_name(up.name, ".mkv", ".recovered"), "video/x-matroska", r.video))
            else:
                item.update(exact=r.exact, status=r.how,
                            file=job.add_file(download_name(up.name, ".png", ".recovered"), "image/png", _png(r.image)))
            if r.original_file is not None:
                item["original_file"] = job.add_file(download_name(up.name, _safe_suffix(r.original_suffix or ""), ".original"),
                                                     "application/octet-stream", r.original_file)
        except (FaceveilError, OSError, ValueError) as exc:
            item["error"] = _said(exc, path, up)
        items.append(item)
    ok = sum("file" in it for it in items)
    job.progress("done", len(items))
    return {"items": items, "summary": f"recovered {ok} of {len(items)}"}


# ---------------------------------------------------------------- verify


def verify_one(path: Path, key: SecretKey) -> tuple[str, str]:
    """(status, one line in plain words) for one file."""
    from faceveil.cli.verify import verify_one as check

    try:
        return "ok", f"authentic: made with this key and not edited since; {check(path, key)[len('ok ('):-1]}"
    except KeyMismatchError:
        return "wrong key", "not made with this key (or the key is not the one it was made with)"
    except TamperedError as exc:
        return "edited", f"edited since it was anonymized: {exc}"
    except FormatError as exc:
        if "no faceveil record" in str(exc) or "no faceveil metadata" in str(exc):
            return "no record", ("no faceveil record in this file (not a faceveil file, or stripped or re-encoded); "
                                 "Recover still finds faces marked for pixel recovery in it")
        return "unreadable", str(exc)


def verify_uploads(job, uploads: Sequence[Upload], key_input: KeyInput, workdir: Path | None) -> dict:
    items = []
    for i, up, record, ws, key in _each_pair(job, uploads, key_input, workdir, "verifying"):
        path = None
        try:
            if up.is_video:
                raise InputError(VIDEO_NOT_VERIFIED)
            path = _put_pair(ws, up, record)
            status, line = verify_one(path, key)
            items.append({"index": i, "name": up.label, "status": status,
                          "line": escape(line.replace(str(path), up.name), 400)})
        except (FaceveilError, OSError, ValueError) as exc:
            items.append({"index": i, "name": up.label, "status": "error", "line": _said(exc, path, up)})
    ok = sum(it["status"] == "ok" for it in items)
    job.progress("done", len(items))
    return {"items": items, "summary": f"{ok} of {len(items)} authentic"}
