"""Security suite pieces: the attackers' estimators, the published key, nonce-reuse detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceveil.evaluate.baselines import seed_signs, sign_key_fn
from faceveil.evaluate.nonces import main as nonces_main
from faceveil.evaluate.nonces import scan_nonces
from faceveil.evaluate.faces import Notes
from faceveil.evaluate.security import (
    MATCH_ESTIMATOR,
    SIGN_ESTIMATOR,
    MatchEstimate,
    Setting,
    Suite,
    flip_bit,
    masked_values,
    match_attack_fn,
    match_each_fn,
    sign_attack_fn,
    sign_estimate,
)
from faceveil.keys import SecretKey, new_nonce
from faceveil.models.key_transforms import apply_key, get_transform


def _mask(h: int = 8, w: int = 8) -> torch.Tensor:
    m = torch.zeros(1, h, w, dtype=torch.bool)
    m[:, 2:7, 1:6] = True
    return m


def test_published_key_is_one_sign_pattern_for_every_image() -> None:
    a, b = seed_signs(7, (4, 8, 8)), seed_signs(7, (4, 8, 8))
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(a, seed_signs(8, (4, 8, 8)))
    mask = _mask()[None].expand(2, -1, -1, -1)
    z = torch.randn(2, 4, 8, 8)
    keyed = sign_key_fn(7, mask)(z)
    assert torch.equal(keyed[:, :, ~mask[0, 0]], z[:, :, ~mask[0, 0]])
    assert torch.equal(sign_key_fn(7, mask)(keyed), z)  # an involution


def test_known_plaintext_sign_estimate_opens_the_published_key_but_not_ours() -> None:
    torch.manual_seed(0)
    mask = _mask()[None].expand(2, -1, -1, -1)
    z = torch.randn(2, 4, 8, 8)  # two images' clean noise
    # Published: one seed for both images; the pair (z[0], keyed[0]) reveals the signs that open image 1.
    keyed = sign_key_fn(1234, mask)(z)
    signs = sign_estimate(keyed[0], z[0], mask[0])
    opened = sign_attack_fn(signs, None, mask)(keyed)
    assert torch.equal(opened[1], z[1])
    # Ours: per-image nonces give unrelated streams; the same attack recovers nothing.
    key = SecretKey.generate()
    ours = apply_key(z, mask, get_transform("signflip"), key, [new_nonce(), new_nonce()])
    signs = sign_estimate(ours[0], z[0], mask[0])
    guess = sign_attack_fn(signs, None, mask)(ours)
    agree = (masked_values(guess[1], mask[1]) == masked_values(z[1], mask[1])).float().mean()
    assert 0.2 < agree < 0.8  # chance is 0.5 (100 entries)


def test_entry_matching_learns_a_keyed_permutation_exactly() -> None:
    torch.manual_seed(1)
    mask = _mask()[None].expand(2, -1, -1, -1)
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    key, nonce = SecretKey.generate(), new_nonce()
    shuffle = get_transform("shuffle")
    reused = apply_key(z, mask, shuffle, key, [nonce, nonce])  # the same nonce twice: a bug
    est = MatchEstimate.learn(masked_values(z[0], mask[0]), masked_values(reused[0], mask[0]))
    assert torch.equal(match_attack_fn(est, mask)(reused)[1], z[1])
    fresh = apply_key(z, mask, shuffle, key, [nonce, new_nonce()])
    est = MatchEstimate.learn(masked_values(z[0], mask[0]), masked_values(fresh[0], mask[0]))
    got = masked_values(match_attack_fn(est, mask)(fresh)[1], mask[1])
    assert (got == masked_values(z[1], mask[1])).float().mean() < 0.1
    # Another mask size: the learned permutation does not apply, the image is left as it was.
    other = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    other[..., :3, :3] = True
    assert torch.equal(match_attack_fn(est, other)(fresh[1:]), fresh[1:])


def test_matching_estimator_opens_the_published_key_but_not_ours() -> None:
    """The magnitude-matching known-plaintext attack is the stronger one: it also opens a sign key
    (the learned permutation is the identity, the signs are the key's), and fails on our shuffle
    under per-image nonces even with one mask for every image."""
    torch.manual_seed(2)
    mask = _mask()[None].expand(2, -1, -1, -1)
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    keyed = sign_key_fn(1234, mask)(z)
    est = MatchEstimate.learn(masked_values(z[0], mask[0]), masked_values(keyed[0], mask[0]))
    assert torch.equal(match_attack_fn(est, mask)(keyed)[1], z[1])
    ours = apply_key(z, mask, get_transform("shuffle"), SecretKey.generate(), [new_nonce(), new_nonce()])
    est = MatchEstimate.learn(masked_values(z[0], mask[0]), masked_values(ours[0], mask[0]))
    got = masked_values(match_attack_fn(est, mask)(ours)[1], mask[1])
    assert (got == masked_values(z[1], mask[1])).float().mean() < 0.1


def test_averaging_by_matching_learns_a_shared_permutation() -> None:
    """Averaging on a keyed permutation: sorting the mean keyed noise against the clean mean
    learns a permutation every image shares (a reused key stream), and nothing under fresh nonces."""
    torch.manual_seed(3)
    mask = _mask()[None].expand(3, -1, -1, -1)
    z = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    key, nonce, shuffle = SecretKey.generate(), new_nonce(), get_transform("shuffle")
    shared = apply_key(z, mask, shuffle, key, [nonce] * 3)
    opened = match_each_fn(z.mean(0), shared.mean(0), mask)(shared)
    assert torch.allclose(opened, z)
    fresh = apply_key(z, mask, shuffle, key, [new_nonce() for _ in range(3)])
    guess = match_each_fn(z.mean(0), fresh.mean(0), mask)(fresh)
    assert (masked_values(guess[1], mask[1]) == masked_values(z[1], mask[1])).float().mean() < 0.1


class _StubPipe:
    """The attacks' latent plumbing without a model: the noise state is (B, 1, C, h, w); sampling
    returns the given images and the noise itself as the "clean latent"."""

    def rekey(self, noise: torch.Tensor, fn, c) -> torch.Tensor:
        out = noise.clone()
        out[:, 0] = fn(noise[:, 0])
        return out

    def finish(self, noise: torch.Tensor, c, images, masks):
        return np.stack(images), noise[:, 0].float()


def _setting(kind: str, n: int = 4, seed: int = 0) -> tuple[Setting, torch.Tensor]:
    from types import SimpleNamespace

    torch.manual_seed(seed)
    mask = _mask()[None].expand(n, -1, -1, -1)
    z = torch.randn(n, 1, 4, 8, 8, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    faces = [SimpleNamespace(id=f"f{i}", image=rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for i in range(n)]
    c = SimpleNamespace(mask_lat=mask)
    if kind == "published":
        def unkey(sd):
            return sign_key_fn(sd, mask)

        key, wrong, near, permutes = 1234, 99, 1235, False
    else:
        shuffle = get_transform("shuffle")
        nonces = [new_nonce()] * n if kind == "ours-reused" else [new_nonce() for _ in range(n)]

        def unkey(k):
            return lambda v: apply_key(v, mask, shuffle, k, nonces, inverse=True)

        key, wrong = SecretKey.generate(), SecretKey.generate()
        near, permutes = flip_bit(key), True
    forward = sign_key_fn(key, mask) if kind == "published" else (lambda v: apply_key(v, mask, shuffle, key, nonces))
    z_keyed = z.clone()
    z_keyed[:, 0] = forward(z[:, 0])
    pixels = [f.image for f in faces]
    s = Setting(kind, kind, _StubPipe(), faces, pixels, [None] * n, c, z, mask, z_keyed, unkey, key, wrong, near, permutes)
    reference = torch.randn(6, 1, 4, 8, 8, dtype=torch.float64)
    return s, reference


def test_main_table_attacks_use_magnitude_matching_on_a_keyed_permutation() -> None:
    """The suite's own known-plaintext and averaging rows: sign estimators for the published key
    (and they open it), magnitude matching for our shuffle (fails under fresh nonces, opens a
    reused key stream, so the row measures a real attack)."""
    suite = Suite([], Notes(), opened_fraction=0.9)
    kp = "known plaintext (1 pair)"
    pub = suite.run_setting(*_setting("published"))
    assert pub[kp]["summary"]["estimator"] == SIGN_ESTIMATOR
    assert pub[kp]["summary"]["opened"] and pub[kp]["summary"]["restored"] > 0.85
    ours = suite.run_setting(*_setting("ours"))
    avg = next(k for k in ours if k.startswith("averaging"))
    assert ours[kp]["summary"]["estimator"] == ours[avg]["summary"]["estimator"] == MATCH_ESTIMATOR
    assert ours["key holder"]["summary"]["restored"] == 1.0
    for attack in (kp, avg):
        assert not ours[attack]["summary"]["opened"] and ours[attack]["summary"]["restored"] < 0.05
    reused = suite.run_setting(*_setting("ours-reused"))
    assert reused[kp]["summary"]["opened"] and reused[kp]["summary"]["restored"] > 0.95


def test_flip_bit() -> None:
    key = SecretKey.generate()
    near = flip_bit(key, 13)
    diff = bytes(a ^ b for a, b in zip(key.material, near.material))
    assert sum(bin(d).count("1") for d in diff) == 1 and diff[1] == 1 << 5
    assert near.fingerprint != key.fingerprint


@pytest.fixture(scope="module")
def veiled_files(tmp_path_factory: pytest.TempPathFactory):
    """Three tiny anonymized files under one key: two share a nonce; plus a file without metadata and a broken one."""
    from faceveil.data.images import elliptical_mask, save_image
    from faceveil.fileformat import write_veiled
    from faceveil.models.backbones import load_backbone
    from faceveil.models.pipeline import Anonymizer, Settings

    folder = tmp_path_factory.mktemp("nonces")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    mask = elliptical_mask(64, 64)
    key = SecretKey.generate()
    nonce = new_nonce()
    anonymizer = Anonymizer(load_backbone("tiny"), Settings(scheme="exact", steps=2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the toy UNet is fastest single-threaded on a busy CPU
    try:
        veiled = anonymizer.anonymize(images, [mask] * 3, key, nonces=[nonce, nonce, new_nonce()], allow_caller_nonces=True, allow_nonce_reuse=True)
    finally:
        torch.set_num_threads(threads)
    for i, v in enumerate(veiled):
        write_veiled(folder / "sub" / f"img{i}.png", v, key)
    save_image(folder / "plain.png", images[0])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x10fvHd" + b"{}")  # truncated chunk
    return folder, key


def test_nonce_scanner_flags_reuse_under_one_key(veiled_files) -> None:
    folder, key = veiled_files
    scan = scan_nonces([folder])
    assert scan.files == 5 and scan.with_metadata == 3
    assert len(scan.without_metadata) == 1 and len(scan.unreadable) == 1
    assert len(scan.reused) == 1
    reuse = scan.reused[0]
    assert reuse.key_fingerprint == key.check_value(bytes.fromhex(reuse.nonce))
    assert sorted(p.rsplit("/", 1)[-1] for p in reuse.files) == ["img0.png", "img1.png"]
    clean = scan_nonces([folder / "sub" / "img0.png", folder / "sub" / "img2.png"])
    assert clean.ok and clean.with_metadata == 2


def test_nonce_scanner_command_line(veiled_files, capsys) -> None:
    folder, _ = veiled_files
    assert nonces_main([str(folder)]) == 1
    out = capsys.readouterr()
    assert "REUSED nonce" in out.out and "broken.png" in out.err
    assert nonces_main([str(folder / "sub" / "img2.png")]) == 0
