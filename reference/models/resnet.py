"""Reference ResNets: ResNet-18/34/50/101/152 (ImageNet) and pre-activation ResNets (CIFAR).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.1073-1245   Krawiec, CNN module: residual block y = F(x, {W_i}) + x and y = F(x) + W_s x
                  (l.1113-1125), ReLU after the addition (l.1127), BN after each convolution,
                  before the activation (l.1184), shortcut options A/B/C (l.1186-1213), the
                  configuration table with the FLOPs row 1.8/3.6/3.8/7.6/11.3 x 10^9 (l.1195-1203)
                  and "1 FLOP = 1 multiply+add" (l.1205).
  A l.90-111      design-patterns report: a residual block in code (conv-relu-conv, += x, relu).
  K l.1268        Kalhor: ResNet, identity-mapping skip connections; K l.1330 table row
                  ("25.6 M" ImageNet = ResNet-50, "1.7 M" CIFAR at depth 110).
  K l.408         Kalhor: forms of the residual block; full pre-activation (BN-ReLU-conv) is best.
  K l.1397-1399   Kalhor's CIFAR table: original ResNet-110 1.7M, pre-act ResNet-110 1.7M,
                  -164 1.7M, -1001 10.2M.
  O l.152         lecture notes: full pre-activation moves BN and activation before the convolutions.
Papers:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  arXiv:1512.03385 (Table 1: stage configuration and FLOPs; Sec. 3.3 option B shortcuts;
  Sec. 4.2 CIFAR networks, 6n+2 layers, widths 16/32/64).
  He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016,
  arXiv:1603.05027 (Fig. 4(e) full pre-activation unit; Table 3/4: ResNet-110 basic units,
  ResNet-164/1001 bottleneck units, final BN-ReLU before pooling).

The ImageNet models follow torchvision's structure and parameter names (conv1, bn1, relu,
maxpool, layer1..layer4 of BasicBlock/Bottleneck with conv1/bn1/conv2/bn2[/conv3/bn3] and
downsample.0 (1x1 conv) / downsample.1 (BN), avgpool, fc), so state_dicts are interchangeable.
Defaults are torchvision's "v1.5": in a Bottleneck the stride sits on the 3x3 conv
(``stride_in_1x1=True`` gives the paper's v1, where the first 1x1 conv strides; same
parameters, fewer multiply-adds: the paper's FLOPs row is for v1).

Every convolution in a block is followed by a separate ``nn.BatchNorm2d``, and the block's
forward is written as BN -> ReLU and BN -> add -> ReLU with module calls in sequence, so
``torch.fx`` sees the BatchNorm2d->ReLU and BatchNorm2d->add->ReLU patterns cvkernels fuses.

ResNeXt (Xie, Girshick, Dollar, Tu, He, "Aggregated Residual Transformations for Deep Neural
Networks", CVPR 2017, arXiv:1611.05431; K l.412-421 grouped convolutions, K l.1447-1464
cardinality, O l.156) is the same network with the bottleneck's 3x3 conv grouped: torchvision's
``groups`` (cardinality C) and ``width_per_group`` (d) give a bottleneck of width
int(planes * d / 64) * C (Fig. 3(c) of the paper). ResNeXt-50 32x4d has 25.0M parameters and
4.2 GFLOPs (paper Table 1; torchvision 25,028,904 and 4.23 GFLOPS); K l.1371 prints 68.1M for
its ResNeXt row (depths 29-101: not ResNeXt-50's count).
``replace_stride_with_dilation`` (torchvision's option) trades the stride of stages 2-4 for dilation
(the atrous backbones of DeepLab, Chen et al. 2017; reference/models/deeplab.py).
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet152", "resnext50_32x4d", "resnext101_32x8d", "PreActBasicBlock", "PreActBottleneck",
           "PreActResNet", "preact_resnet"]


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     dilation=dilation, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A (P l.1188): parameter-free shortcut; subsample by ``stride`` and append zero channels."""

    def __init__(self, stride, extra_channels):
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        zeros = x.new_zeros((x.shape[0], self.extra_channels) + tuple(x.shape[2:]))
        return torch.cat([x, zeros], dim=1)


def _shortcut(kind, inplanes, outplanes, stride):
    """The shortcut of a block: None (identity), a zero-padding one (A) or a 1x1 conv + BN projection."""
    if kind not in ("A", "B", "C"):
        raise ValueError(f"shortcut must be 'A', 'B' or 'C', got {kind!r}")
    changes_shape = stride != 1 or inplanes != outplanes
    if kind == "A" and changes_shape:
        if outplanes < inplanes:
            raise ValueError("shortcut 'A' cannot reduce the number of channels")
        return ZeroPadShortcut(stride, outplanes - inplanes)
    if changes_shape or kind == "C":
        return nn.Sequential(conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs (P l.1195-1201, 18/34-layer): conv-BN-ReLU-conv-BN, + shortcut, ReLU."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, stride_in_1x1=False, groups=1, base_width=64,
                 dilation=1):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and width_per_group=64 (as torchvision)")
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    """1x1 (reduce) - 3x3 - 1x1 (expand x4) (P l.1195-1201, 50/101/152-layer), + shortcut, ReLU.

    ResNeXt (groups=C, base_width=d): the reduced width is int(planes * d / 64) * C and the 3x3 conv
    has C groups (torchvision's formula; C=1, d=64 is the plain ResNet bottleneck).
    """
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, stride_in_1x1=False, groups=1, base_width=64,
                 dilation=1):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """ImageNet ResNet (He et al. 2015, Table 1): 7x7/2 conv stem, 3x3/2 max pool, four stages
    of ``layers[i]`` blocks at widths width*(1, 2, 4, 8) (x4 out for Bottleneck), the first block
    of stages 2-4 striding 2, global average pool, fully connected classifier.

    width: base width (64 in the paper); in_channels: input channels; shortcut: 'B' (projection
    only where the shape changes, the paper's and torchvision's choice), 'A' (zero padding) or
    'C' (projection everywhere); zero_init_residual: the last BN of each block starts at zero
    (Goyal et al. 2017), as torchvision's option.
    groups, width_per_group: ResNeXt's cardinality and per-group bottleneck width (torchvision's
    names; 1 and 64 are the plain ResNet). replace_stride_with_dilation: three booleans (stages 2-4),
    True replaces that stage's stride 2 by dilation (output stride 16: [False, False, True]).
    """

    def __init__(self, block, layers, num_classes=1000, width=64, in_channels=3, zero_init_residual=False,
                 stride_in_1x1=False, shortcut="B", groups=1, width_per_group=64, replace_stride_with_dilation=None):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must list the blocks of 4 stages, got {layers}")
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(f"replace_stride_with_dilation must have 3 entries, got {replace_stride_with_dilation}")
        self.groups, self.base_width, self.dilation = groups, width_per_group, 1
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0], 1, stride_in_1x1, shortcut)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2, stride_in_1x1, shortcut,
                                       replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2, stride_in_1x1, shortcut,
                                       replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2, stride_in_1x1, shortcut,
                                       replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes, blocks, stride, stride_in_1x1, shortcut, dilate=False):
        previous_dilation = self.dilation
        if dilate:  # torchvision: the stage keeps its resolution; its first block's 3x3 keeps the previous
            # rate, the others (and later stages) dilate by the stride it gave up
            self.dilation *= stride
            stride = 1
        extra = dict(groups=self.groups, base_width=self.base_width)
        outplanes = planes * block.expansion
        downsample = _shortcut(shortcut, self.inplanes, outplanes, stride)
        layers = [block(self.inplanes, planes, stride, downsample, stride_in_1x1, dilation=previous_dilation,
                        **extra)]
        self.inplanes = outplanes
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, _shortcut(shortcut, outplanes, outplanes, 1),
                                stride_in_1x1, dilation=self.dilation, **extra))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def resnet18(**kwargs):
    """ResNet-18: BasicBlock [2, 2, 2, 2]; 11.7M parameters, 1.8 GFLOPs (P l.1203)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs):
    """ResNet-34: BasicBlock [3, 4, 6, 3]; 21.8M parameters, 3.6 GFLOPs (P l.1203)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs):
    """ResNet-50: Bottleneck [3, 4, 6, 3]; 25.6M parameters (K l.1330), 3.8 GFLOPs (P l.1203)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs):
    """ResNet-101: Bottleneck [3, 4, 23, 3]; 44.5M parameters, 7.6 GFLOPs (P l.1203)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs):
    """ResNet-152: Bottleneck [3, 8, 36, 3]; 60.2M parameters, 11.3 GFLOPs (P l.1203)."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)


def resnext50_32x4d(**kwargs):
    """ResNeXt-50 (32x4d): Bottleneck [3, 4, 6, 3], cardinality 32, width 4 per group; 25.0M parameters,
    4.2 GFLOPs (paper Table 1)."""
    kwargs.setdefault("groups", 32)
    kwargs.setdefault("width_per_group", 4)
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnext101_32x8d(**kwargs):
    """ResNeXt-101 (32x8d): Bottleneck [3, 4, 23, 3], cardinality 32, width 8 per group; 88.8M parameters,
    16.41 GFLOPS (torchvision model card; the paper reports ResNeXt-101 32x4d and 64x4d, not 32x8d)."""
    kwargs.setdefault("groups", 32)
    kwargs.setdefault("width_per_group", 8)
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


# ----------------------------------------------------------------------------- pre-activation


class PreActBasicBlock(nn.Module):
    """Full pre-activation unit (He et al. 2016, Fig. 4(e); K l.408, O l.152):
    BN-ReLU-conv3x3-BN-ReLU-conv3x3, + shortcut, no activation after the addition.
    A projection shortcut (1x1 conv, no BN) takes the pre-activated input, as in the authors' code.
    """
    expansion = 1

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        outplanes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, outplanes)
        self.downsample = conv1x1(inplanes, outplanes, stride) if stride != 1 or inplanes != outplanes else None

    def forward(self, x):
        out = self.bn1(x)
        out = self.relu(out)
        shortcut = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)
        return out + shortcut


class PreActBottleneck(nn.Module):
    """Full pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3 (stride), BN-ReLU-1x1 (x4), + shortcut."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        outplanes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, outplanes)
        self.downsample = conv1x1(inplanes, outplanes, stride) if stride != 1 or inplanes != outplanes else None

    def forward(self, x):
        out = self.bn1(x)
        out = self.relu(out)
        shortcut = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        out = self.relu(out)
        out = self.conv3(out)
        return out + shortcut


class PreActResNet(nn.Module):
    """CIFAR pre-activation ResNet (He et al. 2016, Sec. 4 / Table 3): 3x3 conv to ``width``
    channels, three stages at widths width*(1, 2, 4) (x4 out for bottlenecks) with stride 1, 2, 2,
    a final BN-ReLU (the last unit's output is otherwise never normalized), global average pool, fc.
    """

    def __init__(self, block, layers, num_classes=10, width=16, in_channels=3):
        super().__init__()
        if len(layers) != 3:
            raise ValueError(f"layers must list the blocks of 3 stages, got {layers}")
        self.inplanes = width
        self.conv1 = conv3x3(in_channels, width)
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.bn = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes, blocks, stride):
        layers = []
        for i in range(blocks):
            layers.append(block(self.inplanes, planes, stride if i == 0 else 1))
            self.inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.bn(x)
        x = self.relu(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def preact_resnet(depth, num_classes=10, width=16, in_channels=3, bottleneck=None):
    """Pre-activation CIFAR ResNet of ``depth`` layers: 6n+2 with basic units, 9n+2 with bottlenecks.

    bottleneck=None follows the paper: basic units below depth 164 (ResNet-110: n=18),
    bottleneck units from 164 on (ResNet-164: n=18, ResNet-1001: n=111).
    """
    if bottleneck is None:
        bottleneck = depth >= 164
    per_block = 9 if bottleneck else 6
    if depth < per_block + 2 or (depth - 2) % per_block:
        raise ValueError(f"depth must be {per_block}n+2 for {'bottleneck' if bottleneck else 'basic'} "
                         f"units, got {depth}")
    n = (depth - 2) // per_block
    block = PreActBottleneck if bottleneck else PreActBasicBlock
    return PreActResNet(block, [n, n, n], num_classes=num_classes, width=width, in_channels=in_channels)


def preact_resnet110(**kwargs):
    """Pre-activation ResNet-110 (CIFAR, basic units, n=18): 1.7M parameters (K l.1399)."""
    return preact_resnet(110, **kwargs)


def preact_resnet164(**kwargs):
    """Pre-activation ResNet-164 (CIFAR, bottleneck units, n=18): 1.7M parameters (K l.1399)."""
    return preact_resnet(164, **kwargs)


# ----------------------------------------------------------------------------- registry


def _image_input(batch, config):
    """Standard-width ImageNet configs get 224x224 images; reduced-width (CPU) ones 32x32."""
    size = 224 if config.get("width", 64) >= 64 else 32
    return torch.randn(batch, config.get("in_channels", 3), size, size)


def _cifar_input(batch, config):
    return torch.randn(batch, config.get("in_channels", 3), 32, 32)


_IMAGENET = (1, 3, 224, 224)
_MAC_NOTE = ("multiply-adds of the convolutions and the fc layer per 224x224 image; BN, ReLU, pooling, "
             "additions and biases not counted (the paper's convention)")
# name: (factory, params (millions), params source, paper FLOPs (G, v1), torchvision GFLOPS (v1.5))
_RESNETS = {
    "resnet18": (resnet18, 11.7, "torchvision / paper", 1.8, 1.81),
    "resnet34": (resnet34, 21.8, "torchvision / paper", 3.6, 3.66),
    "resnet50": (resnet50, 25.6, "K l.1330", 3.8, 4.09),
    "resnet101": (resnet101, 44.5, "torchvision / paper", 7.6, 7.80),
    "resnet152": (resnet152, 60.2, "torchvision / paper", 11.3, 11.51),
}

for _name, (_factory, _params, _src, _paper_g, _tv_g) in _RESNETS.items():
    register(
        _name, _factory,
        small_config=dict(width=8, num_classes=10),
        example_input=_image_input,
        families=("BNR",),
        figures={
            "params": Figure(_params * 1e6, _src, 0.02, note="all parameters incl. BN affine and fc"),
            "macs": Figure(_paper_g * 1e9, "P l.1203 (paper Table 1)", 0.05, config=dict(stride_in_1x1=True),
                           input_shape=_IMAGENET,
                           note=_MAC_NOTE + "; the paper's v1 (stride on the first 1x1 conv of a bottleneck)"),
            "macs_v1_5": Figure(_tv_g * 1e9, "torchvision model card (GFLOPS)", 0.01, input_shape=_IMAGENET,
                                note=_MAC_NOTE + "; v1.5 (stride on the 3x3 conv), the default here"),
        },
    )

# ResNeXt: the stride is on the grouped 3x3 conv in the paper too (Sec. 3.3 / the fb.resnet.torch
# code it builds on), so the paper's 4.2 GFLOPs and torchvision's 4.23 are the same structure.
# Small config: 4 groups of 2 channels in stage 1 (int(16 * 8 / 64) * 4 = 8).
_RESNEXT_SMALL = dict(width=16, groups=4, width_per_group=8, num_classes=10)
register(
    "resnext50_32x4d", resnext50_32x4d,
    small_config=_RESNEXT_SMALL,
    example_input=_image_input,
    families=("GC", "BNR"),
    figures={
        "params": Figure(25.0e6, "paper: Xie et al. 2017, Table 1 (ResNeXt-50 32x4d)", 0.01,
                         note="all parameters incl. BN affine and fc; torchvision: 25,028,904"),
        "macs": Figure(4.2e9, "paper: Xie et al. 2017, Table 1", 0.02, input_shape=_IMAGENET, note=_MAC_NOTE),
        "macs_torchvision": Figure(4.23e9, "torchvision model card (GFLOPS)", 0.01, input_shape=_IMAGENET,
                                   note=_MAC_NOTE),
    },
)
register(
    "resnext101_32x8d", resnext101_32x8d,
    small_config=_RESNEXT_SMALL,
    example_input=_image_input,
    families=("GC", "BNR"),
    figures={
        "params": Figure(88.79e6, "torchvision model card (resnext101_32x8d: 88,791,336)", 0.001,
                         note="all parameters incl. BN affine and fc"),
        "macs": Figure(16.41e9, "torchvision model card (GFLOPS)", 0.01, input_shape=_IMAGENET, note=_MAC_NOTE),
    },
)

register(
    "preact_resnet110", preact_resnet110,
    small_config=dict(width=4, num_classes=10),
    example_input=_cifar_input,
    families=("BNR",),
    figures={"params": Figure(1.7e6, "K l.1399", 0.03, note="basic units, widths 16/32/64, 1x1 projections")},
)
register(
    "preact_resnet164", preact_resnet164,
    small_config=dict(width=4, num_classes=10),
    example_input=_cifar_input,
    families=("BNR",),
    figures={"params": Figure(1.7e6, "K l.1399", 0.03, note="bottleneck units, widths 16/32/64 (x4 out)")},
)
