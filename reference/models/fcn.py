"""Reference FCN-8s (VGG-16 made fully convolutional, learned transposed-conv upsampling, skips).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.1309-1355  Krawiec: fully convolutional networks, convolutions and transposed convolutions,
                 pooling, re-sampling; any input size; segmentation as image-to-image mapping.
  P l.1580-1600  stride and fractional (transposed) convolutions: stride 1/k upsamples by k.
  K l.2460, R l.679  FCN for semantic segmentation (mIoU 62.2 on VOC, K).
Paper:
  Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
  arXiv:1411.4038 (Sec. 3.1: fc6 / fc7 as 7x7 and 1x1 convolutions; Sec. 3.3 upsampling by
  backwards-strided convolution initialised to bilinear interpolation and learned; Sec. 4.2 /
  Fig. 3: FCN-8s fuses 2x-upsampled predictions with 1x1 score layers on pool4, then pool3,
  then upsamples 8x; Table 1: FCN-VGG16 has 134M parameters) and the authors' Caffe model
  voc-fcn8s (conv1_1 padded by 100, ceil-mode pooling, crops of 5 / 9 / 31 pixels).

Layers (VGG-16, every conv 3x3 with bias and ReLU, 2x2/2 max pool with ceil_mode):
    conv1 64 x2 (the first padded 100, the rest 1), conv2 128 x2, conv3 256 x3 (-> pool3),
    conv4 512 x3 (-> pool4), conv5 512 x3, fc6 4096 @ 7x7 (valid) ReLU dropout,
    fc7 4096 @ 1x1 ReLU dropout, score_fr n_class @ 1x1
    upscore2        ConvTranspose 4x4 / 2 (no bias)   + score_pool4 (1x1 on pool4, cropped by 5)
    upscore_pool4   ConvTranspose 4x4 / 2 (no bias)   + score_pool3 (1x1 on pool3, cropped by 9)
    upscore8        ConvTranspose 16x16 / 8 (no bias) cropped by 31 to the input size
The 100-pixel padding lets any input size reach fc6; the crops undo the offsets it creates. The
transposed convs start as bilinear upsampling and are learned. The score layers keep torch's
default initialisation (the paper zero-initialises them, which would zero every earlier gradient
at the first step: no use for gradient parity tests). Parameter names follow the Caffe
model (as the pytorch-fcn port). No BatchNorm (VGG-16 of 2014). Nothing here imports cvkernels,
torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["FCN8s", "fcn8s", "bilinear_kernel"]


def bilinear_kernel(channels, kernel_size):
    """Weight (channels, channels, k, k) of a transposed conv that upsamples each channel bilinearly
    (diagonal: channel c only feeds channel c)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt = (1 - (og - center).abs() / factor)
    filt = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    weight[range(channels), range(channels)] = filt
    return weight


class FCN8s(nn.Module):
    """FCN-8s. channels: the widths of the five VGG stages (64, 128, 256, 512, 512); fc: fc6/fc7 width."""

    def __init__(self, num_classes=21, in_channels=3, channels=(64, 128, 256, 512, 512), fc=4096, dropout=0.5):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        convs = [("conv1_1", in_channels, c1, 100), ("conv1_2", c1, c1, 1), "pool1",
                 ("conv2_1", c1, c2, 1), ("conv2_2", c2, c2, 1), "pool2",
                 ("conv3_1", c2, c3, 1), ("conv3_2", c3, c3, 1), ("conv3_3", c3, c3, 1), "pool3",
                 ("conv4_1", c3, c4, 1), ("conv4_2", c4, c4, 1), ("conv4_3", c4, c4, 1), "pool4",
                 ("conv5_1", c4, c5, 1), ("conv5_2", c5, c5, 1), ("conv5_3", c5, c5, 1), "pool5"]
        for item in convs:
            if isinstance(item, str):
                setattr(self, item, nn.MaxPool2d(2, stride=2, ceil_mode=True))
            else:
                name, cin, cout, pad = item
                setattr(self, name, nn.Conv2d(cin, cout, 3, padding=pad))
                setattr(self, "relu" + name[4:], nn.ReLU(inplace=True))
        self._order = [item if isinstance(item, str) else item[0] for item in convs]
        self.fc6 = nn.Conv2d(c5, fc, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d(dropout)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d(dropout)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
        self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, bias=False)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                with torch.no_grad():
                    m.weight.copy_(bilinear_kernel(m.in_channels, m.kernel_size[0]))

    def forward(self, x):
        size = x.shape[-2:]
        h = x
        for name in self._order:
            h = getattr(self, name)(h)
            if name.startswith("conv"):
                h = getattr(self, "relu" + name[4:])(h)
            elif name == "pool3":
                pool3 = h
            elif name == "pool4":
                pool4 = h
        h = self.drop6(self.relu6(self.fc6(h)))
        h = self.drop7(self.relu7(self.fc7(h)))
        h = self.score_fr(h)
        upscore2 = self.upscore2(h)                                           # 1/16
        s4 = self.score_pool4(pool4)
        s4 = s4[:, :, 5:5 + upscore2.shape[2], 5:5 + upscore2.shape[3]]
        h = upscore2 + s4
        upscore_pool4 = self.upscore_pool4(h)                                 # 1/8
        s3 = self.score_pool3(pool3)
        s3 = s3[:, :, 9:9 + upscore_pool4.shape[2], 9:9 + upscore_pool4.shape[3]]
        h = upscore_pool4 + s3
        h = self.upscore8(h)                                                  # 1/1
        return h[:, :, 31:31 + size[0], 31:31 + size[1]]


def fcn8s(**kwargs):
    """FCN-8s on VGG-16 (Long et al. 2015): 134M parameters (Table 1, FCN-VGG16)."""
    return FCN8s(**kwargs)


def _input(batch, config):
    size = 224 if config.get("channels") is None else 32
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "fcn8s", fcn8s,
    small_config=dict(channels=(4, 8, 8, 16, 16), fc=16, num_classes=5, dropout=0.0),  # 32x32 (232 padded)
    example_input=_input,
    families=("TC",),
    figures={
        "params": Figure(134e6, "paper: Long et al. 2015, Table 1 (FCN-VGG16: 134M)", 0.01,
                         note="all weights and biases, 21 classes; Table 1's row is the 32s net, the 8s net adds "
                              "the two score layers and two 4x4 upsamplers (~16K parameters)"),
    },
)
