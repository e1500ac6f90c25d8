"""The objective: keys, the differentiable unroll, and that training shifts identity while recovery stays exact."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from faceveil.data.loader import make_loader
from faceveil.data.sample_set import build_sample_shards
from faceveil.keys import SecretKey
from faceveil.models.backbones import build_backbone
from faceveil.models.identity import load_identity_encoder
from faceveil.models.inversion import quantize
from faceveil.models.pipeline import Anonymizer, Settings, to_tensor, to_uint8
from faceveil.train.config_schema import ObjectiveSection
from faceveil.train.lora import add_lora, lora_config
from faceveil.train.objective import Batch, Frozen, Objective, VeilModel, build_lpips, draw_keys
from faceveil.train.trajectory import ste_quantize
from faceveil.train.validation import backbone_view, validate

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faces():
    from faceveil.train.loop import sample_shards_dir

    folder = build_sample_shards(sample_shards_dir(SIZE), size=SIZE)
    return next(iter(make_loader(folder, batch_size=4, image_size=SIZE, latent_factor=8, shuffle=0)))


def test_draw_keys_seeded_and_random():
    k1, n1 = draw_keys(3, 7, "key", 0, 5)
    k2, n2 = draw_keys(3, 7, "key", 0, 5)
    assert [k.material for k in k1] == [k.material for k in k2] and n1 == n2
    assert len({k.material for k in k1}) == 3 and len(set(n1)) == 3  # one per image
    k3, _ = draw_keys(3, 7, "key", 1, 5)  # another rank
    assert not {k.material for k in k1} & {k.material for k in k3}
    r1, rn1 = draw_keys(2)
    r2, rn2 = draw_keys(2)
    assert r1[0].material != r2[0].material and rn1[0] != rn2[0] and all(len(n) == 16 for n in rn1)


def _model(bb, settings, **objective):
    cfg = ObjectiveSection(**objective)
    frozen = Frozen(bb, identity=torch.nn.Identity())
    return VeilModel(bb.unet, frozen, cfg, settings)


def _noise_state(bb, settings, b=2):
    """A keyed noise-end state and conditioning as anonymize makes them, from random clean latents."""
    g = torch.Generator().manual_seed(0)
    cond = {"mask": torch.ones(b, 1, 8, 8), "masked_latents": torch.randn(b, 4, 8, 8, generator=g)}
    eps = lambda z, t: bb.eps(z, t, cond)  # noqa: E731
    an = Anonymizer(bb, settings)
    clean = an.scheme.lift(torch.randn(b, 4, 8, 8, generator=g), eps)
    key_fn = an.key_fn(torch.ones(b, 1, 8, 8, dtype=torch.bool), SecretKey(bytes(32)), [bytes([i]) * 16 for i in range(b)])
    return an.keyed_noise(clean, eps, key_fn), cond, eps, an


@pytest.mark.parametrize("scheme", ["exact", "ddim"])
def test_full_unroll_is_the_schemes_sampling_bit_for_bit(scheme):
    """unroll=full walks the deployed scheme's levels with its arithmetic: the same bits as scheme.sample,
    with gradients enabled and each UNet call checkpointed."""
    bb = build_backbone("tiny")
    settings = Settings(scheme, 5, "shuffle")
    state, cond, eps, an = _noise_state(bb, settings)
    ref = an.scheme.endpoint(an.scheme.sample(state, eps)).float()
    out = _model(bb, settings, unroll="full", checkpoint_steps=True).unroll(state, cond)
    assert torch.equal(out.detach(), ref)


def test_shortcut_ends_with_the_x0_prediction():
    """K = 1: one differentiable call at the noise end, then the DDIM move from level N straight to level 0."""
    bb = build_backbone("tiny")
    settings = Settings("exact", 6, "shuffle")
    state, cond, _, _ = _noise_state(bb, settings, b=1)
    model = _model(bb, settings, unroll="shortcut", grad_steps=1)
    s = model.schedule
    with torch.no_grad():
        x = state[:, 0]
        e = bb.eps(x, s.timestep(6), cond)
        a0, a6 = s.alphas[0], s.alphas[6]
        x0 = (x - math.sqrt(1 - a6) * e) / math.sqrt(a6)
        expected = math.sqrt(a0) * x0 + math.sqrt(1 - a0) * e  # DDIM move to level 0
        assert torch.allclose(model.unroll(state, cond), expected.float(), atol=1e-5)


def test_straight_through_rounding_keeps_the_bits_and_passes_the_gradient():
    x = (torch.randn(1000, dtype=torch.float64) * 5).requires_grad_(True)
    y = ste_quantize(x)
    assert torch.equal(y.detach(), quantize(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.fixture(scope="module")
def lora_tiny():
    """The tiny backbone with a random (non-zero) LoRA adapter, and its parameters."""
    torch.manual_seed(0)
    bb = build_backbone("tiny")
    params = add_lora(bb.unet, lora_config(8, 8, ["to_q", "to_k", "to_v", "to_out.0"], ["conv1", "conv2"]))
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    return bb, params


def _full_unroll(bb, settings: Settings, faces):  # noqa: ANN001, ANN202
    """The `full`-unroll model over the sample faces: (cfg, frozen, model, uint8 images, masks, batch)."""
    cfg = ObjectiveSection(unroll="full", checkpoint_steps=True)
    frozen = Frozen(bb, load_identity_encoder("tiny"))
    model = VeilModel(bb.unet, frozen, cfg, settings)
    images = np.ascontiguousarray(to_uint8(faces["image"]))
    masks = (faces["mask"][:, 0] > 0.5).numpy()
    batch = Batch.from_loader({**faces, "image": to_tensor(images)}, torch.device("cpu"))
    return cfg, frozen, model, images, masks, batch


def test_training_forward_gives_anonymizes_clean_latents(faces, lora_tiny):
    """One trajectory: with the shortcut off, the training forward pass (inversion and keying without
    gradients, sampling with gradients) gives the clean latents that Anonymizer.anonymize stores, for
    the same key, nonces and weights."""
    bb, _ = lora_tiny
    settings = Settings("exact", 8, "shuffle")
    cfg, frozen, model, images, masks, batch = _full_unroll(bb, settings, faces)
    keys, nonces = draw_keys(len(images), 0, "same")
    inputs = Objective(cfg, frozen, settings).training_inputs(model, batch, [keys[0]] * len(images), nonces)
    x0 = model.unroll(inputs["start"], inputs["cond"])
    assert x0.grad_fn is not None  # the training pass, with gradients
    # The same batching as the training pass: the same bits.
    plain = Anonymizer(bb, settings, batch_invariant=False).anonymize(list(images), list(masks), keys[0], nonces, allow_caller_nonces=True)
    assert torch.equal(x0.detach(), torch.stack([v.state[0] for v in plain]).float())
    # anonymize's default (fixed-bucket batches): within 1e-3.
    veiled = Anonymizer(bb, settings).anonymize(list(images), list(masks), keys[0], nonces, allow_caller_nonces=True)
    real = torch.stack([v.state[0] for v in veiled]).float()
    assert float((x0.detach() - real).abs().max()) < 1e-3
    # Another key gives other latents: the comparison has teeth.
    other = Objective(cfg, frozen, settings).training_inputs(model, batch, [keys[1]] * len(images), nonces)
    with torch.no_grad():
        assert float((model.unroll(other["start"], other["cond"]) - real).abs().max()) > 0.1


def test_losses_see_the_deployed_image_its_landmarks_and_recovers_start(faces, lora_tiny, monkeypatch):
    """What the identity losses score is what anonymize publishes (decoded face pasted into the original,
    judged with the face's landmarks), and the wrong-key start is recover's (the key's inverse)."""
    bb, _ = lora_tiny
    settings = Settings("exact", 6, "rotation")
    cfg, frozen, model, images, masks, batch = _full_unroll(bb, settings, faces)
    assert batch.landmarks is not None
    keys, nonces = draw_keys(len(images), 0, "deployed")
    keys = [keys[0]] * len(images)  # one key, as anonymize takes it
    obj = Objective(cfg, frozen, settings)
    # Recovery with the right key passed as the "wrong" one must land on the unkeyed start exactly:
    # the start is re-keyed with the key's inverse, as recover does (applying the key again would not).
    inputs = obj.training_inputs(model, batch, keys, nonces, wrong_keys=keys)
    with torch.no_grad():
        eps = lambda z, t: model("eps", z=z, t=t, cond=inputs["cond"])  # noqa: E731
        unkeyed = obj.scheme.invert(obj.scheme.lift(inputs["z0"], eps), eps)
    assert torch.equal(inputs["wrong_start"], unkeyed) and not torch.equal(inputs["start"], unkeyed)
    # The faces the losses embed, and the landmarks they are embedded with.
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    embed = frozen.identity.embed

    def spy(images_, landmarks=None, **kw):  # noqa: ANN001, ANN202
        seen.append((images_.detach().clone(), landmarks))
        return embed(images_, landmarks, **kw)

    monkeypatch.setattr(frozen.identity, "embed", spy)
    model("losses", **inputs)
    assert len(seen) == 2  # the anonymized face and the wrong-key face
    assert all(lm is not None and torch.equal(lm, batch.landmarks) for _, lm in seen)
    deployed = Anonymizer(bb, settings, batch_invariant=False).anonymize(list(images), list(masks), keys[0], nonces, allow_caller_nonces=True)
    published = to_tensor(np.stack([v.image for v in deployed]))
    outside = (batch.mask < 0.5).expand_as(published)
    anon = seen[0][0]
    assert torch.equal(anon[outside], batch.images[outside])  # the original pixels outside the mask, bit for bit
    assert float((anon - published).abs().max()) <= 1.01 / 127.5  # inside: the published face, up to its 8-bit rounding


@pytest.mark.parametrize("unroll", ["shortcut", "full"])
def test_identity_loss_alone_gives_lora_gradients(faces, unroll):
    """Only the identity loss on, a fresh adapter (B = 0): every LoRA B matrix gets a non-zero gradient."""
    torch.manual_seed(0)
    bb = build_backbone("tiny")
    params = add_lora(bb.unet, lora_config(8, 8, ["to_q", "to_k", "to_v", "to_out.0"], ["conv1", "conv2"]))
    settings = Settings("exact", 6, "shuffle")
    cfg = ObjectiveSection(unroll=unroll, grad_steps=2, identity_weight=1.0, prior_weight=0.0, perceptual_weight=0.0,
                           wrong_key_weight=0.0)
    frozen = Frozen(bb, load_identity_encoder("tiny"))
    model = VeilModel(bb.unet, frozen, cfg, settings)
    keys, nonces = draw_keys(4, 0, "grad")
    out = model("losses", **Objective(cfg, frozen, settings).training_inputs(model, Batch.from_loader(faces, torch.device("cpu")), keys, nonces))
    assert float(out["prior"]) == 0 and float(out["perceptual"]) == 0 and float(out["wrong_key"]) == 0
    out["loss"].backward()
    named = dict(bb.unet.named_parameters())
    b_norms = [float(p.grad.norm()) for n, p in named.items() if ".lora_B" in n]
    assert b_norms and min(b_norms) > 1e-8, b_norms
    assert float(torch.cat([p.grad.flatten() for p in params]).norm()) > 1e-4


def _real_cos(bb, identity, images, masks, landmarks, ref, steps=8):
    key = SecretKey(bytes(range(32)))
    nonces = [bytes([i]) * 16 for i in range(len(images))]
    veiled = Anonymizer(bb, Settings("exact", steps, "shuffle")).anonymize(list(images), list(masks), key, nonces, allow_caller_nonces=True)
    with torch.no_grad():
        emb = identity.embed(to_tensor(np.stack([v.image for v in veiled])), landmarks)
    return (emb * ref).sum(-1)


def test_training_shifts_identity_and_recovery_stays_exact(faces):
    torch.manual_seed(0)
    bb = build_backbone("tiny")
    params = add_lora(bb.unet, lora_config(8, 8, ["to_q", "to_k", "to_v", "to_out.0"], ["conv1", "conv2"]))
    identity = load_identity_encoder("tiny")
    cfg = ObjectiveSection(grad_steps=2, checkpoint_steps=False, prior_weight=0.1, perceptual_weight=0.1,
                           perceptual_backbone="random", wrong_key_weight=0.5)
    frozen = Frozen(bb, identity, build_lpips("alex", "random"))
    settings = Settings("exact", 8, "shuffle")
    model = VeilModel(bb.unet, frozen, cfg, settings)
    objective = Objective(cfg, frozen, settings)
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    batch = Batch.from_loader(faces, torch.device("cpu"))
    images = np.ascontiguousarray(to_uint8(faces["image"]))
    masks = (faces["mask"][:, 0] > 0.5).numpy()
    ref = identity.embed(batch.images, batch.landmarks)
    view = backbone_view(bb, bb.unet)
    keys, nonces = draw_keys(4, 0, "fixed")
    wrong = draw_keys(4, 1, "fixed")[0]

    metrics0, grid = validate(view, identity, faces, Settings("exact", 6, "shuffle"))
    assert metrics0["val/recovery_latent_error"] <= 1e-4 and metrics0["val/recovery_psnr"] == math.inf
    assert grid.shape[1] > 4 * SIZE and grid.shape[0] > 4 * SIZE  # 4 columns, 4 rows
    real0 = _real_cos(view, identity, images, masks, batch.landmarks, ref)

    losses = []
    for _ in range(12):
        out = model("losses", **objective.training_inputs(model, batch, keys, nonces, wrong))
        out["loss"].backward()
        assert all(torch.isfinite(v) for v in out.values())
        assert all(p.grad is not None for p in params)
        assert all(p.grad is None for n, p in bb.unet.named_parameters() if ".lora_" not in n)
        assert not any(p.grad is not None for p in bb.vae.parameters())
        opt.step()
        opt.zero_grad()
        losses.append({k: float(v.detach()) for k, v in out.items()})

    assert {"identity", "wrong_key", "prior", "perceptual", "loss"} <= set(losses[0])
    assert losses[0]["prior"] > 0 and losses[0]["perceptual"] > 0 and losses[0]["wrong_key"] > 0
    # On the same batch and keys, the objective's identity cosine falls ...
    after = model("losses", **objective.training_inputs(model, batch, keys, nonces, wrong))
    assert float(after["identity_cos"]) < losses[0]["identity_cos"] - 0.15
    # ... and so does the real pipeline's (exact scheme, 8 steps, a fixed key).
    real1 = _real_cos(view, identity, images, masks, batch.landmarks, ref)
    assert float(real1.mean()) < float(real0.mean()) - 0.05, (real0, real1)
    # Recovery is still exact, from written files.
    metrics1, _ = validate(view, identity, faces, Settings("exact", 6, "shuffle"))
    assert metrics1["val/recovery_latent_error"] <= 1e-4 and metrics1["val/recovery_psnr"] == math.inf
    assert metrics1["val/recovered_cos"] > 0.999


def test_objective_runs_without_inpainting_conditioning():
    """An unconditional UNet (the ldm-ffhq layout, tiny here) trains through the same objective."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    tiny = build_backbone("tiny")
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, attention_head_dim=8).requires_grad_(False)
    bb = dataclasses.replace(tiny, unet=unet, prompt_embeds=None)
    assert not bb.inpainting
    params = add_lora(unet, lora_config(4, 4, ["to_q", "to_k", "to_v", "to_out.0"]))
    cfg = ObjectiveSection(grad_steps=2, perceptual_weight=0.0, wrong_key_weight=0.0)
    frozen = Frozen(bb, load_identity_encoder("tiny"))
    settings = Settings("exact", 4, "signflip")
    model = VeilModel(unet, frozen, cfg, settings)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[..., 16:48, 16:48] = 1
    keys, nonces = draw_keys(2, 0)
    out = model("losses", **Objective(cfg, frozen, settings).training_inputs(model, Batch(images, mask, None), keys, nonces))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in params)


def test_website_channel_is_differentiable_and_close_to_a_real_jpeg():
    """The pixel loss's stand-in: gradients reach the input, and its output is nearer a real JPEG-75 round trip
    than the input was (it models the loss, not an identity map)."""
    import io

    import numpy as np
    from PIL import Image

    from faceveil.data.samples import sample_face
    from faceveil.train.objective import website_channel

    face = sample_face("astronaut")[:120, :120]  # not a multiple of 16: padded inside
    x = (torch.from_numpy(face.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1).requires_grad_(True)
    out = website_channel(x, 75.0, 1.0)
    out.sum().backward()
    assert out.shape == x.shape and x.grad is not None and x.grad.abs().sum() > 0
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, "JPEG", quality=75)
    real = torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert (out.detach() - real).abs().mean() < (x.detach() - real).abs().mean()
    half = website_channel(x.detach(), 100.0, 0.5)
    assert (half - x.detach()).abs().mean() > 0.005  # the resize removes detail


def test_pixel_loss_reaches_the_unet():
    """The loss runs through the unrolled sampling: its gradient reaches the UNet (the adapter, in training)."""
    bb = build_backbone("tiny")
    bb.unet.requires_grad_(True)
    settings = Settings("exact", 3, "shuffle")
    state, cond, _, _ = _noise_state(bb, settings, b=1)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    model = _model(bb, settings, unroll="full", pixel_weight=1.0)
    latent = model.unroll(state, cond)
    loss = model.pixel_loss(latent, model.faces(latent, images, mask), mask)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.unet.parameters())
