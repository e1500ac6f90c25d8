"""A video through the photo pipeline, frame by frame, in resumable segments of frames.

Per frame: detect (as photos do), track (:mod:`faceveil.video.tracks`), plan each face's
treatment (:func:`~faceveil.models.photo.plan_faces`). Per segment of ``segment`` frames:
covers go on, the diffusion crops of all the segment's frames share the fixed-bucket batches
of :class:`~faceveil.models.pipeline.Anonymizer`, the frames are encoded losslessly, and the
original pixels of each track's rectangles are sealed (:mod:`faceveil.video.record`). Only a
segment's frames (and the ``bridge`` frames after it) are in memory, whatever the video's length.

A segment is written only once the ``bridge`` frames after it are detected, so that a track
that starts there reaches back: its first box is covered in the frames just before it
(:meth:`VideoAnonymizer._backfill`), where a face entering at the border or turning towards
the camera already showed part of itself.

One nonce per track: every frame of a track is anonymized with the same nonce, so the same
keyed transform maps its (nearby) inverted noises to nearby noises, and the replacement face
stays the same person from frame to frame instead of flickering between strangers. That is
what ``allow_nonce_reuse`` is for here: the frames of one track show one face, so sharing a
key stream reveals nothing that the track itself does not (photos keep a nonce each).

Resume: finished segments stay in ``.NAME.mkv.part/`` beside the output until the video is
complete. A later run with the same input, key and options re-runs detection and tracking
(cheap, and needed for the tracks' state), skips the finished segments' diffusion and
encoding, and gives the same output: nonces are derived from the key and the run's salt,
and the batches are bucketed, so no face depends on which run drew it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from faceveil.data.photo_align import context_photo, face_crop, paste_face
from faceveil.data.photo_detect import LEFT, detect_in_photo
from faceveil.errors import InputError, escape
from faceveil.keys import SecretKey
from faceveil.models.photo import PhotoFace, cover_faces, plan_faces
from faceveil.video import record_path
from faceveil.video.record import FORMAT as RECORD_FORMAT
from faceveil.video.record import VERSION as RECORD_VERSION
from faceveil.video.record import (
    Segment,
    TrackCrops,
    file_sha256,
    fixed_rectangles,
    frames_digest,
    published_digest,
    seal_segment,
    segment_nonce,
    track_nonce,
    write_record,
)
from faceveil.video.streams import DEFAULT_CODEC, MAX_PIXELS, FrameEncoder, encode_publish, iter_frames, mux_final, probe
from faceveil.video.tracks import DEFAULT_BRIDGE, FaceTracker, TrackedFace, TrackStats, covered_by

if TYPE_CHECKING:
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.models.pipeline import Anonymizer
    from faceveil.video.streams import VideoInfo

DEFAULT_SEGMENT = 16  # frames in memory at once, and the unit of resume


@dataclass
class VideoOptions:
    codec: str = DEFAULT_CODEC
    segment: int = DEFAULT_SEGMENT
    bridge: int = DEFAULT_BRIDGE
    publish: bool = False
    max_pixels: int = MAX_PIXELS


@dataclass
class VideoReport:
    """What one video got: per track, the frames it covered and those bridged over a missed detection."""

    frames: int = 0
    fps: float = 0.0
    stats: TrackStats = field(default_factory=TrackStats)
    treatments: dict[str, int] = field(default_factory=dict)  # faces by treatment, over all frames
    faces_left: int = 0  # faces found and left as they were (only on request)
    resumed_segments: int = 0
    record_bytes: int = 0
    video_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def face_seconds(self) -> float:
        return sum(self.stats.frames.values()) / self.fps if self.fps else 0.0

    def summary(self) -> str:
        tracks = len(self.stats.frames)
        per = ", ".join(f"{t}: {n}" + (f" ({self.stats.bridged[t]} bridged)" if t in self.stats.bridged else "")
                        for t, n in sorted(self.stats.frames.items())[:20])
        more = " ..." if tracks > 20 else ""
        bridged = sum(self.stats.bridged.values())
        treated = ", ".join(f"{n} {k}" for k, n in sorted(self.treatments.items()))
        return (f"{self.frames} frames, {tracks} track{'s' if tracks != 1 else ''} (frames per track {per or 'none'}{more}), "
                f"{bridged} bridged frames, faces left {self.faces_left}; faces: {treated or 'none'}")


@dataclass
class _Item:
    index: int
    pts: int
    original: np.ndarray
    tracked: list[TrackedFace]
    planned: list[PhotoFace]


@dataclass
class _Run:
    """One video's state while it is anonymized."""

    src: Path
    key: SecretKey
    info: VideoInfo
    part: Path  # the folder of finished segments
    salt: bytes
    report: VideoReport
    tracker: FaceTracker
    on_frames: Callable[[int], None] | None
    items: list[_Item] = field(default_factory=list)  # the segment being filled, and up to ``bridge`` frames after it
    seen: set[int] = field(default_factory=set)  # tracks met so far
    segments: list[dict] = field(default_factory=list)  # first frame and length of each written segment


class VideoAnonymizer:
    """Anonymize videos with a detector and face policy (a :class:`~faceveil.models.photo_api.PhotoFinder`)
    and an :class:`~faceveil.models.pipeline.Anonymizer` (None: covers only, no model)."""

    def __init__(self, finder: PhotoFinder, anonymizer: Anonymizer | None, batch_size: int = 4,
                 options: VideoOptions | None = None) -> None:
        self.finder = finder
        self.anonymizer = anonymizer
        self.batch_size = max(1, int(batch_size))
        self.options = options or VideoOptions()

    # ------------------------------------------------------------ per frame
    def _detect(self, rgb: np.ndarray, tracker: FaceTracker) -> tuple[list[TrackedFace], list[PhotoFace]]:
        found = detect_in_photo(rgb, self.finder.detector, self.finder.tile, None, self.finder.turns)
        tracked = tracker.step(found, rgb.shape[:2])
        planned = plan_faces(rgb, [t.face for t in tracked], self.finder.size, self.finder.policy) if tracked else []
        return tracked, planned

    def _backfill(self, items: list[_Item], tf: TrackedFace) -> None:
        """A new track's first box, covered in the frames before it (up to ``bridge``): a face that
        enters at the border, or turns towards the camera, shows part of itself before the
        detector takes it. A cover, not the diffusion: the face there is cut or turned away."""
        from faceveil.data.photo_cover import COVERS

        policy = self.finder.policy
        cover = policy.method if policy.method in COVERS else policy.cover
        box = np.asarray(tf.face.bbox, dtype=np.float64)
        for it in reversed(items[-1 - self.options.bridge : -1]):
            if any(t.track == tf.track for t in it.tracked):
                break
            if any(covered_by(box, np.asarray(f.bbox, dtype=np.float64)) for f in it.planned if f.bbox is not None):
                continue  # another track holds this face there
            pf = PhotoFace(index=len(it.planned), matrix=None, mask=None, bbox=box, score=tf.face.score,
                           treatment=cover, why="before its track's first detection")
            if pf.region(it.original.shape[:2]) is None:
                continue
            it.tracked.append(TrackedFace(tf.track, tf.face, True))
            it.planned.append(pf)

    # ------------------------------------------------------------ per segment
    def _anonymize_frames(self, items: list[_Item], key: SecretKey, salt: bytes) -> list[np.ndarray]:
        """The segment's anonymized frames: covers, then every diffusion face of every frame in
        shared batches, each with its track's nonce."""
        jobs = []
        for it in items:
            photo = cover_faces(it.original, it.planned)
            photo = photo.copy() if photo is it.original else photo
            faces = [(tf.track, f) for tf, f in zip(it.tracked, it.planned) if f.treatment == "diffusion"]
            regions = [f.region(photo.shape[:2]) for _, f in faces]
            context = context_photo(photo, regions) if faces else photo
            crops = [face_crop(photo, context, f.matrix, f.mask) for _, f in faces]
            jobs.append((photo, faces, regions, crops))
        flat = [(j, k) for j, job in enumerate(jobs) for k in range(len(job[1]))]
        if flat and self.anonymizer is None:
            raise InputError("faces planned for the diffusion, but no backbone was loaded")
        for start in range(0, len(flat), self.batch_size):
            chunk = flat[start : start + self.batch_size]
            veiled = self.anonymizer.anonymize(
                [jobs[j][3][k] for j, k in chunk], [jobs[j][1][k][1].mask for j, k in chunk], key,
                nonces=[track_nonce(key, salt, jobs[j][1][k][0]) for j, k in chunk],
                allow_caller_nonces=True, allow_nonce_reuse=True,  # one nonce per track: see the module docstring
            )
            for (j, k), v in zip(chunk, veiled):
                photo, faces, regions, _ = jobs[j]
                paste_face(photo, v.image, faces[k][1].matrix, regions[k])
        return [job[0] for job in jobs]

    @staticmethod
    def _track_crops(items: list[_Item], hw: tuple[int, int]) -> list[TrackCrops]:
        """Each track's rectangles in the segment, holding every pixel its faces' treatments may change."""
        boxes: dict[int, list[tuple[int, tuple[int, int, int, int]]]] = {}
        for i, it in enumerate(items):
            for tf, f in zip(it.tracked, it.planned):
                r = f.region(hw)
                if f.treatment != LEFT and r is not None:
                    boxes.setdefault(tf.track, []).append((i, (r.x0, r.y0, r.x1, r.y1)))
        out = []
        for track, entries in sorted(boxes.items()):
            # A track may hold two faces of one frame only by a tracker quirk: one rectangle takes both.
            merged: dict[int, tuple[int, int, int, int]] = {}
            for i, b in entries:
                m = merged.get(i)
                merged[i] = b if m is None else (min(m[0], b[0]), min(m[1], b[1]), max(m[2], b[2]), max(m[3], b[3]))
            order = sorted(merged)
            size, origins = fixed_rectangles([merged[i] for i in order], hw)
            w, h = size
            crops = [np.ascontiguousarray(items[i].original[y : y + h, x : x + w]) for i, (x, y) in zip(order, origins)]
            out.append(TrackCrops(track, [items[i].index for i in order], origins, size, crops))
        return out

    def _finish_segment(self, n: int, items: list[_Item], key: SecretKey, salt: bytes, part: Path, info: VideoInfo) -> None:
        anonymized = self._anonymize_frames(items, key, salt)
        hw = items[0].original.shape[:2]
        tracks = self._track_crops(items, hw)
        # What recovery pastes back must hold every changed pixel, or it would not be exact.
        covered = np.zeros((len(items), *hw), dtype=bool)
        first = items[0].index
        for t in tracks:
            w, h = t.size
            for f, (x, y) in zip(t.frames, t.origins):
                covered[f - first, y : y + h, x : x + w] = True
        for i, (it, anon) in enumerate(zip(items, anonymized)):
            if np.any((anon != it.original).any(axis=2) & ~covered[i]):
                raise RuntimeError(f"frame {it.index}: a changed pixel lies outside every sealed rectangle")
        seg = Segment(n, first, len(items), frames_digest(key, segment_nonce(salt, n), [it.original for it in items]),
                      published_digest(anonymized), tracks)
        video = part / f"seg{n:06d}.mkv"
        enc = FrameEncoder(video.with_suffix(".tmp"), hw[1], hw[0], info.time_base, self.options.codec)
        for it, anon in zip(items, anonymized):
            enc.write(anon, it.pts)
        enc.close()
        os.replace(video.with_suffix(".tmp"), video)
        sealed = seal_segment(seg, key, salt)
        rec = part / f"seg{n:06d}.rec"
        rec.with_suffix(".tmp").write_bytes(sealed)
        os.replace(rec.with_suffix(".tmp"), rec)  # written last: a segment is done when its .rec exists

    # ------------------------------------------------------------ per video
    def _part(self, src: Path, dst: Path, key: SecretKey) -> tuple[Path, bytes]:
        """The folder of finished segments and the run's salt: a previous run's, when it matches this one."""
        part = dst.parent / f".{dst.name}.part"
        st = src.stat()
        want = {"source": {"name": src.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
                "codec": self.options.codec, "segment": self.options.segment, "bridge": self.options.bridge,
                "model": self._model_id()}
        state = part / "state.json"
        if state.is_file():
            try:
                old = json.loads(state.read_text())
                salt = bytes.fromhex(old["salt"])
                if old.get("run") == want and key.check_value(salt) == old.get("check"):
                    return part, salt
            except (ValueError, KeyError, TypeError, OSError):
                pass
        if part.exists():
            shutil.rmtree(part)
        part.mkdir(parents=True)
        salt = os.urandom(16)
        state.write_text(json.dumps({"run": want, "salt": salt.hex(), "check": key.check_value(salt)}))
        return part, salt

    def _model_id(self) -> str:
        if self.anonymizer is None:
            return "covers"
        s = self.anonymizer.settings
        return f"{self.anonymizer.backbone.spec}|{s.scheme}|{s.steps}|{s.transform}|{self.finder.size}|{self.finder.policy}"

    def run(self, src: str | Path, dst: str | Path, key: SecretKey, on_frames: Callable[[int], None] | None = None) -> VideoReport:
        """Anonymize ``src`` into ``dst`` (MKV) and its record ``dst``.fvvid (and ``dst``.mp4 with
        ``publish``); all appear at once, complete, or not at all."""
        src, dst = Path(src), Path(dst)
        info = probe(src, self.options.max_pixels)
        part, salt = self._part(src, dst, key)
        run = _Run(src, key, info, part, salt, VideoReport(fps=info.rate), FaceTracker(info.rate, self.options.bridge), on_frames)
        try:
            self._frames(run)
        except InputError:
            shutil.rmtree(part, ignore_errors=True)  # the input itself is bad: nothing to resume
            raise
        if run.report.frames == 0:
            raise InputError(f"{escape(src)}: no frame decodes")
        self._assemble(run, dst)
        return run.report

    def _frames(self, run: _Run) -> None:
        """Detect and track frame by frame; each segment is written once the ``bridge`` frames
        after it are detected, so that a track starting there still reaches back into it."""
        for frame in iter_frames(run.src):
            if frame.rgb.shape[:2] != (run.info.height, run.info.width):
                raise InputError(f"{escape(run.src)}: frame {frame.index} is {frame.rgb.shape[1]}x{frame.rgb.shape[0]}, "
                                 f"not {run.info.width}x{run.info.height}: a size change mid-stream is not supported")
            tracked, planned = self._detect(frame.rgb, run.tracker)
            run.items.append(_Item(frame.index, frame.pts, frame.rgb, tracked, planned))
            run.report.frames += 1
            for tf in tracked:
                if tf.track not in run.seen:
                    run.seen.add(tf.track)
                    self._backfill(run.items, tf)
            if len(run.items) >= self._segment_len + self.options.bridge:
                self._flush(run)
        while run.items:
            self._flush(run)

    @property
    def _segment_len(self) -> int:
        return max(1, int(self.options.segment))

    def _flush(self, run: _Run) -> None:
        """Write the next segment (or count it, when an interrupted run already wrote it)."""
        done, n = run.items[: self._segment_len], len(run.segments)
        for it in done:
            run.report.stats.add(it.tracked)
            for f in it.planned:
                run.report.treatments[f.treatment] = run.report.treatments.get(f.treatment, 0) + 1
                run.report.faces_left += f.treatment == LEFT
        if (run.part / f"seg{n:06d}.rec").is_file():
            run.report.resumed_segments += 1
        else:
            self._finish_segment(n, done, run.key, run.salt, run.part, run.info)
        run.segments.append({"first": done[0].index, "frames": len(done)})
        if run.on_frames:
            run.on_frames(len(done))
        del run.items[: self._segment_len]

    def _assemble(self, run: _Run, dst: Path) -> None:
        """The finished segments into the output video and its record, then the part folder goes."""
        src, key, salt, part, info, report = run.src, run.key, run.salt, run.part, run.info, run.report
        n_seg, segments = len(run.segments), run.segments
        videos = [part / f"seg{i:06d}.mkv" for i in range(n_seg)]
        chunks = [part / f"seg{i:06d}.rec" for i in range(n_seg)]
        tmp_video, tmp_record = part / "out.mkv", part / "out.fvvid"
        report.notes += mux_final(tmp_video, videos, src, info.rotation)
        header = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "salt": salt.hex(), "check": key.check_value(salt),
                  "size": [info.height, info.width], "frames": report.frames, "codec": self.options.codec,
                  "segments": segments, "video_sha256": file_sha256(tmp_video)}
        write_record(tmp_record, chunks, header, key)
        outputs = [(tmp_video, dst), (tmp_record, record_path(dst))]
        if self.options.publish:
            tmp_mp4 = part / "out.mp4"
            report.notes += encode_publish(tmp_video, tmp_mp4, src, info.rotation)
            outputs.append((tmp_mp4, dst.with_suffix(".mp4")))
        for tmp, final in outputs:
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        report.record_bytes = record_path(dst).stat().st_size
        report.video_bytes = dst.stat().st_size
        shutil.rmtree(part)
