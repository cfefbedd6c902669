"""Reference Siamese network (A l.505-541 code, corrected) with the contrastive and triplet losses.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  A l.442-471  the design-patterns report: twin networks with tied weights joined by an energy
               function; contrastive loss (eq. 7, l.450) (1 - Y) 1/2 D_W^2 + Y 1/2 max(0, m - D_W)^2
               with Y = 0 for similar pairs, D_W the Euclidean distance, m the margin; triplet loss
               (eq. 8, l.461) max(0, d(A, P) - d(A, N) + m).
  A l.505-541  the code: Conv2d(1, 96, 11, stride 4) ReLU MaxPool(3, 2) Conv2d(96, 256, 5) ReLU |
               Linear(256, 512) ReLU Linear(512, 128); forward(input1, input2) runs the same
               network (shared weights) on both.
  R l.986      the triplet loss with squared distances (FaceNet form).
Papers:
  Bromley et al., "Signature Verification using a Siamese Time Delay Neural Network", NIPS 1993.
  Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006
  (the contrastive loss, eq. 4). Schroff, Kalenichenko, Philbin, "FaceNet", CVPR 2015 (triplet loss).

Corrections of the code and text, stated:
- as printed (A l.513-541) ``network_forward`` and ``forward`` are dedented out of the class and
  the ``nn.Sequential(...)`` of the cnn is split over two code blocks: they are methods here;
- Linear(256, 512) needs the conv stack to end in a 256 x 1 x 1 map, i.e. inputs of 51-54 pixels
  (conv1 (H - 11) / 4 + 1 = 11, pool (11 - 3) / 2 + 1 = 5, conv2 5 - 5 + 1 = 1); any other size
  fails in the code. The default ``image_size=51`` keeps that; ``global_pool=True`` (an addition)
  averages the last map to 1 x 1 so any size >= 51 works; other sizes without it raise ValueError;
- A l.454 calls eq. 7 "the triplet loss function": it is the contrastive loss (Hadsell et al.).
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import register

__all__ = ["SiameseNetwork", "contrastive_loss", "triplet_loss", "siamese_network"]


class SiameseNetwork(nn.Module):
    """forward(input1, input2) each (N, in_channels, S, S) -> (embedding1, embedding2) each (N, embedding_dim).

    widths: (conv1, conv2) channels (96, 256); fc: (hidden, embedding) sizes (512, 128)."""

    def __init__(self, in_channels=1, widths=(96, 256), fc=(512, 128), global_pool=False):
        super().__init__()
        c1, c2 = widths
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=11, stride=4), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, stride=1), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else None
        self.fc = nn.Sequential(nn.Linear(c2, fc[0]), nn.ReLU(inplace=True), nn.Linear(fc[0], fc[1]))

    def network_forward(self, x):
        """One twin: x (N, C, S, S) -> (N, embedding_dim)."""
        output = self.cnn(x)
        if self.pool is not None:
            output = self.pool(output)
        elif output.shape[-2:] != (1, 1):
            raise ValueError(f"input {tuple(x.shape[-2:])} leaves a {tuple(output.shape[-2:])} map; the fc layer "
                             "takes 1x1 (inputs of 51-54 pixels) unless global_pool=True")
        return self.fc(output.flatten(1))

    def forward(self, input1, input2):
        return self.network_forward(input1), self.network_forward(input2)


def contrastive_loss(embedding1, embedding2, label, margin=1.0):
    """A l.450 (Hadsell et al. eq. 4), averaged over the batch: label (N,) 0 similar, 1 dissimilar."""
    d = F.pairwise_distance(embedding1, embedding2, eps=0.0)
    label = label.to(d.dtype)
    return ((1 - label) * 0.5 * d.square() + label * 0.5 * torch.clamp(margin - d, min=0).square()).mean()


def triplet_loss(anchor, positive, negative, margin=1.0, squared=False):
    """A l.461: max(0, d(A, P) - d(A, N) + m), averaged; squared=True uses ||.||^2 (R l.986, FaceNet)."""
    d_ap = F.pairwise_distance(anchor, positive, eps=0.0)
    d_an = F.pairwise_distance(anchor, negative, eps=0.0)
    if squared:
        d_ap, d_an = d_ap.square(), d_an.square()
    return torch.clamp(d_ap - d_an + margin, min=0).mean()


def siamese_network(**kwargs):
    """A l.505-541 Siamese network, corrected: Conv 1->96 k11 s4, pool 3/2, 96->256 k5, FC 256->512->128."""
    return SiameseNetwork(**kwargs)


def _pair(batch, config):
    c = config.get("in_channels", 1)
    return torch.randn(batch, c, 51, 51), torch.randn(batch, c, 51, 51)


register("siamese_network", siamese_network, small_config=dict(widths=(8, 16), fc=(32, 8)), example_input=_pair,
         families=(), figures={})   # 823,616 parameters (hand count in the tests); the documents print none
