"""IdentityEncoder: frozen, eval-mode, differentiable to the input; spec loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from faceveil.data.images import load_image
from faceveil.data.samples import sample_photo_path
from faceveil.errors import ConfigError, InputError
from faceveil.models.identity import IdentityEncoder, load_identity_encoder, parse_identity_spec
from faceveil.models.iresnet import build_iresnet

ASTRONAUT = torch.tensor([[205.011, 101.727], [246.763, 103.714], [224.671, 128.965], [201.716, 139.246], [245.265, 141.857]])


def _photo(name: str) -> torch.Tensor:
    return torch.tensor(load_image(sample_photo_path(name))).permute(2, 0, 1)[None].float() / 127.5 - 1


@pytest.fixture(scope="module")
def encoder() -> IdentityEncoder:
    return load_identity_encoder("tiny", seed=0)


def test_embeddings_are_unit_norm_batched_and_frozen(encoder: IdentityEncoder) -> None:
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    emb = encoder.embed(x)
    assert emb.shape == (3, 64)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    single = torch.cat([encoder.embed(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(emb, single, rtol=0, atol=1e-5)
    assert not encoder.training and all(not p.requires_grad for p in encoder.parameters())


def test_train_call_keeps_eval_mode_and_running_stats(encoder: IdentityEncoder) -> None:
    parent = torch.nn.ModuleDict({"id": encoder})
    parent.train()
    assert not encoder.training and not encoder.backbone.training
    before = encoder.backbone.bn1.running_mean.clone()
    encoder.embed(torch.rand(2, 3, 112, 112) * 2 - 1)
    torch.testing.assert_close(encoder.backbone.bn1.running_mean, before, rtol=0, atol=0)


def test_input_gradient_is_nonzero_with_and_without_landmarks(encoder: IdentityEncoder) -> None:
    ref = F.normalize(torch.randn(1, 64, generator=torch.Generator().manual_seed(1)), dim=-1)
    for landmarks in (None, ASTRONAUT[None]):
        x = (_photo("tom_hanks") if landmarks is None else _photo("astronaut")).requires_grad_(True)
        loss = F.cosine_similarity(encoder.embed(x, landmarks, expect_grad=True), ref).sum()
        loss.backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())


def test_gradient_steps_lower_cosine_to_reference(encoder: IdentityEncoder) -> None:
    """The identity loss works: a few signed-gradient steps on the image push it away from its identity."""
    # A 160 px window around the face keeps the steps cheap; landmarks move with it.
    original = _photo("astronaut")[..., 40:200, 145:305]
    landmarks = (ASTRONAUT - torch.tensor([145.0, 40.0]))[None]
    ref = encoder.embed(original, landmarks).detach()
    # Start a little off the original: at cosine = 1 the gradient is zero (a maximum).
    x = (original + 0.02 * torch.randn(original.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    start = float(F.cosine_similarity(encoder.embed(x, landmarks), ref))
    for _ in range(5):
        x.requires_grad_(True)
        cos = F.cosine_similarity(encoder.embed(x, landmarks, expect_grad=True), ref).sum()
        (grad,) = torch.autograd.grad(cos, x)
        x = (x.detach() - 0.01 * grad.sign()).clamp(-1, 1)
    end = float(F.cosine_similarity(encoder.embed(x, landmarks), ref))
    assert start > 0.95
    assert end < start - 0.1


def test_no_grad_around_embed_is_caught(encoder: IdentityEncoder) -> None:
    x = _photo("tom_hanks").requires_grad_(True)
    with torch.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        encoder.embed(x)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="grad disabled"):
        encoder.embed(x)
    with torch.no_grad():
        assert encoder.embed(x.detach()).shape == (1, 64)  # deliberate gradient-free use is fine
    with pytest.raises(RuntimeError, match="no gradient path"):
        encoder.embed(x.detach(), expect_grad=True)


def test_float64_and_device_follow_the_encoder() -> None:
    enc32 = load_identity_encoder("tiny", seed=0)
    enc64 = load_identity_encoder("tiny", seed=0, dtype=torch.float64)
    x = _photo("tom_hanks")
    out64 = enc64.embed(x)  # a float32 input is cast to the encoder's dtype
    assert out64.dtype == torch.float64 and out64.device == enc64.device
    torch.testing.assert_close(out64.float(), enc32.embed(x), rtol=0, atol=1e-5)
    # bfloat16 (mixed-precision training): alignment runs in float32, the network in bfloat16.
    enc16 = load_identity_encoder("tiny", seed=0, dtype=torch.bfloat16)
    photo, landmarks = _photo("astronaut")[..., :256, 96:352], (ASTRONAUT - torch.tensor([96.0, 0.0]))[None]
    out16 = enc16.embed(photo, landmarks)
    assert out16.dtype == torch.bfloat16
    assert float(F.cosine_similarity(out16.float(), enc32.embed(photo, landmarks))) > 0.99


def test_fixed_crop_presets_and_bad_inputs(encoder: IdentityEncoder) -> None:
    x = _photo("astronaut")[..., :256, 96:352]
    a, b = encoder.embed(x, crop="ffhq"), encoder.embed(x, crop="arcface112")
    assert not torch.allclose(a, b, atol=1e-3)
    with pytest.raises(InputError, match="uint8"):
        encoder.embed(torch.zeros(1, 3, 112, 112, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        encoder.embed(torch.zeros(3, 112, 112))


def test_spec_loading(tmp_path, monkeypatch) -> None:
    x = _photo("tom_hanks")
    same, other = load_identity_encoder("tiny", seed=0), load_identity_encoder("tiny", seed=1)
    torch.testing.assert_close(same.embed(x), load_identity_encoder("tiny", seed=0).embed(x), rtol=0, atol=0)
    assert not torch.allclose(same.embed(x), other.embed(x), atol=1e-3)

    net = build_iresnet("tiny", seed=3).eval()
    path = tmp_path / "backbone.pth"
    torch.save(net.state_dict(), path)
    expected = F.normalize(net(x), dim=-1)
    for spec in (f"arcface_torch:tiny:{path}", f"arcface_torch:{path}", str(path)):
        torch.testing.assert_close(load_identity_encoder(spec).embed(x), expected, rtol=0, atol=1e-6)

    assert parse_identity_spec("random:r50").arch == "r50"
    assert parse_identity_spec("onnx:/m/w600k_r50.onnx").path.name == "w600k_r50.onnx"
    nested = tmp_path / "models" / "antelopev2" / "antelopev2" / "glintr100.onnx"
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"")
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    assert parse_identity_spec("insightface:antelopev2").path == nested
    with pytest.raises(InputError, match=r"buffalo_l/w600k_r50.onnx: not found"):
        parse_identity_spec("insightface:buffalo_l")
    for bad in ("arcface", "random:r200", "insightface:buffalo_xl"):
        with pytest.raises(ConfigError):
            parse_identity_spec(bad)
