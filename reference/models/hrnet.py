"""Reference HRNet (HRNetV2 for semantic segmentation: parallel multi-resolution branches, repeated fusion).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2536-2548  Kalhor: HRNet consists of parallel high-to-low resolution convolution streams with
                 repeated information exchange across the multi-resolution streams; four stages: the 1st
                 of high-resolution convolutions, the 2nd (3rd, 4th) repeating two- (three-, four-)
                 resolution blocks.
  K l.2377-2378, 2414  HRNetV2-W48 (+OCR) in the Cityscapes / ADE20K tables (mIoU only).
Papers:
  Sun, Xiao, Liu, Wang, "Deep High-Resolution Representation Learning for Human Pose Estimation", CVPR 2019,
  arXiv:1902.09212 (Sec. 3: stem of two 3x3/2 convs to 1/4 resolution, 64 channels; stage 1: 4 bottleneck
  units of width 64; stages 2, 3, 4 of 1, 4, 3 exchange modules, each branch 4 basic residual units, branch
  widths C, 2C, 4C, 8C; a new branch comes from the lowest one by a 3x3/2 conv; exchange units: from lower
  to higher resolution a 1x1 conv then up-sampling, from higher to lower one 3x3/2 conv per halving;
  fused maps summed).
  Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition", TPAMI 2020,
  arXiv:1908.07919 (HRNetV2: the four representations up-sampled bilinearly to the highest resolution and
  concatenated (15C channels), a 1x1 conv - BN - ReLU keeping the 15C channels, a 1x1 classifier; Table 3:
  HRNetV2-W48 65.9M parameters on Cityscapes) and the authors' HRNet-Semantic-Segmentation code (fusion
  layer details: 1x1 conv - BN then up-sampling; k-1 3x3/2 conv - BN - ReLU and a last 3x3/2 conv - BN;
  ReLU after each sum; transitions conv3x3 - BN - ReLU where the width changes).

Structure and names follow the authors' code (conv1, bn1, conv2, bn2, layer1, transition1..3,
stage2..4 of HighResolutionModule with branches / fuse_layers, last_layer). Every conv is followed by
BatchNorm; the block convs have no bias, the head's 1x1 convs have one, as the code. Deviations, stated:
the output logits are bilinearly up-sampled to the input size (the code leaves them at 1/4); fusion and
head up-sampling are bilinear with align_corners=False. HRNetV2-W48 counts 65,859,379 parameters at 19
classes (the paper's 65.9M); W18 and W32 are registered with the same head (the paper's Table 3 lists W48
and W40 only). Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register
from .resnet import BasicBlock, Bottleneck

__all__ = ["HighResolutionModule", "HRNetV2", "hrnetv2_w18", "hrnetv2_w32", "hrnetv2_w48"]


def _conv_bn(in_channels, out_channels, kernel_size=3, stride=1, relu=True):
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
              nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def _blocks(block, inplanes, planes, n):
    """n residual units; a 1x1 conv - BN projection on the first where the width changes."""
    out = planes * block.expansion
    downsample = nn.Sequential(*_conv_bn(inplanes, out, 1, relu=False)) if inplanes != out else None
    units = [block(inplanes, planes, 1, downsample)]
    units += [block(out, planes) for _ in range(n - 1)]
    return nn.Sequential(*units)


class HighResolutionModule(nn.Module):
    """One exchange module: ``len(channels)`` parallel branches of ``num_blocks`` basic units, then every output
    resolution i sums all branches j resampled to it (j > i: 1x1 conv - BN, up-sampling; j < i: strided 3x3
    convs), ReLU. forward([x_i (B, C_i, H / 2^i, W / 2^i)]) -> the same list of shapes."""

    def __init__(self, channels, num_blocks):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(_blocks(BasicBlock, c, c, num_blocks) for c in channels)
        self.fuse_layers = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(*_conv_bn(channels[j], channels[i], 1, relu=False)))
                elif j == i:
                    row.append(nn.Identity())
                else:                                             # i - j halvings, the last without ReLU
                    steps = [nn.Sequential(*_conv_bn(channels[j], channels[j], 3, 2)) for _ in range(i - j - 1)]
                    steps.append(nn.Sequential(*_conv_bn(channels[j], channels[i], 3, 2, relu=False)))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs):
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, fuse in enumerate(row):
                if j == i:
                    continue
                z = fuse(xs[j])
                if j > i:
                    z = F.interpolate(z, size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                y = y + z
            out.append(self.relu(y))
        return out


class HRNetV2(nn.Module):
    """HRNetV2 segmentation network: (B, C, H, W) -> logits (B, num_classes, H, W); H, W divisible by 32.

    width: C, the highest-resolution branch width (18, 32, 48); branch i has C * 2^i channels.
    stem_width: 64; num_modules: exchange modules of stages 2-4 (1, 4, 3); num_blocks: basic units per
    branch (4); stage1_blocks: bottleneck units of stage 1 (4).
    """

    def __init__(self, num_classes=19, width=48, in_channels=3, stem_width=64, num_modules=(1, 4, 3), num_blocks=4,
                 stage1_blocks=4):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, stem_width, 3, 2, relu=False)
        self.conv2, self.bn2 = _conv_bn(stem_width, stem_width, 3, 2, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _blocks(Bottleneck, stem_width, stem_width, stage1_blocks)
        previous = [stem_width * Bottleneck.expansion]
        self.branch_channels = [width * 2 ** i for i in range(4)]
        for stage, modules in zip((2, 3, 4), num_modules):
            channels = self.branch_channels[:stage]
            transition = nn.ModuleList()
            for i, c in enumerate(channels):
                if i < len(previous):
                    transition.append(nn.Sequential(*_conv_bn(previous[i], c)) if previous[i] != c else nn.Identity())
                else:                                             # a new, lower-resolution branch
                    transition.append(nn.Sequential(*_conv_bn(previous[-1], c, 3, 2)))
            setattr(self, f"transition{stage - 1}", transition)
            setattr(self, f"stage{stage}", nn.Sequential(*[HighResolutionModule(channels, num_blocks)
                                                           for _ in range(modules)]))
            previous = channels
        total = sum(self.branch_channels)                          # 15C
        self.last_layer = nn.Sequential(nn.Conv2d(total, total, 1), nn.BatchNorm2d(total), nn.ReLU(inplace=True),
                                        nn.Conv2d(total, num_classes, 1))

    def features(self, x):
        """The four branch outputs [(B, C * 2^i, H / 2^(i+2), W / 2^(i+2))] of the last stage."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for stage in (2, 3, 4):
            transition = getattr(self, f"transition{stage - 1}")
            xs = [t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{stage}")(xs)
        return xs

    def forward(self, x):
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by 32")
        size = x.shape[-2:]
        xs = self.features(x)
        high = xs[0].shape[-2:]
        y = torch.cat([xs[0]] + [F.interpolate(z, size=high, mode="bilinear", align_corners=False) for z in xs[1:]],
                      dim=1)
        y = self.last_layer(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def hrnetv2_w18(**kwargs):
    """HRNetV2-W18 (branch widths 18/36/72/144), segmentation head, 19 classes."""
    return HRNetV2(**{**dict(width=18), **kwargs})


def hrnetv2_w32(**kwargs):
    """HRNetV2-W32 (branch widths 32/64/128/256), segmentation head, 19 classes."""
    return HRNetV2(**{**dict(width=32), **kwargs})


def hrnetv2_w48(**kwargs):
    """HRNetV2-W48 (branch widths 48/96/192/384), segmentation head, 19 classes; 65.9M (paper Table 3)."""
    return HRNetV2(**{**dict(width=48), **kwargs})


def _input(batch, config):
    size = (512, 1024) if config.get("width", 48) >= 16 else (64, 64)
    return torch.randn(batch, config.get("in_channels", 3), *size)


# small: branches 4/8/16/32 at 16x16 .. 2x2 of a 64x64 input, one module per stage, one unit per branch
_SMALL = dict(width=4, stem_width=8, num_modules=(1, 1, 1), num_blocks=1, stage1_blocks=1, num_classes=5)
for _name, _factory in (("hrnetv2_w18", hrnetv2_w18), ("hrnetv2_w32", hrnetv2_w32), ("hrnetv2_w48", hrnetv2_w48)):
    _figures = {}
    if _name == "hrnetv2_w48":
        _figures["params"] = Figure(65.9e6, "paper: Wang et al. 2020, Table 3 (HRNetV2-W48 on Cityscapes: 65.9M)",
                                    0.005, note="backbone + HRNetV2 head, 19 classes: 65,859,379; the documents "
                                                "(K l.2377, 2414) print mIoU only")
    register(_name, _factory, small_config=_SMALL, example_input=_input, families=("BNR",), figures=_figures)
