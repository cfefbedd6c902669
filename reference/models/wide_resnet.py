"""Reference Wide ResNets (WRN-d-k) for CIFAR: pre-activation basic blocks k times wider, dropout between convs.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.1377-1386  Kalhor: Wide ResNet, reduce the depth and increase the width; WRN-d-k has depth d
                 and widening factor k, k=1 is the ResNet's width.
  K l.1391-1400  the WRN paper's CIFAR table: WRN-40-4 8.9M, WRN-16-8 11.0M, WRN-28-10 36.5M
                 (CIFAR-10 4.53 / 4.27 / 4.00% error); K l.1368: WideResNet 36.5M, depth 28.
  K l.1470       dropout between the convolutional layers is more effective.
  O l.154-155, R l.660, P l.1245  Wide ResNet: more channels in the residual blocks instead of depth.
Paper:
  Zagoruyko, Komodakis, "Wide Residual Networks", BMVC 2016, arXiv:1605.07146 (Table 1: conv1 16
  channels, conv2/3/4 groups of N = (d - 4) / 6 blocks B(3,3) at 16k / 32k / 64k channels, strides
  1/2/2, 8x8 average pool; Sec. 2: pre-activation BN-ReLU-conv blocks, dropout between the two convs
  of a block; the CIFAR comparison table that K l.1391-1400 reproduces: 40-4 8.9M, 16-8 11.0M,
  28-10 36.5M; dropout 0.3 in the dropout runs) and
  the authors' code for the shortcut: a 1x1 conv on the pre-activated input where the width or the
  resolution changes (so the first block of every group has one, 16 -> 16k included).

The blocks are reference/models/resnet.py's ``PreActBasicBlock`` (BN-ReLU-conv3x3-BN-ReLU-conv3x3,
projection from the pre-activated input) with a dropout between the convs; the net is
``PreActResNet`` but for the stem, which stays 16 wide while the first group is 16k wide. Counts
(all weights, BN affine and the fc, 10 classes, no conv biases): WRN-40-4 8,949,210, WRN-16-8
10,961,370, WRN-28-10 36,479,194. ``dropout`` is 0 by default (the paper's plain runs; 0.3 is its
dropout setting). Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register
from .resnet import PreActBasicBlock, conv3x3

__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet"]


class WideBasicBlock(PreActBasicBlock):
    """PreActBasicBlock with dropout before the second conv: (N, in, H, W) -> (N, planes, H/s, W/s)."""

    def __init__(self, inplanes, planes, stride=1, dropout=0.0):
        super().__init__(inplanes, planes, stride)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        shortcut = self.downsample(pre) if self.downsample is not None else x
        out = self.relu(self.bn2(self.conv1(pre)))
        return self.conv2(self.dropout(out)) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016, Table 1): 3x3 conv to 16 channels, three groups of
    (depth - 4) / 6 wide blocks at 16k, 32k, 64k channels (strides 1, 2, 2), BN-ReLU, global average
    pool, fc. (N, in_channels, H, W) -> (N, num_classes).
    """

    def __init__(self, depth=28, widen_factor=10, num_classes=10, dropout=0.0, in_channels=3, base_width=16):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 (n >= 1), got {depth}")
        n = (depth - 4) // 6
        widths = [base_width * widen_factor * m for m in (1, 2, 4)]
        self.conv1 = conv3x3(in_channels, base_width)
        channels, groups = base_width, []
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(WideBasicBlock(channels, width, 2 if i > 0 and j == 0 else 1, dropout))
                channels = width
            groups.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = groups
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def wide_resnet(**kwargs):
    """WRN-d-k for CIFAR (default WRN-28-10: 36.5M parameters, K l.1400)."""
    return WideResNet(**kwargs)


def _cifar_input(batch, config):
    return torch.randn(batch, config.get("in_channels", 3), 32, 32)


_WRN_NOTE = "all parameters incl. BN affine and the fc (10 classes); convs without bias"
register(
    "wide_resnet28_10", wide_resnet,
    small_config=dict(depth=10, widen_factor=1, base_width=4, num_classes=10, dropout=0.0),
    example_input=_cifar_input,
    families=("BNR",),
    figures={
        "params": Figure(36.5e6, "K l.1400 (WRN-28-10)", 0.005, note=_WRN_NOTE),
        "params_wrn40_4": Figure(8.9e6, "K l.1400 (WRN-40-4)", 0.01,
                                 config=dict(depth=40, widen_factor=4), note=_WRN_NOTE),
        "params_wrn16_8": Figure(11.0e6, "K l.1400 (WRN-16-8)", 0.005,
                                 config=dict(depth=16, widen_factor=8), note=_WRN_NOTE),
    },
)
