"""Whole training runs on CPU with the tiny config: outputs, resume equivalence, signals, two processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faceveil.errors import InputError
from faceveil.train.checkpointing import ADAPTER_DIR, TRAIN_STATE, list_checkpoints, read_train_state
from faceveil.train.config_schema import load_train_config
from faceveil.train.lora import LORA_WEIGHTS
from faceveil.train.recipe import recipe_main
from faceveil.train.run_log import FINAL_FILE, METRICS_FILE, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
FAST = [
    "anonymize.steps=4",
    "data.batch_size=2",
    "data.val_images=2",
    "data.shuffle=8",
    "output.progress=false",
    "output.log_every=1",
    "output.validate_every=1000",
    "train.cpu_threads=1",
]  # no objective.key_seed: the default random per-run key seed, which a resume must reuse
STRAIGHT = ["train.max_steps=4", "output.checkpoint_every=1", "output.keep_checkpoints=2"]


def config(run_dir: Path, *extra: str):
    return load_train_config(TINY, [f"output.run_dir={run_dir}", *FAST, *extra])


def adapter(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / ADAPTER_DIR / LORA_WEIGHTS)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss/total"] for r in read_jsonl(run_dir / METRICS_FILE) if "loss/total" in r}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    result = recipe_main(config(run_dir, *STRAIGHT))
    return run_dir, result


def test_run_leaves_checkpoints_logs_grid_and_config(straight):
    run_dir, result = straight
    assert result.step == 4 and result.stopped_by is None
    # Rotation keeps the last two; no temporary folder is left behind.
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000003", "step-000004"]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    state = read_train_state(run_dir / "checkpoints" / "step-000004")
    assert state["step"] == 4 and state["batches"] == 4 and state["images"] == 8
    # The resolved config is saved and reloads to the same values.
    assert load_train_config(run_dir / "config.yaml") == config(run_dir, "train.max_steps=4", "output.checkpoint_every=1",
                                                                 "output.keep_checkpoints=2")
    # Finite losses, each logged; validation before and after training.
    logged = read_jsonl(run_dir / METRICS_FILE)
    train_recs = [r for r in logged if "loss/total" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    for r in train_recs:
        for k in ("loss/total", "loss/identity", "loss/prior", "loss/perceptual", "loss/wrong_key", "train/identity_cos",
                  "train/lr", "perf/images_per_s", "perf/peak_mem_gib"):
            assert k in r and r[k] == r[k] and abs(r[k]) < float("inf"), (k, r)
    vals = [r for r in logged if "val/recovery_latent_error" in r]
    assert [r["step"] for r in vals] == [0, 4]
    assert all(r["val/recovery_latent_error"] <= 1e-4 for r in vals)  # exact before and after training
    assert (run_dir / "samples" / "step-000000.png").is_file() and (run_dir / "samples" / "step-000004.png").is_file()
    # Tensorboard got the scalars and the image grid.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((run_dir / "logs").rglob("events.out.tfevents.*"))
    tags = {"scalars": set(), "images": set()}
    for ev in events:
        acc = EventAccumulator(str(ev.parent), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        tags["scalars"] |= set(acc.Tags()["scalars"])
        tags["images"] |= set(acc.Tags()["images"])
    assert {"loss/identity", "loss/prior", "loss/perceptual", "loss/wrong_key", "train/lr", "train/identity_cos",
            "val/recovery_latent_error", "perf/images_per_s", "perf/peak_mem_gib"} <= tags["scalars"]
    assert any(t.startswith("val/grid") for t in tags["images"])
    final = json.loads((run_dir / FINAL_FILE).read_text())
    assert final["step"] == 4 and final["world_size"] == 1


def resumed_from(run_a: Path, name: str, run_dir: Path, *extra: str, state: dict | None = None):
    """Continue ``run_a``'s checkpoint ``name`` (copied, optionally with train_state.json edited) in ``run_dir``."""
    ckpt = shutil.copytree(run_a / "checkpoints" / name, run_dir / "checkpoints" / name)
    if state:
        st = read_train_state(ckpt)
        (ckpt / TRAIN_STATE).write_text(json.dumps({**st, **state}))
    return recipe_main(config(run_dir, *STRAIGHT, *extra), resume="latest")


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_identically(straight, tmp_path):
    """No objective.key_seed: the run's random key seed comes back from the checkpoint, so the continuation is
    bit-identical to the uninterrupted run (same keys, data position, RNG, optimizer and LR state)."""
    run_a, _ = straight
    run_b = tmp_path / "resumed"
    second = resumed_from(run_a, "step-000003", run_b)
    assert second.step == 4 and second.stopped_by is None
    a4, b4 = adapter(run_a / "checkpoints" / "step-000004"), adapter(run_b / "checkpoints" / "step-000004")
    assert same_tensors(a4, b4)
    la, lb = losses_by_step(run_a), losses_by_step(run_b)
    assert la[4] == lb[4], (la, lb)
    sa, sb = (read_train_state(r / "checkpoints" / "step-000004") for r in (run_a, run_b))
    assert sb["batches"] == 4 and sa["key_seed"] == sb["key_seed"]
    # The comparison has teeth: starting the data stream afresh on resume gives other weights.
    run_c = tmp_path / "reseeded"
    resumed_from(run_a, "step-000003", run_c, "data.resume=reseed")
    c4 = adapter(run_c / "checkpoints" / "step-000004")
    assert max_diff(a4, c4) > 1e-4
    # A checkpoint from another world size cannot replay its stream: the run warns and reseeds.
    run_d = tmp_path / "other-world"
    with _captured("faceveil.train") as logs:
        resumed_from(run_a, "step-000003", run_d, state={"world_size": 2})
    assert "NOT equivalent" in logs.text and "reseed" in logs.text
    assert same_tensors(c4, adapter(run_d / "checkpoints" / "step-000004"))


def test_stop_and_resume_keep_the_key_seed_private(tmp_path):
    run_b = tmp_path / "stopped"
    first = recipe_main(config(run_b, "train.max_steps=4", "train.stop_at_step=2"))
    assert first.step == 2 and first.stopped_by == "train.stop_at_step"
    assert [p.name for p in list_checkpoints(run_b)] == ["step-000002"]
    second = recipe_main(config(run_b, "train.max_steps=4", "train.stop_at_step=2"), resume="latest")
    assert second.step == 4 and second.stopped_by is None
    s2, s4 = (read_train_state(run_b / "checkpoints" / n) for n in ("step-000002", "step-000004"))
    assert s4["batches"] == 4 and s4["num_workers"] == 0
    seed = s2["key_seed"]
    assert seed == s4["key_seed"] and len(seed) == 64 and int(seed, 16) > 0
    # The seed lives in train_state.json only: not in config.yaml, metrics, tensorboard, final.json, samples.
    needles = (seed.encode(), str(int(seed, 16)).encode(), seed.lstrip("0").encode())
    for f in run_b.rglob("*"):
        if f.is_file() and f.name != TRAIN_STATE:
            data = f.read_bytes()
            assert not any(n in data for n in needles), f
    assert "key_seed" not in (run_b / "config.yaml").read_text().replace("key_seed: null", "")
    # A fresh run draws another seed.
    other = tmp_path / "other"
    recipe_main(config(other, "train.max_steps=1"))
    assert read_train_state(other / "checkpoints" / "step-000001")["key_seed"] != seed


def test_resume_with_another_lora_rank_is_one_clear_error(straight, tmp_path):
    run_a, _ = straight
    with pytest.raises(InputError) as err:
        resumed_from(run_a, "step-000004", tmp_path / "r4", "lora.rank=4", "train.max_steps=5")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "r4" / "checkpoints" / "step-000004" / ADAPTER_DIR / LORA_WEIGHTS) in msg
    assert "shape" in msg and "lora.rank" in msg


class _captured:
    """Collect a logger's records (the run's logger does not propagate to pytest's caplog handler reliably)."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append  # type: ignore[method-assign]

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


def _wait_for(pred, timeout: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, sig):
    run_dir = tmp_path / "sig"
    cmd = [sys.executable, str(ROOT / "train" / "finetune.py"), "--config", str(TINY), f"output.run_dir={run_dir}",
           *FAST, "train.max_steps=100000", "output.checkpoint_every=100000", "output.validate_at_start=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: any("loss/total" in r for r in read_jsonl(run_dir / METRICS_FILE)), 240, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    final = json.loads((run_dir / FINAL_FILE).read_text())
    assert final["stopped_by"] == sig.name
    ckpts = list_checkpoints(run_dir)
    assert ckpts and read_train_state(ckpts[-1])["step"] == final["step"] < 100000
    assert "--resume latest" in err


def test_two_processes_keep_lora_identical(tmp_path):
    run_dir = tmp_path / "ddp"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
           "29517", str(ROOT / "train" / "finetune.py"), "--config", str(TINY), f"output.run_dir={run_dir}", *FAST,
           "train.max_steps=3", "output.validate_at_start=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((run_dir / FINAL_FILE).read_text())
    assert final["world_size"] == 2 and "MULTI_CPU" in final["distributed_type"]
    assert final["lora_rank_max_abs_diff"] == 0.0
    digests = final["first_batch_digest_per_rank"]
    assert len(digests) == 2 and digests[0] != digests[1]  # each process read its own data
    lora = adapter(run_dir / "checkpoints" / "step-000003")
    assert max(float(v.abs().max()) for k, v in lora.items() if "lora_B" in k) > 0  # the adapter did train
    assert read_train_state(run_dir / "checkpoints" / "step-000003")["images"] == 3 * 2 * 2


def test_a_recipe_set_up_but_never_trained_still_summarizes(tmp_path):
    """Every piece of run state exists from the start (torchtune's rule): summary() needs no train()."""
    from faceveil.train.recipe import FinetuneRecipe
    from faceveil.train.distributed import reset_accelerate_state

    recipe = FinetuneRecipe(config(tmp_path / "run", "train.max_steps=4"), tmp_path / "run", None)
    try:
        recipe.setup()
        s = recipe.summary()
        assert (s["step"], s["stopped_by"], s["checkpoint"], s["train"]) == (0, None, None, {})
        recipe.cleanup()
    finally:
        reset_accelerate_state()
