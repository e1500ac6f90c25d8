"""The throughput benchmark runs end to end on the tiny layout and reports consistent numbers."""

import contextlib
import io
import json

from faceveil.evaluate.benchmark import PHASES, main


def test_benchmark_tiny_cpu(one_thread):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--backbone", "tiny", "--size", "64", "--steps", "3", "--dtype", "float32", "--batch-sizes", "1", "2",
                     "--naive-batch-sizes", "2"]) == 0
    text = buf.getvalue()
    out = json.loads(text[text.index("{"):])
    assert [r["batch"] for r in out["faceveil"]] == [1, 2] and [r["batch"] for r in out["naive"]] == [2]
    assert all(r["exact"] for r in out["faceveil"])  # each file recovered alone, bit for bit
    g = out["gflop_per_image"]
    assert g["anonymize"] > g["naive"] > 0 and g["recover"] > 0
    for r in out["faceveil"]:
        assert set(r["anonymize_phases_s_per_img"]) == set(PHASES)
        assert all(v > 0 for v in r["anonymize_phases_s_per_img"].values())
        assert r["fraction_of_bf16_peak"] is None  # no known peak for a CPU
        assert r["vs_naive_best"] > 0
