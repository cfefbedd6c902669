"""Reference DeepLab v2 (atrous ResNet-101 at output stride 8, ASPP-L: four atrous 3x3 classifiers summed).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2614-2627  Kalhor: DeepLab (Chen 2017), a CNN such as VGG-16 or ResNet-101 used in fully
                 convolutional fashion with dilated convolution; bilinear interpolation enlarges the
                 score maps to the image resolution; a fully connected CRF refines the result.
  K l.2333-2365  the VOC / Cityscapes tables publish mIoU only (no parameter count).
Paper:
  Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
  Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2018, arXiv:1606.00915
  (Sec. 3.1: the last two poolings' strides removed and the following layers dilated by 2 and 4: output
  stride 8; Sec. 3.2 / Fig. 7: ASPP-L, four parallel 3x3 atrous branches at rates 6, 12, 18, 24, each
  producing class scores, fused by summation; Sec. 4: ResNet-101 as the backbone; bilinear up-sampling
  by 8 to the input).

The backbone is reference.models.resnet's ResNet-101 (torchvision names) with the stride of stages 3 and 4
traded for dilation 2 and 4 (``replace_stride_with_dilation=[False, True, True]``), wrapped by
reference.models.deeplab's ``ResNetBackbone``; the stride sits on the first 1x1 conv of a bottleneck
(``stride_in_1x1=True``: the MSRA Caffe ResNet the paper used). Each ASPP branch is one Conv2d with bias
(2048 -> classes, as the authors' Caffe ``fc1_voc12_c0..c3``). Left out, stated: the fully connected CRF
(post-processing, no parameters) and the multi-scale input fusion (MSC) of the paper's best VOC model;
torchvision's dilation keeps the first block of a dilated stage at the previous rate. The ResNet's fc
is not part of the model. No figure: the documents publish mIoU only. Nothing here imports cvkernels,
torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .deeplab import ResNetBackbone
from .resnet import Bottleneck, ResNet

__all__ = ["ASPPSum", "DeepLabV2", "deeplab_v2"]


class ASPPSum(nn.Module):
    """ASPP-L: sum over ``rates`` of 3x3 convs with dilation r, each in_channels -> num_classes:
    (B, C, h, w) -> (B, num_classes, h, w)."""

    def __init__(self, in_channels, num_classes, rates=(6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)

    def forward(self, x):
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(nn.Module):
    """DeepLab v2 on an atrous ResNet at output stride 8: (B, C, H, W) -> logits (B, num_classes, H, W).

    layers: the ResNet's blocks per stage ((3, 4, 23, 3) = ResNet-101); width: its base width (64);
    rates: the ASPP-L rates.
    """

    def __init__(self, num_classes=21, layers=(3, 4, 23, 3), width=64, in_channels=3, rates=(6, 12, 18, 24)):
        super().__init__()
        resnet = ResNet(Bottleneck, list(layers), width=width, in_channels=in_channels, stride_in_1x1=True,
                        replace_stride_with_dilation=[False, True, True])
        self.backbone = ResNetBackbone(resnet)
        self.aspp = ASPPSum(width * 8 * Bottleneck.expansion, num_classes, rates)

    def forward(self, x):
        size = x.shape[-2:]
        _, features = self.backbone(x)                              # (B, 2048, H/8, W/8)
        return F.interpolate(self.aspp(features), size=size, mode="bilinear", align_corners=False)


def deeplab_v2(**kwargs):
    """DeepLab v2 (Chen et al. 2018): ResNet-101 at output stride 8, ASPP-L rates 6/12/18/24 summed, 21 classes."""
    return DeepLabV2(**kwargs)


def _input(batch, config):
    size = 321 if config.get("width", 64) >= 64 else 32
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "deeplab_v2", deeplab_v2,
    small_config=dict(layers=(1, 1, 1, 1), width=8, num_classes=5),     # 32x32 input, 4x4 at output stride 8
    example_input=_input,
    families=("DIL", "BNR"),
    figures={},   # K l.2333-2365 publish mIoU only
)
