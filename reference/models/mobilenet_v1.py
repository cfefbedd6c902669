"""Reference MobileNet v1 (depthwise-separable convolutions, width multiplier).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.1607-1623  Kalhor: MobileNet, depthwise separable convolutions for mobile and embedded
                 vision, cost proportional to the number of multiply-accumulates.
  K l.363-366    depthwise-separable convolutions (Xception and MobileNet papers).
  R l.659        Rossi: MobileNet, separable convolutions to reduce parameters and cost.
Paper:
  Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto, Adam, "MobileNets: Efficient
  Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861, 2017
  (Fig. 3: 3x3 depthwise conv - BN - ReLU - 1x1 conv - BN - ReLU; Table 1: the body;
  Sec. 3.3 width multiplier alpha; Table 8: 1.0 MobileNet-224 has 569M multiply-adds and 4.2M
  parameters).

Body (Table 1, input 224x224): a full 3x3/2 conv to 32 channels, then 13 separable blocks
(depthwise 3x3 with ``groups == in_channels``, pointwise 1x1), output channels and depthwise
strides 64/1, 128/2, 128/1, 256/2, 256/1, 512/2, 5 x 512/1, 1024/2, 1024/1, global average
pool, fully connected layer. (Table 1 prints "s2" for the last depthwise conv, but its
input and output are both 7x7: the stride is 1, as in every implementation.) ReLU is the paper's
(not the ReLU6 of later implementations). Every conv has no bias and is followed by a BatchNorm
and a ReLU as separate modules, so the BatchNorm2d->ReLU pattern is visible to torch.fx.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["MobileNetV1", "mobilenet_v1", "CONFIG"]

# (output channels, depthwise stride) of the 13 separable blocks (paper Table 1)
CONFIG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BatchNorm2d -> ReLU; ``groups=in_channels`` makes it the depthwise half."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparable(nn.Sequential):
    """Fig. 3 (right): 3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.depthwise = ConvBNReLU(in_channels, in_channels, 3, stride, groups=in_channels)
        self.pointwise = ConvBNReLU(in_channels, out_channels, 1)


class MobileNetV1(nn.Module):
    """MobileNet v1 with width multiplier ``width_mult`` (alpha: every width is int(alpha * c))."""

    def __init__(self, num_classes=1000, width_mult=1.0, in_channels=3, dropout=0.0, config=CONFIG):
        super().__init__()
        def ch(c):
            return max(1, int(c * width_mult))
        stem = ch(32)
        layers = [ConvBNReLU(in_channels, stem, 3, stride=2)]
        cin = stem
        for c, s in config:
            layers.append(DepthwiseSeparable(cin, ch(c), s))
            cin = ch(c)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.fc(x)


def mobilenet_v1(**kwargs):
    """MobileNet v1 1.0-224: 4.2M parameters, 569M multiply-adds (paper Table 8)."""
    return MobileNetV1(**kwargs)


def _input(batch, config):
    size = 224 if config.get("width_mult", 1.0) >= 0.25 else 32
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "mobilenet_v1", mobilenet_v1,
    small_config=dict(width_mult=0.125, num_classes=10),     # widths 4 ... 128, 32x32 input
    example_input=_input,
    families=("DW", "BNR"),
    figures={
        "params": Figure(4.2e6, "paper: Howard et al. 2017, Table 8 (1.0 MobileNet-224)", 0.02,
                         note="all parameters incl. BN affine and the 1000-way fc: 4,231,976"),
        "macs": Figure(569e6, "paper: Howard et al. 2017, Table 8", 0.01, input_shape=(1, 3, 224, 224),
                       note="multiply-adds of the convolutions and the fc layer per 224x224 image"),
    },
)
