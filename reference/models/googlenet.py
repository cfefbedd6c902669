"""Reference GoogLeNet (Inception v1) with the per-module widths of the paper's table.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.920-1071   Krawiec: the Inception network; the module: parallel 1x1, 3x3 and 5x5 convs and a
                 3x3 max pool, 1x1 reductions before the 3x3 / 5x5 convs and after the pool, ReLU,
                 concatenated (l.969-982); stride-2 max pools between groups of modules, plain convs
                 in the lower layers (l.984-988); 22 layers with parameters, average pooling before a
                 linear classifier (l.994-996); auxiliary classifiers on intermediate layers (l.999-1005);
                 the table P l.1039-1058: per layer patch size / stride, output size, #1x1, #3x3 reduce,
                 #3x3, #5x5 reduce, #5x5, pool proj, params, ops.
  K l.1083-1090, 1122-1135, 1148  Kalhor: GoogLeNet, block concept, split-transform-merge, auxiliary
                 classifiers "to push useful gradients to the lower layers"; table row: 4 M parameters.
  R l.657, 665, O l.129-132  the Inception module with 1x1 bottlenecks.
Paper:
  Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, arXiv:1409.4842 (Table 1 = the table
  above; Fig. 3 for what the table leaves out: LocalRespNorm after the first max pool and after the
  3x3 conv of the stem, max pools 3x3/2, the pool branch 3x3/1, average pool 7x7/1, dropout 40%;
  Sec. 5: the auxiliary classifiers on the outputs of 4a and 4d: 5x5/3 average pool, 1x1 conv with
  128 filters, fc 1024, ReLU, dropout 70%, linear softmax).

Every conv has a bias and a ReLU (the 2014 net has no BatchNorm); pools use ceil mode (the Caffe
reference net's rounding: 112 -> 56 -> 28 -> 14 -> 7); the LRN constants are the Caffe reference net's
(size 5, alpha 1e-4 with Caffe's / size, beta 0.75, k 1), which the paper does not give. The 5x5
branches are 5x5 (torchvision's GoogLeNet has 3x3 there, a known slip, and BatchNorm).

The table's params column counts K = 1024 (the stem's 3x3 conv: 114,688 weights = 112K; the linear
layer 1,024,000 = 1000K) and its ops column counts M = 10^6 multiply-adds (3a: 163,328 weights x
28 x 28 = 128M). Seven of the nine modules match their row within 2% (the tests); two rows do not
match their own widths: 4c prints 463K where its widths give 498K (its 100M ops do match them), and 5a
prints 1072K and 54M where its widths (those of 4e, with 832 instead of 528 inputs) give 1019K and
51M - the table's 5a is 232K above 4e while the wider input adds 171K. The first conv's 2.7K / 34M
are far from 7x7x3x64 = 9.4K / 118M (a known misprint of the table). Whole net: 6,998,552 parameters
without the auxiliary classifiers (the table's column sums to 6,798K in its K = 1024), 13,378,280 with
them;
K's "4 M" (K l.1090) matches neither (the paper says only "12 times fewer parameters" than AlexNet's
60M). Multiply-adds: 1.58G per 224x224 image; the paper's "1.5 billion multiply-adds" is the table's ops
column summed with the misprinted 34M of the first conv (1,502M). Nothing here imports cvkernels,
torchvision or timm.
"""
import collections
import math

import torch
from torch import nn

from . import Figure, register

__all__ = ["INCEPTION_TABLE", "Inception", "InceptionAux", "GoogLeNet", "GoogLeNetOutputs", "googlenet"]

# P l.1044-1054 (Szegedy et al. 2015, Table 1): module -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5,
# pool proj, params in K = 1024, ops in M = 10^6)
INCEPTION_TABLE = collections.OrderedDict([
    ("inception3a", (64, 96, 128, 16, 32, 32, 159, 128)),
    ("inception3b", (128, 128, 192, 32, 96, 64, 380, 304)),
    ("inception4a", (192, 96, 208, 16, 48, 64, 364, 73)),
    ("inception4b", (160, 112, 224, 24, 64, 64, 437, 88)),
    ("inception4c", (128, 128, 256, 24, 64, 64, 463, 100)),
    ("inception4d", (112, 144, 288, 32, 64, 64, 580, 119)),
    ("inception4e", (256, 160, 320, 32, 128, 128, 840, 170)),
    ("inception5a", (256, 160, 320, 32, 128, 128, 1072, 54)),
    ("inception5b", (384, 192, 384, 48, 128, 128, 1388, 71)),
])
# the table's other rows with parameters (P l.1040, 1042, 1057): stem conv 7x7/2, stem 1x1 + 3x3, linear
TABLE_OTHER = {"conv1": (2.7, 34), "conv2+conv3": (112, 360), "fc": (1000, 1)}
# the max pools 3x3/2 after these modules (P l.1046, 1052)
_POOL_AFTER = ("inception3b", "inception4e")

GoogLeNetOutputs = collections.namedtuple("GoogLeNetOutputs", ["logits", "aux1", "aux2"])


def _conv_relu(cin, cout, kernel_size, stride=1, padding=0):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Inception module (P l.976-982): concat(1x1, 1x1 -> 3x3, 1x1 -> 5x5, 3x3/1 max pool -> 1x1):
    (N, in, H, W) -> (N, n1x1 + n3x3 + n5x5 + pool_proj, H, W)."""

    def __init__(self, in_channels, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_proj):
        super().__init__()
        self.branch1 = _conv_relu(in_channels, n1x1, 1)
        self.branch2 = nn.Sequential(_conv_relu(in_channels, n3x3red, 1), _conv_relu(n3x3red, n3x3, 3, padding=1))
        self.branch3 = nn.Sequential(_conv_relu(in_channels, n5x5red, 1), _conv_relu(n5x5red, n5x5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _conv_relu(in_channels, pool_proj, 1))
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier (paper Sec. 5): 5x5/3 average pool, 1x1 conv (128) + ReLU, fc (1024) + ReLU,
    dropout 0.7, fc: (N, in, side, side) -> (N, num_classes)."""

    def __init__(self, in_channels, num_classes, side=14, conv_width=128, hidden=1024, dropout=0.7):
        super().__init__()
        pooled = (side - 5) // 3 + 1
        self.pool = nn.AvgPool2d(5, 3)
        self.conv = _conv_relu(in_channels, conv_width, 1)
        self.fc1 = nn.Linear(conv_width * pooled * pooled, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
    """GoogLeNet (P l.1039-1058): (N, in_channels, S, S) -> (N, num_classes) logits, or in training mode
    with aux_logits=True ``GoogLeNetOutputs(logits, aux1, aux2)`` (aux1 on 4a's output, aux2 on 4d's).

    width_div: divides every width of the table (1 = the paper's net; CPU tests use 16);
    image_size: the input side the auxiliary classifiers' fc is sized for (224).
    """

    def __init__(self, num_classes=1000, aux_logits=False, in_channels=3, width_div=1, image_size=224, dropout=0.4,
                 aux_dropout=0.7):
        super().__init__()

        def w(c):
            return max(1, c // width_div)

        self.aux_logits = aux_logits
        self.conv1 = _conv_relu(in_channels, w(64), 7, 2, 3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.lrn1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2 = _conv_relu(w(64), w(64), 1)
        self.conv3 = _conv_relu(w(64), w(192), 3, padding=1)
        self.lrn2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        channels = w(192)
        for name, row in INCEPTION_TABLE.items():
            module = Inception(channels, *(w(c) for c in row[:6]))
            self.add_module(name, module)
            channels = module.out_channels
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(3, 2, ceil_mode=True)
        side = (image_size - 1) // 2 + 1                                    # conv1 7x7/2 pad 3
        for _ in range(3):                                                  # maxpool1, maxpool2, maxpool3
            side = math.ceil((side - 3) / 2) + 1
        if aux_logits and side < 5:
            raise ValueError(f"image_size {image_size} leaves {side}x{side} maps at 4a; the auxiliary "
                             f"classifiers' 5x5 pool needs >= 5 (image_size >= 65)")
        if aux_logits:
            self.aux1 = InceptionAux(self.inception4a.out_channels, num_classes, side, w(128), w(1024), aux_dropout)
            self.aux2 = InceptionAux(self.inception4d.out_channels, num_classes, side, w(128), w(1024), aux_dropout)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.maxpool2(self.lrn2(self.conv3(self.conv2(self.lrn1(self.maxpool1(self.conv1(x)))))))
        aux = []
        for name in INCEPTION_TABLE:
            x = getattr(self, name)(x)
            if self.aux_logits and self.training and name in ("inception4a", "inception4d"):
                aux.append((self.aux1 if name == "inception4a" else self.aux2)(x))
            if name in _POOL_AFTER:
                x = (self.maxpool3 if name == "inception3b" else self.maxpool4)(x)
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if aux:
            return GoogLeNetOutputs(logits, *aux)
        return logits


def googlenet(**kwargs):
    """GoogLeNet (Szegedy et al. 2015): 6,998,552 parameters without the auxiliary classifiers."""
    return GoogLeNet(**kwargs)


def _input(batch, config):
    side = config.get("image_size", 224)
    return torch.randn(batch, config.get("in_channels", 3), side, side)


_IMAGENET = (1, 3, 224, 224)
_FIGURES = {
    "params": Figure(4e6, "K l.1090 (GoogLeNet 4 M)", 0.02,
                     note="not matched: the net of the table has 6,998,552 parameters without the auxiliary "
                          "classifiers (the table's column sums to 6.8M); see the module docstring"),
}
# the row of each module in P (the max pool rows l.1046 and l.1052 sit between the groups)
_TABLE_LINES = dict(zip(INCEPTION_TABLE, (1044, 1045, 1047, 1048, 1049, 1050, 1051, 1053, 1054)))
for _name, _row in INCEPTION_TABLE.items():
    _line = _TABLE_LINES[_name]
    _FIGURES[f"module_params.{_name}"] = Figure(
        _row[6] * 1024, f"P l.{_line} (params column, K = 1024)", 0.02,
        note=f"weights and biases of {_name}")
    _FIGURES[f"module_ops.{_name}"] = Figure(
        _row[7] * 1e6, f"P l.{_line} (ops column, M = 10^6)", 0.02, input_shape=_IMAGENET,
        note=f"multiply-adds of {_name} on its 224x224-input map")

register(
    "googlenet", googlenet,
    small_config=dict(width_div=16, image_size=80, num_classes=10, aux_logits=True, dropout=0.0, aux_dropout=0.0),
    example_input=_input,
    families=(),
    figures=_FIGURES,
)
