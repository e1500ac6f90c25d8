import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from faceveil.keys import SecretKey, new_nonce
from faceveil.models.key_transforms import TRANSFORMS, apply_key, get_transform

KEY = SecretKey(bytes(range(32)))


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(TRANSFORMS)),
    b=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_inverse_is_exact_and_outside_mask_untouched(name, b, c, h, w, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    mask = torch.rand(b, 1, h, w, generator=g) > 0.4
    nonces = [new_nonce() for _ in range(b)]
    t = get_transform(name)
    fwd = apply_key(z, mask, t, KEY, nonces)
    assert torch.equal(apply_key(fwd, mask, t, KEY, nonces, inverse=True), z)
    outside = ~mask.expand_as(z)
    assert torch.equal(fwd[outside], z[outside])


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_output_is_standard_normal(name):
    z = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.ones(1, 1, 64, 64, dtype=torch.bool)
    out = apply_key(z, mask, get_transform(name), KEY, [bytes(range(16))]).flatten().numpy()
    assert stats.kstest(out, "norm").pvalue > 1e-3
    # Keyed and original noise are uncorrelated.
    assert abs(np.corrcoef(out, z.flatten().numpy())[0, 1]) < 0.05


def test_streams_differ_per_nonce_and_key():
    z = torch.randn(1, 4, 16, 16, dtype=torch.float64)
    mask = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    t = get_transform("shuffle")
    n = new_nonce()
    a = apply_key(z, mask, t, KEY, [n])
    assert torch.equal(a, apply_key(z, mask, t, KEY, [n]))
    assert not torch.equal(a, apply_key(z, mask, t, KEY, [new_nonce()]))
    assert not torch.equal(a, apply_key(z, mask, t, SecretKey.generate(), [n]))


def test_signflip_keeps_magnitudes_shuffle_does_not():
    z = torch.randn(1, 4, 16, 16, dtype=torch.float64)
    mask = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    n = [new_nonce()]
    flipped = apply_key(z, mask, get_transform("signflip"), KEY, n)
    shuffled = apply_key(z, mask, get_transform("shuffle"), KEY, n)
    assert torch.equal(flipped.abs(), z.abs())
    assert (shuffled.abs() != z.abs()).float().mean() > 0.9


def test_unknown_transform():
    with pytest.raises(ValueError, match="unknown key transform"):
        get_transform("xor")
