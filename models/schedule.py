"""The discrete noise levels a deterministic sampler walks through.

Level 0 is the clean end (DDIM's "final" alpha), level i >= 1 is timestep t_i of
``DDIMScheduler.set_timesteps(steps)``. Sampling moves from level i to i - 1 with
the noise prediction evaluated at (x_i, t_i), exactly as ``DDIMScheduler.step``
with eta = 0 does for evenly spaced timesteps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffusers import DDIMScheduler


@dataclass(frozen=True)
class Schedule:
    timesteps: tuple[int, ...]  # t_1 < ... < t_N
    alphas: tuple[float, ...]  # alpha-bar at levels 0..N

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def timestep(self, level: int) -> int:
        return self.timesteps[level - 1]

    def coeffs(self, src: int, dst: int) -> tuple[float, float]:
        """(a, b) with x_dst = a * x_src + b * eps(x_src, t_src): the DDIM (eta = 0) move between levels."""
        a_src, a_dst = self.alphas[src], self.alphas[dst]
        a = math.sqrt(a_dst / a_src)
        b = math.sqrt(1.0 - a_dst) - math.sqrt(a_dst) * math.sqrt(1.0 - a_src) / math.sqrt(a_src)
        return a, b

    @classmethod
    def from_scheduler(cls, scheduler: DDIMScheduler, steps: int) -> Schedule:
        if steps < 1:
            raise ValueError("steps must be >= 1")
        sched = DDIMScheduler.from_config(scheduler.config)
        sched.set_timesteps(steps)
        ts = sorted(int(t) for t in sched.timesteps)
        if len(set(ts)) != len(ts):
            raise ValueError(f"{steps} steps give repeated timesteps; use fewer steps")
        acp = sched.alphas_cumprod.double()
        # DDIM's last move goes to t_1 - T/steps, which is "final_alpha_cumprod" when negative.
        prev = ts[0] - sched.config.num_train_timesteps // steps
        final = float(acp[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
        alphas = (final, *(float(acp[t]) for t in ts))
        if not all(0.0 < a <= 1.0 for a in alphas):
            # Zero terminal SNR (alpha-bar = 0) makes the DDIM move undefined at the noise end.
            raise ValueError("the schedule has an alpha-bar of 0 (zero terminal SNR); it is not supported")
        return cls(tuple(ts), alphas)
