"""Evaluation metrics on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faceveil.errors import ConfigError, InputError
from faceveil.evaluate.metrics import (
    Lpips,
    TinyFeatures,
    feature_network,
    fid_kid,
    landmark_drift,
    outside_mask_change,
    pairwise_mean,
    psnr,
    rank1,
    ssim,
    summary,
)
from faceveil.evaluate.pairs import Pair
from faceveil.evaluate.scoring import pair_scores
from faceveil.evaluate.verification import tar_far, threshold_at_far
from faceveil.models.recognizers import cosine_similarity


def _images(n: int, seed: int = 0, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # smooth-ish random images: low-res noise upsampled, so SSIM / LPIPS see structure
    small = rng.integers(0, 256, size=(n, size // 8, size // 8, 3), dtype=np.uint8)
    return [np.kron(s, np.ones((8, 8, 1), dtype=np.uint8)) for s in small]


def test_identical_images_give_infinite_psnr_and_ssim_one() -> None:
    imgs = _images(3)
    assert np.all(np.isinf(psnr(imgs, imgs)))
    assert np.allclose(ssim(imgs, imgs), 1.0)


def test_psnr_is_the_pipelines_psnr() -> None:
    from faceveil.models.pipeline import psnr as pipeline_psnr

    a, b = _images(3, seed=5), _images(3, seed=6)
    assert psnr(a, b).tolist() == [pipeline_psnr(x, y) for x, y in zip(a, b)]
    assert psnr(np.stack(a), np.stack(b)).shape == (3,) and psnr(a[0], b[0]).shape == (1,)
    with pytest.raises(InputError):
        psnr(a, b[:2])
    with pytest.raises(InputError):
        psnr([a[0].astype(np.float32)], [b[0]])


def test_psnr_known_value_and_ssim_below_one() -> None:
    a = np.full((32, 32, 3), 100, dtype=np.uint8)
    b = a + 1  # MSE 1 -> 10 log10(255^2) = 48.1308 dB
    assert psnr([b], [a])[0] == pytest.approx(20 * math.log10(255), abs=1e-4)
    imgs = _images(2)
    noisy = [np.clip(i.astype(int) + np.random.default_rng(1).integers(-40, 40, i.shape), 0, 255).astype(np.uint8) for i in imgs]
    s = ssim(noisy, imgs)
    assert np.all(s < 0.95) and np.all(s > 0)


def test_lpips_random_backbone_zero_for_identical_and_grows_with_distortion() -> None:
    lp = Lpips("alex", "random")
    assert not lp.standard
    imgs = _images(2)
    assert np.allclose(lp(imgs, imgs), 0.0, atol=1e-6)
    rng = np.random.default_rng(2)
    small = [np.clip(i.astype(int) + rng.integers(-10, 10, i.shape), 0, 255).astype(np.uint8) for i in imgs]
    large = [np.clip(i.astype(int) + rng.integers(-120, 120, i.shape), 0, 255).astype(np.uint8) for i in imgs]
    assert np.all(lp(small, imgs) < lp(large, imgs))


def test_lpips_pretrained_needs_cached_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError, match="backbone=random"):
        Lpips("alex", "pretrained")


def test_lpips_backbone_from_a_local_state_dict(tmp_path) -> None:
    import torchvision

    torch.manual_seed(3)
    net = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(net.state_dict(), path)
    lp = Lpips("alex", str(path))
    assert lp.standard
    loaded = dict(lp.model.net.named_parameters())
    assert torch.equal(loaded["slice1.0.weight"], net.features[0].weight)
    assert torch.equal(loaded["slice5.10.weight"], net.features[10].weight)
    imgs = _images(2)
    assert np.allclose(lp(imgs, imgs), 0.0, atol=1e-6)
    with pytest.raises(ConfigError):
        Lpips("alex", str(tmp_path / "missing.pth"))


def test_fid_kid_with_a_local_feature_network(tmp_path) -> None:
    real = _images(12, seed=4)
    same = fid_kid(real, real, "tiny", kid_subset=6)
    other = fid_kid(real, [np.zeros_like(i) for i in real], "tiny", kid_subset=6)
    assert same["fid"] == pytest.approx(0.0, abs=1e-4)
    assert abs(same["kid"]) < 1e-4
    assert other["fid"] > 100 * max(same["fid"], 1e-6) and other["kid"] > same["kid"]
    # The same network from a torch.export file gives the same numbers.
    example = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    program = torch.export.export(TinyFeatures(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "feat.pt2"
    torch.export.save(program, str(path))
    exported = fid_kid(real, [np.zeros_like(i) for i in real], f"exported:{path}", kid_subset=6)
    assert exported["fid"] == pytest.approx(other["fid"], rel=1e-4)


def test_kid_subsets_are_smaller_than_the_set_and_small_n_fid_warns() -> None:
    real = _images(12, seed=4)
    fake = [np.zeros_like(i) for i in real]
    r = fid_kid(real, fake, "tiny", kid_subset=1000)
    assert r["kid_subset"] == 6 and r["kid_std"] > 0  # subsets of half the set: they differ, so the std is real
    assert r["feature_dim"] > 12 and "rank-deficient" in r["warning"]
    two = fid_kid(real[:2], fake[:2], "tiny", kid_subset=1000)
    assert two["kid"] is None and two["fid"] > 0  # no subset smaller than 2 images: KID is not computed


def test_feature_network_specs() -> None:
    assert feature_network("inception") == 2048 and feature_network("inception:192") == 192
    assert isinstance(feature_network("tiny"), TinyFeatures)
    assert isinstance(feature_network("module:faceveil.evaluate.metrics:TinyFeatures"), TinyFeatures)
    for bad in ("inception:100", "resnet", "torchscript:/no/such/file.pt", "module:no.such:thing"):
        with pytest.raises(ConfigError):
            feature_network(bad)


def test_standard_inception_fid_reports_what_is_missing() -> None:
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is not None:  # pragma: no cover - only where it is installed
        pytest.skip("torch-fidelity is installed; the standard FID may work here")
    with pytest.raises(ConfigError, match="torch-fidelity"):
        fid_kid(_images(3), _images(3, seed=1), "inception")


def test_outside_mask_change() -> None:
    a = _images(1)[0]
    mask = np.zeros(a.shape[:2], dtype=bool)
    mask[16:48, 16:48] = True
    b = a.copy()
    b[mask] = 255 - b[mask]
    assert outside_mask_change(b, a, mask) == 0
    b[0, 0, 1] = 0 if a[0, 0, 1] >= 128 else 255
    assert outside_mask_change(b, a, mask) == abs(int(b[0, 0, 1]) - int(a[0, 0, 1])) >= 128


def test_landmark_drift_known_answers() -> None:
    ref5 = np.array([[10.0, 10.0], [30.0, 10.0], [20, 20], [12, 30], [28, 30]])
    pts = np.random.default_rng(0).uniform(0, 40, (68, 2))
    assert landmark_drift(pts, pts, ref5) == 0.0
    assert landmark_drift(pts + [20.0, 0.0], pts, ref5) == pytest.approx(1.0)  # one inter-ocular distance


def test_rank1_known_answers() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.2, 0.8], [float("nan")] * 3])
    assert rank1(sim, ["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1 / 3)  # row 1 picks c, row 2 found no face
    assert rank1(sim[:2], ["a", "b", "c"], ["a", "c"]) == 1.0


def test_summary_and_pairwise_mean() -> None:
    s = summary([math.inf, 30.0, 40.0, math.nan])
    assert s["mean"] == 35.0 and s["n"] == 3 and s["n_inf"] == 1 and s["n_nan"] == 1
    assert summary([math.inf, math.inf])["mean"] == math.inf
    assert math.isnan(summary([math.nan])["mean"])
    m = torch.tensor([[1.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.0]])
    assert pairwise_mean(m) == pytest.approx(0.3)


def _verification_case() -> tuple[list[Pair], dict[str, np.ndarray]]:
    """Four identities with two well-separated embeddings each; references r*, probes p*."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 16))
    emb = {}
    for k, c in enumerate(centres):
        emb[f"r{k}"] = c + 0.05 * rng.normal(size=16)
        emb[f"p{k}"] = c + 0.05 * rng.normal(size=16)
    pairs = [Pair(f"r{k}", f"p{k}", True) for k in range(4)]
    pairs += [Pair(f"r{a}", f"p{b}", False) for a in range(4) for b in range(4) if a != b]
    return pairs, emb


def test_tar_from_pairs_and_a_swapped_pair_lowers_it() -> None:
    pairs, emb = _verification_case()
    clean = pair_scores(pairs, emb, emb, cosine_similarity)
    assert clean is not None and len(clean.genuine) == 4 and len(clean.impostor) == 12
    thr = threshold_at_far(clean.impostor, 1e-3)
    assert tar_far(clean.genuine, clean.impostor, thr)[0] == 1.0
    # Swap one probe for another person's face: that genuine pair no longer matches.
    swapped = dict(emb)
    swapped["p0"], swapped["p1"] = emb["p1"], emb["p0"]
    sc = pair_scores(pairs, emb, swapped, cosine_similarity)
    tar, _ = tar_far(sc.genuine, sc.impostor, thr)
    assert tar == 0.5


def test_missing_face_scores_are_rejected_not_dropped() -> None:
    pairs, emb = _verification_case()
    probe = dict(emb)
    probe["p2"] = np.full(16, np.nan)
    sc = pair_scores(pairs, emb, probe, cosine_similarity)
    assert len(sc.genuine) == 4 and np.isneginf(sc.genuine[2])
    thr = threshold_at_far(pair_scores(pairs, emb, emb, cosine_similarity).impostor, 1e-3)
    assert tar_far(sc.genuine, sc.impostor, thr)[0] == 0.75
