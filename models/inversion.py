"""Deterministic sampling and inversion: our own paired steps (eta = 0, guidance 1).

A scheme's *state* is a tensor (B, S, C, h, w): S = 1 for the single-latent DDIM
schemes, S = 2 for the exact coupled scheme, whose state is a pair of latents.
``state[:, 0]`` is always the endpoint latent (x_0 at the clean end, x_N at the
noise end).

Schemes:
- ``ddim``: plain DDIM inversion, eps evaluated at the wrong point (x_{i-1}, t_i);
  the published baseline, approximate.
- ``fixed-point``: DDIM inversion where each step solves x_i = (x_{i-1} - b eps(x_i, t_i)) / a
  by fixed-point iteration, stopping early on convergence. Near-exact.
- ``exact``: BDIA with gamma = 1, x_{i-1} = x_{i+1} - d(x_i) with
  d(x_i) = Phi(x_i, t_i -> t_{i+1}) - Phi(x_i, t_i -> t_{i-1}), one UNet call per step.
  The latents live on a fixed-point lattice (multiples of 2**-20, held in float64)
  and d is rounded onto it, so every addition is exact and inversion undoes
  sampling bit for bit, whatever the precision of the UNet.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from faceveil.models.schedule import Schedule
from faceveil.models.settings import SCHEMES

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
"""eps(z, t): the noise prediction for latents z (B, C, h, w) at timestep t, in z's dtype."""

LatentFn = Callable[[torch.Tensor], torch.Tensor]

from faceveil.models.settings import LATTICE  # noqa: E402 (re-exported)


def ddim_move(x: torch.Tensor, eps: torch.Tensor, schedule: Schedule, src: int, dst: int) -> torch.Tensor:
    """The deterministic DDIM move of ``x`` from level ``src`` to ``dst`` given eps(x, t_src)."""
    a, b = schedule.coeffs(src, dst)
    return a * x + b * eps


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round float64 values onto the lattice (exactly representable in float64)."""
    return torch.round(x / LATTICE) * LATTICE


class Scheme(ABC):
    name: str
    state_dtype: torch.dtype

    def __init__(self, schedule: Schedule, progress: bool = False) -> None:
        self.schedule = schedule
        self.progress = progress

    def _levels(self, levels: range, desc: str) -> range | tqdm:
        return tqdm(levels, desc=desc, leave=False, disable=not self.progress)

    @staticmethod
    def endpoint(state: torch.Tensor) -> torch.Tensor:
        return state[:, 0]

    @abstractmethod
    def lift(self, z0: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        """A clean-end state for the clean latent ``z0``."""

    @abstractmethod
    def invert(self, state: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        """Clean-end state -> noise-end state."""

    @abstractmethod
    def sample(self, state: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        """Noise-end state -> clean-end state."""

    @abstractmethod
    def rekey(self, state: torch.Tensor, fn: LatentFn, eps: EpsFn) -> torch.Tensor:
        """Apply a latent bijection ``fn`` (the key, or its inverse) to a noise-end state."""


class DDIMScheme(Scheme):
    """Single-latent DDIM sampling; inversion plain (``iterations=0``) or fixed-point refined."""

    state_dtype = torch.float32

    def __init__(self, schedule: Schedule, iterations: int = 0, tol: float = 0.0, progress: bool = False) -> None:
        super().__init__(schedule, progress)
        self.iterations = iterations
        self.tol = tol
        self.name = "ddim" if iterations == 0 else "fixed-point"

    def lift(self, z0: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        return z0.to(self.state_dtype).unsqueeze(1)

    def invert_step(self, x: torch.Tensor, level: int, eps: EpsFn) -> torch.Tensor:
        """x_{level-1} -> x_level."""
        s = self.schedule
        t = s.timestep(level)
        a, b = s.coeffs(level, level - 1)
        nxt = (x - b * eps(x, t)) / a
        for _ in range(self.iterations):
            new = (x - b * eps(nxt, t)) / a
            delta = (new - nxt).abs().max().item()
            nxt = new
            if delta <= self.tol:
                break
        return nxt

    def invert(self, state: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        x = state[:, 0]
        for level in self._levels(range(1, self.schedule.steps + 1), f"invert ({self.name})"):
            x = self.invert_step(x, level, eps)
        return x.unsqueeze(1)

    def sample(self, state: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        x = state[:, 0]
        for level in self._levels(range(self.schedule.steps, 0, -1), "sample"):
            x = ddim_move(x, eps(x, self.schedule.timestep(level)), self.schedule, level, level - 1)
        return x.unsqueeze(1)

    def rekey(self, state: torch.Tensor, fn: LatentFn, eps: EpsFn) -> torch.Tensor:
        return fn(state[:, 0]).unsqueeze(1)


class BDIAScheme(Scheme):
    """Exactly invertible coupled scheme (BDIA, gamma = 1) on a fixed-point lattice."""

    name = "exact"
    state_dtype = torch.float64

    def __init__(self, schedule: Schedule, lift_iterations: int = 10, progress: bool = False) -> None:
        if schedule.steps < 2:
            raise ValueError("the exact scheme needs at least 2 steps")
        super().__init__(schedule, progress)
        self._lift = DDIMScheme(schedule, iterations=lift_iterations)

    def _eps(self, x: torch.Tensor, level: int, eps: EpsFn) -> torch.Tensor:
        return eps(x, self.schedule.timestep(level)).to(torch.float64)

    def _d(self, x: torch.Tensor, level: int, eps: EpsFn) -> torch.Tensor:
        e = self._eps(x, level, eps)
        up = ddim_move(x, e, self.schedule, level, level + 1)
        down = ddim_move(x, e, self.schedule, level, level - 1)
        return quantize(up - down)

    def _first_move(self, x_n: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        n = self.schedule.steps
        return quantize(ddim_move(x_n, self._eps(x_n, n, eps), self.schedule, n, n - 1))

    def lift(self, z0: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        x0 = quantize(z0.to(torch.float64))
        x1 = quantize(self._lift.invert_step(x0, 1, eps).to(torch.float64))
        return torch.stack([x0, x1], dim=1)

    def invert(self, state: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        prev, cur = state[:, 0], state[:, 1]  # x_{i-1}, x_i with i = 1
        for level in self._levels(range(1, self.schedule.steps), "invert (exact)"):
            prev, cur = cur, prev + self._d(cur, level, eps)
        return torch.stack([cur, prev], dim=1)  # (x_N, x_{N-1})

    def sample(self, state: torch.Tensor, eps: EpsFn) -> torch.Tensor:
        nxt, cur = state[:, 0], state[:, 1]  # x_{i+1}, x_i with i = N - 1
        for level in self._levels(range(self.schedule.steps - 1, 0, -1), "sample (exact)"):
            nxt, cur = cur, nxt - self._d(cur, level, eps)
        return torch.stack([cur, nxt], dim=1)  # (x_0, x_1)

    def rekey(self, state: torch.Tensor, fn: LatentFn, eps: EpsFn) -> torch.Tensor:
        # Carry the partner latent as its offset from the DDIM move of x_N, so the
        # keyed pair is again a consistent trajectory start; fn^-1 undoes it exactly.
        x_n, x_m = state[:, 0], state[:, 1]
        residual = x_m - self._first_move(x_n, eps)
        new_n = fn(x_n)
        return torch.stack([new_n, self._first_move(new_n, eps) + fn(residual)], dim=1)




def make_scheme(name: str, schedule: Schedule, progress: bool = False, fixed_point_iterations: int = 5) -> Scheme:
    if name == "ddim":
        return DDIMScheme(schedule, iterations=0, progress=progress)
    if name == "fixed-point":
        return DDIMScheme(schedule, iterations=fixed_point_iterations, progress=progress)
    if name == "exact":
        return BDIAScheme(schedule, progress=progress)
    raise ValueError(f"unknown scheme {name!r}; choose from {', '.join(SCHEMES)}")
