"""The segmentation, dense-prediction and convolutional-transformer reference models against the figures the
documents (and papers) publish, their structure, and their small CPU configurations.

- parameter counts of the standard configurations (built on the meta device) against the registry's figures
  and against counts derived here by hand from the papers' layer tables;
- the figures a model does not reproduce exactly, with the measured value and the reason;
- the structural features each model exists for: SegNet's decoder unpools with its own encoder's indices,
  UNet++'s nested nodes and one deep-supervision output per x^{0,j}, PSPNet's bins 1/2/3/6, HRNet's branch
  resolutions, DeepLab v2's summed atrous branches, ParseNet's normalised global context, DPT's four
  resolutions, Segmenter's class-embedding masks, CvT's depthwise / squeezed projections;
- forward + backward of every small configuration (finite, right shape, every parameter reached).
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reference import models  # noqa: E402
from reference.models import dpt, parsenet, pspnet, vnet  # noqa: E402
from reference.models.flops import count_params  # noqa: E402

NEW_MODELS = ["segnet", "deconvnet", "unetpp", "wide_unet", "vnet", "deeplab_v2", "pspnet", "parsenet",
              "hrnetv2_w18", "hrnetv2_w32", "hrnetv2_w48", "dpt_large", "segmenter_b16", "vessel_patch_net", "cvt_13"]


def _meta(name, **config):
    with torch.device("meta"):
        return models.create(name, **config)


def _modules(model, kind):
    return [m for m in model.modules() if type(m) is kind]


# ----------------------------------------------------------------------------- hand counts

def _conv(cin, cout, k, bias=True, bn=False, groups=1):
    kh, kw = (k, k) if isinstance(k, int) else k
    return cin // groups * cout * kh * kw + (cout if bias else 0) + (2 * cout if bn else 0)


VGG16 = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512), (512, 512),
         (512, 512), (512, 512), (512, 512), (512, 512)]
# the decoders mirror the encoder: per stage the width is kept except by the last conv (Caffe conv5_3_D .. conv1_2_D)
MIRRORED = [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]


def _segnet_count(classes=11):
    enc = sum(_conv(a, b, 3, bn=True) for a, b in VGG16)
    dec = sum(_conv(a, b, 3, bn=True) for a, b in MIRRORED)
    return enc + dec + _conv(64, classes, 3)                          # conv1_1_D: the classifier


def _deconvnet_count(classes=21, fc=4096):
    enc = sum(_conv(a, b, 3, bn=True) for a, b in VGG16)
    fcs = _conv(512, fc, 7, bn=True) + _conv(fc, fc, 1, bn=True) + _conv(fc, 512, 7, bn=True)   # fc6, fc7, deconv-fc6
    dec = sum(_conv(a, b, 3, bn=True) for a, b in MIRRORED) + _conv(64, 64, 3, bn=True)         # + deconv1_2
    return enc + fcs + dec + _conv(64, classes, 1)


def _double_conv(cin, w):
    return _conv(cin, w, 3) + _conv(w, w, 3)


def _unetpp_count(heads=1, widths=(32, 64, 128, 256, 512), cin=1, classes=1):
    """Zhou et al. 2018: x^{i,0} two 3x3 convs; x^{i,j} (j >= 1): 2x2 up-conv of x^{i+1,j-1} + two 3x3 convs on
    j + 1 concatenated maps of width w_i."""
    total, c = 0, cin
    for w in widths:
        total += _double_conv(c, w)
        c = w
    depth = len(widths) - 1
    for j in range(1, depth + 1):
        for i in range(depth + 1 - j):
            total += widths[i + 1] * widths[i] * 4 + widths[i] + _double_conv((j + 1) * widths[i], widths[i])
    return total + heads * _conv(widths[0], classes, 1)


def _unet_count(width, cin=1, classes=1):
    widths = [width * 2 ** i for i in range(5)]
    total, c = 0, cin
    for w in widths:
        total += _double_conv(c, w)
        c = w
    for w in reversed(widths[:-1]):
        total += c * w * 4 + w + _double_conv(2 * w, w)
        c = w
    return total + _conv(c, classes, 1)


def _cvt13_count(classes=1000):
    """Wu et al. 2021, Table 2 / Fig. 2: conv embedding + LN; per block 2 LN, three 3x3 depthwise convs + BN,
    linear q/k/v and output projection with bias, MLP ratio 4; class token in stage 3; final LN and head."""
    total, cin = 0, 3
    for i, (d, depth, k) in enumerate(((64, 1, 7), (192, 2, 3), (384, 10, 3))):
        total += _conv(cin, d, k) + 2 * d + (d if i == 2 else 0)
        block = 2 * d + 3 * (9 * d + 2 * d) + (4 * d * d + 4 * d) + 2 * d + (8 * d * d + 5 * d)
        total += depth * block
        cin = d
    return total + 2 * 384 + _conv(384, classes, 1)


def _vessel_count(pool=True, outputs=2):
    side = 27
    total, c = 0, 3
    for i, w in enumerate((64, 64, 128, 128)):
        total += _conv(c, w, 3)
        c, side = w, side - 2
        if pool and i in (1, 3):
            side //= 2
    return total + (c * side * side * 512 + 512) + (512 * 512 + 512) + (512 * outputs + outputs)


EXACT = {
    "segnet": _segnet_count(),
    "deconvnet": _deconvnet_count(),
    "unetpp": _unetpp_count(),
    "wide_unet": _unet_count(35),
    "cvt_13": _cvt13_count(),
    "vessel_patch_net": _vessel_count(),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_parameter_counts(name):
    assert count_params(_meta(name)) == EXACT[name]


def test_variant_parameter_counts():
    assert count_params(_meta("unetpp", deep_supervision=True)) == _unetpp_count(heads=4)
    assert count_params(_meta("vessel_patch_net", pool_after=())) == _vessel_count(pool=False)       # NO-POOL
    assert count_params(_meta("vessel_patch_net", structured=5)) == _vessel_count(outputs=25)         # SP 5x5
    # DeepLab v2 = ResNet-101 without its fc + four 3x3 classifiers (2048 -> 21 with bias)
    resnet101_trunk = count_params(_meta("resnet101")) - _conv(2048, 1000, 1)
    assert count_params(_meta("deeplab_v2")) == resnet101_trunk + 4 * _conv(2048, 21, 3)
    # PSPNet = the trunk + four 1x1 reductions to 512 (BN) + 3x3 4096 -> 512 (BN) + 1x1 classifier
    psp = resnet101_trunk + 4 * _conv(2048, 512, 1, bias=False, bn=True) + _conv(4096, 512, 3, bias=False, bn=True)
    assert count_params(_meta("pspnet")) == psp + _conv(512, 21, 1)
    assert count_params(_meta("pspnet", aux_head=True)) == psp + _conv(512, 21, 1) + \
        _conv(1024, 256, 3, bias=False, bn=True) + _conv(256, 21, 1)


def _parameter_figures():
    for name in NEW_MODELS:
        for key, fig in sorted(models.get(name).figures.items()):
            if key.startswith("params"):
                yield pytest.param(name, fig, id=f"{name}-{key}")


@pytest.mark.parametrize("name,fig", list(_parameter_figures()))
def test_parameter_figures(name, fig):
    deviation = count_params(_meta(name, **fig.config)) / fig.value - 1
    assert abs(deviation) <= fig.rtol, f"{name}: {deviation:+.2%} from {fig.value:g} ({fig.source})"


def test_published_figures_are_the_documents():
    """The registry's numbers are the documents' / papers' (not recomputed from the code)."""
    figs = {n: models.get(n).figures for n in NEW_MODELS}
    assert figs["unetpp"]["params"].value == 9.04e6 and "P l.1762" in figs["unetpp"]["params"].source
    assert figs["unetpp"]["params_deep_supervision"].config == {"deep_supervision": True}
    assert figs["wide_unet"]["params"].value == 9.13e6 and "P l.1761" in figs["wide_unet"]["params"].source
    assert figs["segnet"]["params"].value == 29.4e6 and figs["deconvnet"]["params"].value == 252e6
    assert figs["hrnetv2_w48"]["params"].value == 65.9e6
    assert figs["dpt_large"]["params"].value == 343e6 and figs["dpt_large"]["params"].config == {"head": "depth"}
    assert figs["cvt_13"]["params"].value == 20e6
    for name in ("vnet", "deeplab_v2", "pspnet", "parsenet", "hrnetv2_w18", "hrnetv2_w32", "segmenter_b16",
                 "vessel_patch_net"):
        assert figs[name] == {}            # the documents publish no parameter count for these (mIoU / AUC only)


def test_figures_not_reproduced_exactly():
    """Wide U-Net: the authors' wU_Net (widths 35..560) has 9,282,246 parameters -- their code's own comment --
    1.7% over the table's 9.13M (P l.1761); no width multiple gives 9.13M (34 -> 8.76M, 35 -> 9.28M).
    DPT-Large: 0.3% under 343M because the authors' model also carries timm's unused final LN and 1000-way head."""
    assert count_params(_meta("wide_unet")) == 9_282_246
    assert count_params(_meta("wide_unet", width=34)) < 9.0e6
    dpt_depth = count_params(_meta("dpt_large", head="depth"))
    unused_vit_head = 2 * 1024 + _conv(1024, 1000, 1)
    assert round((dpt_depth + unused_vit_head) / 1e6) == 343 and round(dpt_depth / 1e6) == 342
    # the segmentation head replaces the depth head: 3x3 conv (no bias) + BN + 1x1 to 150 classes, and BN in the RCUs
    depth_head = _conv(256, 128, 3) + _conv(128, 32, 3) + _conv(32, 1, 1)
    seg_head = _conv(256, 256, 3, bias=False, bn=True) + _conv(256, 150, 1)
    rcu_bn = 7 * 2 * (2 * 256 - 256)                                  # 7 RCUs x 2 convs: bias 256 -> BN 512
    assert count_params(_meta("dpt_large")) == dpt_depth - depth_head + seg_head + rcu_bn


# ----------------------------------------------------------------------------- structure

def test_segnet_unpools_with_its_encoders_indices():
    torch.manual_seed(0)
    model, x = models.create_small("segnet", batch=2)
    pooled, unpooled = [], []
    model.encoder.pool.register_forward_hook(lambda m, a, out: pooled.append((a[0].detach(), out[1])))
    model.unpool.register_forward_hook(lambda m, a, out: unpooled.append((a[1], out.detach())))
    model(x)
    assert len(pooled) == len(unpooled) == 5
    for (pre_pool, indices), (used, out) in zip(reversed(pooled), unpooled):
        assert used is indices                                        # the decoder's switches are the encoder's
        assert out.shape == pre_pool.shape
        # the unpooled map is sparse: nonzero only at the encoder's argmax positions (one per 2x2 window)
        mask = torch.zeros_like(out).flatten(2).scatter_(2, indices.flatten(2), 1.0).view_as(out)
        assert (out[mask == 0] == 0).all() and out.numel() == 4 * indices.numel()
    m = _meta("segnet")
    assert not _modules(m, nn.ConvTranspose2d) and len(_modules(m, nn.Conv2d)) == 26
    assert not any(isinstance(l, nn.Linear) for l in m.modules())     # no fully connected layers (K l.2534)
    assert all(p.return_indices for p in _modules(m, nn.MaxPool2d))
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 3, 40, 40))


def test_deconvnet_structure():
    m = _meta("deconvnet")
    ups = _modules(m, nn.ConvTranspose2d)
    assert len(ups) == 14 and ups[0].kernel_size == (7, 7) and (ups[0].in_channels, ups[0].out_channels) == (4096, 512)
    assert all(u.kernel_size == (3, 3) and u.stride == (1, 1) and u.padding == (1, 1) for u in ups[1:])
    assert m.fc6[0].kernel_size == (7, 7) and m.score.kernel_size == (1, 1)
    # BN after every conv and deconv (Noh et al. Sec. 3.2.1), except the score layer
    assert len(_modules(m, nn.BatchNorm2d)) == len(_modules(m, nn.Conv2d)) - 1 + len(ups)
    small, x = models.create_small("deconvnet", batch=2)               # fc6 / fc7 are 1x1: BN needs 2 samples
    calls = []
    small.unpool.register_forward_hook(lambda mod, a, out: calls.append(out.shape))
    assert small(x).shape == (2, 3, 32, 32) and [c[-1] for c in calls] == [2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="32x32"):
        small(torch.randn(1, 3, 64, 64))


def test_unetpp_nested_nodes_and_deep_supervision():
    m = _meta("unetpp")
    assert len(m.nodes) == 15 and len(m.up) == 10                     # x^{i,j}, i + j <= 4
    for key, node in m.nodes.items():
        i, j = map(int, key.split("_"))
        w = 32 * 2 ** i
        cin = node[0].in_channels
        assert cin == ((j + 1) * w if j else (1 if i == 0 else w // 2)), key   # j maps + U(x^{i+1,j-1})
    assert len(m.heads) == 1 and len(_meta("unetpp", deep_supervision=True).heads) == 4
    torch.manual_seed(0)
    model, x = models.create_small("unetpp", batch=2, deep_supervision=True)
    seen = {}
    for j in range(1, 5):
        model.nodes[f"0_{j}"].register_forward_hook(lambda mod, a, out, j=j: seen.__setitem__(j, out))
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == 4                  # one output per x^{0,j}, j = 1..4
    for j, y in enumerate(outs, start=1):
        assert y.shape == (2, 2, 16, 16)
        torch.testing.assert_close(y, model.heads[str(j)](seen[j]))
    # the semantic gap is bridged: x^{0,1} sees U(x^{1,0}) only, x^{0,4} the whole nest
    assert not torch.allclose(outs[0], outs[3])
    single, _ = models.create_small("unetpp")
    assert torch.is_tensor(single(x))


def test_pspnet_pyramid_bins():
    m = _meta("pspnet")
    pools = [s[0] for s in m.ppm.stages]
    assert [p.output_size for p in pools] == [1, 2, 3, 6] == list(pspnet.PSP_BINS)
    assert all(s[1].out_channels == 512 and s[1].kernel_size == (1, 1) for s in m.ppm.stages)   # 2048 / 4
    assert m.ppm.out_channels == 4096
    assert sorted({c.dilation[0] for c in _modules(m, nn.Conv2d)}) == [1, 2, 4]                 # output stride 8
    torch.manual_seed(0)
    model, x = models.create_small("pspnet", batch=2, aux_head=True)
    shapes = []
    for stage in model.ppm.stages:
        stage[0].register_forward_hook(lambda mod, a, out: shapes.append(tuple(out.shape[-2:])))
    model.layer4.register_forward_hook(lambda mod, a, out: shapes.append(tuple(out.shape[-2:])))
    model.train()
    main, aux = model(x)
    assert shapes == [(6, 6), (1, 1), (2, 2), (3, 3), (6, 6)]                                  # 48 / 8 = 6
    assert main.shape == aux.shape == (2, 5, 48, 48)
    model.eval()
    assert torch.is_tensor(model(x))


def test_hrnet_branch_resolutions():
    m = _meta("hrnetv2_w48")
    assert [len(getattr(m, f"stage{s}")) for s in (2, 3, 4)] == [1, 4, 3]
    for s, n in ((2, 2), (3, 3), (4, 4)):
        for module in getattr(m, f"stage{s}"):
            assert len(module.branches) == n and all(len(b) == 4 for b in module.branches)
            assert [b[0].conv1.in_channels for b in module.branches] == [48 * 2 ** i for i in range(n)]
    assert m.last_layer[0].in_channels == 15 * 48                      # the four branches concatenated
    torch.manual_seed(0)
    model, x = models.create_small("hrnetv2_w18", batch=2)
    xs = model.features(x)
    assert [tuple(t.shape[1:]) for t in xs] == [(4, 16, 16), (8, 8, 8), (16, 4, 4), (32, 2, 2)]   # 1/4 .. 1/32
    # repeated exchange: every output branch of a module depends on every input branch
    module = model.stage4[0]
    inputs = [torch.randn(1, c, 16 // 2 ** i, 16 // 2 ** i, requires_grad=True) for i, c in enumerate((4, 8, 16, 32))]
    module.eval()
    for out in module(inputs):
        grads = torch.autograd.grad(out.sum(), inputs, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads)
    assert model(x).shape == (2, 5, 64, 64)


def test_deeplab_v2_sums_atrous_branches_at_output_stride_8():
    m = _meta("deeplab_v2")
    assert [b.dilation for b in m.aspp.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(b.out_channels == 21 and b.in_channels == 2048 for b in m.aspp.branches)
    torch.manual_seed(0)
    model, x = models.create_small("deeplab_v2", batch=1)
    model.eval()
    with torch.no_grad():
        _, feats = model.backbone(x)
        assert feats.shape[-2:] == (4, 4)                              # 32 / 8
        fused = sum(b(feats) for b in model.aspp.branches)
        expected = F.interpolate(fused, size=x.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), expected)


def test_parsenet_global_context():
    norm = parsenet.L2Norm(3, scale=2.0)
    v = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = norm.double()(v)
    torch.testing.assert_close(y.norm(dim=1), torch.full((2, 4, 5), 2.0, dtype=torch.float64))
    torch.manual_seed(0)
    model, x = models.create_small("parsenet", batch=2)
    seen = []
    model.classifier.register_forward_hook(lambda mod, a, out: seen.append(a[0]))
    assert model(x).shape == (2, 5, 32, 32)
    features = seen[0]
    fc = features.shape[1] // 2
    context = features[:, fc:]
    assert features.shape[-2:] == (4, 4)                               # output stride 8
    torch.testing.assert_close(context, context[:, :, :1, :1].expand_as(context))   # un-pooled: constant in space
    m = _meta("parsenet")
    assert {c.dilation for c in _modules(m, nn.Conv2d)} == {(1, 1), (2, 2), (12, 12)}
    assert m.classifier.in_channels == 2048 and m.local_norm.weight.shape == (1024,)


def test_vnet_structure():
    m = _meta("vnet")
    convs = _modules(m, nn.Conv3d)
    assert sum(c.kernel_size == (5, 5, 5) for c in convs) == 1 + 2 + 3 + 3 + 3 + 3 + 3 + 2 + 1
    downs = [c for c in convs if c.stride == (2, 2, 2)]
    assert [(d.in_channels, d.out_channels) for d in downs] == [(16, 32), (32, 64), (64, 128), (128, 256)]
    ups = _modules(m, nn.ConvTranspose3d)
    assert [(u.in_channels, u.out_channels) for u in ups] == [(256, 128), (256, 64), (128, 32), (64, 16)]
    assert [s.convs[0].in_channels for s in m.decoder] == [256, 128, 64, 32]
    assert _modules(m, nn.PReLU) and not _modules(m, nn.BatchNorm3d)
    # residual stages: with zeroed convs a stage is the identity
    stage = vnet.ResidualStage3d(4, 2, 3)
    for c in stage.convs:
        if isinstance(c, nn.Conv3d):
            nn.init.zeros_(c.weight)
            nn.init.zeros_(c.bias)
    x = torch.randn(1, 4, 4, 4, 4)
    torch.testing.assert_close(stage(x), x)
    small, v = models.create_small("vnet", batch=1)
    assert small(v).shape == (1, 2, 16, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        small(torch.randn(1, 1, 12, 16, 16))


def test_dpt_reassembles_four_resolutions():
    m = _meta("dpt_large")
    assert m.hooks == (5, 11, 17, 23) and len(m.encoder.blocks) == 24 and isinstance(m.encoder.norm, nn.Identity)
    assert [r.resample[0].out_channels for r in m.reassemble] == [256, 512, 1024, 1024]
    assert [type(r.resample[-1]) for r in m.reassemble] == [nn.ConvTranspose2d, nn.ConvTranspose2d, nn.Conv2d,
                                                             nn.Conv2d]
    assert m.reassemble[3].resample[-1].stride == (2, 2)
    torch.manual_seed(0)
    model, x = models.create_small("dpt_large", batch=2)
    sizes = []
    for rn in model.layer_rn:
        rn.register_forward_hook(lambda mod, a, out: sizes.append(tuple(out.shape[1:])))
    assert model(x).shape == (2, 5, 64, 64)
    assert sizes == [(8, 16, 16), (8, 8, 8), (8, 4, 4), (8, 2, 2)]    # 1/4, 1/8, 1/16, 1/32 of 64
    for readout in ("ignore", "add"):
        variant, _ = models.create_small("dpt_large", readout=readout)
        assert not any(isinstance(mod, dpt.ReadoutProject) for mod in variant.modules())
        assert variant(x).shape == (2, 5, 64, 64)
    depth, _ = models.create_small("dpt_large", head="depth")
    assert (depth(x) >= 0).all() and depth(x).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="readout"):
        dpt.Reassemble(8, 8, 1, (2, 2), readout="concat")


def test_segmenter_masks_from_class_embeddings():
    m = _meta("segmenter_b16")
    assert m.decoder.cls_emb.shape == (1, 150, 768) and len(m.decoder.blocks) == 2
    assert m.decoder.blocks[0].attn.num_heads == 12 and m.decoder.mask_norm.normalized_shape == (150,)
    torch.manual_seed(0)
    model, x = models.create_small("segmenter_b16", batch=2)
    tokens = []
    model.decoder.blocks[0].register_forward_hook(lambda mod, a, out: tokens.append(out.shape))
    seen = []
    model.decoder.mask_norm.register_forward_hook(lambda mod, a, out: seen.append((a[0], out)))
    y = model(x)
    assert y.shape == (2, 5, 32, 32)
    assert tokens[0] == (2, 16 + 5, 32)                               # the 4x4 patches and the 5 class embeddings
    raw, normed = seen[0]
    assert raw.shape == (2, 16, 5) and raw.abs().max() <= 1 + 1e-6     # cosines of L2-normalised embeddings
    torch.testing.assert_close(normed.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)   # LayerNorm over classes


def test_cvt_convolutional_projections():
    m = _meta("cvt_13")
    embeds = [s.patch_embed.proj for s in m.stages]
    assert [(e.kernel_size, e.stride, e.padding, e.out_channels) for e in embeds] == [
        ((7, 7), (4, 4), (2, 2), 64), ((3, 3), (2, 2), (1, 1), 192), ((3, 3), (2, 2), (1, 1), 384)]
    assert [len(s.blocks) for s in m.stages] == [1, 2, 10]
    assert [s.blocks[0].attn.attn.num_heads for s in m.stages] == [1, 3, 6]
    assert [s.cls_token is not None for s in m.stages] == [False, False, True]
    for s in m.stages:
        attn = s.blocks[0].attn
        for proj, stride in ((attn.conv_proj_q, 1), (attn.conv_proj_k, 2), (attn.conv_proj_v, 2)):
            assert proj.conv.groups == proj.conv.in_channels and proj.conv.stride == (stride, stride)
            assert proj.conv.bias is None and isinstance(proj.bn, nn.BatchNorm2d)
        assert type(attn.attn) is nn.MultiheadAttention and attn.attn.batch_first
    assert not any(type(mod).__name__ == "Attention" for mod in m.modules())   # not a ViT qkv attention
    torch.manual_seed(0)
    model, x = models.create_small("cvt_13", batch=2)
    lengths = []
    for s in model.stages:
        s.blocks[0].attn.attn.register_forward_hook(
            lambda mod, a, out: lengths.append((a[0].shape[1], a[1].shape[1])))
    assert model(x).shape == (2, 10)
    assert lengths == [(64, 16), (16, 4), (1 + 4, 1 + 1)]             # q at full, k / v at half resolution (+cls)


def test_vessel_patch_net_structure():
    m = _meta("vessel_patch_net")
    assert [c.out_channels for c in _modules(m, nn.Conv2d)] == [64, 64, 128, 128]
    assert len(_modules(m, nn.MaxPool2d)) == 2 and m.classifier[1].in_features == 128 * 3 * 3   # 27 -> 3
    assert [fc.out_features for fc in _modules(m, nn.Linear)] == [512, 512, 2]
    model, x = models.create_small("vessel_patch_net", batch=3)
    assert tuple(x.shape) == (3, 3, 27, 27) and model(x).shape == (3, 2)
    sp, _ = models.create_small("vessel_patch_net", structured=5)
    assert sp(x).shape == (3, 5, 5)
    assert not _modules(_meta("vessel_patch_net", pool_after=()), nn.MaxPool2d)
    with pytest.raises(ValueError, match="27x27"):
        model(torch.randn(1, 3, 29, 29))


# ----------------------------------------------------------------------------- registry, small configs

def test_registry_families_and_unmodelled():
    assert set(NEW_MODELS) <= set(models.list_models())
    fam = {n: set(models.get(n).families) for n in NEW_MODELS}
    assert {"deconvnet", "unetpp", "wide_unet", "dpt_large"} <= set(models.list_models("TC"))
    assert {"deeplab_v2", "pspnet", "parsenet"} <= set(models.list_models("DIL"))
    assert {"dpt_large", "segmenter_b16", "cvt_13"} <= set(models.list_models("FA"))
    assert "cvt_13" in models.list_models("DW") and fam["vnet"] == set() and fam["segnet"] == {"BNR"}
    # the conv kinds and attention a model claims are in its standard configuration; BN(+ReLU) in its small
    # one (UNet++ / Wide U-Net have BN as an option: off in the figures' configuration, as the authors' code)
    for name in NEW_MODELS:
        m, small = _meta(name), models.create_small(name)[0]
        convs = _modules(m, nn.Conv2d)
        has = {"DW": any(c.groups == c.in_channels > 1 for c in convs),
               "DIL": any(c.dilation != (1, 1) for c in convs),
               "TC": bool(_modules(m, nn.ConvTranspose2d)),
               "BNR": bool(_modules(small, nn.BatchNorm2d)) and bool(_modules(small, nn.ReLU)),
               "FA": any(type(a) is nn.MultiheadAttention or type(a).__name__ == "Attention" for a in m.modules())}
        for f in fam[name]:
            assert has[f], (name, f)
    reasons = models.unmodelled()
    for name in ("reseg", "mvit", "vivit"):
        assert "no configuration" in reasons[name], name


def _small_output_shape(name, x):
    image = tuple(x.shape[-2:])
    classes = {"segnet": 3, "deconvnet": 3, "unetpp": 2, "wide_unet": 2}.get(name, 5)
    return {"vnet": (2, 2) + tuple(x.shape[-3:]), "vessel_patch_net": (2, 2),
            "cvt_13": (2, 10)}.get(name, (2, classes) + image)


# hrnetv2_w32 / w48 share hrnetv2_w18's small configuration (only the standard widths differ)
@pytest.mark.parametrize("name", [n for n in NEW_MODELS if n not in ("hrnetv2_w32", "hrnetv2_w48")])
def test_small_config_forward_backward(name):
    """Finite, shaped output; a gradient for every parameter; no active dropout, so that a second train-mode
    forward repeats the first (the parity tests compare separate train-mode runs)."""
    torch.manual_seed(0)
    model, x = models.create_small(name, batch=2)
    assert not any(m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd))
    y = model.train()(x)
    assert tuple(y.shape) == _small_output_shape(name, x) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    with torch.no_grad():
        repeated, evaluated = model(x), model.eval()(x)
    torch.testing.assert_close(repeated, y.detach(), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(evaluated).all()
