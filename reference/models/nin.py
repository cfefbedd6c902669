"""Reference Network-in-Network (Lin, Chen, Yan): three mlpconv layers and global average pooling (CIFAR-10).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  R l.648-656    Rossi: Network in Network, "use of convolutional layers and Global Average Pooling to
                 reduce parameters and improve robustness" (a transfer-learning backbone).
  K l.1392       the WRN table's NIN row: CIFAR-10 8.81%, CIFAR-100 35.67% (no parameter count).
Paper:
  Lin, Chen, Yan, "Network In Network", ICLR 2014, arXiv:1312.4400 (Sec. 3.1: mlpconv = a conv
  followed by a small multilayer perceptron, i.e. 1x1 convs, with ReLU; Sec. 3.2: global average
  pooling of one map per class instead of fully connected layers; Sec. 4.1: three stacked mlpconv
  layers for CIFAR-10, each but the last followed by pooling that halves the resolution and by
  dropout) and the authors' published CIFAR-10 network definition (mavenlin, Caffe model zoo
  "NIN CIFAR10", the model behind the paper's 8.81%) for the widths the paper leaves out:

    mlpconv1  192 @ 5x5 pad 2 - 160 @ 1x1 - 96 @ 1x1    3x3/2 max pool   dropout 0.5   -> 96 x 16 x 16
    mlpconv2  192 @ 5x5 pad 2 - 192 @ 1x1 - 192 @ 1x1   3x3/2 avg pool   dropout 0.5   -> 192 x 8 x 8
    mlpconv3  192 @ 3x3 pad 1 - 192 @ 1x1 - 10 @ 1x1                                   -> 10 x 8 x 8
    global average pool -> 10 (softmax)

ReLU after every conv (the last included, as in the definition). Pools use ceil mode without padding
(Caffe's rounding: 32 -> 16 -> 8). The second pool is an average pool in the definition where the
paper's Sec. 4.1 says max pooling; the definition is followed. 966,986 parameters (the documents and
the paper print none). Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import register

__all__ = ["MLPConv", "NetworkInNetwork", "nin_cifar10"]


class MLPConv(nn.Sequential):
    """A k x k conv followed by 1x1 convs ("micro network"), ReLU after each:
    (N, in, H, W) -> (N, widths[-1], H, W)."""

    def __init__(self, in_channels, widths, kernel_size):
        layers, channels = [], in_channels
        for i, w in enumerate(widths):
            k = kernel_size if i == 0 else 1
            layers += [nn.Conv2d(channels, w, k, padding=k // 2), nn.ReLU(inplace=True)]
            channels = w
        super().__init__(*layers)


class NetworkInNetwork(nn.Module):
    """NIN for 32x32 images (the CIFAR-10 definition above): (N, in_channels, H, W) -> (N, num_classes).

    width: the 192 of the definition (160 and 96 scale with it); the last mlpconv ends in num_classes maps,
    averaged globally.
    """

    def __init__(self, num_classes=10, in_channels=3, width=192, dropout=0.5):
        super().__init__()
        w1, w2, w3 = width, width * 160 // 192, width * 96 // 192
        self.features = nn.Sequential(
            MLPConv(in_channels, (w1, w2, w3), 5), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Dropout(dropout),
            MLPConv(w3, (w1, w1, w1), 5), nn.AvgPool2d(3, 2, ceil_mode=True), nn.Dropout(dropout),
            MLPConv(w1, (w1, w1, num_classes), 3),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.flatten(self.gap(self.features(x)), 1)


def nin_cifar10(**kwargs):
    """Network-in-Network, the authors' CIFAR-10 net: 966,986 parameters."""
    return NetworkInNetwork(**kwargs)


def _input(batch, config):
    return torch.randn(batch, config.get("in_channels", 3), 32, 32)


register(
    "nin_cifar10", nin_cifar10,
    small_config=dict(width=12, num_classes=10, dropout=0.0),
    example_input=_input,
    families=(),
    figures={},                     # no parameter count in the documents (ARCHITECTURES.md: "-") or the paper
)
