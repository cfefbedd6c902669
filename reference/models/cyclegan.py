"""Reference CycleGAN ResNet generator (9 blocks) and StarGAN generator (domain-label input channels).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  O l.894-908  lecture notes: CycleGAN, two generators G: X -> Y, F: Y -> X and two discriminators,
               adversarial losses plus the cycle-consistency loss weighted by lambda (formulas lost).
  O l.909-929  StarGAN: one generator takes the input image and a target domain label; the
               discriminator also classifies the domain; adversarial, domain classification and
               reconstruction losses; a mask vector for partially labelled datasets.
  A l.440      image-to-image translation with GANs.
Papers / code:
  Zhu, Park, Isola, Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
  Networks", ICCV 2017, arXiv:1703.10593 (App. 7.2: c7s1-64, d128, d256, R256 x 9, u128, u64,
  c7s1-3; reflection padding, instance normalisation; u = fractional-strided (transposed) 3x3/2
  conv; Sec. 3.2 L_cyc = ||F(G(x)) - x||_1 + ||G(F(y)) - y||_1, Sec. 4 lambda = 10).
  The official code (junyanz/pytorch-CycleGAN-and-pix2pix, networks.py ResnetGenerator, norm
  'instance' = InstanceNorm2d without affine or running statistics, so every conv has a bias)
  prints 11.378M parameters for resnet_9blocks.
  Choi et al., "StarGAN: Unified Generative Adversarial Networks for Multi-Domain Image-to-Image
  Translation", CVPR 2018, arXiv:1711.09020 (App. Table 4: the label c is replicated spatially and
  concatenated to the image; CONV 7x7/1 64, two 4x4/2 down-samplings, 6 residual blocks of 3x3
  convs, two 4x4/2 transposed convs, 7x7 conv to 3 + Tanh; instance norm, ReLU). The official code
  (yunjey/stargan model.py) has no conv biases and affine instance norm with running statistics.

Both generators share ``ResidualBlock`` (x + [pad conv3x3 norm ReLU pad conv3x3 norm](x)), reflection
padded in CycleGAN and zero padded in StarGAN. Kernel families: TC (transposed convs); the norms are
instance norms (InstanceNorm -> ReLU, not BatchNorm), so neither claims BNR; ``norm="batch"`` in the
CycleGAN generator (an option of the official code) gives BN -> ReLU pairs.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register
from .pix2pix import gan_init, norm_layer

__all__ = ["ResidualBlock", "ResnetGenerator", "StarGANGenerator", "cycle_consistency_loss", "cyclegan_generator",
           "stargan_generator"]


def _instance_norm_stargan(channels):
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=True)


class ResidualBlock(nn.Module):
    """x (N, C, H, W) -> x + block(x); ``make_norm(C)`` builds the norms, padding "reflect" or "zeros"."""

    def __init__(self, channels, make_norm, padding="reflect", bias=True, dropout=0.0):
        super().__init__()
        layers = []
        for second in (False, True):
            if padding == "reflect":
                layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias)]
            else:
                layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=bias))
            layers.append(make_norm(channels))
            if not second:
                layers.append(nn.ReLU(True))
                if dropout:
                    layers.append(nn.Dropout(dropout))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN generator: x (N, in_channels, H, W), H and W divisible by 4 -> (N, out_channels, H, W) in [-1, 1]."""

    def __init__(self, in_channels=3, out_channels=3, ngf=64, n_blocks=9, norm="instance", dropout=0.0):
        super().__init__()
        bias = norm == "instance"

        def make_norm(c):
            return norm_layer(norm, c)

        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias), make_norm(ngf), nn.ReLU(True)]
        for mult in (1, 2):                                                           # d128, d256
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                       make_norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResidualBlock(ngf * 4, make_norm, "reflect", bias, dropout) for _ in range(n_blocks)]
        for mult in (4, 2):                                                           # u128, u64
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                          bias=bias), make_norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        gan_init(self)

    def forward(self, x):
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by 4")
        return self.model(x)


class StarGANGenerator(nn.Module):
    """StarGAN generator: forward(x (N, 3, H, W), c (N, c_dim) target-domain labels) -> (N, 3, H, W) in [-1, 1].

    c is replicated over H x W and concatenated to x as c_dim extra input channels."""

    def __init__(self, conv_dim=64, c_dim=5, repeat_num=6, image_channels=3):
        super().__init__()
        self.c_dim = c_dim
        norm = _instance_norm_stargan
        layers = [nn.Conv2d(image_channels + c_dim, conv_dim, 7, padding=3, bias=False), norm(conv_dim), nn.ReLU(True)]
        c = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(c, c * 2, 4, stride=2, padding=1, bias=False), norm(c * 2), nn.ReLU(True)]
            c *= 2
        layers += [ResidualBlock(c, norm, "zeros", bias=False) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False), norm(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.Conv2d(c, image_channels, 7, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x, c):
        if c.shape != (x.shape[0], self.c_dim):
            raise ValueError(f"c must be (N, c_dim) = {(x.shape[0], self.c_dim)}, got {tuple(c.shape)}")
        labels = c.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return self.main(torch.cat([x, labels], dim=1))


def cycle_consistency_loss(g, f, x, y):
    """Zhu et al. eq. 2: E||F(G(x)) - x||_1 + E||G(F(y)) - y||_1 (mean absolute errors)."""
    return F.l1_loss(f(g(x)), x) + F.l1_loss(g(f(y)), y)


def cyclegan_generator(**kwargs):
    """CycleGAN resnet_9blocks generator (official code: 11.378M parameters), reflection padding, instance norm."""
    return ResnetGenerator(**kwargs)


def stargan_generator(**kwargs):
    """StarGAN generator (Choi et al. 2018), 64 base channels, 5 domain labels, 6 residual blocks."""
    return StarGANGenerator(**kwargs)


def _image(batch, config):
    return torch.randn(batch, config.get("in_channels", 3), 32, 32)


def _image_and_label(batch, config):
    c = torch.zeros(batch, config.get("c_dim", 5))
    c[torch.arange(batch), torch.arange(batch) % c.shape[1]] = 1                        # one-hot target domains
    return torch.randn(batch, config.get("image_channels", 3), 32, 32), c


register(
    "cyclegan_generator", cyclegan_generator,
    small_config=dict(ngf=4, n_blocks=2),
    example_input=_image,
    families=("TC",),
    figures={"params": Figure(11.378e6, "official code (junyanz/pytorch-CycleGAN-and-pix2pix) prints 11.378 M for "
                                   "resnet_9blocks with instance norm; the paper prints no count", 0.001)},
)
register(
    "stargan_generator", stargan_generator,
    small_config=dict(conv_dim=4, c_dim=3, repeat_num=2),
    example_input=_image_and_label,
    families=("TC",),
    figures={},   # 8,430,528 parameters (hand count in the tests); the documents and the paper print none
)
