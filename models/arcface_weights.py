"""Loading trained ArcFace weights: arcface_torch ``backbone.pth`` files and insightface ONNX models.

* :func:`load_arcface_torch` builds an :class:`~faceveil.models.iresnet.IResNet` and loads a state dict
  strictly (a mismatch is a one-line :class:`WeightsMismatchError` naming the file and a few keys).
* :func:`load_onnx_arcface` turns an insightface model-zoo file (buffalo_l's ``w600k_r50.onnx``,
  antelopev2's ``glintr100.onnx``, ...) into a differentiable torch module with onnx2torch, and reads
  the input convention the way insightface's ``ArcFaceONNX`` does: RGB ``(B, 3, 112, 112)`` scaled
  as ``(pixel - 127.5) / 127.5``, unless the graph normalises by itself (old MXNet conversions start
  with Sub / Mul nodes), in which case it takes raw 0..255 pixels.

Both return the network together with its :class:`InputConvention`; outputs are raw embeddings
(:class:`~faceveil.models.identity.IdentityEncoder` L2-normalises them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from faceveil.errors import InputError
from faceveil.models.iresnet import IResNet, IResNetConfig, arch_name, infer_iresnet_config, iresnet_config


class WeightsMismatchError(InputError):
    """A weights file does not fit the network it was loaded into."""


@dataclass(frozen=True)
class InputConvention:
    """What a recognition network expects: RGB ``(pixel - mean) / std`` at ``size x size``."""

    mean: float = 127.5
    std: float = 127.5
    size: int = 112


# Wrapper keys under which training scripts nest the backbone's state dict (arcface_torch's
# checkpoint_gpu_*.pt uses "state_dict_backbone").
_NESTED_KEYS = ("state_dict_backbone", "state_dict", "backbone", "model")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth`` / ``.pt`` (plain, nested or DDP-prefixed) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            # weights_only: a .pth from the internet must not run code when loaded.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many kinds; the user needs one line
        raise InputError(f"{path}: not a readable weights file ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})") from None
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: does not hold a state dict of tensors")
    # DistributedDataParallel saves "module."-prefixed keys.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, limit: int = 3) -> None:
    """Raise :class:`WeightsMismatchError` unless ``state_dict`` fits ``model`` key for key and shape for shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:

        def few(items: list[str]) -> str:
            more = f", +{len(items) - limit} more" if len(items) > limit else ""
            return f"{len(items)}" + (f" ({', '.join(items[:limit])}{more})" if items else "")

        raise WeightsMismatchError(
            f"{source}: weights do not fit the network: missing {few(missing)}; unexpected {few(unexpected)}; "
            f"shape mismatches (file vs network) {few(shapes)}"
        )


def load_arcface_torch(path: str | os.PathLike[str], arch: str | IResNetConfig | None = None) -> tuple[IResNet, InputConvention]:
    """Load an arcface_torch ``backbone.pth`` strictly; ``arch`` (``r50`` ...) or None to infer it from the keys."""
    state_dict = read_state_dict(path)
    if arch is None:
        config = infer_iresnet_config(state_dict)
    else:
        config = iresnet_config(arch) if isinstance(arch, str) else arch
    model = IResNet(config)
    name = arch if isinstance(arch, str) else (arch_name(config) or "custom")
    check_state_dict(model, state_dict, f"{path} (iresnet {name})")
    model.load_state_dict(state_dict, strict=True)
    return model.eval(), InputConvention()


@dataclass(frozen=True)
class OnnxModelInfo:
    """What :func:`load_onnx_arcface` read from the graph besides the weights."""

    input_name: str
    output_name: str
    builtin_normalisation: bool


def _graph_normalises_input(graph: object) -> bool:
    # insightface's ArcFaceONNX rule, verbatim in spirit: Sub and Mul node names among the first 8 nodes
    # mean an MXNet conversion that subtracts / scales the pixels itself.
    names = [node.name for node in graph.node[:8]]  # type: ignore[attr-defined]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return has_sub and has_mul


def load_onnx_arcface(path: str | os.PathLike[str]) -> tuple[nn.Module, InputConvention, OnnxModelInfo]:
    """Convert an insightface ArcFace ONNX file to a differentiable torch module (with onnx2torch)."""
    import onnx
    from onnx2torch import convert

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf errors vary
        raise InputError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    # Old exports list the weights as graph inputs too; onnxruntime (and insightface) ignore those.
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InputError(f"{path}: an ArcFace model has one input and one output, this one has {len(inputs)} and {len(graph.output)}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4 or shape[1] not in (3, None):
        raise InputError(f"{path}: input {inputs[0].name!r} has shape {shape}, expected (batch, 3, H, W)")
    size = shape[2] or 112
    if shape[3] not in (size, None):
        raise InputError(f"{path}: input is {shape[3]}x{shape[2]}, expected a square crop")
    builtin = _graph_normalises_input(graph)
    convention = InputConvention(mean=0.0, std=1.0, size=size) if builtin else InputConvention(size=size)
    try:
        module = convert(model)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises NotImplementedError and others
        raise InputError(f"{path}: onnx2torch cannot convert this graph ({exc.__class__.__name__}: {str(exc)[:160]})") from None
    info = OnnxModelInfo(inputs[0].name, graph.output[0].name, builtin)
    return module.eval(), convention, info
