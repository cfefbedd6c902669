"""The classic classification CNNs of ARCHITECTURES.md (LeNet-5, ZFNet, VGG, NIN, GoogLeNet,
Inception-v3/v4/ResNet-v2, Wide ResNet, PyramidNet, Highway, DenseNet, SE / CBAM / scSE) against
the figures the documents publish, their structure, and their small CPU configurations.

- parameter counts of every standard configuration (meta device: shapes only) against the
  registry's figures and against counts derived here by hand from the papers' layer tables (an
  independent check of the structure); the figures the models cannot match are asserted at their
  measured value, with the reason (UNMATCHED);
- GoogLeNet module by module against the params / ops columns of P l.1039-1058;
- multiply-adds (reference/models/flops.py) where a figure exists;
- the structural features each model exists for (highway gates, dense connectivity, additive
  widening, factorized / asymmetric convs, attention placement, ...);
- forward + backward of every small configuration (finite, right shape, every parameter reached).
"""
import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reference import models  # noqa: E402
from reference.models import densenet, googlenet, highway, inception, lenet, nin, pyramidnet  # noqa: E402
from reference.models import senet, vgg, wide_resnet, zfnet  # noqa: E402
from reference.models.flops import count_macs, count_params  # noqa: E402

NEW_MODELS = ["lenet5", "zfnet", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "nin_cifar10", "googlenet", "inception_v3",
              "inception_v4", "inception_resnet_v2", "wide_resnet28_10", "pyramidnet164", "pyramidnet200_imagenet",
              "highway_cifar", "highway_mlp", "densenet121", "densenet_bc", "se_resnet50", "cbam_resnet50",
              "scse_unet"]


def _meta(name, **config):
    with torch.device("meta"):
        return models.create(name, **config)


def _macs(model, shape):
    return count_macs(model.eval(), torch.empty(shape, device="meta"))


# ----------------------------------------------------------------------------- hand counts

def _conv(cin, cout, k, bias=True, bn=False):
    kh, kw = (k, k) if isinstance(k, int) else k
    return cin * cout * kh * kw + (cout if bias else 0) + (2 * cout if bn else 0)


def _fc(cin, cout):
    return cin * cout + cout


def _lenet_counts():
    """LeCun et al. 1998, Sec. II-B: the per-layer counts the paper prints, and the modern variant."""
    paper = 156 + 12 + 1516 + 32 + 48120 + 10164 + 84 * 10
    modern = _conv(1, 6, 5) + _conv(6, 16, 5) + _fc(400, 120) + _fc(120, 84) + _fc(84, 10)
    return paper, modern


def _zfnet_count():
    """Zeiler & Fergus 2014, Fig. 3: dense layers 3-5 (one GPU), 6x6x256 into fc6."""
    convs = _conv(3, 96, 7) + _conv(96, 256, 5) + _conv(256, 384, 3) + _conv(384, 384, 3) + _conv(384, 256, 3)
    return convs + _fc(256 * 36, 4096) + _fc(4096, 4096) + _fc(4096, 1000)


def _vgg_count(config, bn=False):
    total, c = 0, 3
    for v in vgg.CONFIGS[config]:
        if v != "M":
            total += _conv(c, v, 3, bn=bn)
            c = v
    return total + _fc(512 * 49, 4096) + _fc(4096, 4096) + _fc(4096, 1000)


def _nin_count():
    return (_conv(3, 192, 5) + _conv(192, 160, 1) + _conv(160, 96, 1) + _conv(96, 192, 5) + 2 * _conv(192, 192, 1)
            + _conv(192, 192, 3) + _conv(192, 192, 1) + _conv(192, 10, 1))


def _inception_module(cin, n1, r3, n3, r5, n5, pool):
    return (_conv(cin, n1, 1) + _conv(cin, r3, 1) + _conv(r3, n3, 3) + _conv(cin, r5, 1) + _conv(r5, n5, 5)
            + _conv(cin, pool, 1))


def _googlenet_counts():
    """Per module from the table's widths (P l.1039-1058), and the whole net without / with the aux heads."""
    per_module, cin = {}, 192
    for name, row in googlenet.INCEPTION_TABLE.items():
        per_module[name] = _inception_module(cin, *row[:6])
        cin = row[0] + row[2] + row[4] + row[5]
    total = _conv(3, 64, 7) + _conv(64, 64, 1) + _conv(64, 192, 3) + sum(per_module.values()) + _fc(1024, 1000)
    aux = sum(_conv(c, 128, 1) + _fc(128 * 16, 1024) + _fc(1024, 1000) for c in (512, 528))
    return per_module, total, total + aux


def _wrn_count(depth, k, classes=10):
    n, c, total = (depth - 4) // 6, 16, _conv(3, 16, 3, bias=False)
    for w in (16 * k, 32 * k, 64 * k):
        for j in range(n):
            total += 2 * c + _conv(c, w, 3, bias=False) + 2 * w + _conv(w, w, 3, bias=False)
            if j == 0:
                total += _conv(c, w, 1, bias=False)                      # projection where the shape changes
            c = w
    return total + 2 * c + _fc(c, classes)


def _pyramidnet164_count(classes=10):
    """Han et al. 2017: 54 bottleneck units of width 16 + 5k (alpha / N = 270 / 54), zero-padded shortcuts."""
    total, c = _conv(3, 16, 3, bias=False, bn=True), 16
    for k in range(1, 55):
        w = 16 + 5 * k
        total += 2 * c + _conv(c, w, 1, bias=False, bn=True) + _conv(w, w, 3, bias=False, bn=True) + \
            _conv(w, 4 * w, 1, bias=False, bn=True)
        c = 4 * w
    return total + 2 * c + _fc(c, classes)


def _highway_count():
    """FitNet-4 widths: a plain conv per width, highway layers (H and T convs) for the rest, GAP + fc."""
    total, c = 0, 3
    for group in highway.FITNET4_LAYOUT:
        if group != "M":
            w, count = group
            total += _conv(c, w, 3) + (count - 1) * 2 * _conv(w, w, 3)
            c = w
    return total + _fc(c, 10)


def _densenet_count(growth, blocks, init, imagenet, classes, bn_size=4):
    total = _conv(3, init, 7 if imagenet else 3, bias=False, bn=imagenet)
    c = init
    for i, n in enumerate(blocks):
        for _ in range(n):
            total += 2 * c + _conv(c, bn_size * growth, 1, bias=False, bn=True) + _conv(bn_size * growth, growth, 3,
                                                                                       bias=False)
            c += growth
        if i != len(blocks) - 1:
            total += 2 * c + _conv(c, c // 2, 1, bias=False)
            c //= 2
    return total + 2 * c + _fc(c, classes)


def _se_resnet50_count(cbam=False):
    """torchvision ResNet-50 + an SE / CBAM MLP (C -> C/16 -> C with biases) per bottleneck (+ 7x7 conv + BN)."""
    total = 25_557_032
    for blocks, c in ((3, 256), (4, 512), (6, 1024), (3, 2048)):
        total += blocks * (_conv(c, c // 16, 1) + _conv(c // 16, c, 1) + (98 + 2 if cbam else 0))
    return total


# name -> (exact count at the standard config, where the exact number comes from)
EXACT = {
    "lenet5": (_lenet_counts()[1], "hand count: the document's conv block + fc 120-84-10"),
    "zfnet": (_zfnet_count(), "hand count, paper Fig. 3"),
    "vgg16": (_vgg_count("D"), "hand count, paper Table 1 (torchvision vgg16: 138,357,544)"),
    "vgg16_bn": (_vgg_count("D", bn=True), "hand count (torchvision vgg16_bn: 138,365,992)"),
    "vgg19": (_vgg_count("E"), "hand count, paper Table 1 (torchvision vgg19: 143,667,240)"),
    "vgg19_bn": (_vgg_count("E", bn=True), "hand count (torchvision vgg19_bn: 143,678,248)"),
    "nin_cifar10": (_nin_count(), "hand count, the authors' CIFAR-10 definition"),
    "googlenet": (_googlenet_counts()[1], "hand count, the table's widths"),
    "inception_v3": (23_834_568, "torchvision inception_v3 without AuxLogits"),
    "inception_v4": (42_679_816, "timm inception_v4"),
    "inception_resnet_v2": (55_843_464, "timm inception_resnet_v2"),
    "wide_resnet28_10": (_wrn_count(28, 10), "hand count, paper Table 1"),
    "pyramidnet164": (_pyramidnet164_count(), "hand count, widths 16 + 5k"),
    "highway_cifar": (_highway_count(), "hand count of the reconstructed layout"),
    "densenet121": (_densenet_count(32, (6, 12, 24, 16), 64, True, 1000), "hand count (torchvision: 7,978,856)"),
    "densenet_bc": (_densenet_count(40, (31, 31, 31), 80, False, 10), "hand count, BC-190 k=40"),
    "se_resnet50": (_se_resnet50_count(), "hand count (timm seresnet50: 28,088,024)"),
    "cbam_resnet50": (_se_resnet50_count(cbam=True), "hand count"),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_parameter_counts(name):
    exact, _ = EXACT[name]
    assert count_params(_meta(name)) == exact


def test_hand_counts_agree_with_the_published_implementations():
    """The hand counts reproduce the counts torchvision / timm print (checks of the hand counts)."""
    assert _vgg_count("D") == 138_357_544 and _vgg_count("E") == 143_667_240
    assert _vgg_count("D", bn=True) == 138_365_992 and _vgg_count("E", bn=True) == 143_678_248
    assert _densenet_count(32, (6, 12, 24, 16), 64, True, 1000) == 7_978_856
    assert _se_resnet50_count() == 28_088_024
    assert _wrn_count(28, 10) == 36_479_194


# (model, figure) -> (the measured count, why the document's figure is not matched)
UNMATCHED = {
    ("zfnet", "params"): (62_357_608, "K l.1088 repeats AlexNet's rounded 60M; ZFNet's dense conv3-5 are larger"),
    ("googlenet", "params"): (6_998_552, "K's 4M matches neither the table's net (6.8M in the table's own K) nor "
                                         "any part of it"),
    ("inception_v4", "params"): (42_679_816, "no Inception-v4 configuration has 35M; the released net has 42.7M"),
    ("se_resnet50", "params_kalhor"): (28_088_024, "27.5M is the SE paper's rounded ~25M + ~2.5M (2.1% low)"),
}
PARAM_FIGURES = [(n, k) for n in NEW_MODELS for k in sorted(models.get(n).figures) if k.startswith("params")]


@pytest.mark.parametrize("name,key", PARAM_FIGURES, ids=[f"{n}-{k}" for n, k in PARAM_FIGURES])
def test_parameter_count_against_published_figure(name, key):
    fig = models.get(name).figures[key]
    n = count_params(_meta(name, **fig.config))
    deviation = abs(n - fig.value) / fig.value
    if (name, key) in UNMATCHED:
        measured, reason = UNMATCHED[(name, key)]
        assert n == measured and deviation > fig.rtol, (name, key, n, reason)
    else:
        assert deviation <= fig.rtol, (name, key, n, fig.value, fig.source)


def test_published_figures_are_the_documents():
    """The registry's numbers are the documents' (not recomputed from the code)."""
    figs = {n: models.get(n).figures for n in NEW_MODELS}
    expected = {("lenet5", "params"): (0.060e6, "K l.1086"), ("zfnet", "params"): (60e6, "K l.1088"),
                ("vgg16", "params"): (138e6, "K l.1089"), ("vgg19", "macs"): (19.6e9, "P l.1153"),
                ("googlenet", "params"): (4e6, "K l.1090"), ("inception_v3", "params"): (23.6e6, "K l.1159"),
                ("inception_v4", "params"): (35e6, "K l.1161"), ("inception_resnet_v2", "params"): (55.8e6, "K l.1162"),
                ("wide_resnet28_10", "params"): (36.5e6, "K l.1400"),
                ("wide_resnet28_10", "params_wrn40_4"): (8.9e6, "K l.1400"),
                ("wide_resnet28_10", "params_wrn16_8"): (11.0e6, "K l.1400"),
                ("pyramidnet164", "params"): (27.0e6, "K l.1369"),
                ("pyramidnet200_imagenet", "params"): (116.4e6, "K l.1369"),
                ("highway_cifar", "params"): (2.3e6, "K l.1160"), ("densenet_bc", "params"): (25.6e6, "K l.1331"),
                ("densenet_bc", "params_bc250_k24"): (15.3e6, "K l.1331"),
                ("se_resnet50", "params_kalhor"): (27.5e6, "K l.1483"),
                ("cbam_resnet50", "params_resnext101_32x4d"): (48.96e6, "K l.1562")}
    for (name, key), (value, source) in expected.items():
        assert figs[name][key].value == value and source in figs[name][key].source, (name, key)
    for name, module in (("inception3a", 159), ("inception5b", 1388)):                  # P l.1044, l.1054
        assert figs["googlenet"][f"module_params.{name}"].value == module * 1024
    assert figs["nin_cifar10"] == {} and figs["scse_unet"] == {}                  # no count printed anywhere


MAC_FIGURES = [(n, k) for n in NEW_MODELS for k in sorted(models.get(n).figures) if k.startswith("macs")]


@pytest.mark.parametrize("name,key", MAC_FIGURES, ids=[f"{n}-{k}" for n, k in MAC_FIGURES])
def test_multiply_adds_against_published_figure(name, key):
    fig = models.get(name).figures[key]
    macs = _macs(_meta(name, **fig.config), fig.input_shape).total
    assert abs(macs - fig.value) / fig.value <= fig.rtol, (name, key, macs, fig.value)


# ----------------------------------------------------------------------------- GoogLeNet table

# module -> (measured weights + biases, measured multiply-adds) where the table's row is not its widths'
GOOGLENET_UNMATCHED = {
    "inception4c": ("params", 510_104, "463K printed; the widths give 498K (the row's 100M ops match them)"),
    "inception5a": ("both", 1_043_456, "1072K / 54M printed; 4e's widths with 832 inputs give 1019K / 51M"),
}


def test_googlenet_modules_against_the_table():
    """P l.1039-1058: each module's weights + biases (K = 1024) and multiply-adds (M = 10^6) vs the table."""
    model = _meta("googlenet")
    count = _macs(model, (1, 3, 224, 224))
    figs = models.get("googlenet").figures
    per_module, _, _ = _googlenet_counts()
    for name, row in googlenet.INCEPTION_TABLE.items():
        params = count_params(getattr(model, name))
        ops = sum(v for k, v in count.by_module.items() if k.startswith(name + "."))
        assert params == per_module[name]                                            # the table's widths
        fig_p, fig_o = figs[f"module_params.{name}"], figs[f"module_ops.{name}"]
        assert fig_p.value == row[6] * 1024 and fig_o.value == row[7] * 1e6
        dev_p, dev_o = abs(params - fig_p.value) / fig_p.value, abs(ops - fig_o.value) / fig_o.value
        which, measured, reason = GOOGLENET_UNMATCHED.get(name, (None, None, None))
        if which is None:
            assert dev_p <= fig_p.rtol and dev_o <= fig_o.rtol, (name, params, ops)
            continue
        assert params == measured and dev_p > fig_p.rtol, (name, reason)
        assert (dev_o > fig_o.rtol) == (which == "both"), (name, ops, reason)
    # the stem's 1x1 + 3x3 row (112K, 360M) and the linear layer (1000K, 1M) match too
    stem = count_params(model.conv2) + count_params(model.conv3)
    stem_ops = sum(v for k, v in count.by_module.items() if k.startswith(("conv2.", "conv3.")))
    assert abs(stem - 112 * 1024) / (112 * 1024) < 0.01 and abs(stem_ops - 360e6) / 360e6 < 0.01
    assert abs(count_params(model.fc) - 1000 * 1024) < 1024 and count.by_module["fc"] == 1024 * 1000
    # the first conv's row (2.7K, 34M) is a misprint: 7x7x3x64 weights + 64 biases, 112x112 outputs
    assert count_params(model.conv1) == 9472 and count.by_module["conv1.0"] == 9408 * 112 * 112
    assert googlenet.TABLE_OTHER["conv1"] == (2.7, 34)


def test_googlenet_structure_and_auxiliary_heads():
    model = _meta("googlenet")
    widths = [getattr(model, n).out_channels for n in googlenet.INCEPTION_TABLE]
    assert widths == [256, 480, 512, 512, 512, 528, 832, 832, 1024]                # the table's output depths
    kernels = {c.kernel_size for c in model.modules() if isinstance(c, nn.Conv2d)}
    assert kernels == {(7, 7), (1, 1), (3, 3), (5, 5)}                             # 5x5 branches are 5x5
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count_params(_meta("googlenet", aux_logits=True)) == _googlenet_counts()[2]
    small, x = models.create_small("googlenet")
    small.train()
    out = small(x)
    assert isinstance(out, googlenet.GoogLeNetOutputs) and all(t.shape == (2, 10) for t in out)
    small.eval()
    with torch.no_grad():
        assert small(x).shape == (2, 10)                                            # no aux heads at inference
    with pytest.raises(ValueError, match="auxiliary"):
        googlenet.googlenet(aux_logits=True, image_size=48)


# ----------------------------------------------------------------------------- structure

def test_lenet5_document_code_and_paper_variant():
    m = lenet.lenet5()
    assert [type(x) for x in m.features.layer2] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]   # the split pool, put back
    assert m.features(torch.randn(1, 1, 32, 32)).shape == (1, 16, 5, 5)                 # forward is a method
    assert [f.out_features for f in m.modules() if isinstance(f, nn.Linear)] == [120, 84, 10]
    paper = lenet.lenet5(variant="paper")
    assert count_params(paper) == _lenet_counts()[0] == 60_840
    c3 = next(x for x in paper.modules() if isinstance(x, lenet.PartialConv2d))
    assert sum(len(t) for t in c3.table) == 60 and count_params(c3) == 1516            # Table I: 60 connections
    assert len(set(lenet.C3_TABLE)) == 16 and lenet.C3_TABLE[-1] == tuple(range(6))
    x = torch.randn(3, 1, 32, 32)
    y = paper(x)
    assert y.shape == (3, 10) and (y >= 0).all()                                        # RBF penalties
    # a C3 map sees only its inputs: changing S2 map 5 leaves C3 map 0 (inputs 0, 1, 2) unchanged
    s2 = torch.randn(1, 6, 14, 14)
    s2b = s2.clone()
    s2b[:, 5] += 1
    torch.testing.assert_close(c3(s2)[:, 0], c3(s2b)[:, 0])
    assert not torch.allclose(c3(s2)[:, 15], c3(s2b)[:, 15])
    with pytest.raises(ValueError, match="32x32"):
        m(torch.randn(1, 1, 28, 28))


def test_zfnet_first_layers_and_map_sizes():
    m = _meta("zfnet")
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in convs[:2]] == [((7, 7), (2, 2)), ((5, 5), (2, 2))]
    assert all(c.groups == 1 for c in convs)                                     # dense, one GPU
    sizes = []
    hooks = [c.register_forward_hook(lambda mod, i, o: sizes.append(o.shape[-1])) for c in convs]
    m(torch.empty(1, 3, 224, 224, device="meta"))
    for h in hooks:
        h.remove()
    assert sizes == [110, 26, 13, 13, 13] and m.classifier[1].in_features == 256 * 6 * 6   # Fig. 3
    with pytest.raises(ValueError, match="too small"):
        zfnet.zfnet(image_size=46)


def test_vgg_layers_and_names():
    for name, n_convs in (("vgg16", 13), ("vgg19", 16)):
        m = _meta(name)
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        assert len(convs) == n_convs and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
        assert sum(isinstance(p, nn.MaxPool2d) for p in m.modules()) == 5
        assert [f.out_features for f in m.classifier if isinstance(f, nn.Linear)] == [4096, 4096, 1000]
    keys = list(_meta("vgg16").state_dict())
    assert keys[:2] == ["features.0.weight", "features.0.bias"] and keys[-1] == "classifier.6.bias"   # torchvision's
    bn = _meta("vgg19_bn")
    seq = list(bn.features)
    assert all(type(seq[i + 1]) is nn.BatchNorm2d and type(seq[i + 2]) is nn.ReLU
               for i, x in enumerate(seq) if isinstance(x, nn.Conv2d))
    # two 3x3 layers see 5x5 with 2 (3^2 + 1) = 20 parameters vs 26 (P l.905-916)
    assert 2 * _conv(1, 1, 3) == 20 and _conv(1, 1, 5) == 26
    small, x = models.create_small("vgg16")
    with pytest.raises(ValueError, match="inputs"):
        small(torch.randn(1, 3, 64, 64))


def test_nin_mlpconv_and_global_average_pooling():
    m = nin.nin_cifar10(width=12, dropout=0.0).eval()
    assert not any(isinstance(x, nn.Linear) for x in m.modules())                # no fully connected layer
    mlp = [x for x in m.modules() if isinstance(x, nin.MLPConv)]
    assert len(mlp) == 3 and [[c.kernel_size[0] for c in b if isinstance(c, nn.Conv2d)] for b in mlp] == \
        [[5, 1, 1], [5, 1, 1], [3, 1, 1]]
    x = torch.randn(2, 3, 32, 32)
    maps = m.features(x)
    assert maps.shape == (2, 10, 8, 8)
    torch.testing.assert_close(m(x), maps.mean((2, 3)))                           # one map per class, averaged


def test_inception_v3_factorized_and_asymmetric_convs():
    m = _meta("inception_v3")
    kernels = [c.kernel_size for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert kernels.count((1, 7)) == kernels.count((7, 1)) == 4 * 3 + 1            # 6b-e (3 each) and 7a
    assert kernels.count((1, 3)) == kernels.count((3, 1)) == 4                    # 7b, 7c: two pairs each
    assert [b.out_channels for b in m.mixed_35_17] == [256, 288, 288, 768, 768, 768, 768, 768]
    assert [b.out_channels for b in m.mixed_8] == [1280, 2048, 2048]
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))
    assert all(b.eps == 0.001 for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    with_aux = _meta("inception_v3", aux_logits=True)
    assert count_params(with_aux) == 27_161_264 and count_params(with_aux.aux) == 27_161_264 - 23_834_568
    small, x = models.create_small("inception_v3")
    small.train()
    out = small(x)
    assert isinstance(out, inception.InceptionOutputs) and out.aux_logits.shape == (2, 10)
    small.eval()
    with torch.no_grad():
        assert small(x).shape == (2, 10)


def test_inception_v4_and_resnet_v2_blocks():
    v4 = _meta("inception_v4")
    widths = [getattr(b, "out_channels", None) for b in v4.features]
    assert widths == [None] + [384] * 4 + [1024] * 8 + [1536] * 4                  # stem, 4 A, RA, 7 B, RB, 3 C
    assert v4.features[0][-1].out_channels == 384                                 # Fig. 3: 35x35x384
    ir = _meta("inception_resnet_v2")
    blocks = [b for b in ir.modules() if isinstance(b, inception.ResidualInception)]
    assert len(blocks) == 40 and [b.up.out_channels for b in blocks[::10]] == [320, 1088, 1088, 2080]
    assert [b.scale for b in blocks[:1] + blocks[10:11] + blocks[30:31] + blocks[-1:]] == [0.17, 0.10, 0.20, 1.0]
    assert isinstance(blocks[-1].relu, nn.Identity) and isinstance(blocks[-2].relu, nn.ReLU)
    assert all(b.up.bias is not None for b in blocks)                            # linear 1x1, no BN
    # the residual connection: a zero branch leaves relu(x)
    block = inception._block35(32, inception._width(0.25)).eval()
    nn.init.zeros_(block.up.weight)
    nn.init.zeros_(block.up.bias)
    x = torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_wide_resnet_widths_and_dropout_between_convs():
    m = _meta("wide_resnet28_10")
    assert [len(g) for g in (m.layer1, m.layer2, m.layer3)] == [4, 4, 4]            # (28 - 4) / 6
    assert [g[0].conv1.out_channels for g in (m.layer1, m.layer2, m.layer3)] == [160, 320, 640]
    assert m.conv1.out_channels == 16 and m.layer1[0].downsample is not None       # 16 -> 160 projection
    for depth, k in ((40, 4), (16, 8)):
        assert count_params(_meta("wide_resnet28_10", depth=depth, widen_factor=k)) == _wrn_count(depth, k)
    # the dropout sits between the two convs: dropping everything leaves the shortcut
    block = wide_resnet.WideBasicBlock(8, 8, dropout=1.0).train()
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(block(x), x)
    block.eval()
    assert not torch.allclose(block(x), x)
    with pytest.raises(ValueError, match="6n"):
        wide_resnet.wide_resnet(depth=27)


def test_pyramidnet_additive_widening_and_padded_shortcuts():
    assert pyramidnet.pyramid_widths(54, 270, 16) == [16 + 5 * k for k in range(1, 55)]   # alpha / N per unit
    assert pyramidnet.pyramid_widths(3, 10, 16) == [19, 23, 26]                          # 19.33, 22.67, 26
    m = _meta("pyramidnet164")
    units = [u for u in m.modules() if isinstance(u, pyramidnet.PyramidBottleneckUnit)]
    assert len(units) == 54 and units[-1].conv3.out_channels == 4 * 286 and m.fc.in_features == 1144
    assert [u.conv2.stride[0] for u in units].count(2) == 2 and units[18].pool is not None
    # a zero residual: the output is the 2x2-average-pooled input with zero channels appended
    unit = pyramidnet.PyramidBasicUnit(4, 6, stride=2).eval()
    nn.init.zeros_(unit.bn3.weight)
    x = torch.randn(2, 4, 6, 6)
    y = unit(x)
    torch.testing.assert_close(y[:, :4], torch.nn.functional.avg_pool2d(x, 2))
    assert y.shape == (2, 6, 3, 3) and (y[:, 4:] == 0).all() and (y < 0).any()      # no ReLU after the add
    # rounding the ImageNet widths half up (the authors' code) is 0.3% above 116.4M; flooring gives 116.42M
    assert count_params(_meta("pyramidnet200_imagenet")) == 116_775_213
    with pytest.raises(ValueError, match="9n"):
        pyramidnet.pyramidnet(depth=165)


def test_highway_gates():
    m = _meta("highway_cifar")
    layers = [x for x in m.modules() if isinstance(x, highway.HighwayConv2d)]
    plain = [c for c in m.features if isinstance(c, nn.Conv2d)]
    assert len(layers) == 13 and [c.out_channels for c in plain] == [32, 48, 80, 128]
    assert len(plain) + len(layers) == 17                     # FitNet-4's 17 conv layers (+ its 2 fcs = 19)
    torch.manual_seed(0)
    layer = highway.HighwayConv2d(4)
    assert (layer.gate.bias == -2).all()                                       # negative: carry at the start
    x = torch.randn(2, 4, 5, 5)
    h, t = torch.relu(layer.transform(x)), torch.sigmoid(layer.gate(x))
    torch.testing.assert_close(layer(x), h * t + x * (1 - t))                   # y = H T + x (1 - T)
    nn.init.constant_(layer.gate.bias, -30.0)
    torch.testing.assert_close(layer(x), x, atol=1e-6, rtol=0)                   # a closed gate carries x
    fc = highway.HighwayLinear(6, gate_bias=-3.0)
    assert (fc.gate.bias == -3).all()
    mlp = highway.highway_mlp()
    assert len(mlp.highway) == 8 and mlp.plain[0].out_features == 50


def test_dense_connectivity():
    m = _meta("densenet121")
    block = m.features.denseblock1
    assert [layer.conv1.in_channels for layer in block.values()] == [64 + 32 * i for i in range(6)]
    assert all(layer.conv2.out_channels == 32 and layer.conv1.out_channels == 128 for layer in block.values())
    transitions = [getattr(m.features, f"transition{i}") for i in (1, 2, 3)]
    assert [t.conv.out_channels for t in transitions] == [128, 256, 512]          # theta = 0.5
    assert m.classifier.in_features == 1024
    weighted = sum(isinstance(x, (nn.Conv2d, nn.Linear)) for x in m.modules())
    assert weighted == 121                                                         # DenseNet-121
    # the block's output is its input followed by every layer's k new maps
    small = densenet.DenseBlock(3, 5, 2).eval()
    x = torch.randn(2, 5, 4, 4)
    y = small(x)
    assert y.shape == (2, 5 + 3 * 2, 4, 4)
    torch.testing.assert_close(y[:, :5], x)
    first = small.denselayer1([x])
    torch.testing.assert_close(y[:, 5:7], first)
    torch.testing.assert_close(y[:, 7:9], small.denselayer2([x, first]))
    for depth, growth in ((250, 24), (100, 12)):
        assert count_params(_meta("densenet_bc", depth=depth, growth_rate=growth, num_classes=100)) == \
            _densenet_count(growth, ((depth - 4) // 6,) * 3, 2 * growth, False, 100)


def test_attention_blocks_placement_and_semantics():
    se = _meta("se_resnet50")
    block = se.layer1[0]
    assert isinstance(block, senet.SEBottleneck) and isinstance(block.attention.activation, nn.ReLU)
    assert block.attention.fc1.out_channels == 256 // 16 and block.attention.fc2.out_channels == 256
    assert list(se.state_dict())[:2] == ["conv1.weight", "bn1.weight"]            # torchvision names kept
    cbam = _meta("cbam_resnet50").layer4[0].attention
    assert cbam.spatial.conv.kernel_size == (7, 7) and cbam.spatial.conv.in_channels == 2
    assert cbam.channel.mlp[0].out_channels == 2048 // 16
    x101 = _meta("cbam_resnet50", layers=(3, 4, 23, 3), groups=32, width_per_group=4)
    assert x101.layer1[0].conv2.groups == 32 and len(x101.layer3) == 23
    # the attention is applied to the residual branch before the addition: a zero gate leaves relu(shortcut)
    torch.manual_seed(0)
    b = senet.SEBottleneck(16, 4).eval()
    nn.init.constant_(b.attention.fc2.weight, 0.0)
    nn.init.constant_(b.attention.fc2.bias, -30.0)
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(b(x), torch.relu(x), atol=1e-6, rtol=0)
    # CBAM's channel gate uses average and max pooling through one MLP
    ca = senet.ChannelAttention(8, 2)
    x = torch.randn(2, 8, 3, 3)
    mlp = ca.mlp
    expect = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    torch.testing.assert_close(ca(x), expect)
    # scSE: cSE(x) + sSE(x); after every encoder (5) and decoder (4) block of the U-Net
    scse = senet.ChannelSpatialSE(8, 2)
    torch.testing.assert_close(scse(x), scse.cse(x) + x * torch.sigmoid(scse.sse(x)))
    unet = _meta("scse_unet")
    gates = [g for g in unet.modules() if isinstance(g, senet.ChannelSpatialSE)]
    assert len(gates) == 9 and [g.sse.in_channels for g in gates[:5]] == [64, 128, 256, 512, 1024]
    assert gates[0].cse.fc1.out_channels == 32                                   # r = 2
    with pytest.raises(ValueError, match="combine"):
        senet.ChannelSpatialSE(8, combine="mul")


# ----------------------------------------------------------------------------- registry, small configs

def test_registry_families():
    assert set(NEW_MODELS) <= set(models.list_models())
    assert models.unmodelled().keys().isdisjoint(NEW_MODELS)
    for name in NEW_MODELS:
        m = _meta(name)
        fam = set(models.get(name).families)
        mods = list(m.modules())
        has_bn = any(isinstance(x, nn.BatchNorm2d) for x in mods)
        assert ("BNR" in fam) == has_bn, name
        convs = [c for c in mods if isinstance(c, nn.Conv2d)]
        # ResNeXt101 + CBAM (GC) is only a figure's configuration; the standard nets have no grouped,
        # depthwise or dilated convs
        assert all(c.groups == 1 and c.dilation == (1, 1) for c in convs), name
        assert ("TC" in fam) == any(isinstance(c, nn.ConvTranspose2d) for c in mods), name
        assert fam <= {"BNR", "TC"}, name


def _as_list(out):
    """A model's outputs as a list (GoogLeNet / Inception-v3 return their auxiliary logits in training)."""
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name", NEW_MODELS)
def test_small_config_forward_backward(name):
    model, x = models.create_small(name, batch=2)
    ys = _as_list(model.train()(x))
    assert all(torch.isfinite(y).all() for y in ys)
    expected = {"scse_unet": (2, 3) + tuple(x.shape[-2:])}.get(name, (2, 10))
    assert all(tuple(y.shape) == expected for y in ys), [y.shape for y in ys]
    sum(y.square().mean() for y in ys).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd))
    with torch.no_grad():
        for a, b in zip(_as_list(model(x)), ys):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():
        y = model(x)
        assert isinstance(y, torch.Tensor) and torch.isfinite(y).all()
