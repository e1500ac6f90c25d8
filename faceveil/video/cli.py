"""What ``faceveil anonymize`` and ``faceveil recover`` do with videos (the rest of each command is photos').

Inputs are routed here by extension (a folder may mix photos and videos); probing then
confirms each one, and a bad video is one line while the batch goes on. Outputs: for
``clip.mp4``, ``OUT/clip.mkv`` (lossless, sound copied) and ``OUT/clip.fvvid`` (the sealed
record), plus ``OUT/clip.mp4`` (H.264, for sharing) with ``--publish``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from faceveil.cli.common import Report, output_path
from faceveil.video import VIDEO_SUFFIXES, is_video_name, record_path


def add_video_args(p: argparse.ArgumentParser) -> None:
    from faceveil.video.streams import CODECS, DEFAULT_CODEC

    g = p.add_argument_group("videos (inputs named .mp4, .mov, .mkv, ...)")
    g.add_argument("--publish", action="store_true",
                   help="also write NAME.mp4 (H.264) for sharing; exact recovery is from NAME.mkv (a lossy copy could only be recovered approximately, from its pixels)")
    g.add_argument("--video-codec", choices=tuple(CODECS), default=DEFAULT_CODEC,
                   help=f"lossless codec of the anonymized NAME.mkv (default {DEFAULT_CODEC}); both recover bit for bit")


def split_inputs(inputs: list[str]) -> tuple[list[tuple[Path, Path | None]], list[str]]:
    """(videos with the folder each came from, inputs left for the photo path). A folder goes to
    the photo path only if it holds something other than videos."""
    videos: list[tuple[Path, Path | None]] = []
    rest: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            from faceveil.data.images import IMAGE_SUFFIXES

            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            found = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
            videos.extend((f, p) for f in found)
            if any(f.suffix.lower() in IMAGE_SUFFIXES for f in files) or not found:
                rest.append(item)
        elif is_video_name(p):
            videos.append((p, None))
        else:
            rest.append(item)
    return videos, rest


def planned_videos(videos: list[tuple[Path, Path | None]], outdir: Path, overwrite: bool, report: Report):
    """(input, output MKV) pairs; an output that is an input, or shared, fails; one that exists is
    skipped unless ``overwrite``."""
    inputs = {src.resolve() for src, _ in videos}
    taken: dict[Path, Path] = {}
    for src, root in videos:
        dst = output_path(src, root, outdir, ".mkv")
        outs = {dst.resolve(), record_path(dst).resolve(), dst.with_suffix(".mp4").resolve()}
        if outs & inputs:
            report.fail(src, f"output {dst} (or its .fvvid/.mp4) would overwrite an input; choose another -o")
        elif dst.resolve() in taken:
            report.fail(src, f"output {dst} is also the output of {taken[dst.resolve()]}; rename one of them")
        elif dst.exists() and not overwrite:
            taken[dst.resolve()] = src
            report.note(f"{src}: output {dst} exists, skipped (use --overwrite)")
            report.skipped += 1
        else:
            taken[dst.resolve()] = src
            yield src, dst


class FrameLog:
    """In a log (stderr not a terminal): ``faceveil DESC: N/TOTAL frames, F fps, ETA S s`` every few seconds."""

    every = 5.0

    def __init__(self, total: int, desc: str) -> None:
        import time

        self.total, self.desc, self.n = total, desc, 0
        self.started = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        import sys
        import time

        self.n += n
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        fps = self.n / max(now - self.started, 1e-9)
        eta = f", ETA {(self.total - self.n) / fps:.0f} s" if self.total and fps > 0 else ""
        print(f"faceveil {self.desc}: {self.n}/{self.total or '?'} frames, {fps:.2f} fps{eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def frame_progress(total: int, desc: str):
    """A bar in frames, with frames per second and the time left (a plain line every few seconds in a log)."""
    import sys

    if not sys.stderr.isatty():
        return FrameLog(total, desc)
    from tqdm.auto import tqdm

    return tqdm(total=total or None, desc=desc, unit="frame")


def _media_errors() -> tuple[type[BaseException], ...]:
    """What one video may raise and the batch survive: our errors, I/O, and FFmpeg's own."""
    import av

    from faceveil.errors import FaceveilError

    return (FaceveilError, OSError, ValueError, RuntimeError, av.FFmpegError)


def anonymize_videos(args: argparse.Namespace, videos: list[tuple[Path, Path | None]]) -> int:
    from faceveil.cli.common import load_backbone_for_cli, quiet_libraries, resolve_device, resolve_dtype, resolve_settings
    from faceveil.cli.photo_args import face_policy
    from faceveil.errors import InputError
    from faceveil.keys import load_key
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.video.anonymize import VideoAnonymizer, VideoOptions
    from faceveil.video.streams import MAX_PIXELS, probe

    quiet_libraries()
    report = Report("anonymize")
    key = load_key(args.key)
    pairs = list(planned_videos(videos, args.output, args.overwrite, report))
    anonymizer, size = None, 0
    if pairs and args.method == "diffusion":
        from faceveil.models.photo import native_size
        from faceveil.models.pipeline import Anonymizer

        device = resolve_device(args.device)
        backbone = load_backbone_for_cli(args.backbone, device, resolve_dtype(args.dtype, device))
        try:
            anonymizer = Anonymizer(backbone, resolve_settings(args, backbone))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        size = native_size(backbone)
    finder = PhotoFinder(size, args.detector, face_policy(args), args.detect_size, args.sideways)
    options = VideoOptions(codec=args.video_codec, publish=args.publish, max_pixels=min(args.max_pixels, MAX_PIXELS))
    videos_ = VideoAnonymizer(finder, anonymizer, args.batch_size, options)
    for src, dst in pairs:
        try:
            if record_path(src).is_file() and not args.allow_anonymized:
                raise InputError(f"{src}: already a faceveil output (its {record_path(src).name} is beside it); "
                                 "refusing to anonymize it again (use --allow-anonymized)")
            total = probe(src).frames
            dst.parent.mkdir(parents=True, exist_ok=True)
            bar = frame_progress(total, f"anonymize {src.name}")
            try:
                result = videos_.run(src, dst, key, on_frames=bar.update)
            finally:
                bar.close()
        except _media_errors() as exc:
            report.fail(src, exc)
            continue
        report.ok += 1
        if result.resumed_segments:
            report.note(f"{src}: resumed: {result.resumed_segments} finished segments kept from an interrupted run")
        report.note(f"{src}: {result.summary()}")
        face_s = result.face_seconds
        per = f", {result.record_bytes / face_s:.0f} bytes per face-second" if face_s else ""
        report.note(f"{src}: record {result.record_bytes} bytes ({100 * result.record_bytes / max(result.video_bytes, 1):.0f} % "
                    f"of the video's {result.video_bytes}){per}")
        for n in result.notes:
            report.note(f"{src}: {n}")
        if result.faces_left:
            report.left_visible.append(str(dst))
    return report.finish("anonymized", args.output)


def recover_videos(args: argparse.Namespace, videos: list[tuple[Path, Path | None]]) -> int:
    from faceveil.keys import load_key
    from faceveil.video.recover import recover_video

    report = Report("recover")
    key = load_key(args.key)
    # In a folder, NAME.mp4 beside NAME.mkv and NAME.fvvid is the --publish copy: the .mkv is what recovers.
    copies = [(s, r) for s, r in videos if r is not None and s.suffix.lower() != ".mkv"
              and s.with_suffix(".mkv").is_file() and record_path(s).is_file()]
    for src, _ in copies:
        report.note(f"{src}: the shared copy of {src.with_suffix('.mkv').name}, which is recovered instead")
    videos = [v for v in videos if v not in copies]
    for src, dst in planned_videos(videos, args.output, args.overwrite, report):
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            result = recover_video(src, dst, key, record=args.record)
        except _media_errors() as exc:
            report.fail(src, exc)
            continue
        report.ok += 1
        report.note(f"{src}: {result.said()}, restored bit for bit (checked against the sealed digest)")
    return report.finish("recovered", args.output)
