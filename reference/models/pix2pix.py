"""Reference pix2pix: U-Net 256 generator with skip connections and the 70x70 PatchGAN discriminator.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  A l.440     image-to-image translation with a conditional GAN (Isola et al. [84]).
  O l.886-893 lecture notes: pix2pix is a conditional GAN for paired image-to-image translation;
              the generator has a U-Net architecture (the objective's formula is lost in O).
Papers / code:
  Isola, Zhu, Zhou, Efros, "Image-to-Image Translation with Conditional Adversarial Networks",
  CVPR 2017, arXiv:1611.07004 (App. 6.1.1: Ck = Conv-BatchNorm-ReLU with k filters, CDk the same
  with dropout 0.5, 4x4 convs with stride 2; encoder C64-C128-C256-C512-C512-C512-C512-C512 (no BN
  on C64, LeakyReLU 0.2), U-Net decoder CD512-CD1024-CD1024-C1024-C1024-C512-C256-C128 (the
  doubled widths are the skip concatenations), ReLU, Tanh at the output; App. 6.1.2: the 70x70
  discriminator C64-C128-C256-C512, a final conv to 1 channel, sigmoid; L = cGAN + lambda L1,
  lambda = 100, Sec. 3.1 eq. 4).
  The official code (junyanz/pytorch-CycleGAN-and-pix2pix, networks.py: UnetGenerator /
  UnetSkipConnectionBlock, NLayerDiscriminator) fixes what the paper leaves open and is followed
  here: convs carry a bias only with instance norm (BatchNorm follows them), the outermost
  up-conv has a bias, the innermost level has no norm on its down-conv, the dropout sits after
  the norms of the three up-convs next to the innermost, the discriminator's fourth conv has
  stride 1 and the last conv a bias; it prints 54.414M parameters for the unet_256 generator and
  2.769M for the n_layers=3 discriminator (6 input channels: input and output image concatenated).
  The loss here returns the logits' BCE (``nn.BCEWithLogitsLoss``, the code's 'vanilla' GAN loss);
  the discriminator has no sigmoid layer.

Kernel families: TC (4x4/2 transposed convs). No BatchNorm feeds a ReLU directly: in the
decoder BN is followed by the skip concatenation and then ReLU; in the encoder and the
discriminator BN is followed by LeakyReLU(0.2), so the model does not claim BNR.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register

__all__ = ["gan_init", "norm_layer", "UNetSkipBlock", "UNetGenerator", "PatchGANDiscriminator", "pix2pix_loss",
           "pix2pix_generator", "patchgan_discriminator"]


def gan_init(module, std=0.02):
    """The official code's 'normal' init: conv weights N(0, std), biases 0, norm scales N(1, std)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


def norm_layer(norm, channels):
    """"batch": BatchNorm2d; "instance": InstanceNorm2d without affine or running stats (the official code)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")


class UNetSkipBlock(nn.Module):
    """One U-Net level around ``submodule``: x (N, outer, H, W) -> (N, 2 outer, H, W) = [x, up(sub(down(x)))]
    (the outermost level returns up(...) itself, (N, out_channels, H, W))."""

    def __init__(self, outer_channels, inner_channels, input_channels=None, submodule=None, outermost=False,
                 innermost=False, norm="batch", dropout=0.0):
        super().__init__()
        self.outermost = outermost
        bias = norm == "instance"
        input_channels = outer_channels if input_channels is None else input_channels
        down_conv = nn.Conv2d(input_channels, inner_channels, 4, stride=2, padding=1, bias=bias)
        up_in = inner_channels if innermost else 2 * inner_channels           # the sub-level concatenated its skip
        if outermost:
            down = [down_conv]
            up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer_channels, 4, stride=2, padding=1), nn.Tanh()]
        else:
            down = [nn.LeakyReLU(0.2, True), down_conv] + ([] if innermost else [norm_layer(norm, inner_channels)])
            up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer_channels, 4, stride=2, padding=1, bias=bias),
                  norm_layer(norm, outer_channels)]
            if dropout:
                up.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*down, *([] if submodule is None else [submodule]), *up)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class UNetGenerator(nn.Module):
    """pix2pix U-Net generator: x (N, in_channels, S, S), S divisible by 2^num_downs -> (N, out_channels, S, S)
    in [-1, 1]. num_downs=8: unet_256 (256 -> 1 at the bottleneck)."""

    def __init__(self, in_channels=3, out_channels=3, num_downs=8, ngf=64, norm="batch", dropout=0.5):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5 (the four outer levels widen 64 -> 512), got {num_downs}")
        self.num_downs = num_downs
        block = UNetSkipBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UNetSkipBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout)
        for mult in (4, 2, 1):
            block = UNetSkipBlock(ngf * mult, ngf * mult * 2, submodule=block, norm=norm)
        self.model = UNetSkipBlock(out_channels, ngf, input_channels=in_channels, submodule=block, outermost=True,
                                   norm=norm)
        gan_init(self)

    def forward(self, x):
        if x.shape[-1] % 2 ** self.num_downs or x.shape[-2] % 2 ** self.num_downs:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {2 ** self.num_downs}")
        return self.model(x)


class PatchGANDiscriminator(nn.Module):
    """PatchGAN (NLayerDiscriminator): x (N, in_channels, H, W) -> patch logits (N, 1, H', W').

    n_layers=3 is the 70x70 PatchGAN (each output sees a 70x70 input patch; 256 -> 30x30 outputs).
    For pix2pix in_channels = 6: the condition and the (real or generated) image concatenated."""

    def __init__(self, in_channels=6, ndf=64, n_layers=3, norm="batch"):
        super().__init__()
        bias = norm == "instance"
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                       norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        gan_init(self)

    def forward(self, x):
        return self.model(x)


def pix2pix_loss(discriminator, condition, real, fake, l1_weight=100.0):
    """Isola et al. eq. 4: (generator loss cGAN + lambda L1, discriminator loss), with BCE on logits.
    condition/real/fake (N, C, H, W); the generator term uses the non-saturating -log D(x, G(x))."""
    fake_logits = discriminator(torch.cat([condition, fake], dim=1))
    adversarial = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    g = adversarial + l1_weight * F.l1_loss(fake, real)
    real_logits = discriminator(torch.cat([condition, real], dim=1))
    fake_detached = discriminator(torch.cat([condition, fake.detach()], dim=1))
    d = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
               + F.binary_cross_entropy_with_logits(fake_detached, torch.zeros_like(fake_detached)))
    return g, d


def pix2pix_generator(**kwargs):
    """pix2pix unet_256 generator (official code: 54.414M parameters), BatchNorm, dropout 0.5."""
    return UNetGenerator(**kwargs)


def patchgan_discriminator(**kwargs):
    """pix2pix 70x70 PatchGAN discriminator on 6 channels (official code: 2.769M parameters)."""
    return PatchGANDiscriminator(**kwargs)


def _image(batch, config):
    size = 2 ** config.get("num_downs", 8)
    return torch.randn(batch, config.get("in_channels", 3), size, size)


def _pair_image(batch, config):
    return torch.randn(batch, config.get("in_channels", 6), 64, 64)


register(
    "pix2pix_generator", pix2pix_generator,
    small_config=dict(ngf=2, num_downs=5, dropout=0.0),
    example_input=_image,
    families=("TC",),
    figures={"params": Figure(54.414e6, "official code (junyanz/pytorch-CycleGAN-and-pix2pix) prints 54.414 M for "
                                        "unet_256, batch norm; the paper prints no count", 0.001,
                              note="8 levels, ngf 64, 3 -> 3 channels, conv biases only where no BN follows")},
)
register(
    "patchgan_discriminator", patchgan_discriminator,
    small_config=dict(ndf=4),
    example_input=_pair_image,
    families=(),    # strided 4x4 convs, BN -> LeakyReLU
    figures={"params": Figure(2.769e6, "official code prints 2.769 M for the n_layers=3 (70x70) discriminator "
                                       "with 6 input channels", 0.001)},
)
