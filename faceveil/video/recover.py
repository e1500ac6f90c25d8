"""The original frames of an anonymized video, bit for bit, from its record and the key.

The lossless output (MKV) and its record (``NAME.fvvid``) give back every original frame:
each segment's sealed rectangles are pasted over the anonymized frames, and the result is
checked against the segment's keyed digest of the originals; any difference is an error.
The sound is copied back as it was. Opening needs the key alone: no model, no GPU.

The lossy ``--publish`` MP4 has no record that matches its pixels. Recovering it is the
pixel-only path (a keyed watermark inside each replaced face, then decoder and scheme
inversion), which photos are getting; :func:`pixel_recoverer` is the one seam where the
video path will call it, frame by frame.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceveil.errors import FormatError, TamperedError, escape
from faceveil.keys import SecretKey
from faceveil.video import record_path
from faceveil.video.record import Record, frames_digest, open_segment, published_digest, read_record, segment_nonce
from faceveil.video.streams import FrameEncoder, VideoInfo, iter_frames, mux_final, probe


@dataclass
class RecoveredVideo:
    frames: int
    segments: int
    exact: bool
    audio: int = 0  # audio streams copied back

    def said(self) -> str:
        """``N frames ..., sound kept`` (or ``no sound``): for the lines that report it."""
        return f"{self.frames} frames, {'sound kept' if self.audio else 'no sound in the video'}"


def pixel_recoverer() -> Callable[[np.ndarray, SecretKey], np.ndarray] | None:
    """The photo path's recovery from the pixels alone, as ``fn(frame, key) -> original frame``,
    or None where this install has none. The seam for ``--publish`` MP4s and other copies
    without a matching record: approximate, never exact."""
    try:
        from faceveil.models.pixel_recovery import recover_from_pixels  # type: ignore[import-not-found]
    except ImportError:
        return None
    return recover_from_pixels


def recover_video(src: Path, dst: Path, key: SecretKey, record: Path | None = None,
                  on_frames: Callable[[int], None] | None = None) -> RecoveredVideo:
    """Write the original frames of ``src`` (with its sound) to ``dst`` (FFV1 MKV), checked.
    Raises TamperedError for a record or video that was altered, KeyMismatchError for another key,
    FormatError for a copy without a record."""
    record = record or record_path(src)
    info = probe(src)
    lossy = not info.pix_fmt.startswith(("bgr", "rgb", "gbr"))  # the --publish MP4, or any re-encoded copy
    if lossy or not record.is_file():
        what = f"a lossy copy ({info.codec} {info.pix_fmt}): the record seals the lossless .mkv's pixels, not these" if lossy \
            else f"no faceveil record ({escape(record.name)}) for this video"
        if pixel_recoverer() is None:
            raise FormatError(f"{escape(src)}: {what}; recovery from the pixels alone is not available in this version: "
                              "recover the .mkv with its .fvvid")
        raise FormatError(f"{escape(src)}: {what}; recovery from the pixels alone is not wired for videos yet")
    rec = read_record(record, key, video=src)  # MAC, payload hash and the video's hash before any decoding
    if tuple(rec.hw) != (info.height, info.width):
        raise FormatError(f"{escape(src)}: the record describes {rec.hw[1]}x{rec.hw[0]} frames, the video has {info.width}x{info.height}")
    part = dst.parent / f".{dst.name}.part"
    part.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds original frames while they are written
    try:
        return _recover(src, dst, key, rec, info, part, on_frames)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)  # nothing half-written stays behind
        raise


def _recover(src: Path, dst: Path, key: SecretKey, rec: Record, info: VideoInfo, part: Path,
             on_frames: Callable[[int], None] | None) -> RecoveredVideo:
    tmp_video = part / "frames.mkv"
    enc = FrameEncoder(tmp_video, info.width, info.height, info.time_base, rec.header.get("codec") if rec.header.get("codec") in ("ffv1", "x264rgb") else "ffv1")
    frames = iter_frames(src)
    total = 0
    try:
        for n, meta, sealed in rec.chunks():
            seg = open_segment(sealed, key, rec.salt, n, meta["first"], meta["frames"], rec.hw)
            batch = []
            for _ in range(meta["frames"]):
                f = next(frames, None)
                if f is None:
                    raise TamperedError(f"{escape(src)}: the video has fewer frames than its record")
                batch.append(f)
            if batch[0].index != meta["first"]:
                raise FormatError(f"{escape(src)}: segment {n} does not start where the record says")
            anonymized = [f.rgb for f in batch]
            if not np.array_equal(published_digest(anonymized), seg.published):
                raise TamperedError(f"{escape(src)}: the frames of segment {n} are not the anonymized ones (edited or re-encoded)")
            originals = [a.copy() for a in anonymized]
            for t in seg.tracks:
                w, h = t.size
                for fno, (x, y), crop in zip(t.frames, t.origins, t.crops):
                    originals[fno - meta["first"]][y : y + h, x : x + w] = crop
            if not np.array_equal(frames_digest(key, segment_nonce(rec.salt, n), originals), seg.digest):
                raise TamperedError(f"{escape(src)}: segment {n} does NOT restore the original frames (the sealed digest differs)")
            for f, o in zip(batch, originals):
                enc.write(o, f.pts)
            total += len(batch)
            if on_frames:
                on_frames(len(batch))
        if next(frames, None) is not None:
            raise TamperedError(f"{escape(src)}: the video has more frames than its record")
    finally:
        enc.close()
    mux_final(part / "out.mkv", [tmp_video], src, info.rotation)
    os.chmod(part / "out.mkv", 0o600)  # a recovered original is as private as the key
    os.replace(part / "out.mkv", dst)
    tmp_video.unlink()
    part.rmdir()
    return RecoveredVideo(total, len(rec.segments), True, len(info.audio))

