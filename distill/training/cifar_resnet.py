"""CIFAR-style ResNets (He et al. 2016, section 4.2) registered in timm, so recipes name them like any timm model.

timm has no 6n+2 CIFAR ResNets; these follow the layout RepDistiller/mdistiller use for their published KD
numbers (3x3 stem, three stages, 1x1-conv shortcut when the shape changes; the x4 variants are 4x wider).
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models import build_model_with_cfg, register_model
from timm.models._registry import generate_default_cfgs

__all__ = ["CifarResNet"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act(x + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: widths (stem, stage1, stage2, stage3)."""

    def __init__(self, depth: int, widths=(16, 16, 32, 64), num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes, self.drop_rate, self.in_chans = num_classes, drop_rate, in_chans
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = cin
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs):
    return {"num_classes": 10, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
            "first_conv": "stem.0", "classifier": "fc", **kwargs}


_DEPTHS = {"resnet8": 8, "resnet14": 14, "resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56,
           "resnet110": 110, "resnet8x4": 8, "resnet32x4": 32}
default_cfgs = generate_default_cfgs({name: _cfg() for name in _DEPTHS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    widths = (32, 64, 128, 256) if variant.endswith("x4") else (16, 16, 32, 64)
    return build_model_with_cfg(CifarResNet, variant, pretrained, depth=_DEPTHS[variant], widths=widths, **kwargs)


def _entrypoint(variant: str):
    """timm registers a model by its entrypoint's name: make one named function per variant."""
    def entry(pretrained: bool = False, **kwargs) -> CifarResNet:
        return _create(variant, pretrained, **kwargs)
    entry.__name__ = entry.__qualname__ = variant
    entry.__module__ = __name__
    entry.__doc__ = f"CIFAR {variant} ({_DEPTHS[variant]} layers)."
    return register_model(entry)


for _variant in _DEPTHS:
    globals()[_variant] = _entrypoint(_variant)
