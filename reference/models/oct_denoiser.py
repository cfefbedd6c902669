"""Reference OCT denoiser: a U-Net-like fully convolutional net of standard and residual blocks with
dilated convolutions (Devalla et al. 2019).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.1767-1796  Krawiec: image denoising of OCT B-scans of the optic nerve head (Devalla et al.,
                 Scientific Reports 9, 2019): learn the mapping from a single-frame (noisy) B-scan
                 to the multi-frame (signal-averaged) one.
  P l.1798-1805  "Architecture: core components. 'Standard' blocks and 'residual' blocks"
                 (figure not in the text), "Q: Is this really a residual block?"
  P l.1807-1810  "Fully-conv NN inspired by U-net. Also: uses dilated convolutions."
  P l.1812-1928  results: SNR 3.87 -> 7.50 dB, CNR, SSIM / MSSIM; no parameter count.
Papers:
  Devalla, Subramanian, Pham, Wang, Perera, Tun, Aung, Schmetterer, Thiery, Girard, "A Deep
  Learning Approach to Denoise Optical Coherence Tomography Images of the Optic Nerve Head",
  Scientific Reports 9:14454, 2019, arXiv:1809.10589 (the network, Fig. 2), built on
  Devalla et al., "DRUNET: a dilated-residual U-Net deep learning network to segment optic nerve
  head tissues in optical coherence tomography images", Biomed. Opt. Express 9(7), 2018,
  arXiv:1803.00232 (the standard / residual blocks and the two towers).

The seed text gives only the components (standard and residual blocks, U-Net-like towers,
dilated convolutions); the figure with the numbers is not in it, so the following is a
reconstruction from the DRUNET design, with the choices stated:

  standard block  3 x (3x3 conv with dilation d -> BatchNorm -> ELU)
  residual block  the same three convs (the last one's activation after the addition), plus a
                  shortcut that is a 1x1 conv + BatchNorm of the block input (not an identity,
                  which is the point of the seed's "Is this really a residual block?")
  downsampling tower  standard block (d=1), then residual blocks (d=2, 4), each followed by a
                  2x2 max pool; a residual block (d=8) at the bottom
  upsampling tower    2x2/2 transposed conv, concatenation with the tower's features at that
                  scale, residual blocks (d=4, 2), the last level a standard block (d=1)
  output          1x1 conv to the image channels (a denoised image, no activation)

All blocks have ``width`` filters (32 by default: a choice, the seed prints no widths and the
model has no published parameter count to pin them). ELU is the activation of the DRUNET papers
as we read them; ``activation="relu"`` gives BatchNorm2d -> ReLU pairs. The
input side must be divisible by 8 (the OCT B-scans are 496 x 384). Nothing here imports
cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import register

__all__ = ["StandardBlock", "ResidualBlock", "OCTDenoiser", "oct_denoiser"]

_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU}


def _activation(name):
    try:
        return _ACTIVATIONS[name](inplace=True)
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}") from None


class StandardBlock(nn.Module):
    """3 x (3x3 conv dilated by ``dilation`` -> BatchNorm2d -> activation)."""

    def __init__(self, in_channels, out_channels, dilation=1, activation="elu"):
        super().__init__()
        layers = []
        for cin in (in_channels, out_channels, out_channels):
            layers += [nn.Conv2d(cin, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                       nn.BatchNorm2d(out_channels), _activation(activation)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class ResidualBlock(nn.Module):
    """Three dilated 3x3 conv-BN(-activation) layers + a 1x1 conv-BN shortcut, activation after the sum."""

    def __init__(self, in_channels, out_channels, dilation=1, activation="elu"):
        super().__init__()
        layers = []
        for i, cin in enumerate((in_channels, out_channels, out_channels)):
            layers += [nn.Conv2d(cin, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                       nn.BatchNorm2d(out_channels)]
            if i < 2:
                layers.append(_activation(activation))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(out_channels)
        self.act = _activation(activation)

    def forward(self, x):
        out = self.body(x)
        s = self.shortcut(x)
        s = self.shortcut_bn(s)
        out = out + s
        return self.act(out)


class OCTDenoiser(nn.Module):
    """Two towers of standard / residual blocks with dilations ``dilations`` (down; mirrored up) and
    ``bottom_dilation`` at the bottom, ``width`` filters everywhere."""

    def __init__(self, in_channels=1, out_channels=1, width=32, dilations=(1, 2, 4), bottom_dilation=8,
                 activation="elu"):
        super().__init__()
        self.levels = len(dilations)
        self.down = nn.ModuleList()
        cin = in_channels
        for i, d in enumerate(dilations):
            block = StandardBlock if i == 0 else ResidualBlock
            self.down.append(block(cin, width, d, activation))
            cin = width
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bottom = ResidualBlock(width, width, bottom_dilation, activation)
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i, d in reversed(list(enumerate(dilations))):
            block = StandardBlock if i == 0 else ResidualBlock
            self.up.append(nn.ConvTranspose2d(width, width, 2, stride=2))
            self.up_blocks.append(block(2 * width, width, d, activation))
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, x):
        if x.shape[-1] % 2 ** self.levels or x.shape[-2] % 2 ** self.levels:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {2 ** self.levels}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, block in zip(self.up, self.up_blocks):
            x = up(x)
            x = torch.cat([skips.pop(), x], dim=1)
            x = block(x)
        return self.head(x)


def oct_denoiser(**kwargs):
    """OCT B-scan denoiser (Devalla et al. 2019; P l.1767-1928), a reconstruction: see the module doc."""
    return OCTDenoiser(**kwargs)


def _input(batch, config):
    h, w = (32, 32) if config.get("width", 32) < 16 else (496, 384)
    return torch.randn(batch, config.get("in_channels", 1), h, w)


register(
    "oct_denoiser", oct_denoiser,
    small_config=dict(width=4),                                       # 32x32 input, all dilations kept
    example_input=_input,
    families=("DIL", "TC"),   # BN -> ELU by default; activation="relu" adds BN -> ReLU pairs
    figures={},               # P l.1767-1928 publish image-quality metrics only
)
