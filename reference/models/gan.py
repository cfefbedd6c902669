"""Reference GAN (MLP generator / discriminator) and the StyleGAN mapping network and AdaIN synthesis block.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  A l.399-440   the design-patterns report: G(z; theta_g) from a noise prior p_z(z), D(x; theta_d)
                a scalar probability of being real, min_G max_D V(D, G) (eq. 6, l.411).
  R l.1045-1080 Rossi: the discriminator maximises log D(s) + log(1 - D(G(z))) (l.1068), the generator
                minimises it (l.1074), trained by alternating SGD steps.
  O l.778-798   lecture notes: GAN training and objective (formulas lost in O).
  O l.930-944   StyleGAN: a mapping network z -> w (l.934-935); AdaIN(x_i, y) = y_s,i (x_i - mu(x_i)) /
                sigma(x_i) + y_b,i with y = (y_s, y_b) an affine transform of w (l.936-939; the formula
                is lost in O, restored from the paper); per-layer noise images (l.940-941).
Papers:
  Goodfellow et al., "Generative Adversarial Nets", NIPS 2014, arXiv:1406.2661 (eq. 1; Sec. 3: train
  G to maximise log D(G(z)) instead of minimising log(1 - D(G(z))) early in training; Sec. 5: ReLU /
  sigmoid generator, maxout discriminator with dropout). The sizes are the paper's released MNIST
  configuration (goodfeli/adversarial): G 100 -> 1200 -> 1200 -> 784 (ReLU, sigmoid), D maxout
  240 x 5 pieces, 240 x 5, sigmoid, dropout 0.2 on D's input and 0.5 on its hidden layers.
  Karras, Laine, Aila, "A Style-Based Generator Architecture for Generative Adversarial Networks",
  CVPR 2019, arXiv:1812.04948 (Sec. 2: 8-layer MLP mapping, 512-d z and w, eq. 1 AdaIN, learned
  per-channel noise scaling B; App. C: leaky ReLU 0.2, z normalised (pixel norm) before mapping).

Corrections of the documents: A l.411 draws z ~ p_g(z) and R l.1068-1074 z ~ theta_s: the noise
comes from the prior p_z (Goodfellow eq. 1); p_g is the generator's distribution. R l.1066 says
the binary cross-entropy is "maximized": the log-likelihood is maximised, i.e. the BCE minimised.
A l.413's "minimum p_r/(p_r + p_g) equals 1/2" is the optimal discriminator D*(x) = p_r/(p_r + p_g),
which is 1/2 everywhere at the equilibrium p_g = p_r.
Deviations from StyleGAN, stated: no equalized learning rate, no lr multiplier 0.01 on the mapping,
no truncation or style mixing; the block upsamples with nearest neighbours (the paper: bilinear);
noise scales start at 0 (as the official code), so the untrained block is deterministic.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import register

__all__ = ["MLPGenerator", "MLPDiscriminator", "Maxout", "discriminator_loss", "generator_loss", "PixelNorm",
           "MappingNetwork", "AdaIN", "NoiseInjection", "StyleBlock", "gan_generator", "gan_discriminator",
           "stylegan_mapping", "stylegan_block"]


class MLPGenerator(nn.Module):
    """z (N, latent_dim) -> sample (N, out_features) in [0, 1] (sigmoid output)."""

    def __init__(self, latent_dim=100, hidden=(1200, 1200), out_features=28 * 28):
        super().__init__()
        self.latent_dim = latent_dim
        sizes = [latent_dim] + list(hidden)
        layers = [m for a, b in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU(inplace=True))]
        self.model = nn.Sequential(*layers, nn.Linear(sizes[-1], out_features), nn.Sigmoid())

    def forward(self, z):
        return self.model(z)


class Maxout(nn.Module):
    """Goodfellow et al. 2013: x (N, in) -> max over ``pieces`` affine maps, (N, out)."""

    def __init__(self, in_features, out_features, pieces):
        super().__init__()
        self.out_features, self.pieces = out_features, pieces
        self.linear = nn.Linear(in_features, out_features * pieces)

    def forward(self, x):
        return self.linear(x).unflatten(-1, (self.out_features, self.pieces)).amax(-1)


class MLPDiscriminator(nn.Module):
    """x (N, in_features) -> probability of being real, (N,)."""

    def __init__(self, in_features=28 * 28, hidden=(240, 240), pieces=5, input_dropout=0.2, dropout=0.5):
        super().__init__()
        layers, size = [nn.Dropout(input_dropout)], in_features
        for i, h in enumerate(hidden):
            if i > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(Maxout(size, h, pieces))
            size = h
        self.model = nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(size, 1), nn.Sigmoid())

    def forward(self, x):
        return self.model(x.flatten(1)).reshape(-1)


def discriminator_loss(d_real, d_fake):
    """-[log D(x) + log(1 - D(G(z)))] averaged (the negated inner maximisation of Goodfellow eq. 1)."""
    return F.binary_cross_entropy(d_real, torch.ones_like(d_real)) + \
        F.binary_cross_entropy(d_fake, torch.zeros_like(d_fake))


def generator_loss(d_fake, non_saturating=True):
    """-log D(G(z)) (Sec. 3, the default) or the minimax form log(1 - D(G(z))), averaged."""
    if non_saturating:
        return F.binary_cross_entropy(d_fake, torch.ones_like(d_fake))
    return -F.binary_cross_entropy(d_fake, torch.zeros_like(d_fake))


class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2 over features) + eps) (Karras et al. 2018; StyleGAN normalises z with it)."""

    def __init__(self, eps=1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + self.eps)


class MappingNetwork(nn.Module):
    """StyleGAN mapping f: z (N, z_dim) -> w (N, w_dim): pixel norm, then ``num_layers`` FC + LeakyReLU(0.2)."""

    def __init__(self, z_dim=512, w_dim=512, num_layers=8, hidden=512):
        super().__init__()
        sizes = [z_dim] + [hidden] * (num_layers - 1) + [w_dim]
        layers = [m for a, b in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(a, b), nn.LeakyReLU(0.2))]
        self.model = nn.Sequential(PixelNorm(), *layers)

    def forward(self, z):
        return self.model(z)


class AdaIN(nn.Module):
    """AdaIN(x, w) = y_s (x - mu(x)) / sigma(x) + y_b, (y_s, y_b) = A(w) (StyleGAN eq. 1).

    x (N, C, H, W), w (N, w_dim) -> (N, C, H, W); mu, sigma per sample and channel over H x W
    (sigma the biased standard deviation, with eps in the variance). A's scale bias starts at 1."""

    def __init__(self, channels, w_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.style = nn.Linear(w_dim, 2 * channels)                                     # A
        nn.init.zeros_(self.style.bias)
        with torch.no_grad():
            self.style.bias[:channels] = 1.0

    def forward(self, x, w):
        y_s, y_b = self.style(w)[:, :, None, None].chunk(2, dim=1)
        mu = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
        return y_s * (x - mu) * torch.rsqrt(var + self.eps) + y_b


class NoiseInjection(nn.Module):
    """x + B * noise: noise (N, 1, H, W) single-channel Gaussian image (drawn when not given), B per channel."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))                     # B, starts at 0

    def forward(self, x, noise=None):
        if noise is None:
            noise = torch.randn(x.shape[0], 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
        return x + self.weight * noise


class StyleBlock(nn.Module):
    """One StyleGAN synthesis block: upsample x2 -> [conv3x3 -> noise -> LeakyReLU(0.2) -> AdaIN] x 2.

    forward(x (N, in_channels, H, W), w (N, w_dim), noises=None or two (N, 1, 2H, 2W) images)
    -> (N, out_channels, 2H, 2W)."""

    def __init__(self, in_channels=512, out_channels=512, w_dim=512, upsample=True):
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.noise1, self.noise2 = NoiseInjection(out_channels), NoiseInjection(out_channels)
        self.adain1, self.adain2 = AdaIN(out_channels, w_dim), AdaIN(out_channels, w_dim)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x, w, noises=(None, None)):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.adain1(self.act(self.noise1(self.conv1(x), noises[0])), w)
        return self.adain2(self.act(self.noise2(self.conv2(x), noises[1])), w)


def gan_generator(**kwargs):
    """GAN generator (Goodfellow et al. 2014, MNIST): z 100 -> 1200 -> 1200 -> 784, ReLU, sigmoid."""
    return MLPGenerator(**kwargs)


def gan_discriminator(**kwargs):
    """GAN discriminator (Goodfellow et al. 2014, MNIST): maxout 240x5, 240x5, sigmoid, dropout 0.2 / 0.5."""
    return MLPDiscriminator(**kwargs)


def stylegan_mapping(**kwargs):
    """StyleGAN mapping network: 8 FC layers of 512, LeakyReLU 0.2, pixel-normalised z."""
    return MappingNetwork(**kwargs)


def stylegan_block(**kwargs):
    """StyleGAN synthesis block: 2x upsampling, two 3x3 convs of 512 with noise and AdaIN from w (512)."""
    return StyleBlock(**kwargs)


def _noise(batch, config):
    return torch.randn(batch, config.get("latent_dim", 100))


def _sample(batch, config):
    return torch.rand(batch, config.get("in_features", 28 * 28))


def _z(batch, config):
    return torch.randn(batch, config.get("z_dim", 512))


def _features_and_w(batch, config):
    return torch.randn(batch, config.get("in_channels", 512), 4, 4), torch.randn(batch, config.get("w_dim", 512))


register("gan_generator", gan_generator, small_config=dict(latent_dim=8, hidden=(16, 16), out_features=64),
         example_input=_noise, families=(), figures={})
register("gan_discriminator", gan_discriminator,
         small_config=dict(in_features=64, hidden=(12, 12), pieces=3, input_dropout=0.0, dropout=0.0),
         example_input=_sample, families=(), figures={})
register("stylegan_mapping", stylegan_mapping, small_config=dict(z_dim=16, w_dim=16, hidden=16, num_layers=3),
         example_input=_z, families=(), figures={})   # 2,101,248 parameters at 8 x 512 (hand count in the tests)
register("stylegan_block", stylegan_block, small_config=dict(in_channels=6, out_channels=4, w_dim=8),
         example_input=_features_and_w, families=(), figures={})
