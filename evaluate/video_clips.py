"""Test clips made on the spot from the bundled face photos: faces moving, one entering and
leaving the frame, a sine sound track. No media file lives in the repository."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

PHONE = "phone"  # H.264 yuv420p + AAC in MP4, as a phone writes
LOSSLESS = "lossless"  # FFV1 (bgr0) + FLAC in MKV


def _face(name: str, side: int) -> np.ndarray:
    from PIL import Image

    from faceveil.data.images import load_image
    from faceveil.data.samples import FACE_BOXES, sample_photo_path

    img = load_image(sample_photo_path(name))
    box = FACE_BOXES.get(name)
    if box is not None:
        rows, cols = box
        pad = (rows.stop - rows.start) // 4
        img = img[max(rows.start - pad, 0) : rows.stop + pad, max(cols.start - pad, 0) : cols.stop + pad]
    return np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.LANCZOS))


def clip_frames(frames: int, width: int = 192, height: int = 144, face: int = 72) -> list[np.ndarray]:
    """Frames with a face gliding left to right, and a second one entering from the right in the
    middle third and leaving again (cut by the border on the way)."""
    face = fitting_face(width, height, face)
    a, b = _face("grace_hopper", face), _face("astronaut", face)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(frames):
        f = np.empty((height, width, 3), dtype=np.uint8)
        f[..., 0] = (40 + xx * 80 // width).astype(np.uint8)
        f[..., 1] = (90 + yy * 60 // height).astype(np.uint8)
        f[..., 2] = 110
        boxes = clip_boxes(i, frames, width, height, face)
        x, y = boxes[0][:2]
        f[y : y + face, x : x + face] = a
        if len(boxes) > 1:
            xb, yb = boxes[1][:2]
            f[yb : yb + face, xb : min(xb + face, width)] = b[:, : max(0, min(face, width - xb))]
        out.append(f)
    return out


def fitting_face(width: int, height: int, face: int) -> int:
    """The face side that a frame of this size can show gliding across it."""
    return max(8, min(face, width // 2 - 4, height - 16))


def clip_boxes(i: int, frames: int, width: int = 192, height: int = 144, face: int = 72) -> list[tuple[int, int, int, int]]:
    """Where :func:`clip_frames` put its faces in frame ``i``: (x0, y0, x1, y1), cut to the frame."""
    face = fitting_face(width, height, face)
    t = i / max(frames - 1, 1)
    x = int(4 + t * (width // 2 - face))
    y = (height - face) // 2 + int(6 * np.sin(2 * np.pi * t))
    out = [(x, y, x + face, y + face)]
    if frames // 3 <= i <= 2 * frames // 3:  # enters at the right edge, comes in whole, then goes back out
        u = (i - frames // 3) / max(frames // 3, 1)
        xb = width - face // 3 - int((face - 8) * np.sin(np.pi * u))
        out.append((xb, 8, min(xb + face, width), 8 + face))
    return out


def make_clip(path: str | Path, kind: str = PHONE, frames: int = 12, width: int = 192, height: int = 144,
              fps: int = 12, audio: bool = True, vfr: bool = False, rotation: int = 0,
              images: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Write a clip and return its frames as they were given (an H.264 clip decodes to others)."""
    import av

    images = images if images is not None else clip_frames(frames, width, height)
    tb = Fraction(1, fps * 10)
    fmt = "mp4" if kind == PHONE else "matroska"
    with av.open(str(path), "w", format=fmt) as c:
        if kind == PHONE:
            vs = c.add_stream("libx264", rate=fps)
            vs.pix_fmt, vs.options = "yuv420p", {"crf": "20", "preset": "veryfast"}
        else:
            vs = c.add_stream("ffv1", rate=fps)
            vs.pix_fmt = "bgr0"
        vs.width, vs.height = images[0].shape[1], images[0].shape[0]
        vs.time_base = tb
        vs.codec_context.time_base = tb
        if rotation:
            vs.set_display_rotation(rotation)
        a_s = None
        if audio:
            a_s = c.add_stream("aac" if kind == PHONE else "flac", rate=16000)
            a_s.layout = "mono"
        pts = 0
        for i, im in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(im), format="rgb24")
            frame.pts, frame.time_base = pts, tb
            pts += 10 if not vfr else (5 if i % 3 == 0 else 15)  # variable: 1/2x and 3/2x the nominal spacing
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
        if a_s is not None:
            seconds = pts / (fps * 10)
            n = int(16000 * seconds)
            t = np.arange(n) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            fmt_name = "fltp" if kind == PHONE else "s16"
            step = 1024
            for s in range(0, n, step):
                chunk = samples[s : s + step]
                data = chunk[None] if fmt_name == "fltp" else (chunk * 32767).astype(np.int16)[None]
                af = av.AudioFrame.from_ndarray(data, format=fmt_name, layout="mono")
                af.sample_rate, af.pts = 16000, s
                c.mux(a_s.encode(af))
            c.mux(a_s.encode())
    return images
