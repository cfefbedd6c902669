"""Reference UNet++ (nested dense skip pathways x^{i,j}, deep supervision) and the Wide U-Net it is compared with.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.1722-1744  Krawiec: UNet++, re-designed dense skip pathways between the contracting and expanding
                 paths ("bridge the semantic gap", as DenseNet) and deep supervision;
                 x^{0,1} = H[x^{0,0}, U(x^{1,0})], x^{0,2} = H[x^{0,0}, x^{0,1}, U(x^{1,1})], ...,
                 x^{0,4} = H[x^{0,0}, ..., x^{0,3}, U(x^{1,3})].
  P l.1746-1765  the table: U-Net 7.76M, Wide U-Net 9.13M, UNet++ w/o and w/ deep supervision 9.04M.
Paper:
  Zhou, Siddiquee, Tajbakhsh, Liang, "UNet++: A Nested U-Net Architecture for Medical Image Segmentation",
  DLMIA 2018, arXiv:1807.10165 (Sec. 2: x^{i,j} = H(x^{i-1,j}) for j = 0, else
  H([x^{i,0}, ..., x^{i,j-1}, U(x^{i+1,j-1})]); H a convolution block, U an up-sampling layer; deep
  supervision: a 1x1 conv + sigmoid on each of x^{0,1..4}, averaged losses; Table 1) and the authors'
  Keras code (``Nest_Net`` / ``wU_Net``): widths 32, 64, 128, 256, 512; H = two 3x3 convs with bias and
  ReLU (unet.py's ``DoubleConv`` with ``batch_norm=False``); U = 2x2/2 ``Conv2DTranspose`` to the level's
  width; one output map with a sigmoid; with deep supervision the model returns the four heads' maps,
  without it only x^{0,4}'s head exists.

Parameter counts (1-channel input, 1 class, the code's setting): UNet++ 9,041,601 without deep
supervision and 9,041,700 with it (9.04M, P l.1762-1763); the U-Net baseline is unet.py's 7.76M. The
Wide U-Net is unet.py's U-Net at widths 35, 70, 140, 280, 560 (the authors' ``wU_Net``): 9,282,246
parameters, as the authors' code states in its comment, 1.7% over the table's 9.13M (P l.1761): the table
is not reproduced by the code it was made with; recorded in its figure with rtol 0.02.

Deviations, stated: padded convs (outputs keep the input size, which must be divisible by 2^depth);
BatchNorm is an option (``batch_norm=True``; off in the figures' configuration as in the code); the heads
return logits (the sigmoid belongs to the loss); in eval mode with deep supervision the outputs are still
returned as a list (the paper's "accurate mode" averages them, its "fast mode" picks one: the caller's
choice). Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register
from .unet import DoubleConv, UNet

__all__ = ["UNetPlusPlus", "unetpp", "wide_unet"]


class UNetPlusPlus(nn.Module):
    """UNet++ with ``depth`` poolings, widths width * 2^i; nodes x^{i,j} for i + j <= depth.

    forward(x (B, C, H, W)) -> logits (B, num_classes, H, W) of x^{0,depth}, or with ``deep_supervision``
    the list [head_1(x^{0,1}), ..., head_depth(x^{0,depth})], each (B, num_classes, H, W).
    """

    def __init__(self, in_channels=1, num_classes=1, width=32, depth=4, deep_supervision=False, batch_norm=False):
        super().__init__()
        self.depth, self.deep_supervision = depth, deep_supervision
        self.widths = [width * 2 ** i for i in range(depth + 1)]
        self.pool = nn.MaxPool2d(2, stride=2)
        self.nodes = nn.ModuleDict()        # "i_j" -> H of x^{i,j}
        self.up = nn.ModuleDict()           # "i_j" -> U applied to x^{i+1,j-1} for x^{i,j}
        cin = in_channels
        for i, w in enumerate(self.widths):
            self.nodes[f"{i}_0"] = DoubleConv(cin, w, batch_norm)
            cin = w
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                w = self.widths[i]
                self.up[f"{i}_{j}"] = nn.ConvTranspose2d(self.widths[i + 1], w, 2, stride=2)
                self.nodes[f"{i}_{j}"] = DoubleConv(j * w + w, w, batch_norm)    # j same-level maps + U(.)
        heads = range(1, depth + 1) if deep_supervision else (depth,)
        self.heads = nn.ModuleDict({str(j): nn.Conv2d(self.widths[0], num_classes, 1) for j in heads})

    def forward(self, x):
        if x.shape[-1] % 2 ** self.depth or x.shape[-2] % 2 ** self.depth:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {2 ** self.depth}")
        nodes = {}
        for i in range(self.depth + 1):
            x = self.nodes[f"{i}_0"](x if i == 0 else self.pool(x))
            nodes[i, 0] = x
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                same_level = [nodes[i, k] for k in range(j)]
                up = self.up[f"{i}_{j}"](nodes[i + 1, j - 1])
                nodes[i, j] = self.nodes[f"{i}_{j}"](torch.cat(same_level + [up], dim=1))
        if self.deep_supervision:
            return [self.heads[str(j)](nodes[0, j]) for j in range(1, self.depth + 1)]
        return self.heads[str(self.depth)](nodes[0, self.depth])


def unetpp(**kwargs):
    """UNet++ (Zhou et al. 2018): widths 32..512, 1 class; 9.04M parameters (P l.1762)."""
    return UNetPlusPlus(**kwargs)


def wide_unet(**kwargs):
    """Wide U-Net of the UNet++ table: unet.py's U-Net at widths 35..560, no BN, 1 class; 9.13M (P l.1761),
    9,282,246 counted (the authors' wU_Net)."""
    return UNet(**{**dict(in_channels=1, num_classes=1, width=35, batch_norm=False), **kwargs})


def _input(batch, config):
    size = 256 if config.get("width", 32) >= 16 else 16
    return torch.randn(batch, config.get("in_channels", 1), size, size)


_NOTE = "1-channel input, 1 output map, conv biases, no BN (the authors' Keras code)"
register(
    "unetpp", unetpp,
    small_config=dict(width=4, num_classes=2, batch_norm=True),       # 16x16 input (1x1 at the bottom)
    example_input=_input,
    families=("TC", "BNR"),
    figures={
        "params": Figure(9.04e6, "P l.1762 (UNet++ w/o DS: 9.04M)", 0.005,
                         note=_NOTE + ": 9,041,601 (one head on x^{0,4})"),
        "params_deep_supervision": Figure(9.04e6, "P l.1763 (UNet++ w/ DS: 9.04M)", 0.005,
                                          config=dict(deep_supervision=True),
                                          note=_NOTE + ": 9,041,700 (four 1x1 heads on x^{0,1..4})"),
    },
)
register(
    "wide_unet", wide_unet,
    small_config=dict(width=4, num_classes=2, batch_norm=True),
    example_input=_input,
    families=("TC", "BNR"),
    figures={
        "params": Figure(9.13e6, "P l.1761 (Wide U-Net: 9.13M)", 0.02,
                         note=_NOTE + ", widths 35..560: 9,282,246 as the authors' code comment says, +1.7% "
                                      "over the table (not reproduced exactly)"),
    },
)
