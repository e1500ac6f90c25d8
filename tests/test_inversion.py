import pytest
import torch
from diffusers import DDIMScheduler

from faceveil.models.backbones import SD_SCHEDULER
from faceveil.models.inversion import BDIAScheme, DDIMScheme, make_scheme, quantize
from faceveil.models.schedule import Schedule


def _tiny_eps(backbone, batch=1, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    with torch.no_grad():
        cond = backbone.conditioning(x, mask)
        z0 = backbone.encode(x)
    return z0, (lambda z, t: backbone.eps(z, t, cond))


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_sampling_matches_diffusers(tiny_backbone, steps):
    z0, eps = _tiny_eps(tiny_backbone)
    xt = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    scheme = DDIMScheme(Schedule.from_scheduler(tiny_backbone.scheduler, steps))
    with torch.no_grad():
        ours = scheme.endpoint(scheme.sample(xt.unsqueeze(1), eps))
        ref_sched = DDIMScheduler(**SD_SCHEDULER)
        ref_sched.set_timesteps(steps)
        x = xt.clone()
        for t in ref_sched.timesteps:
            x = ref_sched.step(eps(x, int(t)), t, x, eta=0.0).prev_sample
    assert torch.allclose(ours, x, atol=1e-5, rtol=1e-5), (ours - x).abs().max()


def test_schedule_levels():
    s = Schedule.from_scheduler(DDIMScheduler(**SD_SCHEDULER), 50)
    assert s.timesteps[0] == 1 and s.timesteps[-1] == 981 and s.steps == 50
    assert s.alphas[0] == pytest.approx(float(DDIMScheduler(**SD_SCHEDULER).alphas_cumprod[0]))
    a, b = s.coeffs(3, 3)
    assert a == pytest.approx(1.0) and b == pytest.approx(0.0, abs=1e-12)


def test_bdia_inverts_sampling_bit_for_bit(tiny_backbone):
    z0, eps = _tiny_eps(tiny_backbone, batch=2)
    scheme = BDIAScheme(Schedule.from_scheduler(tiny_backbone.scheduler, 20))
    with torch.no_grad():
        clean = scheme.lift(z0, eps)
        noise = scheme.invert(clean, eps)
        back = scheme.sample(noise, eps)
    assert torch.equal(back, clean)
    assert torch.equal(clean, quantize(clean))  # stays on the lattice
    assert (scheme.endpoint(clean) - z0.double()).abs().max() <= 2.0**-21


def test_bdia_rekey_is_undone_by_inverse(tiny_backbone):
    from faceveil.keys import SecretKey
    from faceveil.models.key_transforms import apply_key, get_transform

    z0, eps = _tiny_eps(tiny_backbone)
    scheme = BDIAScheme(Schedule.from_scheduler(tiny_backbone.scheduler, 10))
    key, nonces, t = SecretKey.generate(), [bytes(16)], get_transform("shuffle")
    mask = torch.zeros(1, 1, *z0.shape[-2:], dtype=torch.bool)
    mask[..., 2:12, 3:13] = True
    with torch.no_grad():
        noise = scheme.invert(scheme.lift(z0, eps), eps)
        keyed = scheme.rekey(noise, lambda z: apply_key(z, mask, t, key, nonces), eps)
        assert not torch.equal(keyed, noise)
        assert torch.equal(keyed, quantize(keyed))
        back = scheme.rekey(keyed, lambda z: apply_key(z, mask, t, key, nonces, inverse=True), eps)
        assert torch.equal(back, noise)
        # Applying the forward key twice is not the inverse.
        assert not torch.equal(scheme.rekey(keyed, lambda z: apply_key(z, mask, t, key, nonces), eps), noise)


def test_bdia_follows_the_ddim_trajectory(tiny_backbone):
    # Both integrate the same ODE: their samples from one start get closer as steps grow.
    z0, eps = _tiny_eps(tiny_backbone)
    x_n = torch.randn(z0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gaps = []
    with torch.no_grad():
        for steps in (5, 20):
            sched = Schedule.from_scheduler(tiny_backbone.scheduler, steps)
            ddim = DDIMScheme(sched)
            bdia = BDIAScheme(sched)
            ref = ddim.endpoint(ddim.sample(x_n.float().unsqueeze(1), eps)).double()
            pair = torch.stack([quantize(x_n), bdia._first_move(quantize(x_n), eps)], dim=1)
            gaps.append((bdia.endpoint(bdia.sample(pair, eps)) - ref).abs().mean().item() / ref.abs().mean().item())
    assert gaps[1] < gaps[0] and gaps[1] < 0.2, gaps


def test_fixed_point_beats_plain_ddim(tiny_backbone):
    z0, eps = _tiny_eps(tiny_backbone)
    sched = Schedule.from_scheduler(tiny_backbone.scheduler, 20)
    errors = {}
    with torch.no_grad():
        for name in ("ddim", "fixed-point"):
            s = make_scheme(name, sched)
            back = s.endpoint(s.sample(s.invert(s.lift(z0, eps), eps), eps))
            errors[name] = (back - z0).abs().max().item()
    assert errors["fixed-point"] < errors["ddim"] / 100
    assert errors["fixed-point"] < 1e-2


def test_unknown_scheme_and_too_few_steps(tiny_backbone):
    sched = Schedule.from_scheduler(tiny_backbone.scheduler, 1)
    with pytest.raises(ValueError, match="unknown scheme"):
        make_scheme("edict", sched)
    with pytest.raises(ValueError, match="at least 2 steps"):
        make_scheme("exact", sched)
