"""Reference Inception-v3, Inception-v4 and Inception-ResNet-v2.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.1159, 1372 Kalhor's tables: Inception-V3, 2015, representational bottleneck, large filters
                 replaced by small ones, 23.6 M parameters, depth 159.
  K l.1161-1162, 1373-1374  Inception-V4 35 M (depth 70), Inception-ResNet 55.8M (depth 572).
  K l.1165-1205  Inception v3: small filters instead of large ones; the stem; Reduction-A / -B
                 blocks; the auxiliary classifier block (a classifier head on an earlier layer).
  K l.1211-1266  Inception-v4: stem, Inception-A/B/C modules, Reduction-A/B, more modules than v3,
                 asymmetric filters; Inception-ResNet: the same split-transform-merge with residual
                 links (stem, A/B/C modules, Reduction-A/B).
  O l.133-139    factorized convolutions (a large kernel replaced by several small ones), asymmetric
                 convolutions (n x n into 1 x n and n x 1), label smoothing (a loss: torch's
                 ``CrossEntropyLoss(label_smoothing=0.1)``, not part of the model).
Papers:
  Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for Computer
  Vision", CVPR 2016, arXiv:1512.00567 (Figs. 5-7: the 35x35, 17x17 (1x7 / 7x1) and 8x8 (expanded
  1x3 / 3x1) modules; Fig. 10: grid reduction; Table 1: the 299x299 layout; Sec. 4: the
  auxiliary classifier on the 17x17 grid; Sec. 7: label smoothing 0.1).
  Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and the Impact of Residual
  Connections on Learning", AAAI 2017, arXiv:1602.07261 (Fig. 3 stem, Figs. 4-8 Inception-A/B/C,
  Reduction-A (Table 1: k, l, m, n = 192, 224, 256, 384 for v4, 256, 256, 384, 384 for
  Inception-ResNet-v2) and Reduction-B of v4, Fig. 9: 4 x A, 7 x B, 3 x C;
  Figs. 15-19 Inception-ResNet-v2: 10 x A (35x35), 20 x B (17x17), 10 x C (8x8), residual
  branches ending in a linear 1x1 conv, scaled by 0.1-0.3 (Sec. 3.3) before the addition, ReLU after).

Widths and layer order follow the released TensorFlow-slim nets, which is where the published
parameter counts come from (the torchvision / timm ports keep them): conv (no bias) - BN (eps 1e-3)
- ReLU everywhere, except the residual branches' final 1x1 convs (bias, no BN, no ReLU).
Deviations from the papers, all the released nets': v3's first 35x35 modules keep a 5x5 branch next
to the double 3x3 one (the paper's Fig. 5 has only 3x3s) and its auxiliary head is 5x5/3 avg pool -
1x1 (128) - 5x5 (768) - fc; Inception-ResNet-v2's stem is v3's stem with a 35x35 mixed block
(Mixed_5b) instead of the paper's Fig. 3 stem, and its 35/17/8 residual scales are 0.17 / 0.10 / 0.20.

Counts (1000 classes): Inception-v3 23,834,568 without the auxiliary head, 27,161,264 with it
(torchvision's inception_v3 card lists the latter); K's 23.6M (K l.1159) is the net without the
auxiliary head (1.0% below the exact count; the paper prints none). Inception-v4 42,679,816 (timm's
inception_v4), 22% above K's "35 M" (K l.1161): not matched - no configuration of the paper has 35M.
Inception-ResNet-v2 55,843,464 (timm's inception_resnet_v2), K's 55.8M (K l.1162). Nothing here
imports cvkernels, torchvision or timm.
"""
import collections

import torch
from torch import nn

from . import Figure, register

__all__ = ["conv_bn_relu", "Concat", "Inception3", "Inception4", "InceptionResNetV2", "InceptionOutputs",
           "inception_v3", "inception_v4", "inception_resnet_v2"]

InceptionOutputs = collections.namedtuple("InceptionOutputs", ["logits", "aux_logits"])


def conv_bn_relu(cin, cout, kernel_size, stride=1, padding=0):
    """Conv2d (no bias) -> BatchNorm2d (eps 1e-3, the TF nets') -> ReLU: (N, cin, H, W) -> (N, cout, H', W')."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False),
                         nn.BatchNorm2d(cout, eps=0.001), nn.ReLU(inplace=True))


def _width(width_mult):
    """Scales a channel count of the papers' tables (width_mult=1 is the standard net)."""
    return lambda n: max(1, int(n * width_mult))


def _avg_pool_branch(cin, cout, count_include_pad=True):
    return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=count_include_pad), conv_bn_relu(cin, cout, 1))


def _chain(cin, *specs):
    """conv_bn_relu layers in sequence; spec = (cout, kernel_size[, stride[, padding]])."""
    layers = []
    for spec in specs:
        layers.append(conv_bn_relu(cin, *spec))
        cin = spec[0]
    return nn.Sequential(*layers)


class Concat(nn.ModuleList):
    """Parallel branches concatenated along channels: (N, C, H, W) -> (N, out_channels, H', W')."""

    def __init__(self, branches, out_channels):
        super().__init__(branches)
        self.out_channels = out_channels

    def forward(self, x):
        return torch.cat([branch(x) for branch in self], 1)


class _Split(nn.Module):
    """Branches whose outputs are split again in two asymmetric convs (v3's / v4's 8x8 modules):
    stem (N, C, H, W) -> concat(a(stem), b(stem))."""

    def __init__(self, stem, a, b):
        super().__init__()
        self.stem, self.a, self.b = stem, a, b

    def forward(self, x):
        x = self.stem(x)
        return torch.cat([self.a(x), self.b(x)], 1)


# ----------------------------------------------------------------------------- Inception-v3

def _v3_a(cin, pool, c):
    """35x35 module (Mixed_5b-d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1."""
    branches = [_chain(cin, (c(64), 1)), _chain(cin, (c(48), 1), (c(64), 5, 1, 2)),
                _chain(cin, (c(64), 1), (c(96), 3, 1, 1), (c(96), 3, 1, 1)), _avg_pool_branch(cin, pool)]
    return Concat(branches, c(64) + c(64) + c(96) + pool)


def _v3_b(cin, c):
    """35 -> 17 grid reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max pool 3/2."""
    branches = [_chain(cin, (c(384), 3, 2)), _chain(cin, (c(64), 1), (c(96), 3, 1, 1), (c(96), 3, 2)),
                nn.MaxPool2d(3, 2)]
    return Concat(branches, c(384) + c(96) + cin)


def _v3_c(cin, c7, c):
    """17x17 module (Mixed_6b-e), 7x7 factorized into 1x7 and 7x1."""
    branches = [_chain(cin, (c(192), 1)),
                _chain(cin, (c7, 1), (c7, (1, 7), 1, (0, 3)), (c(192), (7, 1), 1, (3, 0))),
                _chain(cin, (c7, 1), (c7, (7, 1), 1, (3, 0)), (c7, (1, 7), 1, (0, 3)), (c7, (7, 1), 1, (3, 0)),
                       (c(192), (1, 7), 1, (0, 3))),
                _avg_pool_branch(cin, c(192))]
    return Concat(branches, 4 * c(192))


def _reduction_17_to_8(cin, reduce_a, out_a, reduce_b, mid_1x7, mid_7x1, out_b):
    """17 -> 8 grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool 3/2 (v3's Mixed_7a, v4's Reduction-B)."""
    branches = [_chain(cin, (reduce_a, 1), (out_a, 3, 2)),
                _chain(cin, (reduce_b, 1), (mid_1x7, (1, 7), 1, (0, 3)), (mid_7x1, (7, 1), 1, (3, 0)), (out_b, 3, 2)),
                nn.MaxPool2d(3, 2)]
    return Concat(branches, out_a + out_b + cin)


def _v3_d(cin, c):
    """Mixed_7a: 192 -> 320 | 192, 192, 192 -> 192."""
    return _reduction_17_to_8(cin, c(192), c(320), c(192), c(192), c(192), c(192))


def _split_1x3_3x1(cin, width):
    return conv_bn_relu(cin, width, (1, 3), 1, (0, 1)), conv_bn_relu(cin, width, (3, 1), 1, (1, 0))


def _v3_e(cin, c):
    """8x8 module (Mixed_7b-c) with the 1x3 / 3x1 outputs side by side (paper Fig. 7)."""
    branches = [_chain(cin, (c(320), 1)),
                _Split(_chain(cin, (c(384), 1)), *_split_1x3_3x1(c(384), c(384))),
                _Split(_chain(cin, (c(448), 1), (c(384), 3, 1, 1)), *_split_1x3_3x1(c(384), c(384))),
                _avg_pool_branch(cin, c(192))]
    return Concat(branches, c(320) + 4 * c(384) + c(192))


class InceptionAux(nn.Module):
    """v3's auxiliary head on the 17x17 grid: 5x5/3 avg pool, 1x1 (128), 5x5 (768), global pool, fc:
    (N, C, 17, 17) -> (N, num_classes)."""

    def __init__(self, cin, num_classes, c):
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.conv0 = conv_bn_relu(cin, c(128), 1)
        self.conv1 = conv_bn_relu(c(128), c(768), 5)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c(768), num_classes)

    def forward(self, x):
        x = self.conv1(self.conv0(self.pool(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Inception3(nn.Module):
    """Inception-v3 on 299x299 inputs: (N, in_channels, 299, 299) -> (N, num_classes) logits, or in training
    mode with aux_logits=True ``InceptionOutputs(logits, aux_logits)``.

    width_mult scales every width (CPU tests use 1/16; the auxiliary head needs the 17x17 grid of a
    299x299 input).
    """

    def __init__(self, num_classes=1000, aux_logits=False, in_channels=3, width_mult=1.0, dropout=0.5):
        super().__init__()
        c = _width(width_mult)
        self.aux_logits = aux_logits
        self.stem = nn.Sequential(
            conv_bn_relu(in_channels, c(32), 3, 2), conv_bn_relu(c(32), c(32), 3), conv_bn_relu(c(32), c(64), 3, 1, 1),
            nn.MaxPool2d(3, 2), conv_bn_relu(c(64), c(80), 1), conv_bn_relu(c(80), c(192), 3), nn.MaxPool2d(3, 2))
        blocks, channels = [], c(192)
        for pool in (c(32), c(64), c(64)):
            blocks.append(_v3_a(channels, pool, c))
            channels = blocks[-1].out_channels
        blocks.append(_v3_b(channels, c))
        channels = blocks[-1].out_channels
        for c7 in (c(128), c(160), c(160), c(192)):
            blocks.append(_v3_c(channels, c7, c))
            channels = blocks[-1].out_channels
        self.mixed_35_17 = nn.Sequential(*blocks)
        self.aux = InceptionAux(channels, num_classes, c) if aux_logits else None
        self.mixed_8 = nn.Sequential(_v3_d(channels, c))
        channels = self.mixed_8[0].out_channels
        for _ in range(2):
            self.mixed_8.append(_v3_e(channels, c))
            channels = self.mixed_8[-1].out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.mixed_35_17(self.stem(x))
        aux = self.aux(x) if self.aux is not None and self.training else None
        x = self.mixed_8(x)
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return InceptionOutputs(logits, aux) if aux is not None else logits


# ----------------------------------------------------------------------------- Inception-v4

def _v4_stem(cin, c):
    """Fig. 3: 299 -> 35x35x384 (3x3/2, 3x3, 3x3; max pool | 3x3/2; two 7x7-factorized branches; 3x3/2 | pool)."""
    return nn.Sequential(
        _chain(cin, (c(32), 3, 2), (c(32), 3), (c(64), 3, 1, 1)),
        Concat([nn.MaxPool2d(3, 2), conv_bn_relu(c(64), c(96), 3, 2)], c(64) + c(96)),
        Concat([_chain(c(64) + c(96), (c(64), 1), (c(96), 3)),
                _chain(c(64) + c(96), (c(64), 1), (c(64), (1, 7), 1, (0, 3)), (c(64), (7, 1), 1, (3, 0)),
                       (c(96), 3))], 2 * c(96)),
        Concat([conv_bn_relu(2 * c(96), c(192), 3, 2), nn.MaxPool2d(3, 2)], c(192) + 2 * c(96)))


def _v4_a(cin, c):
    branches = [_chain(cin, (c(96), 1)), _chain(cin, (c(64), 1), (c(96), 3, 1, 1)),
                _chain(cin, (c(64), 1), (c(96), 3, 1, 1), (c(96), 3, 1, 1)), _avg_pool_branch(cin, c(96), False)]
    return Concat(branches, 4 * c(96))


def _v4_reduction_a(cin, c, k=192, l=224, m=256, n=384):
    branches = [_chain(cin, (c(n), 3, 2)), _chain(cin, (c(k), 1), (c(l), 3, 1, 1), (c(m), 3, 2)), nn.MaxPool2d(3, 2)]
    return Concat(branches, c(n) + c(m) + cin)


def _v4_b(cin, c):
    branches = [_chain(cin, (c(384), 1)),
                _chain(cin, (c(192), 1), (c(224), (1, 7), 1, (0, 3)), (c(256), (7, 1), 1, (3, 0))),
                _chain(cin, (c(192), 1), (c(192), (7, 1), 1, (3, 0)), (c(224), (1, 7), 1, (0, 3)),
                       (c(224), (7, 1), 1, (3, 0)), (c(256), (1, 7), 1, (0, 3))),
                _avg_pool_branch(cin, c(128), False)]
    return Concat(branches, c(384) + 2 * c(256) + c(128))


def _v4_reduction_b(cin, c):
    """Reduction-B (Fig. 8): 192 -> 192 | 256, 256, 320 -> 320."""
    return _reduction_17_to_8(cin, c(192), c(192), c(256), c(256), c(320), c(320))


def _v4_c(cin, c):
    branches = [_chain(cin, (c(256), 1)),
                _Split(_chain(cin, (c(384), 1)), *_split_1x3_3x1(c(384), c(256))),
                _Split(_chain(cin, (c(384), 1), (c(448), (3, 1), 1, (1, 0)), (c(512), (1, 3), 1, (0, 1))),
                       *_split_1x3_3x1(c(512), c(256))),
                _avg_pool_branch(cin, c(256), False)]
    return Concat(branches, 6 * c(256))


class Inception4(nn.Module):
    """Inception-v4 (Fig. 9): stem, blocks[0] x A, Reduction-A, blocks[1] x B, Reduction-B, blocks[2] x C,
    global average pool, dropout, fc: (N, in_channels, 299, 299) -> (N, num_classes)."""

    def __init__(self, num_classes=1000, in_channels=3, width_mult=1.0, blocks=(4, 7, 3), dropout=0.2):
        super().__init__()
        c = _width(width_mult)
        layers = [_v4_stem(in_channels, c)]
        channels = layers[0][-1].out_channels
        for count, make, reduction in ((blocks[0], _v4_a, _v4_reduction_a), (blocks[1], _v4_b, _v4_reduction_b),
                                       (blocks[2], _v4_c, None)):
            for _ in range(count):
                layers.append(make(channels, c))
                channels = layers[-1].out_channels
            if reduction is not None:
                layers.append(reduction(channels, c))
                channels = layers[-1].out_channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


# ----------------------------------------------------------------------------- Inception-ResNet-v2

class ResidualInception(nn.Module):
    """x + scale * conv1x1(concat(branches(x))), then ReLU (``relu=False``: the last 8x8 block):
    (N, C, H, W) -> (N, C, H, W). The 1x1 conv is linear (bias, no BN), as in the paper's Figs. 16-19."""

    def __init__(self, branches, branch_channels, channels, scale, relu=True):
        super().__init__()
        self.branches = Concat(branches, branch_channels)
        self.up = nn.Conv2d(branch_channels, channels, 1)
        self.scale = scale
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x):
        return self.relu(x + self.scale * self.up(self.branches(x)))


def _block35(cin, c):
    branches = [_chain(cin, (c(32), 1)), _chain(cin, (c(32), 1), (c(32), 3, 1, 1)),
                _chain(cin, (c(32), 1), (c(48), 3, 1, 1), (c(64), 3, 1, 1))]
    return ResidualInception(branches, 2 * c(32) + c(64), cin, 0.17)


def _block17(cin, c):
    branches = [_chain(cin, (c(192), 1)),
                _chain(cin, (c(128), 1), (c(160), (1, 7), 1, (0, 3)), (c(192), (7, 1), 1, (3, 0)))]
    return ResidualInception(branches, 2 * c(192), cin, 0.10)


def _block8(cin, c, relu=True, scale=0.20):
    branches = [_chain(cin, (c(192), 1)),
                _chain(cin, (c(192), 1), (c(224), (1, 3), 1, (0, 1)), (c(256), (3, 1), 1, (1, 0)))]
    return ResidualInception(branches, c(192) + c(256), cin, scale, relu)


class InceptionResNetV2(nn.Module):
    """Inception-ResNet-v2 (the released net): v3-style stem + Mixed_5b (35x35x320), blocks[0] x Block35,
    Reduction-A, blocks[1] x Block17, Reduction-B, blocks[2] x Block8 (the last without ReLU, scale 1),
    1x1 conv to 1536, global average pool, dropout, fc: (N, in_channels, 299, 299) -> (N, num_classes)."""

    def __init__(self, num_classes=1000, in_channels=3, width_mult=1.0, blocks=(10, 20, 10), dropout=0.2):
        super().__init__()
        c = _width(width_mult)
        stem = [conv_bn_relu(in_channels, c(32), 3, 2), conv_bn_relu(c(32), c(32), 3),
                conv_bn_relu(c(32), c(64), 3, 1, 1), nn.MaxPool2d(3, 2), conv_bn_relu(c(64), c(80), 1),
                conv_bn_relu(c(80), c(192), 3), nn.MaxPool2d(3, 2),
                Concat([_chain(c(192), (c(96), 1)), _chain(c(192), (c(48), 1), (c(64), 5, 1, 2)),
                        _chain(c(192), (c(64), 1), (c(96), 3, 1, 1), (c(96), 3, 1, 1)),
                        _avg_pool_branch(c(192), c(64), False)], c(96) + c(64) + c(96) + c(64))]
        channels = stem[-1].out_channels
        layers = [nn.Sequential(*stem)]
        layers += [_block35(channels, c) for _ in range(blocks[0])]
        layers.append(Concat([_chain(channels, (c(384), 3, 2)),
                              _chain(channels, (c(256), 1), (c(256), 3, 1, 1), (c(384), 3, 2)), nn.MaxPool2d(3, 2)],
                             2 * c(384) + channels))
        channels = layers[-1].out_channels
        layers += [_block17(channels, c) for _ in range(blocks[1])]
        layers.append(Concat([_chain(channels, (c(256), 1), (c(384), 3, 2)),
                              _chain(channels, (c(256), 1), (c(288), 3, 2)),
                              _chain(channels, (c(256), 1), (c(288), 3, 1, 1), (c(320), 3, 2)), nn.MaxPool2d(3, 2)],
                             c(384) + c(288) + c(320) + channels))
        channels = layers[-1].out_channels
        layers += [_block8(channels, c) for _ in range(blocks[2] - 1)]
        layers.append(_block8(channels, c, relu=False, scale=1.0))
        layers.append(conv_bn_relu(channels, c(1536), 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c(1536), num_classes)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


def inception_v3(**kwargs):
    """Inception-v3 (the released net): 23,834,568 parameters, 27,161,264 with the auxiliary head."""
    return Inception3(**kwargs)


def inception_v4(**kwargs):
    """Inception-v4: 42,679,816 parameters (K l.1161 prints 35M)."""
    return Inception4(**kwargs)


def inception_resnet_v2(**kwargs):
    """Inception-ResNet-v2: 55,843,464 parameters (K l.1162: 55.8M)."""
    return InceptionResNetV2(**kwargs)


def _input(batch, config):
    """299x299 images; reduced-width v4 / Inception-ResNet configs get 75x75 (the smallest both take)."""
    side = 299 if config.get("width_mult", 1.0) >= 1 or "blocks" not in config else 75
    return torch.randn(batch, config.get("in_channels", 3), side, side)


_IMAGE = (1, 3, 299, 299)
_NOTE = "all parameters incl. BN affine and the fc (1000 classes)"
register(
    "inception_v3", inception_v3,
    # the auxiliary head's 5x5/3 pool and 5x5 conv need the 17x17 grid of a 299x299 input
    small_config=dict(width_mult=1 / 16, num_classes=10, aux_logits=True, dropout=0.0),
    example_input=_input,
    families=("BNR",),
    figures={
        "params": Figure(23.6e6, "K l.1159", 0.02, note=_NOTE + ", without the auxiliary head: 23,834,568 (+1.0%)"),
        "params_with_aux": Figure(27.16e6, "torchvision model card (inception_v3: 27,161,264)", 0.001,
                                  config=dict(aux_logits=True), note=_NOTE + " and the auxiliary head"),
        "macs": Figure(5.71e9, "torchvision model card (inception_v3: 5.71 GFLOPS)", 0.01, input_shape=_IMAGE,
                       note="convs and the fc per 299x299 image, eval mode (no auxiliary head)"),
    },
)
register(
    "inception_v4", inception_v4,
    small_config=dict(width_mult=1 / 16, num_classes=10, blocks=(1, 1, 1), dropout=0.0),
    example_input=_input,
    families=("BNR",),
    figures={
        "params": Figure(35e6, "K l.1161 (Inception-V4 35 M)", 0.02,
                         note=_NOTE + ": 42,679,816 (timm inception_v4), 22% above: not matched (see tests)"),
        "params_timm": Figure(42.68e6, "timm inception_v4 (42,679,816)", 0.001, note=_NOTE),
    },
)
register(
    "inception_resnet_v2", inception_resnet_v2,
    small_config=dict(width_mult=1 / 16, num_classes=10, blocks=(2, 2, 2), dropout=0.0),
    example_input=_input,
    families=("BNR",),
    figures={
        "params": Figure(55.8e6, "K l.1162 (Inception-ResNet 55.8M)", 0.002,
                         note=_NOTE + ": 55,843,464 (timm inception_resnet_v2)"),
    },
)
