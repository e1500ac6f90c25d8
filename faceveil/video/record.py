"""The sealed record of an anonymized video: each track's original face regions, for the key holder.

One record file (``NAME.fvvid`` beside ``NAME.mkv``, a documented sidecar so that it can be
written while the video streams, in bounded memory) holds:

- ``MAGIC``, then one sealed chunk per segment of frames, back to back;
- a public header (UTF-8 JSON): ``format``, ``version``, ``salt``, ``check`` (the key's check
  value for the salt), ``size`` [H, W], ``frames``, ``segments`` (``first`` frame, ``frames``,
  ``sealed_bytes`` of each), ``video_sha256`` (the anonymized MKV's bytes) and
  ``payload_sha256`` (the chunks');
- 64 hex digits of HMAC-SHA256 under the key over the header's exact bytes, the header's
  length (8 bytes, big-endian) and ``MAGIC`` again.

A segment's chunk is :func:`~faceveil.fileformat.sealing.seal_arrays` (ChaCha20-Poly1305 under
``key.subkey("video-segment", salt + segment number)``, zlib, zero-padded to a power of two):

- ``digest``: HMAC under the key of the segment's original frames (what recovery checks);
- ``published``: SHA-256 of the segment's anonymized frames (to tell a re-encoded video apart);
- ``tracks``: the track numbers present, and for the j-th: ``tJ_frames`` (frame numbers),
  ``tJ_origins`` (x0, y0 of its rectangle in each), ``tJ_size`` (w, h, fixed for the segment)
  and ``tJ_video``: the original pixels of those rectangles as a lossless libx264rgb (qp 0)
  raw H.264 stream (no container: a container adds random ids), which codes a face from its
  previous frame: 2.4 times smaller than sealing each frame's region on its own.

Opening checks the MAC over the header, then the payload's SHA-256, before any chunk is
decrypted, decoded or parsed; each chunk is then authenticated by its AEAD tag.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceveil.errors import FormatError, KeyMismatchError, TamperedError, escape
from faceveil.fileformat.sealing import at_most, exactly, open_arrays, seal_arrays
from faceveil.jsonfile import parse_json
from faceveil.keys import SecretKey, tags_equal

MAGIC = b"FVVIDREC"
FORMAT = "faceveil-video-record"
VERSION = 1
PURPOSE = "video-segment"
MAX_HEADER_BYTES = 16 << 20
MAX_TRACKS = 256  # per segment
CROP_MIN = 16  # x264 wants a few macroblocks


def segment_nonce(salt: bytes, segment: int) -> bytes:
    """The sealing salt of one segment: chunks cannot be swapped or reordered unnoticed."""
    return salt + struct.pack(">Q", segment)


def track_nonce(key: SecretKey, salt: bytes, track: int) -> bytes:
    """The diffusion nonce of one track, the same for all its frames (see :mod:`faceveil.video.anonymize`).
    Derived, not drawn, so that a resumed run gives each track the nonce it had."""
    return hmac.new(key.subkey("video-track-nonce", salt), struct.pack(">Q", track), hashlib.sha256).digest()[:16]


def frames_digest(key: SecretKey, nonce: bytes, frames: Sequence[np.ndarray]) -> np.ndarray:
    """Keyed digest of a segment's original frames (nobody without the key can test a candidate)."""
    mac = hmac.new(key.subkey("video-original-digest", nonce), b"faceveil/video/original\0", hashlib.sha256)
    for f in frames:
        mac.update("x".join(map(str, f.shape)).encode() + b"\0")
        mac.update(np.ascontiguousarray(f).tobytes())
    return np.frombuffer(mac.digest(), dtype=np.uint8)


def published_digest(frames: Sequence[np.ndarray]) -> np.ndarray:
    h = hashlib.sha256(b"faceveil/video/published\0")
    for f in frames:
        h.update("x".join(map(str, f.shape)).encode() + b"\0")
        h.update(np.ascontiguousarray(f).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8)


# ---------------------------------------------------------------- a track's rectangles
@dataclass
class TrackCrops:
    """One track's rectangles in one segment: where they sit and their original pixels."""

    track: int
    frames: list[int]
    origins: list[tuple[int, int]]  # x0, y0
    size: tuple[int, int]  # w, h
    crops: list[np.ndarray] | None = None  # (h, w, 3) uint8 each, filled by opening


def fixed_rectangles(boxes: Sequence[tuple[int, int, int, int]], hw: tuple[int, int]) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """One (w, h) for all of a track's boxes (x0, y0, x1, y1) in a segment, and each box's origin:
    a rectangle of that size holding the box, inside the frame."""
    fh, fw = hw
    w = min(fw, max(CROP_MIN, max(b[2] - b[0] for b in boxes)))
    h = min(fh, max(CROP_MIN, max(b[3] - b[1] for b in boxes)))
    origins = [(min(max(b[0], 0), fw - w), min(max(b[1], 0), fh - h)) for b in boxes]
    return (w, h), origins


def encode_crops(crops: Sequence[np.ndarray]) -> bytes:
    """Crops of one size as a lossless libx264rgb (qp 0) stream: bit-exact for RGB."""
    import av

    buf = io.BytesIO()
    # A raw H.264 stream, not a container: a container adds random ids, and resume must give the same bytes.
    with av.open(buf, "w", format="h264") as c:
        s = c.add_stream("libx264rgb", rate=25)
        h, w = crops[0].shape[:2]
        s.width, s.height, s.pix_fmt = w, h, "bgr0"
        s.options = {"qp": "0", "preset": "medium"}
        s.thread_count = 1  # the same bytes on every run
        for crop in crops:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(crop), format="rgb24")))
        c.mux(s.encode())
    return buf.getvalue()


def decode_crops(data: bytes, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The crops of :func:`encode_crops`; exactly ``count`` of ``size`` (w, h), else FormatError."""
    import av

    w, h = size
    out = []
    try:
        with av.open(io.BytesIO(data), format="h264") as c:
            for f in c.decode(video=0):
                if len(out) == count or (f.width, f.height) != (w, h):
                    raise FormatError("a track's sealed regions do not match their description")
                out.append(f.to_ndarray(format="rgb24"))
    except av.FFmpegError:
        raise FormatError("a track's sealed regions do not decode") from None
    if len(out) != count:
        raise FormatError("a track's sealed regions do not match their description")
    return out


# ---------------------------------------------------------------- one segment
@dataclass
class Segment:
    index: int
    first: int  # first frame number
    frames: int
    digest: np.ndarray
    published: np.ndarray
    tracks: list[TrackCrops]


def seal_segment(seg: Segment, key: SecretKey, salt: bytes) -> bytes:
    arrays: dict[str, np.ndarray] = {"digest": seg.digest, "published": seg.published,
                                     "tracks": np.array([t.track for t in seg.tracks], dtype=np.int32)}
    for j, t in enumerate(seg.tracks):
        arrays[f"t{j}_frames"] = np.asarray(t.frames, dtype=np.int32)
        arrays[f"t{j}_origins"] = np.asarray(t.origins, dtype=np.int32).reshape(-1, 2)
        arrays[f"t{j}_size"] = np.asarray(t.size, dtype=np.int32)
        arrays[f"t{j}_video"] = np.frombuffer(encode_crops(t.crops), dtype=np.uint8)
    return seal_arrays(arrays, key, PURPOSE, segment_nonce(salt, seg.index))


class _SegmentSpec(dict):
    """Which tensors a segment may hold, by name pattern, each bounded by the frame size."""

    def __init__(self, frames: int, hw: tuple[int, int]) -> None:
        super().__init__(digest=exactly(("U8",), (32,)), published=exactly(("U8",), (32,)),
                         tracks=at_most(("I32",), MAX_TRACKS, 1))
        self.frames, self.pixels = frames, hw[0] * hw[1]

    def get(self, name, default=None):
        if name in self:
            return self[name]
        head, _, what = name.partition("_")
        if not (head.startswith("t") and head[1:].isdigit() and int(head[1:]) < MAX_TRACKS):
            return default
        return {"frames": at_most(("I32",), self.frames, 1), "origins": at_most(("I32",), 2 * self.frames, 2),
                "size": exactly(("I32",), (2,)), "video": at_most(("U8",), 4 * self.pixels * self.frames + (1 << 20), 1)}.get(what, default)


def open_segment(sealed: bytes, key: SecretKey, salt: bytes, index: int, first: int, frames: int,
                 hw: tuple[int, int]) -> Segment:
    """A segment's contents, every value checked against the frames it describes."""
    max_raw = 5 * hw[0] * hw[1] * frames + (4 << 20)
    arrays = open_arrays(sealed, key, PURPOSE, segment_nonce(salt, index), max_raw, _SegmentSpec(frames, hw))
    if arrays is None:
        raise TamperedError(f"segment {index} does not open under this key (altered)")
    if "digest" not in arrays or "published" not in arrays or "tracks" not in arrays:
        raise FormatError(f"segment {index} lacks its digests")
    fh, fw = hw
    tracks = []
    for j, number in enumerate(arrays["tracks"].tolist()):
        try:
            fr, org, size, video = (arrays[f"t{j}_{k}"] for k in ("frames", "origins", "size", "video"))
        except KeyError:
            raise FormatError(f"segment {index}: track {j} is incomplete") from None
        w, h = (int(v) for v in size)
        if not (0 < w <= fw and 0 < h <= fh) or len(org) != len(fr) or not len(fr):
            raise FormatError(f"segment {index}: track {j} has a bad size or count")
        if np.any(fr < first) or np.any(fr >= first + frames) or np.any(org < 0) or np.any(org[:, 0] + w > fw) or np.any(org[:, 1] + h > fh):
            raise FormatError(f"segment {index}: track {j} lies outside its frames")
        crops = decode_crops(video.tobytes(), len(fr), (w, h))
        tracks.append(TrackCrops(int(number), fr.tolist(), [tuple(o) for o in org.tolist()], (w, h), crops))
    return Segment(index, first, frames, arrays["digest"], arrays["published"], tracks)


# ---------------------------------------------------------------- the file
def header_mac(key: SecretKey, header: bytes) -> bytes:
    return key.mac(b"faceveil/video/header\0" + header).encode("ascii")


def write_record(path: Path, chunks: Sequence[Path], header: dict, key: SecretKey) -> None:
    """Write the record from its sealed chunk files (one in memory at a time)."""
    payload = hashlib.sha256()
    sizes = []
    for c in chunks:
        data = c.read_bytes()
        payload.update(data)
        sizes.append(len(data))
    header = dict(header, payload_sha256=payload.hexdigest())
    for seg, n in zip(header["segments"], sizes):
        seg["sealed_bytes"] = n
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(MAGIC)
        for c in chunks:
            f.write(c.read_bytes())
        f.write(text + header_mac(key, text) + struct.pack(">Q", len(text)) + MAGIC)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Record:
    path: Path
    header: dict
    salt: bytes
    hw: tuple[int, int]
    segments: list[dict]  # first, frames, sealed_bytes, offset

    def chunks(self) -> Iterator[tuple[int, dict, bytes]]:
        with open(self.path, "rb") as f:
            for i, s in enumerate(self.segments):
                f.seek(s["offset"])
                yield i, s, f.read(s["sealed_bytes"])


def _int(value, low: int, high: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FormatError(f"the record's {what} is not a number from {low} to {high}")
    return value


def read_record(path: Path, key: SecretKey, video: Path | None = None) -> Record:
    """Open a record's header: the MAC under the key first, then the structure and the payload hash.
    ``video``: the anonymized MKV, whose bytes must be the ones recorded (else TamperedError)."""
    name = escape(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 2 * len(MAGIC) + 72 or f.read(len(MAGIC)) != MAGIC:
                raise FormatError(f"{name}: not a faceveil video record")
            f.seek(size - 16)
            (n,) = struct.unpack(">Q", f.read(8))
            if f.read(8) != MAGIC or n > min(MAX_HEADER_BYTES, size - 2 * len(MAGIC) - 72):
                raise FormatError(f"{name}: the video record is truncated or not one")
            f.seek(size - 16 - 64 - n)
            text, mac = f.read(n), f.read(64)
    except OSError as exc:
        raise FormatError(f"{name}: cannot read the video record ({exc.strerror})") from None
    try:
        header = parse_json(text, max_depth=4)
    except ValueError:
        header = None
    if not tags_equal(header_mac(key, text), mac):
        salt_hex = header.get("salt") if isinstance(header, dict) else None
        if isinstance(salt_hex, str) and isinstance(header.get("check"), str):
            try:
                if not tags_equal(key.check_value(bytes.fromhex(salt_hex)[:64]), header["check"]):
                    raise KeyMismatchError(f"{name}: wrong key: this video was anonymized with another key")
            except ValueError:
                pass
        raise TamperedError(f"{name}: the video record was modified (authentication failed)")
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise FormatError(f"{name}: unsupported video record")
    try:
        salt = bytes.fromhex(header["salt"])
        hh, ww = (_int(v, 1, 1 << 16, "frame size") for v in header["size"])
        segments, offset = [], len(MAGIC)
        for s in header["segments"]:
            frames = _int(s["frames"], 1, 1 << 20, "segment length")
            first = _int(s["first"], 0, 1 << 40, "first frame")
            sealed = _int(s["sealed_bytes"], 1, 8 * hh * ww * frames + (8 << 20), "segment size")
            segments.append({"first": first, "frames": frames, "sealed_bytes": sealed, "offset": offset})
            offset += sealed
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{name}: the video record's header is malformed ({escape(exc)})") from None
    if offset != size - 16 - 64 - n:
        raise FormatError(f"{name}: the video record's segments do not add up to its size")
    payload = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(len(MAGIC))
        left = offset - len(MAGIC)
        while left:
            block = f.read(min(left, 1 << 20))
            payload.update(block)
            left -= len(block)
    if not tags_equal(str(header.get("payload_sha256")), payload.hexdigest()):
        raise TamperedError(f"{name}: the video record's sealed segments were modified")
    if video is not None and not tags_equal(str(header.get("video_sha256")), file_sha256(video)):
        raise TamperedError(f"{escape(video)}: not the video this record was written for (re-encoded, edited or another file)")
    return Record(path, header, salt, (hh, ww), segments)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
