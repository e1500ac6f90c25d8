"""Decode, encode and copy the streams of a video with PyAV; no face logic here.

Frames come out as RGB24 arrays with their own timestamps (variable frame rates kept);
frames go back in through a lossless encoder (FFV1 or libx264rgb at qp 0, both bit-exact
for RGB). The sound and subtitles are copied packet for packet, never re-encoded. Data
streams (a phone's GPS track, a camera's telemetry) and the container's tags (a phone's
location) are dropped: they could say where and who the original was.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from faceveil.errors import InputError, escape

CODECS = {"ffv1": ("ffv1", "bgr0", {"level": "3", "slicecrc": "1"}), "x264rgb": ("libx264rgb", "bgr0", {"qp": "0", "preset": "medium"})}
DEFAULT_CODEC = "ffv1"
MAX_PIXELS = 4096 * 4096  # per frame; a segment of frames is held in memory at once
COPIED_TYPES = ("audio", "subtitle")
MKV_SUBTITLES = {"subrip", "srt", "ass", "ssa", "webvtt", "dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle", "text"}
HDR_TRANSFERS = {"smpte2084", "arib-std-b67", "smpte428"}
PUBLISH_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}  # what an MP4 may carry as is


def _av():
    import av

    av.logging.set_level(av.logging.PANIC)  # FFmpeg's own chatter would break the one-line contract
    return av


@dataclass
class VideoInfo:
    width: int
    height: int
    time_base: Fraction
    rate: float  # average frames per second (a guide: frames keep their own timestamps)
    frames: int  # as the container states it (0: unknown); progress only
    rotation: int  # degrees, from the display matrix; the frames are stored unrotated and kept so
    codec: str
    pix_fmt: str
    copied: int  # audio and subtitle streams to copy
    audio: list[str]  # codec name of each audio stream


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    # FFmpeg errors end with the file name; it is said once, at the start of the line.
    return text.split(": '")[0].rstrip(";:")


def _high_depth(stream) -> bool:
    fmt = stream.codec_context.format
    if fmt is None:
        return False
    return any(c.bits > 8 for c in fmt.components)


def probe(path: str | Path, max_pixels: int = MAX_PIXELS) -> VideoInfo:
    """What the pipeline needs to know of a video, or one :class:`InputError` line saying why it
    cannot be taken: unreadable, no video stream, 10-bit or HDR, too large, no decodable frame."""
    av = _av()
    name = escape(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{name}: not a readable video ({escape(_error_text(exc))}): corrupt or truncated") from None
    with container:
        if not container.streams.video:
            what = "audio only" if container.streams.audio else "no streams a video has"
            raise InputError(f"{name}: {what}: no video stream to anonymize")
        vs = container.streams.video[0]
        cc = vs.codec_context
        if _high_depth(vs) or (cc.color_trc is not None and str(getattr(cc.color_trc, "name", cc.color_trc)).lower() in HDR_TRANSFERS):
            raise InputError(f"{name}: {cc.format.name if cc.format else 'high bit depth'} / HDR video is not supported "
                             "(recovery is exact for 8-bit RGB frames); convert it to 8-bit first")
        if cc.width * cc.height > max_pixels:
            raise InputError(f"{name}: {cc.width}x{cc.height} is larger than the {max_pixels} pixels a frame may have")
        try:
            first = next(container.decode(vs), None)
        except (av.FFmpegError, ValueError) as exc:
            raise InputError(f"{name}: its video does not decode ({escape(_error_text(exc))}): corrupt or truncated") from None
        if first is None:
            raise InputError(f"{name}: its video stream holds no frame (truncated?)")
        if first.width * first.height > max_pixels:
            raise InputError(f"{name}: {first.width}x{first.height} is larger than the {max_pixels} pixels a frame may have")
        rate = float(vs.average_rate or vs.guessed_rate or 25)
        copied = [s for s in container.streams if s.type in COPIED_TYPES]
        return VideoInfo(first.width, first.height, Fraction(vs.time_base or Fraction(1, 1000)), rate, int(vs.frames or 0),
                         int(round(first.rotation or 0)), cc.name, first.format.name, len(copied),
                         [s.codec_context.name for s in container.streams.audio])


@dataclass
class Frame:
    index: int
    pts: int  # in the source stream's time base
    rgb: np.ndarray  # (H, W, 3) uint8, as stored (unrotated)


def iter_frames(path: str | Path, start: int = 0) -> Iterator[Frame]:
    """The frames of the first video stream in presentation order, from frame ``start`` on (the
    ones before are decoded, not converted). Frames without a timestamp get the last one plus
    one. A decoding error mid-way is one :class:`InputError` line."""
    av = _av()
    last = -1
    try:
        with av.open(str(path)) as container:
            vs = container.streams.video[0]
            vs.thread_type = "AUTO"
            for i, f in enumerate(container.decode(vs)):
                pts = f.pts if f.pts is not None and f.pts > last else last + 1
                last = pts
                if i >= start:
                    yield Frame(i, pts, f.to_ndarray(format="rgb24"))
    except (av.FFmpegError, ValueError) as exc:
        raise InputError(f"{escape(path)}: its video stops decoding after frame {last} ({escape(_error_text(exc))})") from None


class FrameEncoder:
    """RGB frames into a lossless MKV (one stream), each with its own timestamp."""

    def __init__(self, path: str | Path, width: int, height: int, time_base: Fraction, codec: str = DEFAULT_CODEC) -> None:
        av = _av()
        name, pix_fmt, options = CODECS[codec]
        self.container = av.open(str(path), "w", format="matroska")
        self.stream = self.container.add_stream(name)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.stream.options = dict(options)
        self.stream.thread_count = 1  # the same bytes on every run (resume compares nothing else)

    def write(self, rgb: np.ndarray, pts: int) -> None:
        av = _av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = pts
        frame.time_base = self.stream.codec_context.time_base
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()


def _packets(container, streams) -> Iterator:
    for p in container.demux(streams):
        if p.dts is None and p.pts is None:
            continue  # the demuxer's end-of-stream marker
        yield p


def _when(packet) -> Fraction:
    t = packet.dts if packet.dts is not None else packet.pts
    return Fraction(t) * Fraction(packet.time_base)


def _interleave(out, *sources: Iterator) -> None:
    """Mux packets of several time-ordered sources in time order, so that the muxer never has to
    hold one stream's packets while it waits for another's (memory stays bounded)."""
    counter = itertools.count()
    keyed = [((_when(p), next(counter), p) for p in src) for src in sources]
    for _, _, p in heapq.merge(*keyed, key=lambda t: (t[0], t[1])):
        out.mux(p)


def _copyable(stream) -> bool:
    """Whether an MKV can hold ``stream`` as it is (MP4's mov_text subtitles, for one, it cannot)."""
    return stream.type == "audio" or (stream.type == "subtitle" and stream.codec_context.name in MKV_SUBTITLES)


def mux_final(dst: str | Path, segments: Iterable[Path], source: str | Path, rotation: int = 0) -> list[str]:
    """Write ``dst`` (MKV): the video packets of the segment files in order, and the audio and
    subtitle packets of ``source`` copied, interleaved by time, one packet in memory per stream.
    Returns notes on streams left out."""
    av = _av()
    segments = list(segments)
    with av.open(str(dst), "w", format="matroska") as out, av.open(str(source)) as src:
        with av.open(str(segments[0])) as first:
            vout = out.add_stream_from_template(first.streams.video[0])
        if rotation:
            vout.set_display_rotation(rotation)
        copied = [s for s in src.streams if s.type in COPIED_TYPES and _copyable(s)]
        notes = [f"{s.type} stream {s.index} ({s.codec_context.name}) cannot go into an MKV as is; left out"
                 for s in src.streams if s.type in COPIED_TYPES and not _copyable(s)]
        outs = {s.index: out.add_stream_from_template(s) for s in copied}

        def video() -> Iterator:
            for seg in segments:
                with av.open(str(seg)) as c:
                    for p in _packets(c, c.streams.video[0]):
                        p.stream = vout
                        yield p

        def others() -> Iterator:
            if not copied:
                return
            for p in _packets(src, copied):
                p.stream = outs[p.stream.index]
                yield p

        _interleave(out, video(), others())
    return notes


def encode_publish(anonymized: str | Path, dst: str | Path, source: str | Path, rotation: int = 0, crf: int = 18) -> list[str]:
    """An ordinary H.264 (yuv420p) MP4 of an anonymized MKV, for sharing; the sound copied from
    ``source`` where an MP4 can hold it. Odd sides are padded by one repeated row or column.
    Returns notes on what was left out."""
    av = _av()
    notes = []
    with av.open(str(anonymized)) as inp, av.open(str(source)) as src, av.open(str(dst), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        w, h = vin.codec_context.width, vin.codec_context.height
        vout = out.add_stream("libx264")
        vout.width, vout.height, vout.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        vout.time_base = vin.time_base
        vout.codec_context.time_base = vin.time_base
        vout.options = {"crf": str(crf), "preset": "veryfast"}
        if rotation:
            vout.set_display_rotation(rotation)
        audio = []
        for s in src.streams.audio:
            if s.codec_context.name in PUBLISH_AUDIO:
                audio.append(s)
            else:
                notes.append(f"audio stream {s.index} ({s.codec_context.name}) cannot go into an MP4 as is; left out of it")
        outs = {s.index: out.add_stream_from_template(s) for s in audio}

        def video() -> Iterator:
            for f in inp.decode(vin):
                rgb = f.to_ndarray(format="rgb24")
                if w % 2 or h % 2:
                    rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = f.pts, vin.time_base
                for p in vout.encode(frame):
                    yield p
            yield from vout.encode()

        def others() -> Iterator:
            if not audio:
                return
            for p in _packets(src, audio):
                p.stream = outs[p.stream.index]
                yield p

        _interleave(out, video(), others())
    return notes
