"""Reference AlexNet, the paper's two-GPU configuration with grouped convolutions.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.813-875   Krawiec, CNN module: AlexNet, five conv layers, max pooling, dropout, ReLU,
                "~60M parameters", trained on 2 GPUs (GTX 580, 3GB).
  K l.1087      Kalhor's table: AlexNet, ReLU, dropout and overlapping pooling, 60 M parameters.
  K l.410-412   grouped convolutions "were initially mentioned in AlexNet".
Paper:
  Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural
  Networks", NIPS 2012 (Sec. 3.1 ReLU, 3.3 local response normalization with k=2, n=5,
  alpha=1e-4, beta=0.75, 3.4 overlapping pooling z=3 s=2, 3.5 / Fig. 2 the architecture,
  4.2 dropout 0.5 in the first two fully connected layers).

The paper's net is split over two GPUs: conv2, conv4 and conv5 only see the kernel maps on their
own GPU, which is a convolution with ``groups=2``; conv3 and the fully connected layers see both
halves. Layers (input 227x227: the paper says 224, but 11x11/4 to 55x55 needs 227):

    conv1  96 @ 11x11 / 4            ReLU  LRN  maxpool 3/2     -> 96 x 27 x 27
    conv2 256 @ 5x5 pad 2, groups 2  ReLU  LRN  maxpool 3/2     -> 256 x 13 x 13
    conv3 384 @ 3x3 pad 1            ReLU
    conv4 384 @ 3x3 pad 1, groups 2  ReLU
    conv5 256 @ 3x3 pad 1, groups 2  ReLU       maxpool 3/2     -> 256 x 6 x 6
    fc6 4096, ReLU, dropout; fc7 4096, ReLU, dropout; fc8 1000

Parameter count (all weights and biases): 60,965,224 ~ 61.0M, the "~60M" of P l.839 and K
l.1087. (torchvision's single-GPU AlexNet, without groups and with 64/192/384/256/256 kernels, has
61,100,840.) torch's ``LocalResponseNorm`` divides alpha by the window size, so the paper's
alpha=1e-4 is ``alpha=5e-4`` here. Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register
from ..ops.conv import conv_output_size

__all__ = ["AlexNet", "alexnet"]


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al. 2012, Fig. 2) with the two-GPU split as ``groups``.

    channels: the five conv widths (paper: 96, 256, 384, 384, 256); groups: the GPU split of
    conv2/4/5 (paper: 2; 1 gives the "one GPU" model); hidden: the fc width (4096); image_size:
    the input side the fc layer is sized for (227); lrn: the local response normalization layers.
    """

    def __init__(self, num_classes=1000, channels=(96, 256, 384, 384, 256), groups=2, hidden=4096,
                 image_size=227, in_channels=3, dropout=0.5, lrn=True):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        self.image_size, self.in_channels = image_size, in_channels

        def norm():
            return nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0) if lrn else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=11, stride=4),
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2, groups=groups),
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        side = image_size
        for k, s, p in ((11, 4, 0), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 2, 0)):  # convs 3-5 keep the size
            side = conv_output_size(side, k, s, p)
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for AlexNet (needs >= 67)")
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(c5 * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def alexnet(**kwargs):
    """AlexNet, the paper's two-GPU configuration (conv2/4/5 with groups=2): 61.0M parameters."""
    return AlexNet(**kwargs)


def _input(batch, config):
    return torch.randn(batch, config.get("in_channels", 3), config.get("image_size", 227),
                       config.get("image_size", 227))


register(
    "alexnet", alexnet,
    # 67x67 is the smallest input that leaves a 1x1 map after the last pool
    small_config=dict(channels=(8, 16, 24, 24, 16), hidden=32, num_classes=10, image_size=67, dropout=0.0),
    example_input=_input,
    families=("GC",),
    figures={
        "params": Figure(60e6, "P l.839, K l.1087 (~60M)", 0.02,
                         note="all weights and biases of the two-GPU net (groups=2 in conv2/4/5): 60,965,224 "
                              "= 61.0M; the documents round to 60M (1.6% below)"),
    },
)
