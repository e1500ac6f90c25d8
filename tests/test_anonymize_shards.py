"""The data-set job: 2 CPU processes split the shards, a SIGTERM loses and duplicates nothing, outputs recover."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceveil.data.images import elliptical_mask
from faceveil.data.shards import FORMAT_NAME, FORMAT_VERSION, SHARD_NAME, encode_sample, write_json, write_tar
from faceveil.keys import SecretKey, save_key

SIZE, SHARDS, PER, STEPS = 64, 8, 4, 6


def _make_input(folder: Path, face: np.ndarray) -> set[str]:
    mask = elliptical_mask(SIZE, SIZE)
    keys, index = set(), []
    for k in range(SHARDS):
        samples = []
        for j in range(PER):
            key = f"{k:04d}{j:04d}_00"
            meta = {"label": "Tom Hanks", "source": "people/tom.png", "size": SIZE, "face_index": 0, "landmarks5": [[1.0, 2.0]] * 5}
            samples.append(encode_sample(key, np.roll(face, 5 * (k * PER + j), axis=1), mask, meta))
            keys.add(key)
        if k == 3:
            samples[1]["image.png"] = b"not a png"  # one unreadable sample
            keys.discard(samples[1]["__key__"])
        write_tar(folder / SHARD_NAME.format(k), samples)
        index.append({"name": SHARD_NAME.format(k), "samples": PER})
    write_json(folder / "index.json", {"format": FORMAT_NAME, "version": FORMAT_VERSION, "shards": index})
    return keys


def _launch(inp: Path, out: Path, key: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
           "-m", "faceveil.cli", "anonymize-shards", str(inp), "-o", str(out), "--key", str(key),
           "--backbone", "tiny", "--device", "cpu", "--steps", str(STEPS), "--batch-size", "2", "--workers", "1", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / ".job").glob("shard-*.json")}


def _keys(tar: Path) -> list[str]:
    with tarfile.open(tar) as tf:
        return sorted({m.name.split(".", 1)[0] for m in tf.getmembers()})


@pytest.fixture(scope="module")
def job(tmp_path_factory, face128):
    root = tmp_path_factory.mktemp("shardjob")
    face = np.asarray(Image.fromarray(face128).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    expected = _make_input(root / "in", face)
    key = SecretKey.generate()
    save_key(key, root / "k.key")
    out = root / "out"
    first = _launch(root / "in", out, root / "k.key")
    deadline = time.monotonic() + 300
    while not _records(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGTERM)
    first.communicate(timeout=60)
    before = {name: (out / f"{name}.tar").stat().st_mtime_ns for name in _records(out)}
    second = _launch(root / "in", out, root / "k.key")
    log, _ = second.communicate(timeout=600)
    return root, out, expected, key, before, second.returncode, log


def test_kill_then_resume_loses_and_duplicates_nothing(job):
    root, out, expected, _, before, rc, log = job
    assert 0 < len(before) < SHARDS, "the kill should land mid-run"
    records = _records(out)
    assert sorted(records) == [Path(SHARD_NAME.format(k)).stem for k in range(SHARDS)]
    for name, mtime in before.items():  # finished shards were skipped, not redone
        assert (out / f"{name}.tar").stat().st_mtime_ns == mtime
    seen = [k for k in range(SHARDS) for k in _keys(out / SHARD_NAME.format(k))]
    assert sorted(seen) == sorted(expected)  # full coverage, no duplicate
    assert {r["rank"] for r in records.values()} == {0, 1}  # both processes worked, each shard once
    assert not list(out.glob(".*.part-*"))
    # The unreadable sample is a counted failure, and the run says so.
    assert rc == 1 and "failed 1 (1 unreadable sample)" in log
    assert "unreadable sample" in (out / "failures.tsv").read_text()
    index = json.loads((out / "index.json").read_text())
    assert index["samples"] == SHARDS * PER - 1 and index["failures"] == {"unreadable sample": 1}


def test_outputs_hide_identity_meta_and_recover_exactly(job, tiny_backbone, face128, tmp_path):
    from faceveil.fileformat import read_veiled

    _, out, _, key, _, _, _ = job
    with tarfile.open(out / SHARD_NAME.format(0)) as tf:
        name = sorted(m.name for m in tf.getmembers() if m.name.endswith(".image.png"))[0]
        (tmp_path / "a.png").write_bytes(tf.extractfile(name).read())
        meta = json.loads(tf.extractfile(name.replace("image.png", "meta.json")).read())
    assert "label" not in meta and "source" not in meta and meta["size"] == SIZE
    v = read_veiled(tmp_path / "a.png", key)
    face = np.asarray(Image.fromarray(face128).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    assert np.array_equal(v.original, face)  # sample 0 of shard 0 is the unshifted face


def test_image_folder_becomes_shards_in_one_process(tmp_path, face128, one_thread):
    from faceveil.cli import main
    from faceveil.data.images import save_image

    face = np.asarray(Image.fromarray(face128).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    for i in range(3):
        save_image(tmp_path / "in" / f"person_{i}.png", np.roll(face, 7 * i, axis=0))
    (tmp_path / "in" / "broken.png").write_bytes(b"nope")
    save_key(SecretKey.generate(), tmp_path / "k.key")
    argv = ["anonymize-shards", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--key", str(tmp_path / "k.key"),
            "--backbone", "tiny", "--device", "cpu", "--steps", "2", "--images-per-shard", "2", "--workers", "0", "--no-progress"]
    assert main(argv) == 1  # the broken file is a counted failure
    shards = sorted((tmp_path / "out").glob("shard-*.tar"))
    assert [len(_keys(s)) for s in shards] == [1, 2]  # broken.png sorts first, in shard 0
    assert json.loads((tmp_path / "out" / "index.json").read_text())["failures"] == {"unreadable sample": 1}
    mtimes = [s.stat().st_mtime_ns for s in shards]
    assert main(argv) == 1  # a re-run skips the finished shards and reports the same failure
    assert [s.stat().st_mtime_ns for s in shards] == mtimes
