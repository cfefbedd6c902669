"""Reference DeepLab v3+ (atrous ResNet backbone, ASPP with atrous separable convs, decoder).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2614-2627  Kalhor: DeepLab, a CNN (VGG-16 or ResNet-101) used fully convolutionally with
                 dilated convolution, bilinear interpolation to the input resolution.
  K l.2630-2639  Kalhor: DeepLab v3+, an encoder-decoder with atrous separable convolution, "a
                 depthwise convolution (spatial convolution for each channel of the input) and
                 pointwise convolution (1x1 convolution with the depthwise convolution as input)",
                 the DeepLab v3 framework as encoder. (K l.2344-2348 publish mIoU only: 87.8 / 89.0
                 on VOC with Xception-71; no parameter count.)
Papers:
  Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous Separable Convolution for
  Semantic Image Segmentation", ECCV 2018, arXiv:1802.02611 (Fig. 2: encoder = DeepLab v3 with
  ASPP, decoder = 1x1 conv on the low-level features (48 channels), 4x bilinear upsampling,
  concat, 3x3 convs (256), 4x upsampling; Sec. 3.2: atrous separable convolution applied to ASPP
  and the decoder, "BN and ReLU after each 3x3 depthwise convolution"; Sec. 4: ResNet-101 backbone
  at output stride 16, the low-level features are Conv2 (stride 4)).
  Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image
  Segmentation" (DeepLab v3), arXiv:1706.05587 (Sec. 3.3 ASPP: one 1x1 conv and three 3x3 convs
  at rates (6, 12, 18) at output stride 16 (doubled at 8), plus image-level pooling, 256
  channels with BN each, concatenated and projected by a 1x1 conv).

The backbone is reference.models.resnet's ResNet (torchvision parameter names) with the stride
of the last stage replaced by dilation 2 (``replace_stride_with_dilation=[False, False, True]``:
output stride 16); the ASPP atrous branches and the decoder's 3x3 convs are atrous separable:
depthwise dilated 3x3 (``groups == channels``) - BN - ReLU - pointwise 1x1 - BN - ReLU.
Upsampling is bilinear (``align_corners=False``). There is no published parameter count for this
configuration; the tests check the structure. Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .resnet import Bottleneck, ResNet

__all__ = ["SeparableConvBNReLU", "ASPP", "DeepLabV3Plus", "deeplabv3plus"]


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels, out_channels, kernel_size=1):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SeparableConvBNReLU(nn.Sequential):
    """Atrous separable conv (K l.2633-2635): depthwise 3x3 with ``dilation`` - BN - ReLU,
    pointwise 1x1 - BN - ReLU."""

    def __init__(self, in_channels, out_channels, dilation=1):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation,
                                   groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)


class ImagePooling(nn.Module):
    """Image-level features: global average pool - 1x1 conv - BN - ReLU - bilinear upsample."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        size = x.shape[-2:]
        y = self.pool(x)
        y = self.conv(y)
        y = self.bn(y)
        y = self.relu(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 conv, three atrous separable 3x3 convs at ``rates``, image
    pooling; concatenated, projected by 1x1 conv - BN - ReLU, dropout 0.1."""

    def __init__(self, in_channels, out_channels=256, rates=(6, 12, 18), dropout=0.1):
        super().__init__()
        branches = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [SeparableConvBNReLU(in_channels, out_channels, r) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = ConvBNReLU(out_channels * len(branches), out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.dropout(self.project(x))


class ResNetBackbone(nn.Module):
    """A ResNet's stem and four stages; returns (stage-1 features at stride 4, stage-4 features)."""

    def __init__(self, resnet):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        low = self.layer1(x)
        x = self.layer2(low)
        x = self.layer3(x)
        x = self.layer4(x)
        return low, x


class DeepLabV3Plus(nn.Module):
    """DeepLab v3+ (Chen et al. 2018, Fig. 2) on an atrous ResNet.

    layers: the ResNet's blocks per stage ((3, 4, 23, 3) = ResNet-101); width: its base width (64);
    output_stride: 16 (last stage dilated 2, ASPP rates 6/12/18) or 8 (last two stages dilated 2
    and 4, rates 12/24/36); aspp_channels: 256; low_level_channels: the decoder's 1x1 reduction (48);
    decoder_channels: its 3x3 convs (256); dropout: after the ASPP projection (0.1).
    """

    def __init__(self, num_classes=21, layers=(3, 4, 23, 3), width=64, output_stride=16, in_channels=3,
                 aspp_channels=256, low_level_channels=48, decoder_channels=256, dropout=0.1):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        dilate = [False, False, True] if output_stride == 16 else [False, True, True]
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        resnet = ResNet(Bottleneck, list(layers), width=width, in_channels=in_channels,
                        replace_stride_with_dilation=dilate)
        self.backbone = ResNetBackbone(resnet)
        high, low = width * 8 * Bottleneck.expansion, width * Bottleneck.expansion
        self.aspp = ASPP(high, aspp_channels, rates, dropout)
        self.low_level = ConvBNReLU(low, low_level_channels, 1)
        self.decoder = nn.Sequential(SeparableConvBNReLU(aspp_channels + low_level_channels, decoder_channels),
                                     SeparableConvBNReLU(decoder_channels, decoder_channels))
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        low, high = self.backbone(x)
        high = self.aspp(high)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)  # 4x at OS 16
        low = self.low_level(low)
        y = self.decoder(torch.cat([high, low], dim=1))
        y = self.classifier(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)                 # 4x


def deeplabv3plus(**kwargs):
    """DeepLab v3+ with a ResNet-101 backbone at output stride 16 (Chen et al. 2018)."""
    return DeepLabV3Plus(**kwargs)


def _input(batch, config):
    size = 513 if config.get("width", 64) >= 64 else 64
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "deeplabv3plus", deeplabv3plus,
    small_config=dict(layers=(1, 1, 1, 1), width=8, aspp_channels=16, low_level_channels=8, decoder_channels=16,
                      num_classes=5, dropout=0.0),                             # 64x64 input, OS 16
    example_input=_input,
    families=("DW", "DIL", "BNR"),
    figures={},  # K l.2344-2348 / 2630-2639 publish mIoU only
)
