"""Reference VGG-16 and VGG-19 (configurations D and E), with and without BatchNorm.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.877-918    Krawiec: VGG, "very small (3x3) convolution filters", depth pushed to 16-19 weight
                 layers; two stacked 3x3 convs see 5x5 with fewer parameters (2 (3^2 + 1) = 20 vs
                 5^2 + 1 = 26, l.905-916); 224 x 224 x 3 input, 64 channels in the first block (l.897).
  P l.1153       the ResNet figure: "VGG-19 model: 19.6 billion FLOPs".
  K l.1089, 1115-1118, 1147  Kalhor: VGG, homogeneous topology, small kernels, 138 M parameters,
                 depth 19; the expensive fully connected layers.
  R l.655        VGG16, deeper with smaller 3x3 filters.
Paper:
  Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015,
  arXiv:1409.1556 (Table 1: configurations D (16 weight layers) and E (19): 3x3 convs, stride 1, pad 1,
  2x2/2 max pools, fc 4096-4096-1000, ReLU everywhere, dropout 0.5 in the first two fcs; Table 2:
  D 138M, E 144M parameters).

Layer order and parameter names are torchvision's (features.N, classifier.N: conv [BN] ReLU ... max
pool; Linear ReLU Dropout Linear ReLU Dropout Linear), so state_dicts are interchangeable; the BN
variants keep the conv biases, as torchvision's vgg*_bn (BatchNorm for VGG is not in the 2014 paper).
Counts: VGG-16 138,357,544 (BN: 138,365,992), VGG-19 143,667,240 (BN: 143,678,248); multiply-adds
per 224x224 image 15.47G (VGG-16) and 19.63G (VGG-19, the 19.6 billion FLOPs of P l.1153, FLOP =
multiply-add as there). Deviation: torchvision's adaptive 7x7 average pool before the classifier is
left out: the classifier is sized for ``image_size`` (7x7 maps at 224) and other sizes are refused,
as in the paper's fixed-size training net. Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["CONFIGS", "VGG", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

# Simonyan & Zisserman 2015, Table 1: conv widths, "M" = 2x2/2 max pool
CONFIGS = {
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG of configuration ``config`` ('D' = VGG-16, 'E' = VGG-19): (N, in_channels, S, S) -> (N, num_classes)
    with S = image_size (224).

    batch_norm: BN after every conv (conv -> BN -> ReLU); width: the first block's width (64; the others
    scale with it); hidden: the fc width (4096).
    """

    def __init__(self, config="D", batch_norm=False, num_classes=1000, width=64, hidden=4096, image_size=224,
                 in_channels=3, dropout=0.5):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (five 2x2 pools), got {image_size}")
        self.image_size = image_size
        layers, channels = [], in_channels
        for v in CONFIGS[config]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = v * width // 64
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        side = image_size // 32
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"this VGG takes {self.image_size}x{self.image_size} inputs, got {tuple(x.shape[-2:])}")
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg16(**kwargs):
    """VGG-16 (configuration D): 138M parameters (K l.1089), 15.5 GMACs."""
    return VGG("D", False, **kwargs)


def vgg16_bn(**kwargs):
    """VGG-16 with BatchNorm after every conv (torchvision's vgg16_bn)."""
    return VGG("D", True, **kwargs)


def vgg19(**kwargs):
    """VGG-19 (configuration E): 144M parameters (paper Table 2), 19.6 GMACs (P l.1153)."""
    return VGG("E", False, **kwargs)


def vgg19_bn(**kwargs):
    """VGG-19 with BatchNorm after every conv (torchvision's vgg19_bn)."""
    return VGG("E", True, **kwargs)


def _input(batch, config):
    side = config.get("image_size", 224)
    return torch.randn(batch, config.get("in_channels", 3), side, side)


_IMAGENET = (1, 3, 224, 224)
_SMALL = dict(width=4, hidden=32, image_size=32, num_classes=10, dropout=0.0)
_BN_NOTE = "; BN variant: + 2 x (sum of the conv widths) BN parameters, conv biases kept (torchvision)"
_MACS = "convs and fcs per 224x224 image (FLOP = multiply-add)"
for _name, _factory, _bn, _params, _psrc, _macs, _msrc in (
        ("vgg16", vgg16, False, 138e6, "K l.1089 (paper Table 2: D 138M)", 15.47e9, "torchvision model card"),
        ("vgg16_bn", vgg16_bn, True, 138e6, "K l.1089 (paper Table 2: D 138M)", 15.47e9, "torchvision model card"),
        ("vgg19", vgg19, False, 144e6, "paper: Simonyan & Zisserman 2015, Table 2 (E 144M)", 19.6e9, "P l.1153"),
        ("vgg19_bn", vgg19_bn, True, 144e6, "paper: Simonyan & Zisserman 2015, Table 2 (E 144M)", 19.6e9,
         "P l.1153")):
    register(
        _name, _factory,
        small_config=_SMALL,
        example_input=_input,
        families=("BNR",) if _bn else (),
        figures={
            "params": Figure(_params, _psrc, 0.005,
                             note="all weights and biases" + (_BN_NOTE if _bn else "")),
            "macs": Figure(_macs, _msrc, 0.005, input_shape=_IMAGENET, note=_MACS),
        },
    )
