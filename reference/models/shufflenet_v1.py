"""Reference ShuffleNet v1 (pointwise group convolutions, channel shuffle, depthwise 3x3).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.423-437    Kalhor: shuffled grouped convolutions; channel shuffle = reshape the channels to
                 (g, n), transpose, flatten (Fig. 1 of the paper).
  K l.1626-1642  Kalhor: ShuffleNet, pointwise group convolution and channel shuffle, ~13x faster
                 than AlexNet; the units: (b) stride 1 with GConv and shuffle, (c) stride 2.
Paper:
  Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
  Mobile Devices", CVPR 2018, arXiv:1707.01083 (Fig. 2: the units; Table 1: the architecture and
  output channels per group count; Table 2: "ShuffleNet 1x" is the 140-MFLOPs budget; Sec. 3.3:
  no group conv on the first pointwise layer of Stage 2, bottleneck width 1/4 of the output).

Units (Fig. 2 (b), (c)):

    stride 1:  1x1 GConv (g groups) BN ReLU, channel shuffle, 3x3 DWConv BN, 1x1 GConv BN,
               + x, ReLU
    stride 2:  the same with a stride-2 depthwise conv and the branch producing out - in channels,
               concatenated with a 3x3/2 average pool of x, ReLU

Network (Table 1, g = 3, 1x): conv 24 3x3/2 BN ReLU, maxpool 3x3/2, stages 2-4 with 4 / 8 / 4
units (the first of each strides 2) and 240 / 480 / 960 output channels, global average pool, fc.
The bottleneck width is out / 4. The paper prints no parameter count; the authors' implementation
(megvii-model/ShuffleNet-Series, ShuffleNetV1 1.0x g=3) reports 1.9M parameters and 138 MFLOPs.
This model counts 1,865,728 parameters with a biased fc (the megvii code has no fc bias:
1,864,728; mmpretrain lists 1.87M) and 137.5M multiply-adds at 224x224 (convolutions + fc; the
paper's nominal budget is 140 MFLOPs, the megvii README prints 138M). The megvii code shuffles after the depthwise conv
instead of before it (Fig. 2 of the paper, followed here); both are the same function class.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["ChannelShuffle", "ShuffleUnit", "ShuffleNetV1", "shufflenet_v1", "STAGE_CHANNELS"]

# output channels of stages 2-4 for g = 1, 2, 3, 4, 8 (paper Table 1, 1x)
STAGE_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
                  8: (384, 768, 1536)}


class ChannelShuffle(nn.Module):
    """(N, g * n, H, W) -> reshape (N, g, n, H, W) -> transpose (N, n, g, H, W) -> flatten (K l.427-433)."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.reshape(n, self.groups, c // self.groups, h, w)
        x = x.transpose(1, 2)
        return x.reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Fig. 2 (b) (stride 1: residual add) and (c) (stride 2: concat with a 3x3/2 average pool)."""

    def __init__(self, in_channels, out_channels, groups, stride, first_group_conv=True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 unit keeps the number of channels")
        mid = out_channels // 4
        g1 = groups if first_group_conv else 1
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.shuffle = ChannelShuffle(g1) if g1 > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.shuffle(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.pool is not None:
            out = torch.cat([self.pool(x), out], dim=1)
        else:
            out = out + x
        return self.relu(out)


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 (Table 1). groups: g; width_mult: the "s" of "ShuffleNet s x" (channels x s);
    stage_repeats: units per stage (4, 8, 4); stem: the first conv's width (24)."""

    def __init__(self, num_classes=1000, groups=3, width_mult=1.0, stage_repeats=(4, 8, 4), stem=24,
                 in_channels=3, stage_channels=None):
        super().__init__()
        channels = stage_channels or tuple(int(c * width_mult) for c in STAGE_CHANNELS[groups])
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, cin = [], stem
        for i, (reps, cout) in enumerate(zip(stage_repeats, channels)):
            units = [ShuffleUnit(cin, cout, groups, 2, first_group_conv=i > 0)]  # no GConv on Stage 2's first
            units += [ShuffleUnit(cout, cout, groups, 1) for _ in range(reps - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def shufflenet_v1(**kwargs):
    """ShuffleNet v1 1x, g = 3: 1.9M parameters (authors' code), 140 MFLOPs (paper Table 2)."""
    return ShuffleNetV1(**kwargs)


def _input(batch, config):
    size = 32 if config.get("stage_channels") else 224
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "shufflenet_v1", shufflenet_v1,
    # g = 3 kept; 24 / 48 / 96 channels (mid 6 / 12 / 24: 2 / 4 / 8 per group), 1 / 2 / 1 units, 32x32
    small_config=dict(stage_channels=(24, 48, 96), stage_repeats=(1, 2, 1), stem=12, num_classes=10),
    example_input=_input,
    families=("GC", "DW", "BNR"),
    figures={
        "params": Figure(1.9e6, "megvii-model/ShuffleNet-Series README (ShuffleNetV1 1.0x, group=3: 1.9M); "
                         "the paper prints no parameter count", 0.02,
                         note="all parameters incl. BN affine and the fc with bias (1,865,728; 1.8% below the "
                              "rounded 1.9M)"),
        "macs": Figure(140e6, "paper: Zhang et al. 2018, Table 2 (ShuffleNet 1x: 140 MFLOPs)", 0.02,
                       input_shape=(1, 3, 224, 224),
                       note="multiply-adds of the convolutions and the fc per 224x224 image: 137.5M (megvii "
                            "README: 138M)"),
    },
)
