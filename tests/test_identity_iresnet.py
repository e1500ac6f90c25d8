"""iresnet layout (arcface_torch's state-dict keys) and the strict backbone.pth loader."""

from __future__ import annotations

import pytest
import torch

from faceveil.errors import ConfigError, InputError
from faceveil.models.arcface_weights import WeightsMismatchError, load_arcface_torch, read_state_dict
from faceveil.models.iresnet import IBasicBlock, build_iresnet, infer_iresnet_config, iresnet_config


def _expected_keys(layers: tuple[int, ...]) -> set[str]:
    """arcface_torch's iresnet state-dict keys, written out from its definition."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "prelu.weight", "fc.weight", "fc.bias"}
    keys |= {f"{m}.{p}" for m in ("bn1", "bn2", "features") for p in bn}
    for stage, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            pre = f"layer{stage}.{b}."
            keys |= {pre + "conv1.weight", pre + "conv2.weight", pre + "prelu.weight"}
            keys |= {f"{pre}{m}.{p}" for m in ("bn1", "bn2", "bn3") for p in bn}
        keys |= {f"layer{stage}.0.downsample.0.weight"} | {f"layer{stage}.0.downsample.1.{p}" for p in bn}
    return keys


@pytest.mark.parametrize("arch,layers", [("r18", (2, 2, 2, 2)), ("r34", (3, 4, 6, 3)), ("r50", (3, 4, 14, 3)), ("r100", (3, 13, 30, 3))])
def test_state_dict_keys_match_arcface_torch(arch: str, layers: tuple[int, ...]) -> None:
    sd = build_iresnet(arch).state_dict()
    assert set(sd) == _expected_keys(layers)
    assert sd["conv1.weight"].shape == (64, 3, 3, 3)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["layer4.0.conv1.weight"].shape == (512, 256, 3, 3)
    assert sd["layer3.1.prelu.weight"].shape == (256,)
    assert sd["fc.weight"].shape == (512, 512 * 7 * 7)
    assert sd["features.weight"].shape == (512,)


def test_r50_parameter_count() -> None:
    # arcface_torch's iresnet50 has 43.59 M parameters (commonly quoted as 43.6 M).
    n = sum(p.numel() for p in build_iresnet("r50").parameters())
    assert abs(n - 43.59e6) < 0.01e6


def test_strides_and_feature_map_sizes() -> None:
    net = build_iresnet("tiny", seed=0).eval()
    block = net.layer1[0]
    assert isinstance(block, IBasicBlock)
    # arcface_torch strides the block's second conv, not the first.
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    sizes = {}
    hooks = [getattr(net, f"layer{i}").register_forward_hook(lambda m, i, o, k=i: sizes.__setitem__(k, o.shape[-1])) for i in range(1, 5)]
    out = net(torch.randn(3, 3, 112, 112))
    for h in hooks:
        h.remove()
    assert sizes == {1: 56, 2: 28, 3: 14, 4: 7}
    assert out.shape == (3, 64)


def test_seeded_build_is_reproducible_and_seed_sensitive() -> None:
    a, b, c = (build_iresnet("tiny", seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_unknown_arch() -> None:
    with pytest.raises(ConfigError, match="r200"):
        iresnet_config("r200")
    assert iresnet_config("iresnet50") == iresnet_config("r50")


def _tiny_with_stats(seed: int = 0) -> torch.nn.Module:
    net = build_iresnet("tiny", seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return net.eval()


def test_backbone_pth_round_trip(tmp_path) -> None:
    net = _tiny_with_stats()
    path = tmp_path / "backbone.pth"
    torch.save(net.state_dict(), path)
    x = torch.randn(2, 3, 112, 112)
    for arch in (None, "tiny"):
        loaded, convention = load_arcface_torch(path, arch)
        assert not loaded.training
        assert (convention.mean, convention.std, convention.size) == (127.5, 127.5, 112)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    assert infer_iresnet_config(net.state_dict()) == iresnet_config("tiny")


def test_nested_and_ddp_checkpoints(tmp_path) -> None:
    sd = _tiny_with_stats().state_dict()
    nested = tmp_path / "checkpoint_gpu_0.pt"
    torch.save({"state_dict_backbone": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, nested)
    assert set(read_state_dict(nested)) == set(sd)


def test_mismatched_weights_are_refused_with_names(tmp_path) -> None:
    sd = _tiny_with_stats().state_dict()
    del sd["layer1.0.bn1.weight"]
    sd["head.weight"] = torch.zeros(3)
    sd["fc.bias"] = torch.zeros(7)
    path = tmp_path / "bad_backbone.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsMismatchError) as info:
        load_arcface_torch(path, "tiny")
    msg = str(info.value)
    assert "\n" not in msg and "bad_backbone.pth" in msg
    assert "missing 1 (layer1.0.bn1.weight)" in msg
    assert "unexpected 1 (head.weight)" in msg
    assert "fc.bias (7,) vs (64,)" in msg


def test_wrong_architecture_is_refused(tmp_path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(_tiny_with_stats().state_dict(), path)
    with pytest.raises(WeightsMismatchError, match=r"iresnet r18.*missing \d+ \(layer1\.1\."):
        load_arcface_torch(path, "r18")


def test_unreadable_weights_file(tmp_path) -> None:
    path = tmp_path / "backbone.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="backbone.pth: not a readable weights file"):
        load_arcface_torch(path)
    with pytest.raises(InputError, match="no such weights file"):
        load_arcface_torch(tmp_path / "absent.pth")
