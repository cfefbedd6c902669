"""Reference DenseNets: DenseNet-121 (ImageNet) and DenseNet-BC for CIFAR.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.1291-1305  Krawiec: DenseNet, direct connections from each layer to all subsequent layers,
                 within dense blocks of constant resolution, interlaced with transition layers
                 (convolution and pooling).
  K l.1331-1358  Kalhor: cross-layer information flow, each layer sees the features of all previous
                 ones (concatenated, not added: K l.1350); the table row K l.1331 prints 25.6M
                 (depth 190) and 15.3M (depth 250) for the CIFAR DenseNet-BC models.
  R l.662        DenseNet: dense connectivity, feature reuse.
Paper:
  Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks", CVPR 2017,
  arXiv:1608.06993 (Sec. 3: H_l = BN-ReLU-conv, bottleneck BN-ReLU-1x1(4k)-BN-ReLU-3x3(k),
  transition BN-1x1 conv-2x2 average pool with compression theta = 0.5; Table 1: DenseNet-121 =
  7x7/2 conv (2k = 64), 3x3/2 max pool, blocks [6, 12, 24, 16] at growth rate k = 32, final global
  average pool and fc; Sec. 4 / Table 2: CIFAR DenseNet-BC with three blocks of (L - 4) / 6
  bottleneck layers, a first 3x3 conv to 2k channels, BC-190 k=40 25.6M, BC-250 k=24 15.3M).

DenseNet-121 follows torchvision's layer names (features.conv0 / norm0 / denseblockN.denselayerM.
norm1, conv1, norm2, conv2 / transitionN.norm, conv / norm5, classifier): 7,978,856 parameters, the
paper's ~8.0M (torchvision's model card; the paper prints no count for the ImageNet models). Its final
BN is followed by a ReLU (the paper's Table 1 leaves it out, the authors' code has it). Transitions apply
BN-ReLU-conv (the pre-activation H_l order, as in the authors' and torchvision's code). Nothing here
imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["DenseLayer", "DenseBlock", "Transition", "DenseNet", "densenet121", "densenet_bc"]


class DenseLayer(nn.Module):
    """Bottleneck layer: BN-ReLU-1x1 conv (bn_size * k) - BN-ReLU-3x3 conv (k) over the concatenation
    of all earlier features: list of (N, C_i, H, W) -> (N, growth_rate, H, W)."""

    def __init__(self, in_channels, growth_rate, bn_size=4, dropout=0.0):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        x = self.conv2(self.relu2(self.norm2(x)))
        return self.dropout(x)


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each fed every earlier output: (N, C, H, W) -> (N, C + L * k, H, W)."""

    def __init__(self, num_layers, in_channels, growth_rate, bn_size=4, dropout=0.0):
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, dropout)

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (compression) - 2x2/2 average pool: (N, C, H, W) -> (N, out, H/2, W/2)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    """DenseNet with ``block_config`` dense blocks of growth rate k and transitions of compression theta.

    imagenet=True: 7x7/2 conv to ``init_features`` + BN-ReLU + 3x3/2 max pool (Table 1);
    imagenet=False: one 3x3 conv to ``init_features`` (the CIFAR nets). Then blocks and transitions,
    final BN-ReLU, global average pool, fc. (N, in_channels, H, W) -> (N, num_classes).
    """

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), init_features=64, bn_size=4, compression=0.5,
                 dropout=0.0, num_classes=1000, imagenet=True, in_channels=3):
        super().__init__()
        if imagenet:
            stem = [("conv0", nn.Conv2d(in_channels, init_features, 7, 2, 3, bias=False)),
                    ("norm0", nn.BatchNorm2d(init_features)), ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(3, 2, 1))]
        else:
            stem = [("conv0", nn.Conv2d(in_channels, init_features, 3, 1, 1, bias=False))]
        self.features = nn.Sequential()
        for name, module in stem:
            self.features.add_module(name, module)
        channels = init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}",
                                     DenseBlock(num_layers, channels, growth_rate, bn_size, dropout))
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                out = int(channels * compression)
                self.features.add_module(f"transition{i + 1}", Transition(channels, out))
                channels = out
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.features.add_module("relu5", nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def densenet121(**kwargs):
    """DenseNet-121: k=32, blocks [6, 12, 24, 16], 64 initial features; 7,978,856 parameters (~8.0M)."""
    return DenseNet(**kwargs)


def densenet_bc(depth=190, growth_rate=40, num_classes=10, dropout=0.0, in_channels=3):
    """CIFAR DenseNet-BC of ``depth`` layers: three blocks of (depth - 4) / 6 bottleneck layers, first conv to
    2k channels, theta = 0.5. BC-190 k=40: 25.6M, BC-250 k=24: 15.3M (K l.1331, paper Table 2)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n+4 (n >= 1), got {depth}")
    n = (depth - 4) // 6
    return DenseNet(growth_rate, (n, n, n), 2 * growth_rate, 4, 0.5, dropout, num_classes, imagenet=False,
                    in_channels=in_channels)


def _imagenet_input(batch, config):
    side = 224 if config.get("growth_rate", 32) >= 32 else 64
    return torch.randn(batch, config.get("in_channels", 3), side, side)


def _cifar_input(batch, config):
    return torch.randn(batch, config.get("in_channels", 3), 32, 32)


register(
    "densenet121", densenet121,
    small_config=dict(growth_rate=4, block_config=(2, 2, 2, 2), init_features=8, num_classes=10),
    example_input=_imagenet_input,
    families=("BNR",),
    figures={
        "params": Figure(8.0e6, "paper: Huang et al. 2017 (DenseNet-121, ~8.0M; torchvision 7,978,856)", 0.005,
                         note="all parameters incl. BN affine and the fc (1000 classes)"),
        "macs": Figure(2.83e9, "torchvision model card (densenet121: 2.83 GFLOPS)", 0.01,
                       input_shape=(1, 3, 224, 224), note="convs and the fc, per 224x224 image"),
    },
)
register(
    "densenet_bc", densenet_bc,
    small_config=dict(depth=10, growth_rate=4, num_classes=10),
    example_input=_cifar_input,
    families=("BNR",),
    figures={
        "params": Figure(25.6e6, "K l.1331 (paper Table 2: DenseNet-BC, L=190, k=40)", 0.005,
                         note="all parameters incl. BN affine and the fc (10 classes): 25,624,430"),
        "params_bc250_k24": Figure(15.3e6, "K l.1331 (paper Table 2: DenseNet-BC, L=250, k=24)", 0.005,
                                   config=dict(depth=250, growth_rate=24), note="10 classes: 15,324,406"),
        "params_bc100_k12": Figure(0.8e6, "paper: Huang et al. 2017, Table 2 (DenseNet-BC, L=100, k=12)", 0.01,
                                   config=dict(depth=100, growth_rate=12, num_classes=100),
                                   note="CIFAR-100 head: 800,032; with 10 classes 769,162, also 0.8M at one digit"),
    },
)
