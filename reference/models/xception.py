"""Reference Xception (entry / middle / exit flows of depthwise-separable convolutions).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.363-378    depthwise-separable convolutions (Xception and MobileNet papers).
  K l.1370       Kalhor's width table: Xception, depthwise then pointwise convolution, 22.8 M params.
  K l.1434-1445  Kalhor: Xception, a single 3x3 spatial dimension followed by a 1x1 convolution,
                 decoupling spatial and channel correlation (Fig. 8).
  K l.1667       the EfficientNet comparison table: Xception 23M parameters, 8.4B FLOPs.
Paper:
  Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017,
  arXiv:1610.02357 (Fig. 5: the architecture; Sec. 4.7: no intermediate activation between the
  depthwise and the pointwise convolution works best; Table 3: 22,855,952 parameters).

Fig. 5, input 299x299; every convolution is followed by BatchNorm; "SeparableConv" is a 3x3
depthwise conv (``groups == in_channels``) then a 1x1 pointwise conv, with nothing in between:

  entry flow   conv 32 3x3/2 (valid) BN ReLU, conv 64 3x3 (valid) BN ReLU,
               3 blocks to 128 / 256 / 728: [ReLU] Sep BN ReLU Sep BN, maxpool 3x3/2,
               + 1x1/2 conv + BN shortcut (the first block starts without the ReLU: its input
               has just been through one)
  middle flow  8 x (ReLU Sep 728 BN) x 3 + identity
  exit flow    ReLU Sep 728 BN ReLU Sep 1024 BN, maxpool 3x3/2, + 1x1/2 conv + BN shortcut;
               Sep 1536 BN ReLU, Sep 2048 BN ReLU, global average pool, fc

No conv has a bias (as the paper's Keras model). Parameters: 22,855,952 (the paper's Table 3
and K l.1370's 22.8M; Keras' 22,910,480 "total" adds the 54,528 BN running statistics, which
are buffers here). The block's leading ReLU is not in place: its input is also the shortcut's.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["SeparableConv2d", "XceptionBlock", "Xception", "xception"]


class SeparableConv2d(nn.Module):
    """Depthwise k x k conv (``groups = in_channels``) followed by a 1x1 pointwise conv, no bias,
    no nonlinearity between (Chollet 2017, Sec. 4.7). ``dilation`` makes it atrous (DeepLab v3+)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride,
                                   padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """``reps`` x ([ReLU] SeparableConv BN), then a 3x3/2 max pool if ``stride`` 2, plus a shortcut
    (identity, or 1x1 conv with the stride + BN where the shape changes).

    grow_first: the first separable conv changes the width (entry flow); otherwise the last does
    (exit flow). start_with_relu: False for the first entry block (its input is already rectified).
    """

    def __init__(self, in_channels, out_channels, reps, stride=1, start_with_relu=True, grow_first=True):
        super().__init__()
        if in_channels != out_channels or stride != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        else:
            self.skip = self.skipbn = None
        widths = [in_channels] + [out_channels if grow_first else in_channels] * (reps - 1) + [out_channels]
        layers = []
        for i in range(reps):
            if i > 0 or start_with_relu:
                layers.append(nn.ReLU(inplace=i > 0))     # the first one reads the shortcut's input
            layers.append(SeparableConv2d(widths[i], widths[i + 1]))
            layers.append(nn.BatchNorm2d(widths[i + 1]))
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, padding=1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x):
        out = self.rep(x)
        if self.skip is not None:
            shortcut = self.skip(x)
            shortcut = self.skipbn(shortcut)
        else:
            shortcut = x
        return out + shortcut


class Xception(nn.Module):
    """Xception (Chollet 2017, Fig. 5).

    widths: (stem1, stem2, entry1, entry2, entry3 = middle, exit, exit_sep1, exit_sep2), the paper's
    (32, 64, 128, 256, 728, 1024, 1536, 2048); middle_blocks: repetitions of the middle flow (8).
    """

    def __init__(self, num_classes=1000, in_channels=3, widths=(32, 64, 128, 256, 728, 1024, 1536, 2048),
                 middle_blocks=8):
        super().__init__()
        s1, s2, e1, e2, e3, x1, x2, x3 = widths
        self.conv1 = nn.Conv2d(in_channels, s1, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(s1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(s1, s2, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(s2)
        self.relu2 = nn.ReLU(inplace=True)
        blocks = [XceptionBlock(s2, e1, 2, 2, start_with_relu=False),
                  XceptionBlock(e1, e2, 2, 2),
                  XceptionBlock(e2, e3, 2, 2)]
        blocks += [XceptionBlock(e3, e3, 3, 1) for _ in range(middle_blocks)]
        blocks.append(XceptionBlock(e3, x1, 2, 2, grow_first=False))
        self.blocks = nn.Sequential(*blocks)
        self.conv3 = SeparableConv2d(x1, x2)
        self.bn3 = nn.BatchNorm2d(x2)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(x2, x3)
        self.bn4 = nn.BatchNorm2d(x3)
        self.relu4 = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(x3, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.relu2(x)
        x = self.blocks(x)
        x = self.conv3(x)
        x = self.bn3(x)
        x = self.relu3(x)
        x = self.conv4(x)
        x = self.bn4(x)
        x = self.relu4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def xception(**kwargs):
    """Xception: 22.9M parameters (22.8M in K l.1370), 8.4 GFLOPs at 299x299 (K l.1667)."""
    return Xception(**kwargs)


def _input(batch, config):
    size = 299 if config.get("widths") is None else 64
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "xception", xception,
    small_config=dict(widths=(4, 8, 8, 16, 16, 24, 32, 32), middle_blocks=2, num_classes=10),  # 64x64 input
    example_input=_input,
    families=("DW", "BNR"),   # BN -> ReLU inside the blocks; each block's last BN feeds the add
    figures={
        "params": Figure(22.8e6, "K l.1370 (22.8 M); paper: Chollet 2017, Table 3 (22,855,952)", 0.005,
                         note="all parameters incl. BN affine and the 1000-way fc; BN running statistics "
                              "(Keras' non-trainable 54,528) are buffers, not counted"),
        "macs": Figure(8.4e9, "K l.1667 (EfficientNet paper's table: 8.4B FLOPs)", 0.02,
                       input_shape=(1, 3, 299, 299),
                       note="multiply-adds of the convolutions and the fc layer per 299x299 image"),
    },
)
