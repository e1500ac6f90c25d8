"""The ``data.shards: samples`` source: the bundled real-face sample set, built once per image size.

Not for: building the set itself (:mod:`faceveil.data.sample_set`).
"""

from __future__ import annotations

from pathlib import Path

from faceveil.train.config_schema import SAMPLE_SHARDS


def sample_shards_dir(image_size: int) -> Path:
    from faceveil.models.backbones import cache_dir

    return cache_dir() / "sample-shards" / f"{image_size}px"


def resolve_shards(spec: str, image_size: int, accelerator) -> str:  # noqa: ANN001
    """The shard source for a config value; ``samples`` builds the bundled sample set once (main process first)."""
    if spec != SAMPLE_SHARDS:
        return spec
    folder = sample_shards_dir(image_size)
    with accelerator.main_process_first():
        from faceveil.data.sample_set import build_sample_shards

        build_sample_shards(folder, size=image_size)
    return str(folder)
