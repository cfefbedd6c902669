"""Reference U-Net (contracting / expanding paths, 2x2 up-convolutions, skip concatenation).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.1555-1580  Krawiec: U-Net, a contracting stack and a symmetric expanding stack where pooling
                 is replaced by upsampling, 'copy&crop' connections, no fully connected layers,
                 valid convolutions with mirror padding of the input.
  P l.1700-1716  U-Net follow-ups (V-Net, UNet++).
  P l.1722-1765  the UNet++ table: U-Net 7.76M parameters, Wide U-Net 9.13M, UNet++ 9.04M.
  R l.694-725, A l.320, O l.554  U-Net for segmentation.
Papers:
  Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
  MICCAI 2015, arXiv:1505.04597 (Fig. 1: 64 -> 128 -> 256 -> 512 -> 1024 channels, two 3x3
  convs + ReLU per level, 2x2 max pool, 2x2 up-conv halving the channels, concatenation with
  the cropped contracting features, 1x1 conv to the classes).
  Zhou, Siddiquee, Tajbakhsh, Liang, "UNet++: A Nested U-Net Architecture for Medical Image
  Segmentation", DLMIA 2018, arXiv:1807.10165 (Table 1: U-Net 7.76M parameters).

Differences from the 2015 paper, stated: the 3x3 convs are padded (``padding=1``), so the
contracting features need no crop before the concatenation and the output has the input's size
(the input side must be divisible by 2^depth); each conv is followed by BatchNorm (modern
practice; ``batch_norm=False`` gives the paper's conv + ReLU) as separate Conv2d -> BatchNorm2d
-> ReLU modules. The 2x2/2 up-convolutions are ``nn.ConvTranspose2d`` with bias.

The 7.76M of P l.1760 is not the 64-channel net of the 2015 paper (31.0M with these layers): it
is UNet++'s U-Net baseline, whose authors' Keras code uses widths 32 -> 64 -> 128 -> 256 -> 512,
padded 3x3 convs with bias and ReLU and no BatchNorm, 2x2/2 transposed-conv upsampling and a
1x1 sigmoid head with one output. That is ``unet(width=32, batch_norm=False, num_classes=1)``:
7,759,521 parameters with a 1-channel input (7,760,097 with 3), 7.76M. The figure pins the widths
and the learned 2x2 up-convolutions (parameter-free upsampling would give 7.85M) but not the
normalisation: BatchNorm in place of the conv biases gives 7,763,041, also 7.76M; the figure's
configuration has none because the UNet++ code has none. Nothing here imports cvkernels,
torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["DoubleConv", "UNet", "unet"]


class DoubleConv(nn.Sequential):
    """(3x3 conv, padding 1 -> [BatchNorm2d] -> ReLU) x 2."""

    def __init__(self, in_channels, out_channels, batch_norm=True):
        layers = []
        for cin in (in_channels, out_channels):
            layers.append(nn.Conv2d(cin, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings and widths width * 2^i (i = 0..depth).

    width: 64 (the 2015 paper) or 32 (UNet++'s baseline, 7.76M); batch_norm: BN after each conv
    (conv bias dropped then); num_classes: output channels of the 1x1 head.
    """

    def __init__(self, in_channels=1, num_classes=2, width=64, depth=4, batch_norm=True):
        super().__init__()
        self.depth = depth
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(DoubleConv(cin, w, batch_norm))
            cin = w
        self.pool = nn.MaxPool2d(2, stride=2)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))      # 2x2/2 up-conv, halves the channels
            self.up_conv.append(DoubleConv(2 * w, w, batch_norm))         # after concatenation with the skip
            cin = w
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x):
        if x.shape[-1] % 2 ** self.depth or x.shape[-2] % 2 ** self.depth:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {2 ** self.depth}")
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()                                                       # the bottom level has no skip
        for up, block in zip(self.up, self.up_conv):
            x = up(x)
            x = torch.cat([skips.pop(), x], dim=1)                        # copy (no crop needed: padded convs)
            x = block(x)
        return self.head(x)


def unet(**kwargs):
    """U-Net (Ronneberger et al. 2015) with padded convs and BatchNorm; width=32, batch_norm=False,
    num_classes=1 is UNet++'s 7.76M baseline (P l.1760)."""
    return UNet(**kwargs)


def _input(batch, config):
    size = 32 if config.get("width", 64) < 16 else 256
    return torch.randn(batch, config.get("in_channels", 1), size, size)


register(
    "unet", unet,
    small_config=dict(width=4, num_classes=3, in_channels=1),             # 4 -> 64 channels, 32x32 input
    example_input=_input,
    families=("TC", "BNR"),
    figures={
        "params": Figure(7.76e6, "P l.1760 (UNet++ paper, Table 1: U-Net 7.76M)", 0.005,
                         config=dict(width=32, batch_norm=False, num_classes=1, in_channels=3),
                         note="UNet++'s U-Net baseline: widths 32..512, conv bias and no BN, 2x2 transposed-conv "
                              "up-sampling, one sigmoid output, RGB input: 7,760,097 (BN instead of conv bias: "
                              "7,763,041, also 7.76M; the 64-wide 2015 net: 31.0M)"),
    },
)
