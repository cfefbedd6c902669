"""Reference highway networks: y = H(x) T(x) + x (1 - T(x)), fully connected and convolutional.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.1247-1280  Krawiec: highway networks generalize residual connections: shortcuts with a transform
                 gate T and a carry gate C, y = H(x, W_H) T(x, W_T) + x C(x, W_C); in the original paper
                 T is a dense sigmoid layer and C = 1 - T; T's bias is initialized to large negative
                 values so that T is close to 0 (carry behaviour, "information highways").
  K l.1282-1309  Kalhor: the same equation, LSTM-inspired gating, easier optimization of deep nets;
                 table rows K l.1160 / 1329: Highway Networks, 2.3 M parameters, CIFAR-10 7.76%,
                 depth 19; K l.1395 (the WRN table): Highway, CIFAR-10 7.72%.
Papers:
  Srivastava, Greff, Schmidhuber, "Highway Networks", arXiv:1505.00387 (Eq. 2-3; Sec. 3.1: thin
  fully connected nets on MNIST, 50 units a layer, a plain first layer, then highway layers).
  Srivastava, Greff, Schmidhuber, "Training Very Deep Networks", NIPS 2015, arXiv:1507.06228
  (Sec. 2.1: convolutional highway layers, H and T both convolutions with zero-padding so that x, H(x)
  and T(x) have the same size; a plain layer where the width changes; Sec. 2.2: a negative initial
  transform-gate bias, values from -1 to -3; the CIFAR-10 comparison with Fitnets: a 19-layer highway
  net with 2.3M parameters, 7.54% (7.76 +- 0.14%), next to Fitnet B, 19 layers and 2.5M parameters =
  FitNet-4 of Romero et al. 2015).

The CIFAR net is a reconstruction: the documents give only depth 19 and 2.3M, and the widths of the
paper's net are not in them. FitNet-4 (Romero et al., "FitNets", ICLR 2015; the widths as a public
Keras reimplementation of its description has them) has 3x3 convs 32, 32, 32, 48, 48 | 2x2 max pool |
80 x 6 | 2x2 max pool | 128 x 6 | 8x8 pool, then a maxout fc and the softmax (17 convs + 2 fcs = 19
layers). Here: the first conv of each width is plain (conv + ReLU, it
changes the width), the other convs are highway layers (H = ReLU(conv3x3), T = sigmoid(conv3x3)), ReLU
instead of maxout, and global average pooling + one fc to the classes instead of the maxout fc. That
gives 2,274,186 parameters, 1.1% below the 2.3M of K l.1160 (a maxout fc of 500 x 5 pieces as in
FitNet-4 would give 2.60M); the match pins the scale of the net, not the exact layout. No BatchNorm
(2015). ``gate_bias`` (-2 here) is the transform gates' initial bias. Nothing here imports cvkernels,
torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["HighwayLinear", "HighwayConv2d", "HighwayMLP", "HighwayConvNet", "FITNET4_LAYOUT", "highway_cifar",
           "highway_mlp"]

# FitNet-4's conv widths (Romero et al. 2015): (width, convs at that width) per group, "M" = 2x2 max pool
FITNET4_LAYOUT = ((32, 3), (48, 2), "M", (80, 6), "M", (128, 6))


class _Highway(nn.Module):
    """y = H(x) * T(x) + x * (1 - T(x)) with H = ReLU(transform(x)), T = sigmoid(gate(x))."""

    def _init_gate(self, gate_bias):
        nn.init.constant_(self.gate.bias, gate_bias)

    def forward(self, x):
        h = torch.relu(self.transform(x))
        t = torch.sigmoid(self.gate(x))
        return h * t + x * (1 - t)


class HighwayLinear(_Highway):
    """Fully connected highway layer (1505.00387, Eq. 3): (N, features) -> (N, features)."""

    def __init__(self, features, gate_bias=-2.0):
        super().__init__()
        self.transform = nn.Linear(features, features)
        self.gate = nn.Linear(features, features)
        self._init_gate(gate_bias)


class HighwayConv2d(_Highway):
    """Convolutional highway layer (1507.06228, Sec. 2.1): H and T are k x k convs with 'same' padding:
    (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels, kernel_size=3, gate_bias=-2.0):
        super().__init__()
        self.transform = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self._init_gate(gate_bias)


class HighwayMLP(nn.Module):
    """Thin fully connected highway net (1505.00387, Sec. 3.1): a plain layer to ``width`` units, then
    ``depth - 2`` highway layers, then a linear classifier: (N, in_features) -> (N, num_classes)."""

    def __init__(self, in_features=784, num_classes=10, width=50, depth=10, gate_bias=-2.0):
        super().__init__()
        if depth < 3:
            raise ValueError(f"depth must be >= 3 (plain, highway..., classifier), got {depth}")
        self.plain = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(inplace=True))
        self.highway = nn.Sequential(*(HighwayLinear(width, gate_bias) for _ in range(depth - 2)))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.highway(self.plain(torch.flatten(x, 1))))


class HighwayConvNet(nn.Module):
    """Convolutional highway net over ``layout`` ((width, layers) groups, "M" = 2x2 max pool): the first
    layer of a group is a plain 3x3 conv + ReLU, the rest highway layers; global average pool, fc.
    (N, in_channels, H, W) -> (N, num_classes). width_div divides every width (CPU tests)."""

    def __init__(self, layout=FITNET4_LAYOUT, num_classes=10, in_channels=3, gate_bias=-2.0, width_div=1):
        super().__init__()
        layers, channels = [], in_channels
        for group in layout:
            if group == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            width, count = group
            width = max(1, width // width_div)
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            layers += [HighwayConv2d(width, 3, gate_bias) for _ in range(count - 1)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def highway_cifar(**kwargs):
    """Highway B for CIFAR-10 (19 layers, reconstructed on FitNet-4's widths): 2,274,186 parameters."""
    return HighwayConvNet(**kwargs)


def highway_mlp(**kwargs):
    """Fully connected highway net for MNIST (1505.00387): 50 units a layer, depth 10 by default."""
    return HighwayMLP(**kwargs)


register(
    "highway_cifar", highway_cifar,
    small_config=dict(width_div=8, num_classes=10),
    example_input=lambda batch, config: torch.randn(batch, config.get("in_channels", 3), 32, 32),
    families=(),
    figures={
        "params": Figure(2.3e6, "K l.1160, l.1329 (paper 1507.06228: 19 layers, 2.3M)", 0.02,
                         note="the reconstructed layout: 2,274,186 (-1.1%); see the module docstring"),
    },
)
register(
    "highway_mlp", highway_mlp,
    small_config=dict(depth=6, width=16, num_classes=10),
    example_input=lambda batch, config: torch.randn(batch, config.get("in_features", 784)),
    families=(),
    figures={},                   # the documents' 2.3M is the CIFAR net's
)
