"""Reference LeNet-5: the design-patterns report's conv block + the paper's 120-84-10 head, and the 1998 net.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  A l.140, 146   LeNet-5 (1998) for handwritten digits: alternating convolution and pooling,
                 sigmoid activations and average pooling in the original.
  A l.152-178    code: "based on the convolutional block of LeNet-5, but uses max-pooling and ReLU":
                 layer1 = Conv2d(1, 6, 5) - ReLU - MaxPool2d(2, 2), layer2 = Conv2d(6, 16, 5) - ReLU -
                 MaxPool2d(2, 2), forward = layer2(layer1(x)).
  K l.1086       Kalhor's table: LeNet, 1998, 0.060M parameters, depth 5; R l.653 LeNet for digits.
Paper:
  LeCun, Bottou, Bengio, Haffner, "Gradient-Based Learning Applied to Document Recognition",
  Proc. IEEE 1998 (Sec. II-B, Fig. 2: 32x32 input, C1 6@5x5 (156 parameters), S2 2x2 subsampling
  with a trainable coefficient and bias per map (12), C3 16@5x5 on the subsets of S2 maps of Table I
  (1,516), S4 (32), C5 120@5x5 (48,120), F6 84 (10,164), output: 10 Euclidean RBF units over the 84
  F6 outputs (840 weights, no bias); squashing f(a) = 1.7159 tanh(2a/3) in every layer up to F6).

The document's code, corrected: (1) the second ``nn.MaxPool2d(kernel_size=2, stride=2))`` is cut off
from ``layer2``'s ``nn.Sequential(`` by a page break (A l.167-171), which leaves that call unclosed;
here it is the third module of layer2; (2) ``def forward`` is dedented to module level (A l.173), so
the class has no forward; here it is the method; (3) the block stops after layer2 (16 x 5 x 5 maps
from a 32x32 input) and has no classifier: the paper's C5-F6-output widths 120-84-10 are added as
fully connected layers with ReLU (C5 over a 5x5 map is a fully connected layer); (4) "LetNet-5"
(A l.152) is LeNet-5. This is ``variant="modern"``: 61,706 parameters.
``variant="paper"`` is the 1998 net as described above: 60,840 parameters, the "0.060M" of K l.1086
(1.4% above). The modern variant is 2.8%
above 0.060M: its C3 is fully connected to S2 (2,416 instead of 1,516) and its output layer has
biases. The paper initializes the RBF centres to +-1 bitmaps of the characters; here random +-1.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register

__all__ = ["LeNetConvBlock", "LeNet5", "ScaledTanh", "Subsampling", "PartialConv2d", "EuclideanRBF", "lenet5",
           "C3_TABLE"]

# LeCun et al. 1998, Table I: the S2 maps each C3 map sees (6 contiguous triples, 6 contiguous
# quadruples, 3 discontinuous quadruples, all six)
C3_TABLE = ((0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
            (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
            (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
            (0, 1, 2, 3, 4, 5))


class LeNetConvBlock(nn.Module):
    """The document's block (A l.157-176), corrected: (N, in, 32, 32) -> (N, 16, 5, 5)."""

    def __init__(self, in_channels=1):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(in_channels, 6, kernel_size=5, stride=1), nn.ReLU(),
                                    nn.MaxPool2d(kernel_size=2, stride=2))
        self.layer2 = nn.Sequential(nn.Conv2d(6, 16, kernel_size=5, stride=1), nn.ReLU(),
                                    nn.MaxPool2d(kernel_size=2, stride=2))

    def forward(self, x):
        out = self.layer1(x)
        out = self.layer2(out)
        return out


class ScaledTanh(nn.Module):
    """LeNet-5's squashing function 1.7159 * tanh(2/3 * x) (LeCun et al. 1998, Appendix A)."""

    def forward(self, x):
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Subsampling(nn.Module):
    """S2 / S4: the sum of each 2x2 block times a trainable coefficient plus a bias, per map:
    (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        summed = F.avg_pool2d(x, 2, 2) * 4
        return summed * self.weight[:, None, None] + self.bias[:, None, None]


class PartialConv2d(nn.Module):
    """C3: output map i is a convolution over the input maps ``table[i]`` only: (N, C_in, H, W) ->
    (N, len(table), H - k + 1, W - k + 1)."""

    def __init__(self, table, kernel_size=5):
        super().__init__()
        self.table = tuple(tuple(t) for t in table)
        self.convs = nn.ModuleList(nn.Conv2d(len(t), 1, kernel_size) for t in self.table)

    def forward(self, x):
        return torch.cat([conv(x[:, list(t)]) for conv, t in zip(self.convs, self.table)], 1)


class EuclideanRBF(nn.Module):
    """Output layer: y_i = sum_j (x_j - w_ij)^2 (a penalty: the smallest is the predicted class):
    (N, in_features) -> (N, out_features)."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        with torch.no_grad():
            self.weight.bernoulli_(0.5).mul_(2).sub_(1)                # random +-1 centres

    def forward(self, x):
        return (x[:, None, :] - self.weight).square().sum(-1)


class LeNet5(nn.Module):
    """LeNet-5 on 32x32 inputs: (N, in_channels, 32, 32) -> (N, num_classes).

    variant="modern": the document's conv block (ReLU, max pool, full C3) + fc 400-120-84-num_classes with
    ReLU; variant="paper": C1 - S2 - C3 (Table I) - S4 - C5 - F6 with 1.7159 tanh(2a/3), RBF output.
    """

    def __init__(self, num_classes=10, in_channels=1, variant="modern"):
        super().__init__()
        if variant not in ("modern", "paper"):
            raise ValueError(f"variant must be 'modern' or 'paper', got {variant!r}")
        self.variant = variant
        if variant == "modern":
            self.features = LeNetConvBlock(in_channels)
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
                                            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))
        else:
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 6, 5), ScaledTanh(),                    # C1: 6 x 28 x 28
                Subsampling(6), ScaledTanh(),                                  # S2: 6 x 14 x 14
                PartialConv2d(C3_TABLE, 5), ScaledTanh(),                      # C3: 16 x 10 x 10
                Subsampling(16), ScaledTanh(),                                 # S4: 16 x 5 x 5
                nn.Conv2d(16, 120, 5), ScaledTanh())                           # C5: 120 x 1 x 1
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), ScaledTanh(),
                                            EuclideanRBF(84, num_classes))

    def forward(self, x):
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"LeNet-5 takes 32x32 inputs, got {tuple(x.shape[-2:])}")
        return self.classifier(self.features(x))


def lenet5(**kwargs):
    """LeNet-5: the document's block + 120-84-10 (61,706 parameters) or variant="paper" (60,840)."""
    return LeNet5(**kwargs)


def _input(batch, config):
    return torch.randn(batch, config.get("in_channels", 1), 32, 32)


register(
    "lenet5", lenet5,
    small_config=dict(num_classes=10),                                 # the standard net is CPU-sized
    example_input=_input,
    families=(),
    figures={
        "params": Figure(0.060e6, "K l.1086 (LeNet 0.060 M)", 0.02, config=dict(variant="paper"),
                         note="the 1998 net: partial C3, trainable subsampling, RBF output without bias: 60,840 "
                              "(the modern variant, 61,706, is 2.8% above)"),
    },
)
