"""Reference DCGAN generator and discriminator (64x64 images).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  A l.399-440    the design-patterns report: GAN, generator G(z) and discriminator D(x), the minimax
                 loss (eq. 6); DCGAN (2015) "the use of Batch Normalization, strided convolutions and
                 fractional-strided convolutions instead of pooling layers" became the standard
                 GAN structure (A l.427).
  R l.1045-1080  Rossi: GANs, generator from noise z, discriminator real / fake, the losses.
  O l.778-884    lecture notes on GANs.
Paper:
  Radford, Metz, Chintala, "Unsupervised Representation Learning with Deep Convolutional
  Generative Adversarial Networks", ICLR 2016, arXiv:1511.06434 (Sec. 3 guidelines: strided
  convolutions in D, fractional-strided (transposed) convolutions in G, BatchNorm in both except
  G's output and D's input layer, ReLU in G with Tanh at the output, LeakyReLU (slope 0.2) in D;
  Fig. 1: 100-d z projected to 4x4x1024 and upsampled four times to 64x64x3).

The layer sizes are the reference PyTorch implementation's (pytorch/examples dcgan, the
"DCGAN tutorial"), which halves Fig. 1's widths (ngf = ndf = 64: 512 -> 256 -> 128 -> 64) and
makes the projection a 4x4 transposed conv of the 1x1 noise:

  generator      z (nz x 1 x 1) -> ConvT 4x4/1 pad 0 to 8 ngf (4x4) -> BN ReLU
                 -> ConvT 4x4/2 pad 1 to 4 ngf (8x8) -> BN ReLU -> 2 ngf (16x16) -> BN ReLU
                 -> ngf (32x32) -> BN ReLU -> ConvT 4x4/2 pad 1 to nc (64x64) -> Tanh
  discriminator  x (nc x 64 x 64) -> Conv 4x4/2 pad 1 to ndf -> LeakyReLU(0.2)
                 -> Conv 4x4/2 to 2 ndf -> BN LeakyReLU -> 4 ndf -> BN LeakyReLU -> 8 ndf -> BN LeakyReLU
                 -> Conv 4x4/1 pad 0 to 1 (1x1) -> Sigmoid
No conv has a bias (BatchNorm follows; the last layers as the reference code). Weights are drawn
from N(0, 0.02) and BN scales from N(1, 0.02) (paper Sec. 4). Nothing here imports cvkernels,
torchvision or timm.
"""
import torch
from torch import nn

from . import register

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "dcgan_generator", "dcgan_discriminator"]


def _dcgan_init(module):
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (N, nz, 1, 1) -> image (N, nc, 64, 64) in [-1, 1]."""

    def __init__(self, nz=100, ngf=64, nc=3):
        super().__init__()
        self.nz = nz
        widths = [ngf * 8, ngf * 4, ngf * 2, ngf]
        layers = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]),
                  nn.ReLU(inplace=True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z):
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    """image (N, nc, 64, 64) -> probability of being real, (N,)."""

    def __init__(self, ndf=64, nc=3):
        super().__init__()
        widths = [ndf, ndf * 2, ndf * 4, ndf * 8]
        layers = [nn.Conv2d(nc, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]  # no BN at input
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, x):
        if x.shape[-2:] != (64, 64):
            raise ValueError(f"the DCGAN discriminator takes 64x64 images, got {tuple(x.shape[-2:])}")
        return self.main(x).reshape(-1)


def dcgan_generator(**kwargs):
    """DCGAN generator (Radford et al. 2016), nz=100, ngf=64, 64x64x3 output."""
    return DCGANGenerator(**kwargs)


def dcgan_discriminator(**kwargs):
    """DCGAN discriminator (Radford et al. 2016), ndf=64, 64x64x3 input."""
    return DCGANDiscriminator(**kwargs)


def _noise(batch, config):
    return torch.randn(batch, config.get("nz", 100), 1, 1)


def _image(batch, config):
    return torch.randn(batch, config.get("nc", 3), 64, 64)


register(
    "dcgan_generator", dcgan_generator,
    small_config=dict(nz=16, ngf=4),
    example_input=_noise,
    families=("TC", "BNR"),
    figures={},   # the paper and the seed documents print no parameter count
)
register(
    "dcgan_discriminator", dcgan_discriminator,
    small_config=dict(ndf=4),
    example_input=_image,
    families=(),  # strided 4x4 convs, BN -> LeakyReLU (not ReLU)
    figures={},
)
