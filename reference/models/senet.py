"""Reference channel / spatial attention CNNs: SE-ResNet-50, ResNet-50 + CBAM, U-Net + scSE.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.1476-1521  Kalhor: feature-map exploitation, the squeeze-and-excitation block (global pooling,
                 a weight per channel to recalibrate the feature maps); K l.1483 table row: Squeeze &
                 Excitation Networks 27.5M (ImageNet 2.3% top-5, depth 152).
  K l.1553-1605  attention-based CNNs: K l.1562 CBAM (ResNeXt101 (32x4d) + CBAM) 48.96M; K l.1605
                 CBAM generates feature-map (channel) and spatial attention in sequence, using global
                 average and max pooling together; K l.1563, 1587-1594 concurrent spatial and channel
                 excitation (scSE) in fully convolutional nets (1x1 conv with p channels, ReLU, global
                 pooling, sigmoid), no parameter count ("-").
Papers:
  Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018, arXiv:1709.01507 (Fig. 3: SE-ResNet
  module, the SE block on the residual branch before the addition; Sec. 3.2 / 6.1 reduction r = 16;
  Table 2: SE-ResNet-50 3.87 GFLOPs; Sec. 4: ~2.5M parameters on top of ResNet-50's ~25M).
  Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018, arXiv:1807.06521
  (Eq. 2: M_c = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), shared MLP with r = 16; Eq. 3:
  M_s = sigmoid(f7x7([AvgPool(F); MaxPool(F)])) over the channel axis; Fig. 3: CBAM on the residual
  branch of a ResNet block; Table 4: ResNet50 + CBAM 28.09M, 3.864 GFLOPs; ResNeXt101 (32x4d) + CBAM
  48.96M) and the authors' code (Jongchan/attention-module) for the MLP's biases and the BN after the
  7x7 conv.
  Roy, Navab, Wachinger, "Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully
  Convolutional Networks", MICCAI 2018, arXiv:1803.02579 (Sec. 2: cSE = SE with r = 2, sSE = 1x1
  conv to one channel + sigmoid, scSE = cSE(x) + sSE(x); placed after every encoder and decoder block).

The bottlenecks are reference/models/resnet.py's ``Bottleneck`` with the attention module applied to
the output of the last BN, before the addition (both papers), so the nets keep torchvision's
ResNet names (+ ``attention``). The SE block is reference/models/efficientnet.py's
``SqueezeExcitation`` (1x1 convs with bias as the two fcs) with a ReLU between the fcs.

Figures: SE-ResNet-50 has 28,088,024 parameters, the 28.1M usually quoted (~25.6M + ~2.5M). K's
27.5M row (K l.1483) is the paper's rounded "~25M + ~2.5M" (Sec. 4) and sits 2.1% below the exact
count; its depth 152 and 2.3% error are SENet-154's (115M) - not a configuration that has 27.5M.
ResNet-50 + CBAM: 28,089,624 (28.09M); ResNeXt101 (32x4d) + CBAM: 48,958,716 (48.96M). U-Net + scSE
(64 wide, r = 2) has 32,788,811, 1,752,265 more than the U-Net (most in the cSE fcs of the 1024-channel
block). The multiply-add figures are for the paper's ResNet (stride on the first 1x1 conv of a
bottleneck, ``stride_in_1x1=True``); the default here is torchvision's v1.5. Nothing here imports
cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register
from .efficientnet import SqueezeExcitation
from .resnet import Bottleneck, ResNet
from .unet import UNet

__all__ = ["squeeze_excitation", "ChannelAttention", "SpatialAttention", "CBAM", "ChannelSpatialSE",
           "SEBottleneck", "CBAMBottleneck", "se_resnet50", "cbam_resnet50", "SCSEUNet", "scse_unet"]


def squeeze_excitation(channels, reduction=16):
    """SE block (Hu et al. 2018): x * sigmoid(fc2(relu(fc1(avgpool(x))))), fc1 to channels // reduction."""
    se = SqueezeExcitation(channels, max(1, channels // reduction))
    se.activation = nn.ReLU(inplace=True)
    return se


class ChannelAttention(nn.Module):
    """CBAM's channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) -> (N, C, 1, 1)."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.maxpool = nn.AdaptiveMaxPool2d(1)

    def forward(self, x):
        return torch.sigmoid(self.mlp(self.avgpool(x)) + self.mlp(self.maxpool(x)))


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: sigmoid(BN(conv7x7([max_c(x); mean_c(x)]))) -> (N, 1, H, W)."""

    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel attention, then spatial attention on the rescaled map: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels, reduction=16, kernel_size=7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x):
        x = x * self.channel(x)
        return x * self.spatial(x)


class ChannelSpatialSE(nn.Module):
    """scSE (Roy et al. 2018): cSE(x) + sSE(x) ("max": their element-wise maximum), with cSE an SE block of
    reduction r and sSE = x * sigmoid(1x1 conv to one channel): (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels, reduction=2, combine="add"):
        super().__init__()
        if combine not in ("add", "max"):
            raise ValueError(f"combine must be 'add' or 'max', got {combine!r}")
        self.combine = combine
        self.cse = squeeze_excitation(channels, reduction)
        self.sse = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        channel = self.cse(x)
        spatial = x * torch.sigmoid(self.sse(x))
        return channel + spatial if self.combine == "add" else torch.maximum(channel, spatial)


class _AttentionBottleneck(Bottleneck):
    """resnet.Bottleneck with ``self.attention`` on the residual branch after the last BN, before the add."""

    def _attention(self, channels):
        raise NotImplementedError

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attention = self._attention(self.bn3.num_features)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attention(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


class SEBottleneck(_AttentionBottleneck):
    """SE-ResNet bottleneck (Hu et al. 2018, Fig. 3), r = 16: (N, in, H, W) -> (N, 4 * planes, H/s, W/s)."""

    def _attention(self, channels):
        return squeeze_excitation(channels, 16)


class CBAMBottleneck(_AttentionBottleneck):
    """ResNet bottleneck + CBAM (Woo et al. 2018, Fig. 3), r = 16, 7x7 spatial kernel."""

    def _attention(self, channels):
        return CBAM(channels, 16, 7)


def se_resnet50(layers=(3, 4, 6, 3), **kwargs):
    """SE-ResNet-50 (r = 16): 28.1M parameters, 3.87 GFLOPs (paper, stride on the first 1x1)."""
    return ResNet(SEBottleneck, list(layers), **kwargs)


def cbam_resnet50(layers=(3, 4, 6, 3), **kwargs):
    """ResNet-50 + CBAM: 28.09M parameters, 3.864 GFLOPs (Woo et al. 2018, Table 4); layers=(3, 4, 23, 3),
    groups=32, width_per_group=4 is K's ResNeXt101 (32x4d) + CBAM, 48.96M (K l.1562)."""
    return ResNet(CBAMBottleneck, list(layers), **kwargs)


class SCSEUNet(UNet):
    """reference/models/unet.py's U-Net with an scSE block after every encoder and decoder block
    (Roy et al. 2018, Fig. 2). (N, in_channels, H, W) -> (N, num_classes, H, W)."""

    def __init__(self, in_channels=1, num_classes=2, width=64, depth=4, batch_norm=True, reduction=2,
                 combine="add"):
        super().__init__(in_channels, num_classes, width, depth, batch_norm)
        for blocks in (self.down, self.up_conv):
            for i, block in enumerate(blocks):
                channels = block[0].out_channels
                blocks[i] = nn.Sequential(block, ChannelSpatialSE(channels, reduction, combine))


def scse_unet(**kwargs):
    """U-Net (64 -> 1024, BN) with scSE (r = 2, additive) after each encoder and decoder block."""
    return SCSEUNet(**kwargs)


def _image_input(batch, config):
    side = 224 if config.get("width", 64) >= 64 else 32
    return torch.randn(batch, config.get("in_channels", 3), side, side)


def _segmentation_input(batch, config):
    side = 256 if config.get("width", 64) >= 16 else 32
    return torch.randn(batch, config.get("in_channels", 1), side, side)


_IMAGENET = (1, 3, 224, 224)
_V1 = dict(stride_in_1x1=True)
_MAC_NOTE = ("convs (the SE / CBAM fcs and the 7x7 conv included) and the fc per 224x224 image, the paper's "
             "ResNet with the stride on the first 1x1 conv of a bottleneck")
register(
    "se_resnet50", se_resnet50,
    small_config=dict(width=8, num_classes=10),
    example_input=_image_input,
    families=("BNR",),
    figures={
        "params": Figure(28.1e6, "paper: Hu et al. 2018, Sec. 4 (~25M + ~2.5M); timm seresnet50 28,088,024", 0.005,
                         note="all parameters incl. BN affine, the SE fcs' biases and the fc"),
        "params_kalhor": Figure(27.5e6, "K l.1483", 0.02,
                                note="K's 27.5M is the paper's rounded ~25M + ~2.5M; the exact SE-ResNet-50 count "
                                     "is 2.1% above it (not matched, see tests)"),
        "macs": Figure(3.87e9, "paper: Hu et al. 2018, Table 2 (SE-ResNet-50 3.87 GFLOPs)", 0.01, config=_V1,
                       input_shape=_IMAGENET, note=_MAC_NOTE),
    },
)
register(
    "cbam_resnet50", cbam_resnet50,
    small_config=dict(width=16, num_classes=10),
    example_input=_image_input,
    families=("BNR",),
    figures={
        "params": Figure(28.09e6, "paper: Woo et al. 2018, Table 4 (ResNet50 + CBAM)", 0.001,
                         note="all parameters incl. BN affine (the spatial gate's BN too), the MLP biases and the fc"),
        "params_resnext101_32x4d": Figure(48.96e6, "K l.1562 (Woo et al. 2018, Table 4: ResNeXt101 (32x4d) + CBAM)",
                                          0.001, config=dict(layers=(3, 4, 23, 3), groups=32, width_per_group=4),
                                          note="the same blocks with a grouped 3x3 conv (cardinality 32, 4 per group)"),
        "macs": Figure(3.864e9, "paper: Woo et al. 2018, Table 4 (ResNet50 + CBAM 3.864 GFLOPs)", 0.01, config=_V1,
                       input_shape=_IMAGENET, note=_MAC_NOTE),
    },
)
register(
    "scse_unet", scse_unet,
    small_config=dict(width=4, num_classes=3, in_channels=1),
    example_input=_segmentation_input,
    families=("TC", "BNR"),
    figures={},
)
