"""Reference SegNet and DeconvNet (VGG-16 encoders, decoders that unpool with the encoder's max-pool indices).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2521-2524  Kalhor: a "multi-layer deconvolution network" on the VGG 16-layer net (DeconvNet).
  K l.2527-2534  Kalhor: SegNet has no fully-connected layers (fully convolutional); "a decoder up-samples
                 its input using the transferred pool indices from its encoder to produce a sparse
                 feature map(s)".
  O l.548-552    lecture notes: the Deconvolutional Network, an auto-encoder-like CNN whose up-sampling
                 stage uses deconvolution layers, "with strides greater than 1, the output of the
                 deconvolutional layer is enlarged and densified".
  K l.2645-2658  ReSeg (ReNet layers on VGG-16 features): no configuration, recorded as unmodelled below.
Papers:
  Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
  Segmentation", TPAMI 2017, arXiv:1511.00561 (Sec. 3: the encoder is the 13 conv layers of VGG-16, each
  conv - BN - ReLU, 2x2/2 max pooling that stores the argmax indices; each decoder up-samples with the
  indices of its encoder and convolves with a trainable filter bank (conv - BN - ReLU) to produce dense
  maps; the last decoder feeds a soft-max classifier; 29.5M parameters in its comparison with FCN (134M)
  and DeconvNet (252M)) and the authors' Caffe ``segnet_train.prototxt`` (decoder convs conv5_3_D ...
  conv1_1_D mirror the encoder: per stage the convs keep the width except the last, which narrows to the
  next stage's width; conv1_1_D is the 3x3 classifier, no BN).
  Noh, Hong, Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015, arXiv:1505.04366
  (Table 1: VGG-16 conv layers, fc6 7x7 conv 4096 (7x7 -> 1x1), fc7 1x1 4096, deconv-fc6 7x7 4096 -> 512
  (1x1 -> 7x7), then per stage unpooling with the switch variables (the pool indices) and 3x3
  deconvolutions mirroring the encoder, a 1x1 score layer; Sec. 3.2.1: BN after every conv and deconv
  layer).

Deviations, stated: SegNet's convs keep their bias next to BN (as the Caffe model: 29,449,355 parameters
for CamVid's 11 classes, 29.4M); the decoder unpools to the pre-pool size (``output_size``), so any input
whose side is divisible by 32 works. DeconvNet's fc6 / deconv-fc6 kernel is ``fc_kernel`` = input side / 32
(7 for the paper's 224x224; the small config uses 32x32 and 1); its deconvolutions are stride-1 3x3
``nn.ConvTranspose2d`` (padding 1) as in the paper (up-sampling is done by the unpooling), and there is no
dropout (the paper has none). Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register, register_unmodelled

__all__ = ["VGG16_CONVS", "ConvBNReLU", "VGGEncoder", "SegNet", "DeconvNet", "segnet", "deconvnet"]

# convs per VGG-16 stage (Simonyan & Zisserman 2015, configuration D)
VGG16_CONVS = (2, 2, 3, 3, 3)
VGG16_WIDTHS = (64, 128, 256, 512, 512)


class ConvBNReLU(nn.Sequential):
    """3x3 conv (or transposed conv, stride 1), padding 1 -> BatchNorm2d -> ReLU: (B, Cin, H, W) -> (B, Cout, H, W)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, transposed=False, bias=True):
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        super().__init__(conv(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class VGGEncoder(nn.Module):
    """The 13 conv layers of VGG-16 (conv - BN - ReLU) in five stages, each closed by a 2x2/2 max pool that
    returns its argmax indices.

    forward(x (B, C, H, W)) -> (y (B, widths[-1], H/32, W/32), [(indices, pre-pool size) per stage]).
    """

    def __init__(self, in_channels=3, widths=VGG16_WIDTHS, convs=VGG16_CONVS):
        super().__init__()
        self.stages = nn.ModuleList()
        cin = in_channels
        for w, n in zip(widths, convs):
            self.stages.append(nn.Sequential(*[ConvBNReLU(cin if i == 0 else w, w) for i in range(n)]))
            cin = w
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)

    def forward(self, x):
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by 32")
        switches = []
        for stage in self.stages:
            x = stage(x)
            size = x.shape
            x, indices = self.pool(x)
            switches.append((indices, size))
        return x, switches


class SegNet(nn.Module):
    """SegNet (Badrinarayanan et al. 2017): VGG-16 encoder, a mirrored decoder that max-unpools with the
    encoder's indices; (B, C, H, W) -> class scores (B, num_classes, H, W).

    widths: the five stage widths (64, 128, 256, 512, 512); num_classes: 11 (CamVid) in the figure.
    """

    def __init__(self, num_classes=11, in_channels=3, widths=VGG16_WIDTHS, convs=VGG16_CONVS):
        super().__init__()
        self.encoder = VGGEncoder(in_channels, widths, convs)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w, n = widths[i], convs[i]
            layers = [ConvBNReLU(w, w) for _ in range(n - 1)]
            if i > 0:
                layers.append(ConvBNReLU(w, widths[i - 1]))       # narrows to the next decoder's width
            self.decoder.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(widths[0], num_classes, 3, padding=1)    # conv1_1_D, no BN / ReLU

    def forward(self, x):
        x, switches = self.encoder(x)
        for stage, (indices, size) in zip(self.decoder, reversed(switches)):
            x = self.unpool(x, indices, output_size=size)          # sparse map: the encoder's argmax positions
            x = stage(x)
        return self.classifier(x)


class DeconvNet(nn.Module):
    """DeconvNet (Noh et al. 2015, Table 1): VGG-16 encoder, fc6 (fc_kernel x fc_kernel conv) / fc7 (1x1),
    deconv-fc6 (transposed fc_kernel x fc_kernel), then per stage max-unpooling with the encoder's indices and
    3x3 deconvolutions mirroring the encoder, 1x1 score layer; (B, C, 32k, 32k) -> (B, num_classes, 32k, 32k)
    with k = fc_kernel. Every conv and deconv is followed by BN and ReLU.
    """

    def __init__(self, num_classes=21, in_channels=3, widths=VGG16_WIDTHS, convs=VGG16_CONVS, fc=4096, fc_kernel=7):
        super().__init__()
        self.fc_kernel = fc_kernel
        self.encoder = VGGEncoder(in_channels, widths, convs)
        self.fc6 = nn.Sequential(nn.Conv2d(widths[-1], fc, fc_kernel), nn.BatchNorm2d(fc), nn.ReLU(inplace=True))
        self.fc7 = nn.Sequential(nn.Conv2d(fc, fc, 1), nn.BatchNorm2d(fc), nn.ReLU(inplace=True))
        self.deconv_fc6 = nn.Sequential(nn.ConvTranspose2d(fc, widths[-1], fc_kernel), nn.BatchNorm2d(widths[-1]),
                                        nn.ReLU(inplace=True))
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w, n = widths[i], convs[i]
            out = widths[i - 1] if i > 0 else w
            self.decoder.append(nn.Sequential(*[ConvBNReLU(w, out if j == n - 1 else w, transposed=True)
                                                for j in range(n)]))
        self.score = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
        if x.shape[-2] != x.shape[-1] or x.shape[-1] != 32 * self.fc_kernel:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be {32 * self.fc_kernel}x{32 * self.fc_kernel} "
                             f"(fc_kernel={self.fc_kernel})")
        x, switches = self.encoder(x)
        x = self.deconv_fc6(self.fc7(self.fc6(x)))                  # k x k -> 1 x 1 -> k x k
        for stage, (indices, size) in zip(self.decoder, reversed(switches)):
            x = stage(self.unpool(x, indices, output_size=size))
        return self.score(x)


def segnet(**kwargs):
    """SegNet (VGG-16 encoder, index-unpooling decoder); 29.4M parameters at 11 classes."""
    return SegNet(**kwargs)


def deconvnet(**kwargs):
    """DeconvNet (VGG-16 encoder, fc6/fc7, unpooling + 3x3 deconvolutions); 252M parameters at 21 classes."""
    return DeconvNet(**kwargs)


def _segnet_input(batch, config):
    size = 32 if config.get("widths", VGG16_WIDTHS)[0] < 16 else 224
    return torch.randn(batch, config.get("in_channels", 3), size, size)


def _deconvnet_input(batch, config):
    size = 32 * config.get("fc_kernel", 7)
    return torch.randn(batch, config.get("in_channels", 3), size, size)


_SMALL_WIDTHS = (4, 8, 8, 16, 16)
register(
    "segnet", segnet,
    small_config=dict(widths=_SMALL_WIDTHS, num_classes=3),              # 32x32 input
    example_input=_segnet_input,
    families=("BNR",),
    figures={
        "params": Figure(29.4e6, "paper: Badrinarayanan et al. 2017 (SegNet, its parameter comparison)", 0.005,
                         note="VGG-16 encoder + mirrored decoder, conv bias and BN affine, 3x3 classifier, 11 "
                              "classes (CamVid): 29,449,355; the documents (K l.2527-2534) print no count"),
    },
)
register(
    "deconvnet", deconvnet,
    small_config=dict(widths=_SMALL_WIDTHS, fc=16, fc_kernel=1, num_classes=3),   # 32x32 input, fc6 1x1
    example_input=_deconvnet_input,
    families=("TC", "BNR"),
    figures={
        "params": Figure(252e6, "paper: Badrinarayanan et al. 2017 (SegNet's comparison: DeconvNet 252M)", 0.005,
                         note="VGG-16 convs, fc6 7x7 / fc7 / deconv-fc6 7x7 (4096 wide), 13 3x3 deconvs, BN "
                              "after each, 1x1 score layer, 21 classes (VOC); the documents print no count"),
    },
)

register_unmodelled(
    "reseg",
    "K l.2645-2658 describe ReSeg only as ReNet layers (four RNNs sweeping the image horizontally and "
    "vertically in both directions) stacked on pre-trained VGG-16 conv layers and followed by up-sampling "
    "layers: no configuration (which VGG layers, number of ReNet layers, RNN type and units, patch sizes, "
    "up-sampling layers) and no figure")
