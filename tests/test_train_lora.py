"""LoRA adapters: only they train, in fp32; saved files load back exactly, with diffusers too."""

from __future__ import annotations

import pytest
import torch

from faceveil.models.backbones import build_backbone
from faceveil.train.lora import LORA_WEIGHTS, add_lora, load_lora, lora_config, lora_state_dict, read_lora_file, save_lora, set_lora_weights

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(unet, seed=0):
    """Give the adapter non-zero weights (B starts at zero, which would make every comparison trivial)."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in lora_state_dict(unet).items()}
    set_lora_weights(unet, sd)
    return sd


def _eps(bb, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 8, 8, generator=g)
    cond = {"mask": torch.ones(2, 1, 8, 8), "masked_latents": torch.randn(2, 4, 8, 8, generator=g)}
    with torch.no_grad():
        return bb.eps(z, 500, cond)


def test_only_lora_trains_and_stays_fp32_under_bf16_weights():
    bb = build_backbone("tiny").to(dtype=torch.bfloat16)
    params = add_lora(bb.unet, lora_config(4, 8, ATTN, ["conv1", "conv2"]))
    trainable = [n for n, p in bb.unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert any(".conv1.lora_" in n for n in trainable) and any(".to_q.lora_" in n for n in trainable)
    assert len(params) == len(trainable)
    assert all(p.dtype == torch.float32 for p in params)
    assert all(p.dtype == torch.bfloat16 for n, p in bb.unet.named_parameters() if ".lora_" not in n)
    assert not any(p.requires_grad for p in bb.vae.parameters())


def test_fresh_adapter_is_the_identity():
    base = build_backbone("tiny")
    adapted = build_backbone("tiny")
    add_lora(adapted.unet, lora_config(4, 4, ATTN, ["conv1"]))
    assert torch.equal(_eps(base), _eps(adapted))


@pytest.mark.parametrize("convs", [[], ["conv1", "conv2"]])
def test_saved_adapter_loads_exactly(tmp_path, convs):
    cfg = lora_config(4, 8, ATTN, convs)  # alpha != rank: the metadata must carry it
    bb = build_backbone("tiny")
    add_lora(bb.unet, cfg)
    sd = _randomize(bb.unet)
    path = save_lora(tmp_path, sd, cfg)
    assert path.name == LORA_WEIGHTS
    peft_sd, meta = read_lora_file(path)
    assert meta["lora_alpha"] == 8 and meta["r"] == 4
    assert set(peft_sd) == set(sd) and all(torch.equal(peft_sd[k], sd[k]) for k in sd)

    ours = build_backbone("tiny")
    load_lora(ours.unet, path)
    ref = _eps(bb)
    assert not torch.equal(ref, _eps(build_backbone("tiny")))  # the adapter changes the output
    assert torch.equal(_eps(ours), ref)

    # diffusers' own loader reads the same file.
    theirs = build_backbone("tiny")
    theirs.unet.load_lora_adapter(str(tmp_path), weight_name=LORA_WEIGHTS, prefix="unet")
    assert torch.allclose(_eps(theirs), ref, atol=1e-6)


def test_mismatched_weights_are_refused(tmp_path):
    from faceveil.errors import InputError

    cfg = lora_config(4, 4, ATTN)
    bb = build_backbone("tiny")
    add_lora(bb.unet, cfg)
    sd = _randomize(bb.unet)
    other = build_backbone("tiny")
    add_lora(other.unet, lora_config(4, 4, ["to_q"]))
    with pytest.raises(InputError, match="do not match"):
        set_lora_weights(other.unet, sd)
