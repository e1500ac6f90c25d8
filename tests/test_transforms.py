import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from faceveil.keys import SecretKey, new_nonce
from faceveil.models.key_transforms import TRANSFORMS, apply_key, get_transform
from faceveil.models.settings import LATTICE

KEY = SecretKey(bytes(range(32)))
PINNED_ROTATION = [2.984882354736328, -5.007172584533691, 3.5881471633911133, 0.5838718414306641, 5.291089057922363, -7.454246520996094, 1.9610929489135742, 2.3228759765625]


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
    z = torch.randn(b, c, h, w, generator=g, dtype=dtype) * 3
    if dtype == torch.float64:
        z = torch.round(z / LATTICE) * LATTICE  # the exact scheme's lattice
    mask = torch.rand(b, 1, h, w, generator=g) > 0.4
    nonces = [new_nonce() for _ in range(b)]
    t = get_transform(name)
    fwd = apply_key(z, mask, t, KEY, nonces)
    back = apply_key(fwd, mask, t, KEY, nonces, inverse=True)
    if dtype == torch.float64 or name != "rotation":
        assert torch.equal(back, z)  # bit-exact: on the lattice every transform is
        assert torch.equal(torch.round(fwd / LATTICE) * LATTICE, fwd) or dtype == torch.float32
    else:
        assert torch.allclose(back, z, rtol=0, atol=1e-5)  # off the lattice, to float32 rounding
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


def test_rotation_hides_magnitudes_keeps_the_norm_and_is_device_independent_bytes():
    z = torch.round(torch.randn(1, 4, 16, 16, dtype=torch.float64) / LATTICE) * LATTICE
    mask = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    n = [bytes(range(16))]
    rot = apply_key(z, mask, get_transform("rotation"), KEY, n)
    # The multiset of magnitudes (shuffle's fingerprint) is gone; the norm stays to lattice precision.
    assert (rot.abs().flatten().sort().values - z.abs().flatten().sort().values).abs().max() > 0.1
    assert abs(rot.norm() - z.norm()) < 1e-3
    assert abs(torch.corrcoef(torch.stack([rot.abs().flatten(), z.abs().flatten()]))[0, 1]) < 0.2
    # A pinned value: the transform is a pure function of (key, nonce, entries) on any device.
    again = apply_key(z, mask, get_transform("rotation"), KEY, n)
    assert torch.equal(rot, again)
    pinned = apply_key(torch.arange(8, dtype=torch.float64).reshape(1, 2, 2, 2), torch.ones(1, 1, 2, 2, dtype=torch.bool),
                       get_transform("rotation"), KEY, n)
    assert pinned.flatten().tolist() == PINNED_ROTATION


def test_unknown_transform():
    with pytest.raises(ValueError, match="unknown key transform"):
        get_transform("xor")
