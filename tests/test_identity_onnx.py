"""ONNX round trip in insightface's layout: export the tiny iresnet, load it back, compare."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from faceveil.data.images import load_image
from faceveil.data.samples import sample_photo_path
from faceveil.errors import InputError
from faceveil.models.arcface_weights import load_onnx_arcface
from faceveil.models.identity import IdentityEncoder, load_identity_encoder
from faceveil.models.iresnet import build_iresnet


def _tiny(seed: int = 0) -> nn.Module:
    net = build_iresnet("tiny", seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(0.1, 0.4, generator=g)
    return net.eval()


class _PixelInput(nn.Module):
    """An MXNet-style graph: takes 0..255 pixels and normalises them itself."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 127.5) * (1 / 127.5))


def _export_insightface_layout(net: nn.Module, path: Path, rename_mxnet: bool = False) -> Path:
    """Like arcface_torch's torch2onnx: input "input.1" (B, 3, 112, 112), batch dim named "None"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False, input_names=["input.1"], opset_version=11)
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "None"
    if rename_mxnet:
        # MXNet conversions name their leading nodes like this; insightface keys on the names.
        for i, node in enumerate(model.graph.node[:8]):
            if node.op_type in ("Sub", "Mul"):
                node.name = f"{node.op_type}_{i}"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[nn.Module, Path]:
    net = _tiny()
    return net, _export_insightface_layout(net, tmp_path_factory.mktemp("onnx") / "w600k_tiny.onnx")


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


# MTCNN's 5 points (insightface order) on the astronaut sample photo.
ASTRONAUT_LANDMARKS = np.array(
    [[205.011, 101.727], [246.763, 103.714], [224.671, 128.965], [201.716, 139.246], [245.265, 141.857]], dtype=np.float32
)


def _astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(load_image(sample_photo_path("astronaut"))[:, :, ::-1])


def _face_bgr() -> np.ndarray:
    """A colour 112x112 ArcFace crop, made by insightface's own norm_crop."""
    from insightface.utils.face_align import norm_crop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skimage's estimate() deprecation inside insightface
        return norm_crop(_astronaut_bgr(), ASTRONAUT_LANDMARKS)


def test_layout_is_insightface_like(tiny_onnx) -> None:
    _, path = tiny_onnx
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "input.1" and inp.shape == ["None", 3, 112, 112]


def test_converted_module_matches_onnxruntime_and_torch(tiny_onnx) -> None:
    net, path = tiny_onnx
    module, convention, info = load_onnx_arcface(path)
    assert (convention.mean, convention.std, convention.size) == (127.5, 127.5, 112)
    assert info.input_name == "input.1" and not info.builtin_normalisation
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ours, original = module(x).numpy(), net(x).numpy()
    ref = _ort(path, x.numpy())
    assert ref.shape == (3, 64)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(original, ref, rtol=0, atol=1e-4)
    assert np.abs(ref).max() > 0.1  # the comparison is not between near-zero outputs


def test_identity_encoder_matches_insightface_arcfaceonnx(tiny_onnx) -> None:
    """Same embedding as insightface's own ArcFaceONNX on a BGR uint8 crop: channel order and scaling."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    _, path = tiny_onnx
    bgr = _face_bgr()
    theirs = ArcFaceONNX(model_file=str(path)).get_feat([bgr])[0]
    theirs = theirs / np.linalg.norm(theirs)
    encoder = load_identity_encoder(f"onnx:{path}")
    rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = encoder.embed(rgb)[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    # The check is sensitive to channel order: BGR in gives another embedding.
    swapped = encoder.embed(rgb.flip(1))[0].numpy()
    assert np.abs(swapped - theirs).max() > 1e-2


def test_end_to_end_with_landmarks_matches_insightface_get(tiny_onnx) -> None:
    """insightface's ArcFaceONNX.get (norm_crop + network) against embed(image, landmarks)."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    _, path = tiny_onnx
    bgr = _astronaut_bgr()
    face = type("Face", (), {"kps": ASTRONAUT_LANDMARKS})()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = ArcFaceONNX(model_file=str(path)).get(bgr, face)
    encoder = load_identity_encoder(f"onnx:{path}", antialias=False)  # insightface does not anti-alias
    rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = encoder.embed(rgb, torch.from_numpy(ASTRONAUT_LANDMARKS)[None])[0].numpy()
    theirs = theirs / np.linalg.norm(theirs)
    # insightface rounds its crop to uint8, so agreement is close but not to 1e-4 per component ...
    assert float(ours @ theirs) > 0.9999
    # ... yet a crop one pixel off is clearly worse: the comparison does check the alignment.
    shifted = encoder.embed(rgb, torch.from_numpy(ASTRONAUT_LANDMARKS + 1.0)[None])[0].numpy()
    assert float(shifted @ theirs) < 0.9995


def test_builtin_normalisation_is_detected_like_insightface(tmp_path) -> None:
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = _export_insightface_layout(_PixelInput(_tiny(1)), tmp_path / "mxnet_style.onnx", rename_mxnet=True)
    module, convention, info = load_onnx_arcface(path)
    insight = ArcFaceONNX(model_file=str(path))
    assert info.builtin_normalisation and (convention.mean, convention.std) == (0.0, 1.0)
    assert (insight.input_mean, insight.input_std) == (0.0, 1.0)
    bgr = _face_bgr()
    theirs = insight.get_feat([bgr])[0]
    rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = IdentityEncoder(module, convention).embed(rgb)[0].numpy()
    np.testing.assert_allclose(ours, theirs / np.linalg.norm(theirs), rtol=0, atol=1e-4)


def test_onnx_encoder_is_differentiable_batched_and_float64(tiny_onnx) -> None:
    _, path = tiny_onnx
    encoder = load_identity_encoder(f"onnx:{path}")
    assert all(not p.requires_grad for p in encoder.parameters())
    x = (torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(2)) * 2 - 1).requires_grad_(True)
    emb = encoder.embed(x)
    emb[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    single = torch.cat([encoder.embed(x[i : i + 1].detach()) for i in range(4)])
    torch.testing.assert_close(emb.detach(), single, rtol=0, atol=1e-5)
    enc64 = load_identity_encoder(f"onnx:{path}", dtype=torch.float64)
    out64 = enc64.embed(x.detach().double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), emb.detach(), rtol=0, atol=1e-4)


def test_unreadable_onnx_file(tmp_path) -> None:
    bad = tmp_path / "w600k_r50.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="w600k_r50.onnx: not a readable ONNX model"):
        load_onnx_arcface(bad)
    with pytest.raises(InputError, match="no such ONNX file"):
        load_identity_encoder(str(tmp_path / "glintr100.onnx"))
