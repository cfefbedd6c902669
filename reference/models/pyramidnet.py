"""Reference PyramidNets: additive widening of every residual unit (CIFAR and ImageNet).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.1369       Kalhor's table: PyramidalNet, "increases width gradually per unit": 116.4M at
                 depth 200 (the ImageNet row, 4.7% top-5), 27.0M at depth 164 (CIFAR-10 3.48%,
                 CIFAR-100 17.01%).
  K l.1402-1430  the unit types: (a) basic, (b) bottleneck, (c) wide, (d) pyramidal,
                 (e) pyramidal bottleneck; K l.1471: widening per unit avoids rapid information loss.
Paper:
  Han, Kim, Kim, "Deep Pyramidal Residual Networks", CVPR 2017, arXiv:1610.02915 (Eq. 2 additive
  widening D_k = D_{k-1} + alpha / N; Fig. 6(d) the unit BN-conv-BN-ReLU-conv-BN without a ReLU
  after the addition; Sec. 3.2 zero-padded identity shortcuts, 2x2 average pooling where the unit
  strides; the CIFAR table: PyramidNet-164 bottleneck alpha=270, 27.0M, CIFAR-10 3.48%, CIFAR-100
  17.01%; the ImageNet table: PyramidNet-200 alpha=300 62.1M, alpha=450 116.4M, top-5 4.7%) and the
  authors' Torch code (jhkim89/PyramidNet, addpyramidnet.lua; the PyTorch port dyhan0920/PyramidNet-PyTorch is the same)
  for the widths: unit k of N has floor(D_k + 0.5) channels, D_k = start + k * alpha / N accumulated in
  floating point (x4 out for bottleneck units), and dropout 0.5 before the fc of the alpha=450 net.

The two rows of K l.1369 are two configurations: depth 164 is the CIFAR net (``pyramidnet164``,
bottleneck units, alpha=270, CIFAR-10 head), depth 200
the ImageNet net (``pyramidnet200_imagenet``, [3, 24, 36, 3] bottleneck units, alpha=450: 116,775,213
with the code's rounding, 0.3% above the 116.4M printed; flooring the widths instead gives 116,416,581
and, at alpha=300, 62,119,514: the paper's 116.4M and 62.1M to every printed digit, so the paper's
counts were likely made with floored widths). PyramidNet-164 at alpha=270 has integer widths (rate 5),
so rounding does not matter there: 27,216,021 parameters with 10 classes, 27,319,071 with 100, 0.8% /
1.2% above the 27.0M printed (not explained by biases or BN; the paper gives no breakdown).
Deviations: none in the layers; the final pooling is global (``AdaptiveAvgPool2d``) instead of the
code's fixed 8x8 / 7x7 window, the same at the standard input sizes. Nothing here imports
cvkernels, torchvision or timm.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register

__all__ = ["PyramidBasicUnit", "PyramidBottleneckUnit", "PyramidNet", "pyramid_widths", "pyramidnet",
           "pyramidnet164", "pyramidnet200_imagenet"]


def pyramid_widths(num_units, alpha, start):
    """The unit widths of an additive PyramidNet: round(start + k * alpha / num_units), k = 1..num_units,
    with the width accumulated in floating point and rounded half up as the authors' code does."""
    rate, width, widths = alpha / num_units, float(start), []
    for _ in range(num_units):
        width += rate
        widths.append(math.floor(width + 0.5))               # Lua's round: half up
    return widths


class _PyramidUnit(nn.Module):
    """Residual + shortcut of a pyramidal unit: the input, 2x2-average-pooled where the unit strides,
    with zero channels appended up to the residual's width (no ReLU after the addition)."""

    def _shortcut_add(self, residual, x):
        shortcut = self.pool(x) if self.pool is not None else x
        extra = residual.shape[1] - shortcut.shape[1]
        if extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, extra))
        return residual + shortcut


class PyramidBasicUnit(_PyramidUnit):
    """BN - 3x3 conv (stride) - BN - ReLU - 3x3 conv - BN (Fig. 6(d)): (N, in, H, W) -> (N, planes, H/s, W/s)."""
    expansion = 1

    def __init__(self, in_channels, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride != 1 else None

    def forward(self, x):
        out = self.conv1(self.bn1(x))
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv2(out))
        return self._shortcut_add(out, x)


class PyramidBottleneckUnit(_PyramidUnit):
    """BN - 1x1 - BN - ReLU - 3x3 (stride) - BN - ReLU - 1x1 (x4) - BN (Fig. 6(e)):
    (N, in, H, W) -> (N, 4 * planes, H/s, W/s)."""
    expansion = 4

    def __init__(self, in_channels, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(planes * 4)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride != 1 else None

    def forward(self, x):
        out = self.conv1(self.bn1(x))
        out = self.relu(self.bn2(out))
        out = self.conv2(out)
        out = self.relu(self.bn3(out))
        out = self.bn4(self.conv3(out))
        return self._shortcut_add(out, x)


class PyramidNet(nn.Module):
    """Additive PyramidNet: a stem, stages of ``layers[i]`` units whose widths grow by alpha / sum(layers)
    per unit (the first unit of every stage but the first strides 2), final BN-ReLU, global pool, fc.

    imagenet=False: 3x3 conv stem to ``start`` (16) channels + BN, three stages (CIFAR);
    imagenet=True: 7x7/2 conv stem to ``start`` (64) + BN + ReLU + 3x3/2 max pool, four stages;
    dropout: before the fc (0.5 in the alpha=450 ImageNet net).
    (N, in_channels, H, W) -> (N, num_classes).
    """

    def __init__(self, layers, alpha, bottleneck=True, num_classes=10, start=16, imagenet=False, in_channels=3,
                 dropout=0.0):
        super().__init__()
        unit = PyramidBottleneckUnit if bottleneck else PyramidBasicUnit
        if imagenet:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, start, 7, 2, 3, bias=False), nn.BatchNorm2d(start),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, start, 3, 1, 1, bias=False), nn.BatchNorm2d(start))
        widths = iter(pyramid_widths(sum(layers), alpha, start))
        channels, stages = start, []
        for i, n in enumerate(layers):
            units = []
            for j in range(n):
                planes = next(widths)
                units.append(unit(channels, planes, 2 if i > 0 and j == 0 else 1))
                channels = planes * unit.expansion
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.bn_final = nn.BatchNorm2d(channels)
        self.relu_final = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stages(self.stem(x))
        x = self.relu_final(self.bn_final(x))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def pyramidnet(depth=164, alpha=270, bottleneck=True, num_classes=10, in_channels=3):
    """CIFAR PyramidNet of ``depth`` layers: 3 stages of n units, depth = 9n + 2 (bottleneck) or 6n + 2 (basic)."""
    per_unit = 9 if bottleneck else 6
    if depth < per_unit + 2 or (depth - 2) % per_unit:
        raise ValueError(f"depth must be {per_unit}n+2 for {'bottleneck' if bottleneck else 'basic'} units, "
                         f"got {depth}")
    n = (depth - 2) // per_unit
    return PyramidNet([n, n, n], alpha, bottleneck, num_classes, start=16, in_channels=in_channels)


def pyramidnet164(**kwargs):
    """PyramidNet-164 (CIFAR, bottleneck units, alpha=270): 27.0M parameters (K l.1369)."""
    return pyramidnet(**{"depth": 164, "alpha": 270, **kwargs})


def pyramidnet200_imagenet(layers=(3, 24, 36, 3), alpha=450, num_classes=1000, start=64, in_channels=3, dropout=0.5):
    """PyramidNet-200 (ImageNet, bottleneck units [3, 24, 36, 3], alpha=450, dropout 0.5): 116.4M parameters
    (K l.1369)."""
    return PyramidNet(list(layers), alpha, True, num_classes, start=start, imagenet=True, in_channels=in_channels,
                      dropout=dropout)


def _cifar_input(batch, config):
    return torch.randn(batch, config.get("in_channels", 3), 32, 32)


def _imagenet_input(batch, config):
    side = 224 if config.get("start", 64) >= 64 else 64
    return torch.randn(batch, config.get("in_channels", 3), side, side)


register(
    "pyramidnet164", pyramidnet164,
    small_config=dict(depth=20, alpha=12, num_classes=10),          # 2 bottleneck units a stage, widths 18..28
    example_input=_cifar_input,
    families=("BNR",),
    figures={
        "params": Figure(27.0e6, "K l.1369 (PyramidNet-164, alpha=270, bottleneck)", 0.01,
                         config=dict(num_classes=10),
                         note="CIFAR-10 head; all parameters incl. BN affine and fc: 27,216,021, 0.8% above the "
                              "printed 27.0M (100 classes: 27,319,071)"),
    },
)
register(
    "pyramidnet200_imagenet", pyramidnet200_imagenet,
    small_config=dict(layers=(1, 1, 1, 1), alpha=16, start=8, num_classes=10, dropout=0.0),
    example_input=_imagenet_input,
    families=("BNR",),
    figures={
        "params": Figure(116.4e6, "K l.1369 (PyramidNet-200, alpha=450, ImageNet)", 0.005,
                         note="all parameters incl. BN affine and fc (1000 classes): 116,775,213 with the code's "
                              "rounded widths (+0.3%); floored widths give 116,416,581"),
        "params_alpha300": Figure(62.1e6, "paper: Han et al. 2017, ImageNet table (PyramidNet-200, alpha=300)", 0.01,
                                  config=dict(alpha=300), note="62,368,168 with rounded widths (+0.4%)"),
    },
)
