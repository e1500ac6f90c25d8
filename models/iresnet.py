"""The iresnet ArcFace backbones (r18, r34, r50, r100) as arcface_torch defines them, plus ``tiny``.

Module names and tensor shapes follow ``recognition/arcface_torch/backbones/iresnet.py`` of
deepinsight/insightface exactly, so its ``backbone.pth`` files load with ``strict=True``:

    conv1, bn1, prelu,
    layer1..layer4: IBasicBlock(bn1, conv1, bn2, prelu, conv2, bn3[, downsample = (conv1x1, bn)]),
    bn2, dropout, fc (Linear(C * 7 * 7, num_features)), features (BatchNorm1d(num_features)).

Input: ``(B, 3, 112, 112)`` RGB scaled to [-1, 1], i.e. ``(pixel - 127.5) / 127.5``.
Output: the raw (un-normalised) embedding; :class:`faceveil.models.identity.IdentityEncoder`
L2-normalises it. ``tiny`` keeps the layout with one block per stage and narrow widths, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from faceveil.errors import ConfigError

INPUT_SIZE = 112
# Four stride-2 stages take 112 down to 7; fc flattens the 7x7 map.
FEATURE_MAP = 7


@dataclass(frozen=True)
class IResNetConfig:
    """Depth and width of an iresnet; the named ones are in :data:`IRESNET_ARCHS`."""

    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    num_features: int = 512


IRESNET_ARCHS: dict[str, IResNetConfig] = {
    "r18": IResNetConfig((2, 2, 2, 2)),
    "r34": IResNetConfig((3, 4, 6, 3)),
    "r50": IResNetConfig((3, 4, 14, 3)),
    "r100": IResNetConfig((3, 13, 30, 3)),
    "tiny": IResNetConfig((1, 1, 1, 1), widths=(8, 16, 24, 32), num_features=64),
}
# arcface_torch's own names for the same networks.
_ALIASES = {"iresnet18": "r18", "iresnet34": "r34", "iresnet50": "r50", "iresnet100": "r100"}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, 3x3 conv, BN, PReLU, 3x3 conv (strided), BN, + skip."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        # The stride sits on the second conv, as in arcface_torch (not the first, as in torchvision).
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        skip = x if self.downsample is None else self.downsample(x)
        return out + skip


class IResNet(nn.Module):
    """ArcFace iresnet; ``forward`` maps ``(B, 3, 112, 112)`` in [-1, 1] to ``(B, num_features)``."""

    def __init__(self, config: IResNetConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        stages = []
        for planes, blocks in zip(widths, config.layers, strict=True):
            stages.append(self._make_layer(inplanes, planes, blocks))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(widths[3] * FEATURE_MAP * FEATURE_MAP, config.num_features)
        self.features = nn.BatchNorm1d(config.num_features, eps=1e-5)
        self._init_weights()

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
        # Every stage halves the resolution, so its first block always needs a projection skip.
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        layers = [IBasicBlock(inplanes, planes, stride=2, downsample=downsample)]
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # arcface_torch's initialisation, so a seeded "tiny" net behaves like an untrained real one.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        # arcface_torch freezes the embedding BN's scale during training.
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def iresnet_config(arch: str) -> IResNetConfig:
    """The config of a named iresnet: ``r18``, ``r34``, ``r50``, ``r100`` (or ``iresnet50`` ...) or ``tiny``."""
    key = _ALIASES.get(arch.lower(), arch.lower())
    try:
        return IRESNET_ARCHS[key]
    except KeyError:
        raise ConfigError(f"unknown iresnet architecture {arch!r}; known: {', '.join(IRESNET_ARCHS)}") from None


def build_iresnet(arch: str | IResNetConfig, num_features: int | None = None, seed: int | None = None) -> IResNet:
    """Build an iresnet by name or config; ``seed`` makes the random initialisation reproducible."""
    config = iresnet_config(arch) if isinstance(arch, str) else arch
    if num_features is not None and num_features != config.num_features:
        config = IResNetConfig(config.layers, config.widths, num_features)
    if seed is None:
        return IResNet(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return IResNet(config)


def infer_iresnet_config(state_dict: dict[str, torch.Tensor]) -> IResNetConfig:
    """Recover depth, widths and embedding size from an iresnet state dict's keys and shapes."""
    try:
        layers = []
        widths = []
        for stage in range(1, 5):
            prefix = f"layer{stage}."
            blocks = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
            layers.append(max(blocks) + 1)
            widths.append(int(state_dict[f"{prefix}0.conv1.weight"].shape[0]))
        num_features = int(state_dict["fc.weight"].shape[0])
    except (KeyError, ValueError, IndexError):
        raise ConfigError("state dict is not an arcface_torch iresnet (no conv1/layer1..4/fc keys)") from None
    return IResNetConfig(tuple(layers), tuple(widths), num_features)  # type: ignore[arg-type]


def arch_name(config: IResNetConfig) -> str | None:
    """The name of a config in :data:`IRESNET_ARCHS`, or None for a custom one."""
    return next((name for name, c in IRESNET_ARCHS.items() if c == config), None)

