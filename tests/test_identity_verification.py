"""Threshold calibration for TAR at FAR, on synthetic scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from faceveil.errors import InputError
from faceveil.evaluate.verification import roc_auc, roc_curve, tar_at_far, tar_far, threshold_at_far


def test_known_answer_one_in_a_thousand() -> None:
    impostor = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    genuine = np.array([0.9995, 0.9985, 0.998, 0.5, 0.2])
    # FAR 0.1 % of 1000 allows one impostor above the threshold: the second highest score, 0.998.
    assert threshold_at_far(impostor, 1e-3) == pytest.approx(0.998)
    result = tar_at_far(genuine, impostor, 1e-3)
    assert result.threshold == pytest.approx(0.998)
    assert result.far == pytest.approx(0.001) and result.far_target == 1e-3
    assert result.tar == pytest.approx(2 / 5)  # 0.9995 and 0.9985 are above; 0.998 is not (strict)
    assert (result.n_genuine, result.n_impostor) == (5, 1000)


def test_known_answer_one_percent_and_float_rounding() -> None:
    impostor = np.arange(100)[::-1].astype(float)  # order does not matter
    # 0.29 * 100 is 28.999999999999996 in floating point; 29 impostors may still pass.
    assert threshold_at_far(impostor, 0.29) == 70.0
    assert tar_far([70.0, 70.5, 100.0], impostor, 70.0) == (pytest.approx(2 / 3), pytest.approx(0.29))
    assert threshold_at_far(impostor, 0.01) == 98.0


def test_too_few_impostors_accept_none() -> None:
    impostor = [0.1, 0.4, 0.3]
    result = tar_at_far([0.35, 0.45, 0.9], impostor, far=1e-3)
    assert result.threshold == 0.4 and result.far == 0.0 and result.tar == pytest.approx(2 / 3)


def test_ties_never_exceed_the_target() -> None:
    impostor = np.array([0.5] * 10 + [0.1] * 90)
    t = threshold_at_far(impostor, 0.05)  # 5 may pass, but the 10 tied ones go together: none passes
    assert t == 0.5 and tar_far([0.6], impostor, t)[1] == 0.0


def test_distances_via_negated_scores() -> None:
    # dlib-style distances: same person below 0.6. Negate to get "higher = more alike".
    genuine_dist = torch.tensor([0.3, 0.4, 0.55, 0.7])
    impostor_dist = torch.linspace(0.5, 1.0, 1000)
    result = tar_at_far(-genuine_dist, -impostor_dist, 1e-3)
    assert -result.threshold == pytest.approx(float(impostor_dist[1]))
    assert result.tar == pytest.approx(0.5)


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="NaN"):
        threshold_at_far([0.1, float("nan")])
    with pytest.raises(InputError, match="no impostor"):
        threshold_at_far([])
    with pytest.raises(InputError, match="far"):
        threshold_at_far([0.1], far=1.0)


scores = st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=300)


@settings(max_examples=150, deadline=None)
@given(impostor=scores, far=st.floats(0.0, 0.99))
def test_threshold_is_the_tightest_that_meets_the_target(impostor: list[float], far: float) -> None:
    t = threshold_at_far(impostor, far)
    arr = np.asarray(impostor)
    assert (arr > t).mean() <= far + 1e-12
    lower = arr[arr < t]
    if lower.size:  # the next lower candidate threshold would accept too many
        assert (arr > lower.max()).mean() > far


@settings(max_examples=60, deadline=None)
@given(genuine=scores, impostor=scores)
def test_roc_is_consistent_with_tar_far(genuine: list[float], impostor: list[float]) -> None:
    far, tar, thresholds = roc_curve(genuine, impostor)
    assert (far[0], tar[0]) == (0.0, 0.0) and (far[-1], tar[-1]) == (1.0, 1.0)
    assert len(thresholds) == len(set(genuine) | set(impostor)) + 2
    assert np.all(np.diff(thresholds) < 0) and np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    for k in range(len(thresholds)):
        assert (tar[k], far[k]) == pytest.approx(tar_far(genuine, impostor, thresholds[k]))


def test_auc_known_values() -> None:
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1, 0.2], [0.8, 0.9]) == 0.0
    assert roc_auc([0.5], [0.5]) == 0.5
    assert roc_auc([0.3, 0.7], [0.5]) == 0.5
