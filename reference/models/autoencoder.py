"""Reference autoencoders: fully connected (784-64-32-64-784), convolutional, denoising, and the VAE.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  A l.322-348  the design-patterns report's encoder-decoder code: Linear(784, 64) ReLU Linear(64, 32)
               | Linear(32, 64) ReLU Linear(64, 784) Sigmoid.
  R l.990-1035 Rossi: autoencoder, reconstruction loss sum ||s - D(E(s))||_2 (l.996), regularised
               loss (l.1006), "convolutional layers and transpose convolution can be employed to
               create deep convolutional Autoencoders" (l.1008), VAEs force a Gaussian latent (l.1035).
  O l.751-776  lecture notes: autoencoder trained with MSE (l.755); denoising autoencoder, corrupted
               input x~ = x + noise, MSE against the clean x (l.759-766); VAE, the encoder outputs
               the parameters of a Gaussian, ELBO = E_q[ln p(x|z)] - KL(q(z|x) || p(z)) with
               p(z) = N(0, I), reparameterization z = mu + sigma * eps, eps ~ N(0, 1) (l.768-776).
Papers:
  Vincent, Larochelle, Bengio, Manzagol, "Extracting and Composing Robust Features with Denoising
  Autoencoders", ICML 2008 (masking noise: a random fraction of the inputs set to 0).
  Kingma, Welling, "Auto-Encoding Variational Bayes", ICLR 2014, arXiv:1312.6114 (Sec. 2.4 the
  reparameterization; App. B the Gaussian KL -KL = 1/2 sum(1 + log sigma^2 - mu^2 - sigma^2);
  App. C Bernoulli MLP decoder). The VAE sizes 784-400-20 are pytorch/examples' vae.

Corrections of A l.326-348, as printed the code does not run:
- it uses ``torch.nn.Linear`` but imports only ``torch.nn as nn`` (NameError: torch);
- ``forward`` returns ``out``, which is never assigned (NameError): it returns ``decoded`` here;
- it has no flatten: Linear(28 * 28, ...) needs (N, 784) inputs; images (N, 1, 28, 28) are
  flattened here and the reconstruction is given back in the input's shape.
R l.996 sums unsquared L2 norms; O l.755 and this code use the mean squared error (``reconstruction_loss``).
The convolutional autoencoder (no document fixes its layers) is: stride-2 3x3 convs -> BN -> ReLU
down, 3x3/2 transposed convs (output_padding 1, exact doubling) -> BN -> ReLU up, sigmoid output.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import register

__all__ = ["FCAutoencoder", "ConvAutoencoder", "DenoisingAutoencoder", "VAE", "reconstruction_loss", "vae_loss",
           "fc_autoencoder", "conv_autoencoder", "denoising_autoencoder", "vae"]


def reconstruction_loss(reconstruction, target):
    """Mean squared error (O l.755)."""
    return F.mse_loss(reconstruction, target)


class FCAutoencoder(nn.Module):
    """A l.326-348 corrected: x (N, 784) or (N, 1, 28, 28) -> reconstruction in [0, 1], same shape."""

    def __init__(self, in_features=28 * 28, hidden=64, latent=32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, in_features), nn.Sigmoid())

    def forward(self, x):
        encoded = self.encoder(x.flatten(1))
        decoded = self.decoder(encoded)
        return decoded.reshape(x.shape)


def _conv_bn_relu(cin, cout):
    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _up(cin, cout):
    """3x3/2 transposed conv that doubles H and W exactly."""
    return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False)


class ConvAutoencoder(nn.Module):
    """x (N, C, H, W) in [0, 1], H and W divisible by 2^len(widths) -> reconstruction (N, C, H, W).

    encoder: per width a 3x3/2 conv -> BN -> ReLU (the last one is the latent map);
    decoder: 3x3/2 transposed convs -> BN -> ReLU back through the widths, then one to C channels, sigmoid."""

    def __init__(self, in_channels=1, widths=(32, 64)):
        super().__init__()
        self.levels = len(widths)
        sizes = [in_channels] + list(widths)
        self.encoder = nn.Sequential(*[layer for a, b in zip(sizes[:-1], sizes[1:]) for layer in _conv_bn_relu(a, b)])
        up = []
        for a, b in zip(sizes[:1:-1], sizes[-2:0:-1]):
            up += [_up(a, b), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        last = nn.ConvTranspose2d(sizes[1], in_channels, 3, stride=2, padding=1, output_padding=1)
        self.decoder = nn.Sequential(*up, last, nn.Sigmoid())

    def forward(self, x):
        if x.shape[-1] % 2 ** self.levels or x.shape[-2] % 2 ** self.levels:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {2 ** self.levels}")
        return self.decoder(self.encoder(x))


class DenoisingAutoencoder(nn.Module):
    """An autoencoder trained to undo a corruption (O l.759-766, Vincent et al. 2008).

    forward(x) reconstructs whatever it is given (deterministic); ``corrupt(x)`` applies the noise:
    "gaussian" x + noise_std * eps, or "masking" (each input set to 0 with probability noise_std);
    ``loss(clean)`` = MSE(forward(corrupt(clean)), clean)."""

    def __init__(self, autoencoder=None, noise="gaussian", noise_std=0.3, **conv_kwargs):
        super().__init__()
        if noise not in ("gaussian", "masking"):
            raise ValueError(f"noise must be 'gaussian' or 'masking', got {noise!r}")
        self.autoencoder = autoencoder if autoencoder is not None else ConvAutoencoder(**conv_kwargs)
        self.noise, self.noise_std = noise, noise_std

    def corrupt(self, x, generator=None):
        if self.noise == "gaussian":
            return x + self.noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        keep = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) >= self.noise_std
        return x * keep

    def forward(self, x):
        return self.autoencoder(x)

    def loss(self, clean, generator=None):
        return reconstruction_loss(self(self.corrupt(clean, generator)), clean)


class VAE(nn.Module):
    """MLP VAE (Kingma & Welling 2014, App. C): x (N, 784) or (N, 1, 28, 28) in [0, 1] ->
    (Bernoulli means of the reconstruction, x's shape; mu (N, latent); logvar (N, latent)).

    z = mu + exp(logvar / 2) * eps (Sec. 2.4); eps ~ N(0, I) is drawn in train mode unless given,
    eval mode decodes z = mu."""

    def __init__(self, in_features=28 * 28, hidden=400, latent=20):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, in_features), nn.Sigmoid())

    def encode(self, x):
        h = self.encoder(x.flatten(1))
        return self.mu(h), self.logvar(h)

    @staticmethod
    def reparameterize(mu, logvar, eps):
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x, eps=None):
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu) if self.training else torch.zeros_like(mu)
        z = self.reparameterize(mu, logvar, eps)
        return self.decoder(z).reshape(x.shape), mu, logvar


def vae_loss(reconstruction, x, mu, logvar):
    """Negative ELBO per sample (O l.776): (loss, reconstruction term, KL term), each averaged over the batch.

    reconstruction = -E_q[ln p(x|z)] for a Bernoulli decoder (binary cross entropy, summed over pixels,
    one sample of z); KL(N(mu, sigma^2) || N(0, I)) = -1/2 sum(1 + logvar - mu^2 - exp(logvar)) (App. B)."""
    n = x.shape[0]
    recon = F.binary_cross_entropy(reconstruction, x, reduction="sum") / n
    kl = -0.5 * torch.sum(1 + logvar - mu.square() - logvar.exp()) / n
    return recon + kl, recon, kl


def fc_autoencoder(**kwargs):
    """A l.326-348 autoencoder, corrected: 784 -> 64 -> 32 -> 64 -> 784, ReLU, sigmoid output."""
    return FCAutoencoder(**kwargs)


def conv_autoencoder(**kwargs):
    """Convolutional autoencoder: 3x3/2 convs (1 -> 32 -> 64) and 3x3/2 transposed convs back, BN -> ReLU."""
    return ConvAutoencoder(**kwargs)


def denoising_autoencoder(**kwargs):
    """Denoising convolutional autoencoder (Gaussian noise, std 0.3), trained on MSE to the clean input."""
    return DenoisingAutoencoder(**kwargs)


def vae(**kwargs):
    """MLP VAE 784 -> 400 -> (mu, logvar) 20 -> 400 -> 784, Bernoulli decoder (Kingma & Welling 2014)."""
    return VAE(**kwargs)


def _flat(batch, config):
    return torch.rand(batch, config.get("in_features", 28 * 28))


def _image(batch, config):
    """MNIST-sized images (28x28), rounded up to a multiple of 2^levels."""
    step = 2 ** len(config.get("widths", (32, 64)))
    size = -(-28 // step) * step
    return torch.rand(batch, config.get("in_channels", 1), size, size)


register("fc_autoencoder", fc_autoencoder, small_config=dict(), example_input=_flat, families=(),
         figures={})   # 105,392 parameters (hand count in the tests); the documents print none
register("conv_autoencoder", conv_autoencoder, small_config=dict(widths=(4, 8)), example_input=_image,
         families=("TC", "BNR"), figures={})
register("denoising_autoencoder", denoising_autoencoder, small_config=dict(widths=(4, 8)), example_input=_image,
         families=("TC", "BNR"), figures={})
register("vae", vae, small_config=dict(in_features=64, hidden=16, latent=4), example_input=_flat, families=(),
         figures={})
