"""Defaults that depend on the machine and its environment, shared by the CLI and the Python API.

- :func:`default_backbone`: ``$FACEVEIL_BACKBONE``, else ``sd2-inpaint``;
- :func:`default_threads` / :func:`apply_threads`: torch's CPU threads, fitted to the
  CPUs that other processes leave idle.
"""

from __future__ import annotations

import os


def default_backbone() -> str:
    return os.environ.get("FACEVEIL_BACKBONE", "sd2-inpaint")


def default_threads() -> int:
    """CPUs this process may use, less the ones other processes keep busy, split among local ranks.

    Oversubscribed threads are far slower than fewer ones: on a busy 2-core machine the
    previous default (every core) made a 256 px anonymize 5-25x slower than one thread.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(cpus, round(cpus - busy)) // local)


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads: ``threads``, else $OMP_NUM_THREADS when set, else :func:`default_threads`."""
    import torch

    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else default_threads()
    torch.set_num_threads(threads)
    return threads
