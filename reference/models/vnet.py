"""Reference V-Net (3-D U-Net-like segmentation with residual stages, strided-conv down-sampling).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.1712-1716  Krawiec: V-Net (arXiv:1606.04797) works with volumetric (3D) data and adds residual
                 connections between convolutional layers at the same stage of processing.
Paper:
  Milletari, Navab, Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
  Segmentation", 3DV 2016, arXiv:1606.04797 (Sec. 2 / Fig. 1: input 128x128x64, 1 channel; the left
  path has five stages of 1, 2, 3, 3, 3 convolutions with 5x5x5 kernels at 16, 32, 64, 128, 256
  channels, the stage's input added to its last convolution's output (residual function learning);
  down-sampling by 2x2x2 stride-2 convolutions that double the channels (instead of pooling); the right
  path has stages of 3, 3, 2, 1 convolutions at 256, 128, 64, 32 channels, each fed by a 2x2x2 stride-2
  de-convolution of the previous stage concatenated with the left path's features of the same
  resolution (fine-grained forwarding), residual again; PReLU non-linearities; a final 1x1x1 conv to
  two channels and a voxel-wise soft-max).

Deviations, stated: the up-convolution halves the channels of its input (to the skip's width), so the
concatenation has the stage's width, as the authors' Fig. 1 and the common PyTorch port; the first
stage's residual adds the 1-channel input broadcast to all 16 channels; each conv (and up / down conv)
is followed by its own PReLU, and the residual sum is not activated again; no BatchNorm (the paper
has none); the output are logits (soft-max belongs to the loss / Dice). The paper prints no
parameter count and the documents none: 3-D convolutions are not a cvkernels family (families=()).
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import register

__all__ = ["ResidualStage3d", "VNet", "vnet"]


class ResidualStage3d(nn.Module):
    """``num_convs`` x (5x5x5 conv, padding 2 -> PReLU) at ``channels``, plus the stage's input:
    (B, C, D, H, W) -> (B, C, D, H, W)."""

    def __init__(self, channels, num_convs, kernel_size=5):
        super().__init__()
        layers = []
        for _ in range(num_convs):
            layers += [nn.Conv3d(channels, channels, kernel_size, padding=kernel_size // 2), nn.PReLU(channels)]
        self.convs = nn.Sequential(*layers)

    def forward(self, x):
        return self.convs(x) + x


class VNet(nn.Module):
    """V-Net (Milletari et al. 2016, Fig. 1): (B, in_channels, D, H, W) -> logits (B, num_classes, D, H, W);
    D, H, W divisible by 16.

    width: the first stage's channels (16), doubled per down-sampling; encoder_convs / decoder_convs:
    convolutions per stage (1, 2, 3, 3, 3) / (3, 3, 2, 1); kernel_size: 5.
    """

    def __init__(self, in_channels=1, num_classes=2, width=16, encoder_convs=(1, 2, 3, 3, 3),
                 decoder_convs=(3, 3, 2, 1), kernel_size=5):
        super().__init__()
        if len(decoder_convs) != len(encoder_convs) - 1:
            raise ValueError("decoder_convs needs one entry per down-sampling")
        self.levels = len(encoder_convs) - 1
        self.width = width
        widths = [width * 2 ** i for i in range(len(encoder_convs))]
        layers = []
        for i in range(encoder_convs[0]):
            layers += [nn.Conv3d(in_channels if i == 0 else width, width, kernel_size, padding=kernel_size // 2),
                       nn.PReLU(width)]
        self.input_stage = nn.Sequential(*layers)
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        for i in range(1, len(widths)):
            self.down.append(nn.Sequential(nn.Conv3d(widths[i - 1], widths[i], 2, stride=2), nn.PReLU(widths[i])))
            self.encoder.append(ResidualStage3d(widths[i], encoder_convs[i], kernel_size))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        cin = widths[-1]
        for level, n in zip(reversed(range(self.levels)), decoder_convs):
            out = 2 * widths[level]                                 # up-conv output + skip, concatenated
            self.up.append(nn.Sequential(nn.ConvTranspose3d(cin, widths[level], 2, stride=2), nn.PReLU(widths[level])))
            self.decoder.append(ResidualStage3d(out, n, kernel_size))
            cin = out
        self.head = nn.Conv3d(cin, num_classes, 1)

    def forward(self, x):
        if any(s % 2 ** self.levels for s in x.shape[-3:]):
            raise ValueError(f"input size {tuple(x.shape[-3:])} must be divisible by {2 ** self.levels}")
        # residual of the first stage: the input broadcast to its channels (a single-channel input)
        shortcut = x.expand(-1, self.width, -1, -1, -1) if x.shape[1] == 1 else 0
        x = self.input_stage(x) + shortcut
        skips = [x]
        for down, stage in zip(self.down, self.encoder):
            x = stage(down(x))
            skips.append(x)
        skips.pop()                                                 # the bottom stage has no skip
        for up, stage in zip(self.up, self.decoder):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def vnet(**kwargs):
    """V-Net (Milletari et al. 2016): 16..256 channels, 5x5x5 convs, residual stages, 2 classes."""
    return VNet(**kwargs)


def _input(batch, config):
    size = (64, 128, 128) if config.get("width", 16) >= 16 else (16, 16, 16)
    return torch.randn(batch, config.get("in_channels", 1), *size)


register(
    "vnet", vnet,
    small_config=dict(width=2, kernel_size=3),                          # 16^3 volume, 2..32 channels
    example_input=_input,
    families=(),
    figures={},   # the documents (P l.1716) and the paper print no parameter count
)
