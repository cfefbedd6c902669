"""Reference ParseNet (an FCN whose features are augmented with L2-normalised, un-pooled global context).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2476-2492  Kalhor: ParseNet (W. Liu 2015) adds global context to FCNs by using the average feature
                 of a layer to augment the features at each location: the feature map is pooled over the
                 whole image into a context vector, which is normalised and un-pooled to feature maps of
                 the initial size.
Paper:
  Liu, Rabinovich, Berg, "ParseNet: Looking Wider to See Better", ICLR 2016 workshop, arXiv:1506.04579
  (Sec. 3.1 / Fig. 1: global average pooling of a layer, L2 normalisation of the context vector and of
  the local features, each followed by a learned per-channel scale (Sec. 3.2, Eq. 1-4: y = gamma * x /
  ||x||_2), un-pooling = replicating the context vector over the map, concatenation, classifier;
  Sec. 4.3: on PASCAL VOC the baseline is DeepLab-LargeFOV (VGG-16 with pool4 / pool5 at stride 1, conv5
  dilated 2, fc6 a 3x3 conv with dilation 12 and 1024 channels, fc7 1x1 1024) and context is added at fc7).

DeepLab-LargeFOV (Chen et al. 2015) layers, as the authors' Caffe model: VGG-16 convs (3x3, bias, ReLU),
pool1-3 3x3/2 padding 1, pool4 and pool5 3x3/1 padding 1 (conv5 dilated 2), fc6 3x3 dilation 12 -> 1024,
fc7 1x1 -> 1024, ReLU + dropout 0.5 after each; output stride 8. ParseNet on it: fc7 features and their
global average, both L2-normalised over the channels with their own learned scales (initialised to 10, the
paper's value for fc7), the context replicated over the map and concatenated (2048 channels), a 1x1
classifier, bilinear up-sampling to the input. Deviations, stated: the pool5a average pool of some
DeepLab-LargeFOV releases is left out; ceil-mode pooling is not needed (padded 3x3 pools). No figure: the
documents print none. Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .segnet import VGG16_CONVS, VGG16_WIDTHS

__all__ = ["L2Norm", "DeepLabLargeFOV", "ParseNet", "parsenet"]


class L2Norm(nn.Module):
    """ParseNet's normalisation layer: y = scale * x / ||x||_2 over the channels, one learned scale per
    channel: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels, scale=10.0, eps=1e-10):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).add(self.eps).sqrt()
        return x / norm * self.weight.view(1, -1, 1, 1)


class DeepLabLargeFOV(nn.Module):
    """VGG-16 at output stride 8 with an atrous fc6 (DeepLab-LargeFOV): (B, C, H, W) -> (B, fc, H/8, W/8)."""

    def __init__(self, in_channels=3, widths=VGG16_WIDTHS, convs=VGG16_CONVS, fc=1024, fc6_dilation=12,
                 dropout=0.5):
        super().__init__()
        layers, cin = [], in_channels
        for stage, (w, n) in enumerate(zip(widths, convs)):
            dilation = 2 if stage == 4 else 1                          # after the two stride-1 pools
            for _ in range(n):
                layers += [nn.Conv2d(cin, w, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
                cin = w
            layers.append(nn.MaxPool2d(3, stride=2 if stage < 3 else 1, padding=1))
        layers += [nn.Conv2d(cin, fc, 3, padding=fc6_dilation, dilation=fc6_dilation), nn.ReLU(inplace=True),
                   nn.Dropout2d(dropout), nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout)]
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)


class ParseNet(nn.Module):
    """ParseNet with global context at fc7 of DeepLab-LargeFOV: (B, C, H, W) -> logits (B, num_classes, H, W)."""

    def __init__(self, num_classes=21, in_channels=3, widths=VGG16_WIDTHS, fc=1024, fc6_dilation=12, dropout=0.5,
                 scale=10.0):
        super().__init__()
        self.backbone = DeepLabLargeFOV(in_channels, widths, VGG16_CONVS, fc, fc6_dilation, dropout)
        self.local_norm = L2Norm(fc, scale)
        self.context_norm = L2Norm(fc, scale)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(2 * fc, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        local = self.backbone(x)
        context = self.context_norm(F.adaptive_avg_pool2d(local, 1))    # (B, fc, 1, 1)
        context = context.expand_as(local)                             # un-pooling: replicated over the map
        y = torch.cat([self.local_norm(local), context], dim=1)
        y = self.classifier(self.dropout(y))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def parsenet(**kwargs):
    """ParseNet (Liu et al. 2016) on DeepLab-LargeFOV (VGG-16, fc6 dilation 12, fc 1024), context at fc7."""
    return ParseNet(**kwargs)


def _input(batch, config):
    size = 321 if config.get("widths", VGG16_WIDTHS)[0] >= 16 else 32
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "parsenet", parsenet,
    small_config=dict(widths=(4, 8, 8, 16, 16), fc=16, fc6_dilation=2, num_classes=5, dropout=0.0),  # 32x32 -> 4x4
    example_input=_input,
    families=("DIL",),
    figures={},   # K l.2476-2492 print no figure
)
