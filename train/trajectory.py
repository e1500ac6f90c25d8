"""The deployed sampler, differentiable: what ``anonymize`` runs from the keyed noise, with gradients.

:class:`Trajectory` walks the same levels with the same arithmetic as the scheme's ``sample``
(:mod:`faceveil.models.inversion`), starting from the noise-end state that
``Anonymizer.keyed_noise`` produced, so the loss sees the images ``anonymize`` writes:

- ``exact`` (BDIA): x_{i-1} = x_{i+1} - q(d(x_i)). The lattice rounding q has zero gradient,
  so a straight-through estimator is used: the forward value is q(x) to the bit, the
  backward is the identity. The partner latent x_{N-1} that ``scheme.rekey`` made from the
  keyed x_N without gradients is rebuilt here as q(DDIM move of x_N) + (its keyed offset,
  a constant): the same value, and the gradient reaches the highest-noise UNet call, which
  decides identity most.
- ``ddim`` / ``fixed-point``: plain DDIM moves from level N.

Two modes (``objective.unroll``):

- ``shortcut``: K differentiable UNet calls (``objective.grad_steps``). The first K - 1 are
  the trajectory's own first steps; the K-th call's noise prediction gives the DDIM
  x0-prediction (one move from its level straight to the clean end), a differentiable
  estimate of the clean latent. Cost and memory: K calls.
- ``full``: every step of the trajectory with gradients, each UNet call checkpointed
  (``objective.checkpoint_steps``: only a step's input latent is kept; it is recomputed
  in the backward pass). The clean latent equals ``anonymize``'s with the same batching
  (``batch_invariant=False``) bit for bit (``torch.equal``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from faceveil.models.inversion import BDIAScheme, Scheme, ddim_move, quantize

LevelEps = Callable[[torch.Tensor, int], torch.Tensor]
"""eps(x, level): the noise prediction of latents x at the schedule's level (with gradients)."""

UNROLL_MODES = ("shortcut", "full")


def ste_quantize(x: torch.Tensor) -> torch.Tensor:
    """``quantize(x)`` in the forward pass (the exact bits), the identity in the backward pass."""
    return x + (quantize(x) - x).detach()


@dataclass
class Trajectory:
    """Noise-end state -> clean latent (B, C, h, w) with gradients, on ``scheme``'s levels."""

    scheme: Scheme
    mode: str = "shortcut"
    grad_calls: int = 2  # K, for the shortcut

    def __post_init__(self) -> None:
        if self.mode not in UNROLL_MODES:
            raise ValueError(f"unknown unroll mode {self.mode!r}; choose from {', '.join(UNROLL_MODES)}")
        if self.mode == "shortcut" and not 1 <= self.grad_calls <= self.scheme.schedule.steps:
            raise ValueError(f"K = {self.grad_calls} must be between 1 and the {self.scheme.schedule.steps} steps")

    @property
    def unet_calls(self) -> int:
        return self.grad_calls if self.mode == "shortcut" else self.scheme.schedule.steps

    def _last(self, calls: int) -> bool:
        return self.mode == "shortcut" and calls == self.grad_calls

    def sample(self, state: torch.Tensor, eps: LevelEps) -> torch.Tensor:
        s = self.scheme.schedule
        n = s.steps
        x = state[:, 0].to(self.scheme.state_dtype)
        e = eps(x, n).to(x.dtype)
        if self._last(1):
            return ddim_move(x, e, s, n, 0)
        if not isinstance(self.scheme, BDIAScheme):
            return self._ddim(ddim_move(x, e, s, n, n - 1), eps)
        moved = ste_quantize(ddim_move(x, e, s, n, n - 1))
        partner = moved + (state[:, 1].to(x.dtype) - moved).detach()  # the keyed offset of x_{N-1}: a constant
        return self._bdia(x, partner, eps)

    def _ddim(self, x: torch.Tensor, eps: LevelEps) -> torch.Tensor:
        s = self.scheme.schedule
        for calls, level in enumerate(range(s.steps - 1, 0, -1), start=2):
            e = eps(x, level).to(x.dtype)
            x = ddim_move(x, e, s, level, 0 if self._last(calls) else level - 1)
            if self._last(calls):
                break
        return x

    def _bdia(self, nxt: torch.Tensor, cur: torch.Tensor, eps: LevelEps) -> torch.Tensor:
        s = self.scheme.schedule
        for calls, level in enumerate(range(s.steps - 1, 0, -1), start=2):
            e = eps(cur, level).to(cur.dtype)
            if self._last(calls):
                return ddim_move(cur, e, s, level, 0)
            d = ddim_move(cur, e, s, level, level + 1) - ddim_move(cur, e, s, level, level - 1)
            nxt, cur = cur, nxt - ste_quantize(d)
        return cur
