"""Reference PSPNet (dilated ResNet, pyramid pooling module with bins 1/2/3/6, auxiliary head).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2574-2584  Kalhor: PSPN, a CNN produces the feature map and a pyramid pooling module aggregates the
                 different sub-region representations; up-sampling and concatenation form the final
                 feature representation, from which the pixel-wise prediction is obtained by convolution.
  K l.2333, 2365, 2388-2389  the tables publish mIoU only (85.4 VOC with ResNet-101; ADE20K 43.29 / 44.94).
Paper:
  Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017, arXiv:1612.01105 (Sec. 3.2 / Fig. 3:
  pyramid levels of bin sizes 1x1, 2x2, 3x3 and 6x6 by adaptive average pooling, each followed by a 1x1 conv
  reducing the channels to 1/N of the input (N = 4 levels), bilinear up-sampling to the feature size,
  concatenation with the input features, a conv layer for the prediction; Sec. 3.3: a dilated ResNet at
  output stride 8; Sec. 3.4 / Fig. 4: an auxiliary loss on res4b22 (stage 3) weighted 0.4 in training)
  and the authors' code (the 3x3 conv 4096 -> 512 - BN - ReLU - dropout 0.1 - 1x1 classifier after the
  concatenation; the auxiliary branch 3x3 conv 1024 -> 256 - BN - ReLU - dropout 0.1 - 1x1; bilinear
  interpolation with align_corners=True).

The backbone is reference.models.resnet's ResNet-101 with stages 3 and 4 dilated (2, 4) instead of strided
(output stride 8). Deviations, stated: the paper's ResNet has a deep stem (three 3x3 convs in place of the
7x7) and this one has torchvision's; every conv of the pyramid and the heads is conv (no bias) - BN - ReLU.
``aux_head=True`` adds the auxiliary classifier: in training mode the model then returns (main, aux) logits,
both at the input resolution; in eval mode (or without it) the main logits only. No figure: the documents
publish mIoU only. Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .resnet import Bottleneck, ResNet

__all__ = ["PSP_BINS", "PyramidPooling", "PSPNet", "pspnet"]

PSP_BINS = (1, 2, 3, 6)


def _conv_bn_relu(in_channels, out_channels, kernel_size):
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class PyramidPooling(nn.Module):
    """Pyramid pooling module: for each bin b, adaptive average pool to b x b - 1x1 conv to C / len(bins) -
    BN - ReLU - bilinear up-sampling; concatenated after the input: (B, C, h, w) -> (B, 2C, h, w)."""

    def __init__(self, in_channels, bins=PSP_BINS):
        super().__init__()
        self.bins = tuple(bins)
        reduced = in_channels // len(self.bins)
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), *_conv_bn_relu(in_channels, reduced, 1))
                                    for b in self.bins)
        self.out_channels = in_channels + reduced * len(self.bins)

    def forward(self, x):
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=True) for stage in self.stages]
        return torch.cat([x] + pooled, dim=1)


class PSPNet(nn.Module):
    """PSPNet on a dilated ResNet (output stride 8): (B, C, H, W) -> logits (B, num_classes, H, W) (and the
    auxiliary logits in training mode with ``aux_head``).

    layers: ResNet blocks per stage ((3, 4, 23, 3) = ResNet-101); width: its base width (64); bins: the
    pyramid's bin sizes; head_channels: the 3x3 conv after the concatenation (512); dropout: 0.1.
    """

    def __init__(self, num_classes=21, layers=(3, 4, 23, 3), width=64, in_channels=3, bins=PSP_BINS,
                 head_channels=512, aux_head=False, dropout=0.1):
        super().__init__()
        resnet = ResNet(Bottleneck, list(layers), width=width, in_channels=in_channels,
                        replace_stride_with_dilation=[False, True, True])
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        features = width * 8 * Bottleneck.expansion
        self.ppm = PyramidPooling(features, bins)
        self.head = nn.Sequential(*_conv_bn_relu(self.ppm.out_channels, head_channels, 3), nn.Dropout2d(dropout),
                                  nn.Conv2d(head_channels, num_classes, 1))
        self.aux = None
        if aux_head:
            mid = width * 4 * Bottleneck.expansion
            self.aux = nn.Sequential(*_conv_bn_relu(mid, mid // 4, 3), nn.Dropout2d(dropout),
                                     nn.Conv2d(mid // 4, num_classes, 1))

    def forward(self, x):
        size = x.shape[-2:]
        x = self.layer2(self.layer1(self.stem(x)))
        mid = self.layer3(x)
        out = self.head(self.ppm(self.layer4(mid)))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        if self.aux is not None and self.training:
            return out, F.interpolate(self.aux(mid), size=size, mode="bilinear", align_corners=True)
        return out


def pspnet(**kwargs):
    """PSPNet (Zhao et al. 2017): dilated ResNet-101, pyramid bins 1/2/3/6, 21 classes."""
    return PSPNet(**kwargs)


def _input(batch, config):
    size = 473 if config.get("width", 64) >= 64 else 48
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "pspnet", pspnet,
    small_config=dict(layers=(1, 1, 1, 1), width=8, head_channels=16, num_classes=5, dropout=0.0),  # 48x48 -> 6x6
    example_input=_input,
    families=("DIL", "BNR"),
    figures={},   # K l.2333-2389 publish mIoU only
)
