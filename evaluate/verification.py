"""Face verification rates: thresholds for TAR at a target FAR, TAR / FAR, ROC.

Scores are similarities, higher meaning "same person" (use minus the distance for distance metrics,
as the recognizers' ``similarity`` already does). A pair is **accepted when its score is strictly
above the threshold**. The usual protocol: calibrate the threshold on clean genuine and impostor
pairs with :func:`threshold_at_far`, then count with :func:`tar_far` how many anonymized (or
recovered) pairs that threshold still accepts.

:func:`threshold_at_far` picks the lowest threshold whose FAR does not exceed the target: with ``n``
impostor scores at most ``floor(far * n)`` of them may lie above it. With fewer than ``1 / far``
impostors no impostor may be accepted, so the threshold is the highest impostor score; the returned
:class:`VerificationResult` reports the FAR actually achieved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from faceveil.errors import InputError

ArrayLike = np.ndarray | torch.Tensor | list[float]


def _scores(values: ArrayLike, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise InputError(f"no {what} scores")
    if np.isnan(arr).any():
        # A NaN is a pair where a face was not found; the caller decides how to count those.
        raise InputError(f"{what} scores contain NaN (a face not found?); drop or count them before calibrating")
    return arr


def threshold_at_far(impostor: ArrayLike, far: float = 1e-3) -> float:
    """The lowest threshold that accepts at most ``floor(far * n)`` of the ``n`` impostor scores."""
    if not 0.0 <= far < 1.0:
        raise InputError(f"far must be in [0, 1), got {far}")
    scores = np.sort(_scores(impostor, "impostor"))[::-1]
    allowed = math.floor(far * scores.size + 1e-9)  # the epsilon keeps 0.001 * 1000 from flooring to 0
    # Accepting "> t" with t = the (allowed+1)-th highest score lets exactly the `allowed` above it pass
    # (fewer when scores tie at t).
    return float(scores[allowed])


def tar_far(genuine: ArrayLike, impostor: ArrayLike, threshold: float) -> tuple[float, float]:
    """``(TAR, FAR)`` at ``threshold``: the fractions of genuine and impostor scores above it."""
    g, i = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    return float((g > threshold).mean()), float((i > threshold).mean())


@dataclass(frozen=True)
class VerificationResult:
    """TAR at a target FAR, with the threshold and the FAR it actually achieves."""

    tar: float
    far: float
    far_target: float
    threshold: float
    n_genuine: int
    n_impostor: int


def tar_at_far(genuine: ArrayLike, impostor: ArrayLike, far: float = 1e-3) -> VerificationResult:
    """Calibrate on ``impostor`` (:func:`threshold_at_far`) and measure TAR on ``genuine``."""
    threshold = threshold_at_far(impostor, far)
    tar, achieved = tar_far(genuine, impostor, threshold)
    return VerificationResult(tar, achieved, far, threshold, len(_scores(genuine, "genuine")), len(_scores(impostor, "impostor")))


def roc_curve(genuine: ArrayLike, impostor: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(far, tar, thresholds)`` for every distinct score as threshold, thresholds descending.

    Point ``k`` accepts scores ``> thresholds[k]``; the end points ``+inf`` and ``-inf`` give (0, 0)
    and (1, 1).
    """
    g, i = np.sort(_scores(genuine, "genuine")), np.sort(_scores(impostor, "impostor"))
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([g, i]))[::-1], [-np.inf]])
    tar = 1.0 - np.searchsorted(g, thresholds, side="right") / g.size
    far = 1.0 - np.searchsorted(i, thresholds, side="right") / i.size
    return far, tar, thresholds


def roc_auc(genuine: ArrayLike, impostor: ArrayLike) -> float:
    """Area under the ROC: the probability that a genuine score beats an impostor one (ties count half)."""
    g, i = _scores(genuine, "genuine"), np.sort(_scores(impostor, "impostor"))
    below = np.searchsorted(i, g, side="left")
    ties = np.searchsorted(i, g, side="right") - below
    return float((below + 0.5 * ties).sum() / (g.size * i.size))
