"""Reference EfficientNet-B0 (MBConv blocks: expansion, depthwise k3/k5, squeeze-and-excitation, Swish).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.1644-1660  Kalhor: EfficientNet, compound scaling of depth / width / resolution.
  K l.1662       the comparison table: EfficientNet-B0, 76.3% top-1, 5.3M parameters, 0.39B FLOPS.
  K l.1697-1723  the structure of EfficientNet-B0: MBConv1 and MBConv6 (K x K kernel, B output maps,
                 S stride, R the SE reduction ratio), "an inverted linear bottleneck with
                 depthwise separable convolution and squeeze and excitation", Swish
                 f(x) = x * sigmoid(x).
Papers:
  Tan, Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019,
  arXiv:1905.11946 (Table 1: the B0 stages; Table 2: 5.3M parameters, 0.39B FLOPS).
  Sandler et al., "MobileNetV2", CVPR 2018 (the inverted residual: 1x1 expand - depthwise - 1x1
  linear projection, residual when the shape is kept); Hu et al., "Squeeze-and-Excitation
  Networks", CVPR 2018.

Table 1 (input 224x224): stem conv 3x3/2 to 32, then stages (block, kernel, stride, channels,
layers) MBConv1 k3 s1 16 x1, MBConv6 k3 s2 24 x2, MBConv6 k5 s2 40 x2, MBConv6 k3 s2 80 x3,
MBConv6 k5 s1 112 x3, MBConv6 k5 s2 192 x4, MBConv6 k3 s1 320 x1, head conv 1x1 to 1280,
pooling, fc. MBConv-e: 1x1 expand to e * in (absent for e = 1) BN Swish, depthwise k x k BN
Swish, SE (global pool, 1x1 to max(1, in / 4) Swish, 1x1 back, sigmoid, scale; the ratio 0.25 is
of the block's *input* channels, as the reference implementation), 1x1 project BN (linear),
+ input when stride 1 and in == out. Widths follow the width multiplier with the reference
rounding to multiples of 8; depths are ceil(layers * depth multiplier). Swish is ``nn.SiLU``.
Stochastic depth (drop-connect) is left out (no parameters; a training regulariser). BatchNorm
uses the reference TensorFlow implementation's eps=1e-3.

Structure and parameter names follow torchvision's ``efficientnet_b0`` (features.0 ... features.8,
block.0..3 of each MBConv, classifier.1), so its 5,288,548 parameters and 0.39 GFLOPS are the
checks. BatchNorm is followed by SiLU here, not ReLU: this model exercises the depthwise
convolutions, not the BN->ReLU fusion. Nothing here imports cvkernels, torchvision or timm.
"""
import math

import torch
from torch import nn

from . import Figure, register

__all__ = ["make_divisible", "ConvBNAct", "SqueezeExcitation", "MBConv", "EfficientNet", "efficientnet_b0",
           "B0_STAGES"]

# (expand ratio, kernel, stride, output channels, layers) of EfficientNet-B0 (paper Table 1)
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
             (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def make_divisible(value, divisor=8, min_value=None):
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value`` or 90% of value."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BatchNorm2d -> activation module (SiLU, or none)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, activation=nn.SiLU):
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2,
                            groups=groups, bias=False),
                  nn.BatchNorm2d(out_channels, eps=1e-3)]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """x * sigmoid(fc2(swish(fc1(avgpool(x))))) with 1x1 convs as the fcs (Hu et al. 2018)."""

    def __init__(self, channels, squeeze_channels):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x):
        s = self.avgpool(x)
        s = self.fc1(s)
        s = self.activation(s)
        s = self.fc2(s)
        s = self.scale_activation(s)
        return x * s


class MBConv(nn.Module):
    """MBConv-e (K l.1697-1723): [1x1 expand BN Swish] - depthwise k x k BN Swish - SE - 1x1 project BN,
    + input when the shape is kept."""

    def __init__(self, in_channels, out_channels, expand_ratio, kernel_size, stride, se_ratio=0.25):
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden = make_divisible(in_channels * expand_ratio)
        layers = []
        if hidden != in_channels:
            layers.append(ConvBNAct(in_channels, hidden, 1))
        layers.append(ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden))
        layers.append(SqueezeExcitation(hidden, max(1, int(in_channels * se_ratio))))
        layers.append(ConvBNAct(hidden, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        if self.use_res_connect:
            out = out + x
        return out


class EfficientNet(nn.Module):
    """EfficientNet with width / depth multipliers over the B0 stages (B0: 1.0, 1.0, dropout 0.2).

    head: the width of the last 1x1 conv; None is 4 x the last stage's width (1280 for B0, torchvision's rule).
    """

    def __init__(self, num_classes=1000, width_mult=1.0, depth_mult=1.0, dropout=0.2, in_channels=3,
                 stages=B0_STAGES, stem=32, head=None):
        super().__init__()
        def width(c):
            return make_divisible(c * width_mult)
        cin = width(stem)
        features = [ConvBNAct(in_channels, cin, 3, stride=2)]
        for expand, k, s, c, n in stages:
            cout = width(c)
            blocks = []
            for i in range(int(math.ceil(n * depth_mult))):
                blocks.append(MBConv(cin, cout, expand, k, s if i == 0 else 1))
                cin = cout
            features.append(nn.Sequential(*blocks))
        head_channels = head if head is not None else 4 * cin     # 4 x the last stage: 1280 for B0
        features.append(ConvBNAct(cin, head_channels, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(head_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def efficientnet_b0(**kwargs):
    """EfficientNet-B0: 5.3M parameters, 0.39 GFLOPs at 224x224 (K l.1662)."""
    return EfficientNet(**kwargs)


def _input(batch, config):
    size = 224 if config.get("width_mult", 1.0) >= 1.0 else 32
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "efficientnet_b0", efficientnet_b0,
    # every stage kept with one block (ceil(n * 0.1) = 1): MBConv1 and MBConv6, k3 and k5, SE, 32x32
    small_config=dict(width_mult=0.25, depth_mult=0.1, num_classes=10, dropout=0.0),
    example_input=_input,
    families=("DW",),
    figures={
        "params": Figure(5.3e6, "K l.1662 (paper Table 2: 5.3M)", 0.01,
                         note="all parameters incl. BN affine, SE biases and the 1000-way fc "
                              "(torchvision efficientnet_b0: 5,288,548)"),
        "macs": Figure(0.39e9, "K l.1662 (paper Table 2: 0.39B FLOPS)", 0.02, input_shape=(1, 3, 224, 224),
                       note="multiply-adds of the convolutions (incl. the SE 1x1 convs) and the fc per 224x224 "
                            "image; the SE scaling and Swish are not counted"),
    },
)
