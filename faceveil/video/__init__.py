"""Videos: every face of every frame anonymized, the sound kept, the originals sealed for the key holder.

One module a job:

- :mod:`~faceveil.video.streams`: probe, decode, encode and copy streams (PyAV);
- :mod:`~faceveil.video.tracks`: detection per frame, tracks (motpy) and bridged misses;
- :mod:`~faceveil.video.record`: the sealed record of the original face regions (a sidecar);
- :mod:`~faceveil.video.anonymize`: the streaming pipeline, in resumable segments;
- :mod:`~faceveil.video.recover`: the original frames back, checked against a keyed digest;
- :mod:`~faceveil.video.cli`: what ``faceveil anonymize`` and ``faceveil recover`` call for videos.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mts", ".m2ts", ".ts", ".3gp", ".mpg", ".mpeg", ".wmv", ".flv"})
RECORD_SUFFIX = ".fvvid"  # the sealed record beside an anonymized video: NAME.mkv + NAME.fvvid


def is_video_name(path: str | Path) -> bool:
    """Whether ``path`` names a video by its extension (confirmed later by probing)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def record_path(video: str | Path) -> Path:
    """The sealed record of an anonymized video: ``NAME.fvvid`` beside ``NAME.mkv`` (and ``NAME.mp4``)."""
    return Path(video).with_suffix(RECORD_SUFFIX)
