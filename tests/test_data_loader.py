"""The streaming loader: tensors, shuffling, sources, damaged shards, and splitting across processes."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from faceveil.data.loader import make_dataset, make_loader, resolve_urls
from faceveil.data.sample_set import build_sample_shards
from faceveil.errors import InputError

ALL = 16  # samples in the sample set


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sample_shards(tmp_path_factory.mktemp("loader") / "set", size=256, samples_per_shard=4)


def _keys(loader) -> list[str]:  # noqa: ANN001
    return [k for batch in loader for k in batch["key"]]


def test_batches_have_the_documented_tensors(shards: Path) -> None:
    batches = list(make_loader(shards, batch_size=5, image_size=256, shuffle=0))
    assert [len(b["key"]) for b in batches] == [5, 5, 5, 1]
    b = batches[0]
    assert b["image"].shape == (5, 3, 256, 256) and b["image"].dtype == torch.float32
    assert b["image"].min() >= -1 and b["image"].max() <= 1 and b["image"].min() < -0.9 and b["image"].max() > 0.9
    assert b["mask"].shape == (5, 1, 256, 256) and set(b["mask"].unique().tolist()) == {0.0, 1.0}
    assert b["mask_latent"].shape == (5, 1, 32, 32)
    torch.testing.assert_close(b["mask_latent"], F.max_pool2d(b["mask"], 8))
    assert b["landmarks5"].shape == (5, 5, 2) and ((b["landmarks5"] > 0) & (b["landmarks5"] < 256)).all()
    assert b["face_index"].dtype == torch.int64 and len(b["label"]) == len(b["source"]) == 5
    assert "__key__" not in b
    # The eyes, nose and mouth of every face are inside its mask.
    for i in range(5):
        for x, y in b["landmarks5"][i].round().long().tolist():
            assert b["mask"][i, 0, y, x] == 1


def test_resizing_keeps_landmarks_and_masks_in_register(shards: Path) -> None:
    full = next(iter(make_loader(shards, batch_size=4, image_size=256, shuffle=0)))
    half = next(iter(make_loader(shards, batch_size=4, image_size=128, shuffle=0)))
    assert half["image"].shape == (4, 3, 128, 128) and half["key"] == full["key"]
    torch.testing.assert_close(half["landmarks5"], (full["landmarks5"] + 0.5) / 2 - 0.5)
    down = F.avg_pool2d(full["mask"], 2)
    assert ((down >= 0.5).float() == half["mask"]).float().mean() > 0.99
    torch.testing.assert_close(half["image"], F.interpolate(full["image"], size=128, mode="bilinear", antialias=True), atol=1e-5, rtol=0)


def test_every_sample_once_per_epoch_with_seeded_shuffling(shards: Path) -> None:
    plain = _keys(make_loader(shards, batch_size=4, shuffle=0))
    a = _keys(make_loader(shards, batch_size=4, shuffle=100, seed=1))
    b = _keys(make_loader(shards, batch_size=4, shuffle=100, seed=1))
    c = _keys(make_loader(shards, batch_size=4, shuffle=100, seed=2))
    assert len(plain) == ALL and sorted(plain) == sorted(a) == sorted(c)
    assert a == b and a != c and a != plain
    # A second epoch of the same dataset is shuffled differently.
    dataset = make_dataset(shards, shuffle=100, seed=1)
    first, second = [s["key"] for s in dataset], [s["key"] for s in dataset]
    assert sorted(first) == sorted(second) and first != second


def test_two_workers_in_one_process_read_each_shard_once(shards: Path) -> None:
    keys = _keys(make_loader(shards, batch_size=3, shuffle=0, num_workers=2))
    assert sorted(keys) == sorted(_keys(make_loader(shards, batch_size=3, shuffle=0)))


def test_brace_expansion_and_pipe_sources(shards: Path) -> None:
    braces = str(shards / "shard-{000000..000003}.tar")
    assert resolve_urls(braces) == [str(shards / f"shard-{i:06d}.tar") for i in range(4)]
    assert len(_keys(make_loader(braces, batch_size=8, shuffle=0))) == ALL
    pipe = f"pipe:cat {shards / 'shard-000002.tar'}"
    assert len(_keys(make_loader([pipe, str(shards / "shard-000003.tar")], batch_size=8, shuffle=0))) == 8


def test_resampled_loader_is_endless(shards: Path) -> None:
    loader = make_loader(shards, batch_size=4, shuffle=8, resampled=True, seed=0)
    it = iter(loader)
    keys = [k for _ in range(10) for k in next(it)["key"]]
    assert len(keys) == 40 and len(set(keys)) <= ALL


def test_truncated_shard_is_tolerated(shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for p in shards.glob("shard-*.tar"):
        shutil.copy(p, tmp_path / p.name)
    broken = tmp_path / "shard-000001.tar"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="faceveil.data.loader"):
        keys = _keys(make_loader(sorted(str(p) for p in tmp_path.glob("shard-*.tar")), batch_size=4, shuffle=0))
    # The three whole shards are read in full; the torn one gives what it can.
    assert 12 <= len(keys) < ALL and len(set(keys)) == len(keys)
    assert any("skipping unreadable data" in r.message for r in caplog.records)


def test_bad_sample_is_logged_and_skipped(shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, dst = shards / "shard-000000.tar", tmp_path / "bad.tar"
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            payload = tin.extractfile(member).read()
            if member.name.endswith(".image.png") and member.name.startswith("astronaut-orig"):
                payload = b"not a png"
                member.size = len(payload)
            tout.addfile(member, io.BytesIO(payload))
    with caplog.at_level(logging.WARNING, logger="faceveil.data.loader"):
        keys = _keys(make_loader(str(dst), batch_size=8, shuffle=0))
    assert len(keys) == 3 and "astronaut-orig-00" not in keys
    assert any("skipping unreadable data" in r.message for r in caplog.records)


def test_bad_specs_are_clear_errors(tmp_path: Path, shards: Path) -> None:
    with pytest.raises(InputError, match="no shards"):
        resolve_urls(tmp_path)
    with pytest.raises(InputError, match="multiple of the latent factor"):
        make_loader(shards, batch_size=2, image_size=100)


SPLIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from faceveil.data.loader import make_loader

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    shards, out = sys.argv[1], sys.argv[2]
    epoch = [k for b in make_loader(shards, batch_size=3, image_size=64, shuffle=50, seed=3, num_workers=2) for k in b["key"]]
    it = iter(make_loader(shards, batch_size=4, image_size=64, shuffle=8, resampled=True, seed=3))
    endless = [k for _ in range(6) for k in next(it)["key"]]
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"world": dist.get_world_size(), "epoch": epoch, "endless": endless}, f)
    dist.destroy_process_group()
    """
)


def test_two_processes_split_the_shards(shards: Path, tmp_path: Path) -> None:
    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(shards), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # Each process (and within it each of two workers) reads its own shards: disjoint, and together everything.
    assert len(r0["epoch"]) == len(r1["epoch"]) == ALL // 2
    assert not set(r0["epoch"]) & set(r1["epoch"])
    assert len(set(r0["epoch"]) | set(r1["epoch"])) == ALL
    # Resampled streams are seeded per rank: both run on, and differently.
    assert len(r0["endless"]) == len(r1["endless"]) == 24 and r0["endless"] != r1["endless"]
