"""The bundled sample set: real faces, mirrored pairs, idempotent builds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from faceveil.data.sample_set import build_sample_shards
from faceveil.data.shards import decode_sample, read_index, shard_paths


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sample_shards(tmp_path_factory.mktemp("samples") / "set", size=256)


def _decoded(folder: Path) -> dict:
    urls = [str(p) for p in shard_paths(folder)]
    return {s["__key__"]: decode_sample(s) for s in wds.WebDataset(urls, shardshuffle=False)}


def test_sample_set_has_sixteen_faces_of_eight_people(sample_dir: Path) -> None:
    index = read_index(sample_dir)
    assert index["samples"] == 16 and [s["samples"] for s in index["shards"]] == [4, 4, 4, 4]
    samples = _decoded(sample_dir)
    assert len(samples) == 16
    labels = Counter(d.meta["label"] for d in samples.values())
    assert len(labels) == 8 and set(labels.values()) == {2}
    assert {"eileen_collins", "grace_hopper"} <= set(labels)
    assert sum(d.meta["mirrored"] for d in samples.values()) == 8


def test_mirrored_faces_match_their_flipped_originals(sample_dir: Path) -> None:
    samples = _decoded(sample_dir)
    by_label: dict[str, dict[bool, np.ndarray]] = {}
    for d in samples.values():
        by_label.setdefault(d.meta["label"], {})[d.meta["mirrored"]] = d.image.astype(np.float64)
    for label, pair in by_label.items():
        # Detected afresh on the flipped photo, so not identical (dlib's landmarks move by up
        # to ~7 px on Grace Hopper's glasses), but close; another person's face is far off.
        same = np.abs(pair[True] - pair[False][:, ::-1]).mean()
        others = [np.abs(pair[True] - p[False][:, ::-1]).mean() for lab, p in by_label.items() if lab != label]
        assert same < 35, label
        assert same < 0.6 * min(others), label


def test_build_is_idempotent_and_rebuilds_on_new_settings(sample_dir: Path, tmp_path: Path) -> None:
    stamps = {p.name: p.stat().st_mtime_ns for p in sample_dir.iterdir()}
    assert build_sample_shards(sample_dir, size=256) == sample_dir
    assert {p.name: p.stat().st_mtime_ns for p in sample_dir.iterdir()} == stamps

    small = build_sample_shards(tmp_path, size=64, samples_per_shard=8)
    index = read_index(small)
    assert [s["samples"] for s in index["shards"]] == [8, 8]
    assert next(iter(_decoded(small).values())).image.shape == (64, 64, 3)
    # A damaged shard is noticed and the set rebuilt.
    (tmp_path / "shard-000001.tar").write_bytes(b"")
    build_sample_shards(tmp_path, size=64, samples_per_shard=8)
    assert len(_decoded(tmp_path)) == 16


def test_sample_meta_names_its_source_photo(sample_dir: Path) -> None:
    for key, d in _decoded(sample_dir).items():
        assert Path(d.meta["source"]).is_file()
        name, variant, face = key.split("-")
        assert variant == ("mirror" if d.meta["mirrored"] else "orig") and int(face) == d.meta["face_index"]
        assert json.dumps(d.meta)  # plain JSON types only
