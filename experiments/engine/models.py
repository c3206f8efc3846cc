"""Backbones and the multi-head wrapper.

A backbone maps images to features and exposes `out_features`; `Network` puts one linear head per output
name on top ("logits" plus any `extra_heads` a loss asks for) and returns a dict of logits. The model config
names a backbone factory; the engine passes `in_channels` and `image_size` from the dataset.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from experiments.engine.errors import UserError


class NormedLinear(nn.Module):
    """Cosine classifier (LDAM-DRW's NormedLinear): logits = normalize(features) · normalize(weight columns)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5)
                                   .mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.weight, dim=0)


HEADS = {"linear": nn.Linear, "cosine": NormedLinear}
WEIGHTS = (None, "imagenet")


class Network(nn.Module):
    """`head`: `linear` (default), `cosine` or a layer class — chosen by the loss (`EngineLoss.head`), e.g. LDAM's.
    `heads`: names (each `num_classes` wide) or name → width (`EngineLoss.head_sizes`)."""

    def __init__(self, backbone: nn.Module, num_classes: int,
                 heads: tuple[str, ...] | dict[str, int] = ("logits",), head: str | type = "linear"):
        super().__init__()
        self.backbone = backbone
        layer = HEADS[head] if isinstance(head, str) else head
        sizes = heads if isinstance(heads, dict) else {h: num_classes for h in heads}
        self.heads = nn.ModuleDict({h: layer(backbone.out_features, n) for h, n in sizes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        return {name: head(f) for name, head in self.heads.items()}


class _Sequential(nn.Sequential):
    def __init__(self, *layers: nn.Module, out_features: int):
        super().__init__(*layers)
        self.out_features = out_features


def small_cnn(in_channels: int = 3, image_size: int = 32, width: int = 32) -> nn.Module:
    """Fast conv net for the offline stand-ins: 3 conv-BN-ReLU blocks with pooling, global average pool."""
    w = width

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return _Sequential(*block(in_channels, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                       *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(), out_features=4 * w)


def simloss_age_cnn(in_channels: int = 3, image_size: int = 60) -> nn.Module:
    """SimLoss age net (official `age_estimation/model.py`): conv 20k5, 40k7, 80k11, FC 80→120; 60×60 input."""
    if image_size != 60:
        raise UserError(f"model=simloss_age_cnn needs 60×60 images, the dataset gives {image_size}; "
                        f"use model=small_cnn or a 60×60 dataset")
    return _Sequential(nn.Conv2d(in_channels, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Conv2d(20, 40, 7), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Conv2d(40, 80, 11), nn.ReLU(), nn.Flatten(),
                       nn.Linear(80, 120), nn.ReLU(), out_features=120)


def lenet(in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """SimLoss CIFAR 'LeNet' (official `models/model.py`): conv 6k5, 16k5, FC 400→120→84; 32×32 input."""
    if image_size != 32:
        raise UserError(f"model=lenet needs 32×32 images, the dataset gives {image_size}")
    return _Sequential(nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                       nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), out_features=84)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":  # LDAM-DRW's resnet_cifar: subsample + zero-pad channels
                pad = cout - cin
                self.shortcut = _LambdaPad(pad)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class _LambdaPad(nn.Module):
    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class CifarResNet(nn.Module):
    def __init__(self, blocks: list[int], widths: list[int], in_channels: int, shortcut: str):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(_BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, shortcut))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.pool(self.layers(self.stem(x)))


def resnet32_cifar(in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """LDAM-DRW `resnet32`: BasicBlocks [5,5,5], widths 16/32/64, option-A shortcuts."""
    return CifarResNet([5, 5, 5], [16, 32, 64], in_channels, shortcut="A")


def resnet34_cifar(in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """CCE official `resnet34_for_tiny`: 3×3 stride-1 stem, no max-pool, BasicBlocks [3,4,6,3], 64→512."""
    return CifarResNet([3, 4, 6, 3], [64, 128, 256, 512], in_channels, shortcut="B")


def imagenet_checkpoint(name: str) -> tuple[str, Path]:
    """URL and torch-hub cache path of torchvision's IMAGENET1K_V1 weights of `name` (`pretrained=True`)."""
    import torchvision

    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_state(name: str) -> dict:
    url, path = imagenet_checkpoint(name)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            prefix = torch.hub.HASH_REGEX.search(path.name)
            torch.hub.download_url_to_file(url, str(path), prefix.group(1) if prefix else None, progress=False)
        except Exception as e:
            raise UserError(f"model.weights=imagenet: {path.name} is not cached and could not be downloaded "
                            f"({type(e).__name__}); place {url} at {path}, or set model.weights_path to a "
                            f"local copy") from None
    return torch.load(path, map_location="cpu", weights_only=True)


def _torchvision(name: str, in_channels: int, weights: str | None, weights_path: str | None) -> nn.Module:
    import torchvision

    if weights not in WEIGHTS:
        raise UserError(f"model.weights={weights!r}: choose imagenet (torchvision's published weights) or null")
    if weights and weights_path:
        raise UserError(f"model.weights={weights} and model.weights_path={weights_path}: set only one of them")
    net = getattr(torchvision.models, name)(weights=None)
    if weights_path:
        p = Path(weights_path)
        if not p.exists():
            raise UserError(f"model.weights_path={weights_path} does not exist; put a {name} state_dict there, "
                            f"use model.weights=imagenet or set model.weights_path=null")
        net.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    elif weights == "imagenet":
        net.load_state_dict(_imagenet_state(name))
    if in_channels != 3:
        raise UserError(f"model={name} expects 3-channel images, the dataset gives {in_channels}")
    out = net.fc.in_features
    net.fc = nn.Identity()
    net.out_features = out
    return net


def resnet18(in_channels: int = 3, image_size: int = 224, weights: str | None = None,
             weights_path: str | None = None) -> nn.Module:
    """torchvision ResNet-18; `weights=imagenet` (torchvision's IMAGENET1K_V1) or a local state_dict file."""
    return _torchvision("resnet18", in_channels, weights, weights_path)


def resnet50(in_channels: int = 3, image_size: int = 224, weights: str | None = None,
             weights_path: str | None = None) -> nn.Module:
    """torchvision ResNet-50; `weights=imagenet` (torchvision's IMAGENET1K_V1) or a local state_dict file."""
    return _torchvision("resnet50", in_channels, weights, weights_path)
