"""Reference video networks: C3D (3x3x3 convs) and R(2+1)D-18 (factorised (2+1)-D convs).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  O l.240-256  lecture notes: 3-D convolution slides a d x k x k kernel over (time, height, width)
               (l.241-243); C3D applies 3-D convs to the video volume (l.245-247); R3D puts the
               ResNet structure on 3-D convs (l.249-251); R(2+1)D decomposes each 3-D conv into a
               spatial and a temporal one (l.253-255).
  O l.257-284  T3D, I3D, S3D, SlowFast, X3D in one or two sentences each (see the end of this file).
Papers / code:
  Tran, Bourdev, Fergus, Torresani, Paluri, "Learning Spatiotemporal Features with 3D Convolutional
  Networks", ICCV 2015, arXiv:1412.0767 (Sec. 3.3, Fig. 3: 8 convs, all 3x3x3 stride 1 with padding,
  64, 128, 256, 256, 512, 512, 512, 512 filters; 5 max pools, pool1 1x2x2, the others 2x2x2; fc6 and
  fc7 4096 with dropout, softmax over Sports-1M's 487 classes; 16-frame 112x112 crops). The paper
  prints no parameter count. Its released Caffe model (and every port, e.g. the Keras Sports-1M
  weights) zero-pads pool5's input spatially by 1, so pool5 gives 512 x 1 x 4 x 4 = 8192 fc6 inputs:
  ``pool5_padding=True`` (default) does that.
  Tran, Wang, Torresani, Ray, LeCun, Paluri, "A Closer Look at Spatiotemporal Convolutions for Action
  Recognition", CVPR 2018, arXiv:1711.11248 (Sec. 3.5, eq. 1: a t x d x d conv from N_{i-1} to N_i
  channels becomes a 1 x d x d spatial conv to M_i channels, BN, ReLU, and a t x 1 x 1 temporal conv,
  M_i = floor(t d^2 N_{i-1} N_i / (d^2 N_{i-1} + t N_i)), which keeps the parameter count of the
  full 3-D conv; Table 1: R(2+1)D-18 = ResNet-18 basic blocks [2, 2, 2, 2], 64..512 channels,
  spatio-temporal stride 2 at the start of conv3_x-conv5_x).
  torchvision.models.video.r2plus1d_18 (31,505,325 parameters, Kinetics-400) fixes the rest: the
  stem is 1x7x7/(1,2,2) to 45 channels then 3x1x1 to 64 (45, not eq. 1's 83: the authors' VMZ code),
  no max pool, 1x1x1 strided projection shortcuts, and both convs of a block use the M_i of the
  block's first conv (computed from its input width). ``mid_rule="torchvision"`` (default) does that;
  ``mid_rule="paper"`` applies eq. 1 to every conv (the second conv of a widening block then reads
  N_{i-1} = N_i, a wider M_i): 33,370,839 parameters instead of 31,505,325.
The convs are nn.Conv3d (no cvkernels family: families ()); BatchNorm3d -> ReLU in R(2+1)D.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register, register_unmodelled

__all__ = ["C3D", "midplanes", "Conv2Plus1D", "R2Plus1DBlock", "R2Plus1D", "c3d", "r2plus1d_18"]

C3D_WIDTHS = (64, 128, 256, 256, 512, 512, 512, 512)
C3D_POOL_AFTER = (0, 1, 3, 5, 7)                     # pool1 after conv1, pool2 after conv2, pool3-5 after 3b/4b/5b


class C3D(nn.Module):
    """C3D: clip (N, 3, T, H, W) = (N, 3) + clip_size -> logits (N, num_classes).

    widths: the 8 conv widths; fc: fc6/fc7 width; clip_size fixes fc6's input count."""

    def __init__(self, num_classes=487, widths=C3D_WIDTHS, fc=4096, dropout=0.5, clip_size=(16, 112, 112),
                 pool5_padding=True, in_channels=3):
        super().__init__()
        if len(widths) != 8:
            raise ValueError(f"C3D has 8 convs, got {len(widths)} widths")
        self.clip_size = tuple(clip_size)
        layers, cin = [], in_channels
        t, h, w = clip_size
        for i, cout in enumerate(widths):
            layers += [nn.Conv3d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            cin = cout
            if i in C3D_POOL_AFTER:
                kernel = (1, 2, 2) if i == 0 else (2, 2, 2)
                pad = (0, 1, 1) if i == 7 and pool5_padding else (0, 0, 0)
                layers.append(nn.MaxPool3d(kernel, stride=kernel, padding=pad))
                t, h, w = [(s + 2 * p - k) // k + 1 for s, p, k in zip((t, h, w), pad, kernel)]
        if min(t, h, w) < 1:
            raise ValueError(f"clip_size {clip_size} is too small for five poolings")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin * t * h * w, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),      # fc6
            nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),                   # fc7
            nn.Linear(fc, num_classes))                                                      # fc8

    def forward(self, x):
        if tuple(x.shape[2:]) != self.clip_size:
            raise ValueError(f"clip of size {tuple(x.shape[2:])}, the model was built for {self.clip_size}")
        return self.classifier(self.features(x).flatten(1))


def midplanes(in_planes, out_planes, t=3, d=3):
    """M_i = floor(t d^2 N_{i-1} N_i / (d^2 N_{i-1} + t N_i)) (Tran et al. 2018, eq. 1)."""
    return (t * d * d * in_planes * out_planes) // (d * d * in_planes + t * out_planes)


class Conv2Plus1D(nn.Sequential):
    """(2+1)-D conv: 1 x 3 x 3 spatial conv (stride (1, s, s)) to ``mid`` -> BN -> ReLU -> 3 x 1 x 1 temporal conv
    (stride (s, 1, 1)). x (N, in, T, H, W) -> (N, out, T / s, H / s, W / s)."""

    def __init__(self, in_planes, out_planes, mid, stride=1):
        super().__init__(
            nn.Conv3d(in_planes, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, out_planes, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False))


class R2Plus1DBlock(nn.Module):
    """Basic residual block of two (2+1)-D convs: relu(bn(conv2(relu(bn(conv1(x))))) + shortcut(x))."""

    def __init__(self, in_planes, planes, stride=1, mid_rule="torchvision"):
        super().__init__()
        mid1 = midplanes(in_planes, planes)
        mid2 = mid1 if mid_rule == "torchvision" else midplanes(planes, planes)
        self.conv1 = nn.Sequential(Conv2Plus1D(in_planes, planes, mid1, stride), nn.BatchNorm3d(planes),
                                   nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(Conv2Plus1D(planes, planes, mid2), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm3d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class R2Plus1D(nn.Module):
    """R(2+1)D: clip (N, 3, T, H, W) -> logits (N, num_classes); layers: blocks per stage ([2, 2, 2, 2] = 18)."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes=400, width=64, stem_mid=45, mid_rule="torchvision",
                 in_channels=3):
        super().__init__()
        if mid_rule not in ("torchvision", "paper"):
            raise ValueError(f"mid_rule must be 'torchvision' or 'paper', got {mid_rule!r}")
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, stem_mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_mid), nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, width, (3, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = [R2Plus1DBlock(cin if j == 0 else planes, planes, 2 if (i > 0 and j == 0) else 1, mid_rule)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.avgpool(x).flatten(1))


def c3d(**kwargs):
    """C3D (Tran et al. 2015): 8 3x3x3 convs, 5 pools, fc6/fc7 4096, Sports-1M's 487 classes, 16x112x112 clips."""
    return C3D(**kwargs)


def r2plus1d_18(**kwargs):
    """R(2+1)D-18 (Tran et al. 2018) as torchvision's r2plus1d_18: 31.5M parameters, 400 classes."""
    return R2Plus1D(**kwargs)


def _clip(batch, config):
    return torch.randn(batch, config.get("in_channels", 3), *config.get("clip_size", (16, 112, 112)))


def _r2plus1d_clip(batch, config):
    size = (16, 112, 112) if config.get("width", 64) >= 32 else (8, 32, 32)
    return torch.randn(batch, config.get("in_channels", 3), *size)


register(
    "c3d", c3d,
    small_config=dict(widths=(4, 8, 8, 8, 16, 16, 16, 16), fc=32, num_classes=5, dropout=0.0, clip_size=(16, 32, 32)),
    example_input=_clip,
    families=(),
    figures={"params": Figure(78e6, "issue 8 ('~78M with fc6/fc7'); the C3D paper prints no count", 0.01,
                              config=dict(num_classes=101),
                              note="with a 101-class (UCF101) fc8 and the released model's pool5 padding (8192 fc6 "
                                   "inputs): 78,409,573; the paper's Sports-1M head (487) gives 79,991,015 and an "
                                   "unpadded pool5 (4608 fc6 inputs) 65.3M")},
)
register(
    "r2plus1d_18", r2plus1d_18,
    small_config=dict(layers=(1, 1, 1, 1), width=8, stem_mid=6, num_classes=5),
    example_input=_r2plus1d_clip,
    families=(),
    figures={"params": Figure(31.5e6, "torchvision: r2plus1d_18 31,505,325 (issue 8: R(2+1)D-18 31.5M)", 0.002,
                              note="M_i of eq. 1 from each block's first conv for both convs, stem 45 (torchvision)")},
)

register_unmodelled("i3d", "O l.262-265 names only the idea (two-stream inflated 3-D ConvNet with an Inception "
                           "backbone): no inflation rule, widths, kernel sizes or pooling are given anywhere in the "
                           "documents")
register_unmodelled("slowfast", "O l.271-273 names only the two pathways (slow: low frame rate, many channels; "
                                "fast: high frame rate, few channels; lateral connections): no alpha/beta/tau ratios, "
                                "depths, widths or fusion layers are given")
register_unmodelled("x3d", "O l.275-284 lists the six expansion axes (frame rate, frames, resolution, depth, width, "
                           "bottleneck width) with their symbols lost and no values for any X3D model")
