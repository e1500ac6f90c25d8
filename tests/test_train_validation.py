"""Validation you can trust: held-out identities, eval mode whatever lora.dropout says, fixed keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceveil.data.loader import make_loader
from faceveil.data.sample_set import build_sample_shards
from faceveil.models.backbones import build_backbone
from faceveil.models.identity import load_identity_encoder
from faceveil.models.pipeline import Settings
from faceveil.train.config_schema import ObjectiveSection
from faceveil.train.lora import add_lora, lora_config
from faceveil.train.objective import Batch, Frozen, Objective, VeilModel, draw_keys
from faceveil.data.splits import held_out, identity_group
from faceveil.train.validation import validate

SIZE = 64
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards():
    from faceveil.train.loop import sample_shards_dir

    return build_sample_shards(sample_shards_dir(SIZE), size=SIZE)


def _faces(shards, select=None, n=16):
    loader = make_loader(shards, batch_size=n, image_size=SIZE, latent_factor=8, shuffle=0, select=select)
    return next(iter(loader))


def test_holdout_splits_by_identity(shards):
    """Every face of a held-out identity (its mirror copy included) is in validation, none in training."""
    val = _faces(shards, lambda s: held_out(s, 0.25))
    train = _faces(shards, lambda s: not held_out(s, 0.25))
    val_ids, train_ids = set(val["label"]), set(train["label"])
    assert val_ids and train_ids and not val_ids & train_ids
    assert len(val["label"]) + len(train["label"]) == 16
    assert all(val["label"].count(lab) == 2 for lab in val_ids)  # each face and its mirror
    assert identity_group({"label": "", "source": "a.jpg", "key": "k"}) == "a.jpg"


def _lora_unet(dropout: float):
    torch.manual_seed(0)
    bb = build_backbone("tiny")
    params = add_lora(bb.unet, lora_config(8, 8, ["to_q", "to_k", "to_v", "to_out.0"], ["conv1", "conv2"], dropout=dropout))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    bb.unet.train()  # as the training loop leaves it
    return bb


def test_validation_and_keying_are_unchanged_by_lora_dropout(shards):
    """Dropout acts only in the differentiable forward: validation and the no-gradient inversion and
    keying give the same numbers with lora.dropout = 0.5 as with 0, and the UNet's mode is restored."""
    faces = _faces(shards, lambda s: held_out(s, 0.25), n=2)
    identity = load_identity_encoder("tiny")
    settings = Settings("exact", 4, "shuffle")
    results, starts = [], []
    for dropout in (0.0, 0.5):
        bb = _lora_unet(dropout)
        metrics, grid = validate(bb, identity, faces, settings)
        assert bb.unet.training
        results.append((metrics, grid))
        cfg = ObjectiveSection(grad_steps=2)
        frozen = Frozen(bb, identity)
        model = VeilModel(bb.unet, frozen, cfg, settings).train()
        keys, nonces = draw_keys(2, 0, "dropout")
        starts.append(Objective(cfg, frozen, settings).training_inputs(model, Batch.from_loader(faces, torch.device("cpu")), keys, nonces)["start"])
        assert model.training
        if dropout:  # and dropout does act in the differentiable forward
            cond = {"mask": torch.ones(1, 1, 8, 8), "masked_latents": torch.zeros(1, 4, 8, 8)}
            z = torch.randn(1, 4, 8, 8)
            assert not torch.equal(bb.eps(z, 500, cond), bb.eps(z, 500, cond))
    (m0, g0), (m1, g1) = results
    assert m0 == m1 and np.array_equal(g0, g1)
    assert m0["val/recovery_latent_error"] <= 1e-4
    assert torch.equal(starts[0], starts[1])


@pytest.mark.parametrize(("holdout", "message"), [(0.001, "no validation faces"), (0.999, "every face .* is held out")])
def test_an_empty_split_fails_at_start(tmp_path, holdout, message):
    from pathlib import Path

    from faceveil.errors import ConfigError
    from faceveil.train.config_schema import load_train_config
    from faceveil.train.loop import train

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    cfg = load_train_config(tiny, [f"output.run_dir={tmp_path}", f"data.val_holdout={holdout}", "output.progress=false",
                                   "output.val_dlib=false"])
    with pytest.raises(ConfigError, match=message):
        train(cfg)
