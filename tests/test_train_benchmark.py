"""The training-step benchmark runs on CPU with the tiny layout and reports its numbers as JSON."""

from __future__ import annotations

import contextlib
import io
import json
import math

import torch

from faceveil.train.benchmark import main


def test_benchmark_tiny_cpu():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            rc = main(["--backbone", "tiny", "--size", "64", "--batch-size", "2", "--steps", "2", "--warmup", "1",
                       "--anonymize-steps", "4", "--identity", "tiny", "--device", "cpu"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    out = json.loads(buf.getvalue())
    assert out["backbone"] == "tiny" and out["device"] == "cpu" and out["mixed_precision"] == "no"
    assert out["steps_timed"] == 2 and out["batch_size"] == 2 and out["size"] == 64
    assert 0 < out["step_time_min_s"] <= out["step_time_s"]
    assert math.isclose(out["images_per_s"], 2 / out["step_time_s"])
    assert out["no_grad_part_s"] > 0 and out["grad_part_s"] > 0 and out["peak_mem_gib"] > 0
    assert 0 < out["trainable_params"] < out["unet_params"]
    assert all(math.isfinite(v) for v in out["last_losses"].values())
