"""Video figures for the README: frames per second, record size, what the record's length shows.

::

    python -m faceveil.evaluate.video_benchmark                      # tiny backbone, CPU
    python -m faceveil.evaluate.video_benchmark --backbone sd2-inpaint:random --device cuda \\
        --width 1280 --height 720 --frames 48 --steps 50             # a GPU run at 512 px crops

Everything runs on a clip made on the spot from the bundled photos (a phone-like H.264 + AAC
MP4, two faces, one entering and leaving the frame); ``deface`` runs on the same clip.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _anonymizer(args, method: str):
    from faceveil.data.photo_detect import FacePolicy
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.video.anonymize import VideoAnonymizer, VideoOptions

    anonymizer, size = None, 0
    if method == "diffusion":
        import torch

        from faceveil.models.backbones import load_backbone
        from faceveil.models.photo import native_size
        from faceveil.models.pipeline import Anonymizer
        from faceveil.models.settings import Settings

        device = torch.device(args.device)
        bb = load_backbone(args.backbone, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
        anonymizer, size = Anonymizer(bb, Settings(steps=args.steps)), native_size(bb)
    finder = PhotoFinder(size, policy=FacePolicy(method=method))
    return VideoAnonymizer(finder, anonymizer, args.batch_size, VideoOptions(segment=args.segment))


def _timed_run(args, method: str, clip: Path, out: Path, key) -> dict:
    va = _anonymizer(args, method)
    start = time.perf_counter()
    report = va.run(clip, out, key)
    seconds = time.perf_counter() - start
    return {"method": method, "seconds": round(seconds, 2), "fps": round(report.frames / seconds, 3),
            "summary": report.summary(), "record_bytes": report.record_bytes, "video_bytes": report.video_bytes,
            "face_seconds": round(report.face_seconds, 3),
            "record_bytes_per_face_second": round(report.record_bytes / report.face_seconds) if report.face_seconds else None}


def _deface(clip: Path, out: Path) -> dict:
    exe = shutil.which("deface")
    if exe is None:
        return {"deface": "not installed"}
    start = time.perf_counter()
    done = subprocess.run([exe, str(clip), "-o", str(out), "--keep-audio"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "returncode": done.returncode, "note": "includes its start-up (model load)"}


def _frame_by_frame(record: Path, video: Path, key) -> dict:
    """The record's track streams against sealing each region on its own (zlib, as a photo record would)."""
    import zlib

    from faceveil.video.record import encode_crops, open_segment, read_record

    rec = read_record(record, key, video=video)
    stream = single = 0
    for n, meta, sealed in rec.chunks():
        seg = open_segment(sealed, key, rec.salt, n, meta["first"], meta["frames"], rec.hw)
        for t in seg.tracks:
            stream += len(encode_crops(t.crops))
            single += sum(len(zlib.compress(c.tobytes(), 9)) for c in t.crops)
    return {"track_streams_bytes": stream, "frame_by_frame_zlib_bytes": single,
            "ratio": round(single / stream, 2) if stream else None,
            "sealed_segment_bytes": [s["sealed_bytes"] for s in rec.segments]}


def _length_leak(root: Path, key, args) -> dict:
    """What the public segment lengths show: the same background with no face, a still face, a moving face."""
    from faceveil.evaluate.video_clips import LOSSLESS, clip_frames, make_clip

    frames = clip_frames(16, 192, 144)
    still = [frames[0].copy() for _ in range(16)]
    bg = np.array(frames[0], copy=True)
    bg[:, :110] = bg[:, 110:111]  # the face painted over with a column of background
    cases = {"no face": [bg] * 16, "still face": still, "moving faces": frames}
    out = {}
    for name, images in cases.items():
        clip = root / f"leak_{name.replace(' ', '_')}.mkv"
        make_clip(clip, LOSSLESS, images=images, audio=False)
        va = _anonymizer(args, "blur")
        va.options.segment = 8
        va.run(clip, root / f"{clip.stem}_out.mkv", key)
        header = json.loads(_header_text(root / f"{clip.stem}_out.fvvid"))
        out[name] = [s["sealed_bytes"] for s in header["segments"]]
    return out


def flicker(args, frames: int = 6) -> dict:
    """Frame-to-frame change of one moving face's replacement, in its aligned crop (inside the
    mask): one nonce for the track against a fresh nonce per frame, beside the original's own."""
    from faceveil.data.photo_align import context_photo, face_crop
    from faceveil.data.photo_detect import detect_in_photo
    from faceveil.evaluate.video_clips import clip_frames
    from faceveil.keys import SecretKey, new_nonce
    from faceveil.models.photo import plan_faces

    va = _anonymizer(args, "diffusion")
    key = SecretKey.generate()
    crops, masks = [], []
    for f in clip_frames(frames, args.width, args.height, max(24, min(args.width, args.height) // 2))[:frames]:
        found = sorted(detect_in_photo(f, va.finder.detector, va.finder.tile), key=lambda x: x.bbox[0])[:1]
        [pf] = plan_faces(f, found, va.finder.size, va.finder.policy)
        r = pf.region(f.shape[:2])
        crops.append(face_crop(f, context_photo(f, [r]), pf.matrix, pf.mask))
        masks.append(pf.mask)
    one = new_nonce()
    same = va.anonymizer.anonymize(crops, masks, key, nonces=[one] * frames, allow_caller_nonces=True, allow_nonce_reuse=True)
    fresh = va.anonymizer.anonymize(crops, masks, key)

    def step(images) -> float:
        d = [np.abs(a.astype(float) - b.astype(float))[m & n].mean() for a, b, m, n in zip(images, images[1:], masks, masks[1:])]
        return round(float(np.mean(d)), 2)

    return {"original": step(crops), "one nonce per track": step([v.image for v in same]),
            "a nonce per frame": step([v.image for v in fresh]), "unit": "mean abs change per step, 0-255, inside the mask"}


def _header_text(path: Path) -> bytes:
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack(">Q", data[-16:-8])
    return data[-16 - 64 - n : -16 - 64]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--segment", type=int, default=16)
    p.add_argument("--keep", type=Path, help="keep the clips and outputs in this folder")
    args = p.parse_args(argv)

    from faceveil.evaluate.video_clips import PHONE, clip_frames, make_clip
    from faceveil.keys import SecretKey

    root = args.keep or Path(tempfile.mkdtemp(prefix="fv-video-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    key = SecretKey.generate()
    clip = root / "clip.mp4"
    face = max(24, min(args.width, args.height) // 2)
    make_clip(clip, PHONE, images=clip_frames(args.frames, args.width, args.height, face), fps=12)
    result: dict = {"clip": {"frames": args.frames, "size": [args.width, args.height], "bytes": clip.stat().st_size,
                             "backbone": args.backbone, "device": args.device, "steps": args.steps}}
    result["covers"] = _timed_run(args, "blur", clip, root / "blur.mkv", key)
    result["diffusion"] = _timed_run(args, "diffusion", clip, root / "diffusion.mkv", key)
    result["deface"] = _deface(clip, root / "deface.mp4")
    if "seconds" in result["deface"]:
        result["deface"]["fps"] = round(args.frames / result["deface"]["seconds"], 3)
    result["record_vs_frame_by_frame"] = _frame_by_frame(root / "diffusion.fvvid", root / "diffusion.mkv", key)
    result["record_length_by_content"] = _length_leak(root, key, args)
    result["flicker"] = flicker(args)
    print(json.dumps(result, indent=2))
    if args.keep is None:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
