"""The CLI's CPU thread choice: explicit option, then $OMP_NUM_THREADS, then the idle CPUs."""

import torch

from faceveil.cli.common import apply_threads, default_threads


def test_threads_option_env_and_default(monkeypatch):
    n = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_threads(None) == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr("os.getloadavg", lambda: (1e6, 0, 0))  # a saturated machine
        assert default_threads() == 1
        monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0, 0))
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
        assert default_threads() == 8
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 processes of a launch share the CPUs
        assert default_threads() == 2
    finally:
        torch.set_num_threads(n)
