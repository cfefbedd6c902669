"""The reference models of the convolution family (grouped, depthwise, dilated, transposed convs)
against the figures the documents publish, their structure, and their small CPU configurations.

- parameter counts of every standard configuration (built on the meta device: no memory, no
  arithmetic) against the registry's figures and against counts derived here by hand from the
  papers' layer tables (an independent check of the structure, not a copy of the code);
- multiply-adds (reference/models/flops.py) where a figure exists (EfficientNet-B0 0.39B, K l.1662;
  MobileNet 569M; Xception 8.4B, K l.1667; ShuffleNet 140M; ResNeXt-50 4.2G);
- the structural features each model exists for (groups=2 in AlexNet, depthwise convs with
  groups == in_channels, dilations 6/12/18 in DeepLab's ASPP, transposed convs in U-Net / FCN /
  DCGAN, channel shuffle, SE, ...);
- forward + backward of every small configuration (finite, right shape, every parameter reached);
- every convolution of the small models reproduced by reference.ops.conv in float64 (the oracle
  covers the shapes the models use).
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reference import models  # noqa: E402
from reference.models import alexnet, dcgan, deeplab, efficientnet, fcn, mobilenet_v1, oct_denoiser  # noqa: E402
from reference.models import resnet, shufflenet_v1, unet, xception  # noqa: E402
from reference.models.flops import count_macs, count_params  # noqa: E402
from reference.ops import conv as ref_conv  # noqa: E402

NEW_MODELS = ["alexnet", "mobilenet_v1", "xception", "shufflenet_v1", "efficientnet_b0", "resnext50_32x4d",
              "resnext101_32x8d", "deeplabv3plus", "fcn8s", "unet", "dcgan_generator", "dcgan_discriminator",
              "oct_denoiser"]


def _meta(name, **config):
    with torch.device("meta"):
        return models.create(name, **config)


def _meta_input(name, config=None):
    spec = models.get(name)
    with torch.device("meta"):
        return spec.example_input(1, dict(config or {}))


def _convs(model, kind=nn.Conv2d):
    return [m for m in model.modules() if type(m) is kind]


# ----------------------------------------------------------------------------- hand counts

def _conv(cin, cout, k, groups=1, bias=True, bn=False):
    kh, kw = (k, k) if isinstance(k, int) else k
    return cin // groups * cout * kh * kw + (cout if bias else 0) + (2 * cout if bn else 0)


def _alexnet_count():
    """Krizhevsky et al. 2012, Fig. 2: conv2/4/5 see half the maps (two GPUs)."""
    convs = (_conv(3, 96, 11) + _conv(96, 256, 5, 2) + _conv(256, 384, 3) + _conv(384, 384, 3, 2)
             + _conv(384, 256, 3, 2))
    fcs = (256 * 6 * 6 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    return convs + fcs


def _dcgan_counts(nz=100, ngf=64, ndf=64, nc=3):
    g = [nz, 8 * ngf, 4 * ngf, 2 * ngf, ngf, nc]
    gen = sum(a * b * 16 for a, b in zip(g[:-1], g[1:])) + sum(2 * c for c in g[1:-1])
    d = [nc, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 1]
    dis = sum(a * b * 16 for a, b in zip(d[:-1], d[1:])) + sum(2 * c for c in d[2:-1])  # no BN on the first
    return gen, dis


def _unet_count(width, cin, classes, bn, depth=4):
    widths = [width * 2 ** i for i in range(depth + 1)]
    total, c = 0, cin
    for w in widths:
        total += _conv(c, w, 3, bias=not bn, bn=bn) + _conv(w, w, 3, bias=not bn, bn=bn)
        c = w
    for w in reversed(widths[:-1]):
        total += c * w * 4 + w                                          # 2x2 up-conv with bias
        total += _conv(2 * w, w, 3, bias=not bn, bn=bn) + _conv(w, w, 3, bias=not bn, bn=bn)
        c = w
    return total + _conv(c, classes, 1)


def _fcn8s_count(classes=21):
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512), (512, 512),
           (512, 512), (512, 512), (512, 512), (512, 512)]
    total = sum(_conv(a, b, 3) for a, b in vgg)
    total += _conv(512, 4096, 7) + _conv(4096, 4096, 1) + _conv(4096, classes, 1)
    total += _conv(512, classes, 1) + _conv(256, classes, 1)                 # score_pool4, score_pool3
    total += classes * classes * (16 + 16 + 256)                             # three upsamplers, no bias
    return total


# name -> (exact count at the standard config, where the exact number comes from)
EXACT = {
    "alexnet": (_alexnet_count(), "hand count, paper Fig. 2"),
    "mobilenet_v1": (4_231_976, "Keras MobileNet(alpha=1.0) trainable parameters"),
    "xception": (22_855_952, "paper Table 3 / Keras Xception trainable parameters"),
    "shufflenet_v1": (1_865_728, "megvii code's 1,864,728 + the fc bias"),
    "efficientnet_b0": (5_288_548, "torchvision efficientnet_b0"),
    "resnext50_32x4d": (25_028_904, "torchvision resnext50_32x4d"),
    "resnext101_32x8d": (88_791_336, "torchvision resnext101_32x8d"),
    "fcn8s": (_fcn8s_count(), "hand count, VGG-16 + the FCN-8s heads"),
    "unet": (_unet_count(64, 1, 2, bn=True), "hand count, 64-wide with BN"),
    "dcgan_generator": (_dcgan_counts()[0], "hand count (pytorch/examples dcgan layers)"),
    "dcgan_discriminator": (_dcgan_counts()[1], "hand count (pytorch/examples dcgan layers)"),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_parameter_counts(name):
    exact, _ = EXACT[name]
    assert count_params(_meta(name)) == exact


FIGURED = [(n, k) for n in NEW_MODELS for k in sorted(models.get(n).figures) if k.startswith("params")]


@pytest.mark.parametrize("name,key", FIGURED, ids=[f"{n}-{k}" for n, k in FIGURED])
def test_parameter_count_against_published_figure(name, key):
    fig = models.get(name).figures[key]
    n = count_params(_meta(name, **fig.config))
    assert abs(n - fig.value) / fig.value <= fig.rtol, (name, n, fig.value, fig.source)


def test_published_figures_are_the_documents():
    """The registry's numbers are the documents' (not recomputed from the code)."""
    figs = {n: models.get(n).figures for n in NEW_MODELS}
    assert figs["alexnet"]["params"].value == 60e6 and "K l.1087" in figs["alexnet"]["params"].source
    assert figs["xception"]["params"].value == 22.8e6 and "K l.1370" in figs["xception"]["params"].source
    assert figs["efficientnet_b0"]["params"].value == 5.3e6 and figs["efficientnet_b0"]["macs"].value == 0.39e9
    assert figs["mobilenet_v1"]["params"].value == 4.2e6
    assert figs["resnext50_32x4d"]["params"].value == 25.0e6
    shuffle = figs["shufflenet_v1"]["params"]
    assert shuffle.value == 1.9e6 and "paper prints no" in shuffle.source
    assert figs["unet"]["params"].value == 7.76e6 and figs["unet"]["params"].config["width"] == 32
    assert figs["fcn8s"]["params"].value == 134e6
    for name in ("deeplabv3plus", "dcgan_generator", "dcgan_discriminator", "oct_denoiser"):
        assert figs[name] == {}            # the documents publish no parameter count for these


def test_unet_7_76m_is_the_unetpp_baseline():
    """P l.1760: 7.76M is a 32-wide U-Net without BatchNorm (UNet++'s baseline), not the 64-wide paper net."""
    for cin in (1, 3):
        n = count_params(_meta("unet", width=32, batch_norm=False, num_classes=1, in_channels=cin))
        assert n == _unet_count(32, cin, 1, bn=False) and round(n / 1e6, 2) == 7.76
    # the figure pins the widths and the learned up-convs, not the normalisation: BN instead of conv bias
    with_bn = count_params(_meta("unet", width=32, batch_norm=True, num_classes=1, in_channels=3))
    assert with_bn == _unet_count(32, 3, 1, bn=True) and round(with_bn / 1e6, 2) == 7.76
    assert round(count_params(_meta("unet", batch_norm=False)) / 1e6, 1) == 31.0   # the 2015 paper's width


MACS = [(n, k) for n in NEW_MODELS for k in sorted(models.get(n).figures) if k.startswith("macs")]


@pytest.mark.parametrize("name,key", MACS, ids=[f"{n}-{k}" for n, k in MACS])
def test_multiply_adds_against_published_figure(name, key):
    fig = models.get(name).figures[key]
    model = _meta(name, **fig.config).eval()
    x = torch.empty(fig.input_shape, device="meta")
    macs = count_macs(model, x).total
    assert abs(macs - fig.value) / fig.value <= fig.rtol, (name, macs, fig.value)


def test_efficientnet_b0_macs_by_type():
    """0.39B (K l.1662): almost all of it in the 1x1 convs; the SE convs are counted, tiny."""
    count = count_macs(_meta("efficientnet_b0").eval(), torch.empty(1, 3, 224, 224, device="meta"))
    assert 0.38e9 < count.total < 0.40e9
    se = sum(v for k, v in count.by_module.items() if ".fc1" in k or ".fc2" in k)
    assert 0 < se < 0.01 * count.total


# ----------------------------------------------------------------------------- structure

def test_alexnet_structure():
    m = _meta("alexnet")
    convs = _convs(m)
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert [c.kernel_size for c in convs] == [(11, 11), (5, 5), (3, 3), (3, 3), (3, 3)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256] and convs[0].stride == (4, 4)
    pools = [p for p in m.modules() if isinstance(p, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 3 and p.stride == 2 for p in pools)   # overlapping
    lrn = [p for p in m.modules() if isinstance(p, nn.LocalResponseNorm)]
    assert len(lrn) == 2 and lrn[0].size == 5 and lrn[0].k == 2 and lrn[0].alpha == 5e-4 and lrn[0].beta == 0.75
    assert sum(isinstance(p, nn.Dropout) for p in m.modules()) == 2
    assert [fc.out_features for fc in m.modules() if isinstance(fc, nn.Linear)] == [4096, 4096, 1000]
    assert m.classifier[1].in_features == 256 * 6 * 6                  # 227 -> 55 -> 27 -> 13 -> 6
    # groups=1 is the "one GPU" variant: more parameters in conv2/4/5
    assert count_params(_meta("alexnet", groups=1)) > count_params(m)
    with pytest.raises(ValueError, match="too small"):
        alexnet.alexnet(image_size=63)


def test_mobilenet_depthwise_separable_blocks():
    m = _meta("mobilenet_v1")
    dw = [c for c in _convs(m) if c.groups > 1]
    assert len(dw) == 13
    assert all(c.groups == c.in_channels == c.out_channels and c.kernel_size == (3, 3) for c in dw)
    assert [c.stride[0] for c in dw] == [s for _, s in mobilenet_v1.CONFIG] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    pw = [c for c in _convs(m) if c.kernel_size == (1, 1)]
    assert len(pw) == 13 and pw[-1].out_channels == 1024
    assert all(c.bias is None for c in _convs(m))
    # every conv -> BN -> ReLU (separate modules, in sequence)
    seqs = [s for s in m.modules() if isinstance(s, mobilenet_v1.ConvBNReLU)]
    assert len(seqs) == 27 and all([type(x) for x in s] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] for s in seqs)
    half = _meta("mobilenet_v1", width_mult=0.5)
    assert [c for c in _convs(half) if c.groups > 1][-1].in_channels == 512


def test_xception_flows_and_separable_convs():
    m = _meta("xception")
    seps = [s for s in m.modules() if isinstance(s, xception.SeparableConv2d)]
    assert len(seps) == 34                                 # 36 conv layers = 34 separable + 2 stem
    for s in seps:                                         # depthwise then pointwise, nothing between
        assert list(dict(s.named_children())) == ["depthwise", "pointwise"]
        assert s.depthwise.groups == s.depthwise.in_channels and s.pointwise.kernel_size == (1, 1)
    blocks = list(m.blocks)
    assert len(blocks) == 12 and sum(b.skip is None for b in blocks) == 8      # 8 middle blocks: identity
    assert [b.skip.out_channels for b in blocks if b.skip is not None] == [128, 256, 728, 1024]
    assert isinstance(blocks[0].rep[0], xception.SeparableConv2d)              # no ReLU before the first
    assert isinstance(blocks[1].rep[0], nn.ReLU) and not blocks[1].rep[0].inplace
    gm = torch.fx.symbolic_trace(xception.SeparableConv2d(4, 8))
    ops = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert ops == ["depthwise", "pointwise"]


def test_xception_middle_block_is_residual():
    torch.manual_seed(0)
    block = xception.XceptionBlock(8, 8, 3).eval()
    for m in block.rep:
        if isinstance(m, nn.BatchNorm2d):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), x)                 # zeroed residual branch: the identity


def test_shufflenet_channel_shuffle_and_units():
    shuffle = shufflenet_v1.ChannelShuffle(3)
    x = torch.arange(12.0).reshape(1, 12, 1, 1)
    # channels (g, n) = (3, 4) -> transpose -> (4, 3): 0 4 8 1 5 9 ...
    assert shuffle(x).flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    m = _meta("shufflenet_v1")
    units = [u for u in m.modules() if isinstance(u, shufflenet_v1.ShuffleUnit)]
    assert len(units) == 16 and sum(u.stride == 2 for u in units) == 3
    assert units[0].conv1.groups == 1 and isinstance(units[0].shuffle, nn.Identity)   # Sec. 3.3
    assert all(u.conv1.groups == 3 and u.conv3.groups == 3 for u in units[1:])
    assert all(u.conv2.groups == u.conv2.in_channels for u in units)                 # depthwise 3x3
    assert units[0].conv3.out_channels == 240 - 24 and units[0].conv1.out_channels == 60
    x = torch.randn(2, 24, 8, 8)
    unit = shufflenet_v1.ShuffleUnit(24, 48, 3, 2)
    y = unit(x)
    assert y.shape == (2, 48, 4, 4) and (y >= 0).all()
    # the first 24 channels of a stride-2 unit are the (rectified) average-pooled input
    torch.testing.assert_close(y[:, :24], torch.relu(F.avg_pool2d(x, 3, 2, 1)))


def test_efficientnet_b0_blocks():
    m = _meta("efficientnet_b0")
    blocks = [b for b in m.modules() if isinstance(b, efficientnet.MBConv)]
    assert len(blocks) == 16
    dws = [c for c in _convs(m) if c.groups > 1]
    assert len(dws) == 16 and all(c.groups == c.in_channels == c.out_channels for c in dws)
    assert [c.kernel_size[0] for c in dws] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert [c.stride[0] for c in dws if c.stride[0] == 2] == [2, 2, 2, 2]
    assert len(blocks[0].block) == 3 and len(blocks[1].block) == 4                # MBConv1 has no expansion
    ses = [s for s in m.modules() if isinstance(s, efficientnet.SqueezeExcitation)]
    assert len(ses) == 16 and ses[1].fc1.out_channels == 4                       # 0.25 x 16 input channels
    assert any(isinstance(a, nn.SiLU) for a in m.modules()) and not any(isinstance(a, nn.ReLU) for a in m.modules())
    assert m.features[0][0].out_channels == 32 and m.features[-1][0].out_channels == 1280
    assert sum(b.use_res_connect for b in blocks) == 9
    assert efficientnet.make_divisible(10) == 16 and efficientnet.make_divisible(32 * 0.25) == 8


def test_resnext_grouped_bottlenecks_and_torchvision_names():
    m = _meta("resnext50_32x4d")
    assert m.layer1[0].conv2.groups == 32 and m.layer1[0].conv2.in_channels == 128     # 32 x 4d
    assert m.layer4[0].conv2.in_channels == 1024 and m.layer4[0].conv2.stride == (2, 2)
    assert _meta("resnext101_32x8d").layer1[0].conv2.in_channels == 256             # 32 x 8d
    r50 = _meta("resnet50")
    assert list(m.state_dict()) == list(r50.state_dict())                          # same names as torchvision
    assert all(c.groups == 1 for c in _convs(r50))                                 # ResNet unchanged
    with pytest.raises(ValueError, match="BasicBlock"):
        resnet.resnet18(groups=2)


def test_resnet_replace_stride_with_dilation():
    x = torch.randn(1, 3, 64, 64)
    m = resnet.resnet50(width=8, num_classes=4, replace_stride_with_dilation=[False, False, True])
    assert [b.conv2.dilation for b in m.layer4] == [(1, 1), (2, 2), (2, 2)]         # torchvision's schedule
    assert m.layer4[0].conv2.stride == (1, 1) and m.layer4[0].downsample[0].stride == (1, 1)
    feats = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    assert feats(x).shape[-1] == 64 // 16                                          # output stride 16
    m8 = resnet.resnet50(width=8, replace_stride_with_dilation=[False, True, True])
    assert [b.conv2.dilation[0] for b in m8.layer4] == [2, 4, 4]
    assert count_params(m) == count_params(resnet.resnet50(width=8, num_classes=4))  # dilation adds nothing
    with pytest.raises(ValueError, match="3 entries"):
        resnet.resnet50(replace_stride_with_dilation=[True])


def test_deeplabv3plus_atrous_structure():
    m = _meta("deeplabv3plus")
    aspp_dw = [c for c in m.aspp.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert [c.dilation for c in aspp_dw] == [(6, 6), (12, 12), (18, 18)]
    assert all(c.groups == c.in_channels == 2048 and c.padding == c.dilation for c in aspp_dw)
    assert len(m.aspp.branches) == 5 and isinstance(m.aspp.branches[-1], deeplab.ImagePooling)
    assert m.aspp.project[0].in_channels == 5 * 256
    assert m.low_level[0].out_channels == 48 and m.low_level[0].in_channels == 256
    dec = [c for c in m.decoder.modules() if isinstance(c, nn.Conv2d)]
    assert [c.groups for c in dec] == [304, 1, 256, 1]                             # separable decoder convs
    assert {b.conv2.dilation for b in m.backbone.layer4} == {(1, 1), (2, 2)}        # output stride 16
    assert len(m.backbone.layer3) == 23                                            # ResNet-101
    os8 = _meta("deeplabv3plus", output_stride=8)
    assert [c.dilation[0] for c in os8.aspp.modules() if isinstance(c, nn.Conv2d) and c.groups > 1] == [12, 24, 36]
    # every separable conv: depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU
    sep = m.aspp.branches[1]
    assert [type(x) for x in sep] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    model, x = models.create_small("deeplabv3plus")
    low, high = model.backbone(x)
    assert low.shape[-1] == x.shape[-1] // 4 and high.shape[-1] == x.shape[-1] // 16
    with pytest.raises(ValueError):
        deeplab.deeplabv3plus(output_stride=32)


def test_fcn8s_upsampling():
    m = _meta("fcn8s")
    ups = _convs(m, nn.ConvTranspose2d)
    assert [(u.kernel_size, u.stride) for u in ups] == [((4, 4), (2, 2)), ((4, 4), (2, 2)), ((16, 16), (8, 8))]
    assert all(u.bias is None for u in ups) and m.conv1_1.padding == (100, 100) and m.fc6.kernel_size == (7, 7)
    assert sum(isinstance(p, nn.MaxPool2d) and p.ceil_mode for p in m.modules()) == 5
    # the upsamplers start as bilinear interpolation: a constant map stays constant inside
    w = fcn.bilinear_kernel(2, 4)
    y = F.conv_transpose2d(torch.ones(1, 2, 5, 5, dtype=torch.float64), w, stride=2)
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.ones_like(y[:, :, 2:-2, 2:-2]))
    assert w[0, 1].abs().sum() == 0                                               # channel c feeds only c
    small, _ = models.create_small("fcn8s")
    for h, w_ in ((32, 32), (45, 37), (70, 64)):                                  # any size, cropped back
        assert small(torch.randn(1, 3, h, w_)).shape == (1, 5, h, w_)


def test_unet_structure():
    m = _meta("unet")
    ups = _convs(m, nn.ConvTranspose2d)
    assert [(u.in_channels, u.out_channels) for u in ups] == [(1024, 512), (512, 256), (256, 128), (128, 64)]
    assert all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    convs3 = [c for c in _convs(m) if c.kernel_size == (3, 3)]
    assert len(convs3) == 18 and all(c.padding == (1, 1) for c in convs3)         # padded: no crop
    assert [c.out_channels for c in convs3[:10:2]] == [64, 128, 256, 512, 1024]
    assert m.head.kernel_size == (1, 1)
    small, x = models.create_small("unet")
    assert small(x).shape == (2, 3) + tuple(x.shape[-2:])
    with pytest.raises(ValueError, match="divisible"):
        small(torch.randn(1, 1, 36, 36))
    plain = unet.unet(width=4, batch_norm=False)
    assert not any(isinstance(b, nn.BatchNorm2d) for b in plain.modules())


def test_dcgan_structure():
    g, d = _meta("dcgan_generator"), _meta("dcgan_discriminator")
    assert isinstance(g, dcgan.DCGANGenerator) and isinstance(d, dcgan.DCGANDiscriminator)
    ups = _convs(g, nn.ConvTranspose2d)
    assert [(u.kernel_size, u.stride, u.padding) for u in ups] == [((4, 4), (1, 1), (0, 0))] + \
        [((4, 4), (2, 2), (1, 1))] * 4
    assert [u.out_channels for u in ups] == [512, 256, 128, 64, 3] and ups[0].in_channels == 100
    assert isinstance(g.main[-1], nn.Tanh) and not isinstance(g.main[-2], nn.BatchNorm2d)   # no BN at the output
    convs = _convs(d)
    assert all(c.kernel_size == (4, 4) for c in convs) and [c.stride[0] for c in convs] == [2, 2, 2, 2, 1]
    assert isinstance(d.main[1], nn.LeakyReLU) and d.main[1].negative_slope == 0.2           # no BN at the input
    assert sum(isinstance(b, nn.BatchNorm2d) for b in d.modules()) == 3
    gs, z = models.create_small("dcgan_generator")
    img = gs(z)
    assert img.shape == (2, 3, 64, 64) and img.abs().max() <= 1
    ds, x = models.create_small("dcgan_discriminator")
    p = ds(img.detach())
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()
    with pytest.raises(ValueError, match="64x64"):
        ds(torch.randn(1, 3, 32, 32))


def test_oct_denoiser_structure():
    m = _meta("oct_denoiser")
    dil = sorted({c.dilation[0] for c in _convs(m) if c.kernel_size == (3, 3)})
    assert dil == [1, 2, 4, 8]
    assert len(_convs(m, nn.ConvTranspose2d)) == 3
    res = [b for b in m.modules() if isinstance(b, oct_denoiser.ResidualBlock)]
    std = [b for b in m.modules() if isinstance(b, oct_denoiser.StandardBlock)]
    assert len(res) == 5 and len(std) == 2 and all(b.shortcut.kernel_size == (1, 1) for b in res)
    assert any(isinstance(a, nn.ELU) for a in m.modules())
    small, x = models.create_small("oct_denoiser")
    assert small(x).shape == x.shape
    relu = oct_denoiser.oct_denoiser(width=4, activation="relu")
    kinds = {type(a) for a in relu.modules()}
    assert nn.ReLU in kinds and nn.ELU not in kinds
    with pytest.raises(ValueError, match="activation"):
        oct_denoiser.oct_denoiser(activation="tanh")


# ----------------------------------------------------------------------------- registry, small configs

def test_registry_families():
    names = models.list_models()
    assert set(NEW_MODELS) <= set(names)
    fam = {n: set(models.get(n).families) for n in NEW_MODELS}
    assert {"alexnet", "resnext50_32x4d", "shufflenet_v1"} <= set(models.list_models("GC"))
    assert {"mobilenet_v1", "xception", "shufflenet_v1", "efficientnet_b0", "deeplabv3plus"} <= \
        set(models.list_models("DW"))
    assert {"deeplabv3plus", "oct_denoiser"} <= set(models.list_models("DIL"))
    assert {"fcn8s", "unet", "dcgan_generator", "oct_denoiser"} <= set(models.list_models("TC"))
    assert "BNR" not in fam["efficientnet_b0"] and "BNR" not in fam["alexnet"]
    # the families a model claims are the conv kinds its standard configuration contains
    for name in NEW_MODELS:
        m = _meta(name)
        convs = _convs(m)
        has = {"DW": any(c.groups == c.in_channels > 1 for c in convs),
               "GC": any(1 < c.groups < c.in_channels for c in convs),
               "DIL": any(c.dilation != (1, 1) for c in convs),
               "TC": bool(_convs(m, nn.ConvTranspose2d))}
        for f, present in has.items():
            if f in fam[name]:
                assert present, (name, f)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_small_config_forward_backward(name):
    model, x = models.create_small(name, batch=2)
    model.train()
    y = model(x)
    assert torch.isfinite(y).all()
    expected = {"dcgan_generator": (2, 3, 64, 64), "dcgan_discriminator": (2,), "deeplabv3plus": (2, 5, 64, 64),
                "fcn8s": (2, 5) + tuple(x.shape[-2:]), "unet": (2, 3) + tuple(x.shape[-2:]),
                "oct_denoiser": tuple(x.shape)}.get(name, (2, 10))
    assert tuple(y.shape) == expected
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    # no active dropout in a small config: a train-mode forward is a function of the input (parity tests
    # compare separate train-mode runs of the same model)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd))
    with torch.no_grad():
        torch.testing.assert_close(model(x), y.detach(), rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", ["alexnet", "shufflenet_v1", "deeplabv3plus", "fcn8s", "unet", "dcgan_generator",
                                  "oct_denoiser", "efficientnet_b0", "resnext50_32x4d"])
def test_reference_conv_reproduces_every_conv_of_the_model(name):
    """Each Conv2d / ConvTranspose2d call in a small model, redone by reference.ops.conv in float64."""
    model, x = models.create_small(name, batch=1)
    model = model.double().eval()
    calls = []

    def hook(module, args, output):
        calls.append((module, args[0].detach().clone(), output.detach().clone()))  # in-place ReLUs follow

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m) in (nn.Conv2d, nn.ConvTranspose2d)]
    with torch.no_grad():
        model(x.double())
    for h in handles:
        h.remove()
    assert calls
    for m, inp, out in calls:
        if isinstance(m, nn.ConvTranspose2d):
            got = ref_conv.conv_transpose2d(inp, m.weight, m.bias, m.stride, m.padding, m.output_padding, m.groups,
                                            m.dilation)
        else:
            got = ref_conv.conv2d(inp, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
        torch.testing.assert_close(got, out, rtol=1e-10, atol=1e-10)
