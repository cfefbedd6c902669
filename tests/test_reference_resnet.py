"""The float64 BatchNorm reference and the reference ResNets against published figures.

- reference.ops.batch_norm against torch's own F.batch_norm in float64 (torch is the independent
  check of the oracle here: outputs, gradients and running statistics);
- the reference ResNets' parameter counts and multiply-adds against the figures the seed
  documents print (P l.1195-1205, K l.1330, K l.1397-1399) and torchvision's model cards;
- structure: torchvision parameter names, the BN->ReLU / BN->add->ReLU patterns torch.fx sees,
  the pre-activation order; the registry; forward/backward of every small config.

Standard-size models are built on the meta device (no memory, no arithmetic): parameter counts
come from shapes, multiply-adds from forward hooks that read the shapes (reference/models/flops.py).
"""
import operator
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reference import models  # noqa: E402
from reference.models import resnet  # noqa: E402
from reference.models.flops import count_macs, count_params  # noqa: E402
from reference.ops import batch_norm as ref  # noqa: E402

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


# ----------------------------------------------------------------------------- BatchNorm reference

def _bn_inputs(shape, affine):
    C = shape[1]
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    w = (torch.rand(C, dtype=torch.float64) + 0.5).requires_grad_() if affine else None
    b = torch.randn(C, dtype=torch.float64).requires_grad_() if affine else None
    rm, rv = torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5
    return x, w, b, rm, rv


@pytest.mark.parametrize("shape", [(13, 7), (5, 3, 11), (3, 5, 7, 6), (2, 3, 2, 3, 4)], ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("momentum", [0.1, 0.7])
def test_batch_norm_matches_torch(shape, affine, training, momentum):
    x, w, b, rm, rv = _bn_inputs(shape, affine)
    rm_ref, rv_ref, rm_t, rv_t = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    y = ref.batch_norm(x, rm_ref, rv_ref, w, b, training, momentum, 1e-3)
    leaves = [t for t in (x, w, b) if t is not None]
    grad = torch.randn(shape, dtype=torch.float64)
    g = torch.autograd.grad(y, leaves, grad)
    y_t = F.batch_norm(x, rm_t, rv_t, w, b, training, momentum, 1e-3)
    g_t = torch.autograd.grad(y_t, leaves, grad)
    assert y.dtype == torch.float64 and y.shape == x.shape
    torch.testing.assert_close(y, y_t, rtol=1e-12, atol=1e-12)
    for a, e in zip(g, g_t):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rm_ref, rm_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv_ref, rv_t, rtol=1e-12, atol=1e-12)
    if training:  # the stats really moved (unbiased variance), in eval they are untouched
        assert not torch.equal(rv_ref, rv)
    else:
        assert torch.equal(rm_ref, rm) and torch.equal(rv_ref, rv)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_relu_with_residual_matches_torch(training):
    x, w, b, rm, rv = _bn_inputs((4, 6, 5, 3), True)
    r = torch.randn(4, 6, 5, 3, dtype=torch.float64, requires_grad=True)
    rm_t, rv_t = rm.clone(), rv.clone()
    y = ref.batch_norm_relu(x, rm, rv, w, b, training, 0.1, 1e-5, residual=r)
    y_t = torch.relu(F.batch_norm(x, rm_t, rv_t, w, b, training, 0.1, 1e-5) + r)
    torch.testing.assert_close(y, y_t, rtol=1e-12, atol=1e-12)
    assert (y == 0).any() and (y > 0).any()  # the ReLU is exercised
    grad = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, (x, w, b, r), grad), torch.autograd.grad(y_t, (x, w, b, r), grad)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rm, rm_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, rv_t, rtol=1e-12, atol=1e-12)
    # without running stats in training: batch statistics only
    y2 = ref.batch_norm_relu(x, None, None, w, b, True, residual=r)
    torch.testing.assert_close(y2, torch.relu(F.batch_norm(x, None, None, w, b, True) + r))


def test_batch_norm_low_precision_running_stats_and_input():
    """float32 input and stats: the output is float64, the stats keep their dtype."""
    x = torch.randn(6, 3, 4, 4)
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    rm_t, rv_t = rm.double(), rv.double()
    y = ref.batch_norm(x, rm, rv, None, None, True, 0.3)
    assert y.dtype == torch.float64 and rm.dtype == torch.float32
    y_t = F.batch_norm(x.double(), rm_t, rv_t, None, None, True, 0.3)
    torch.testing.assert_close(y, y_t)
    torch.testing.assert_close(rm, rm_t.float())
    torch.testing.assert_close(rv, rv_t.float())


def test_batch_norm_cumulative_momentum_matches_module():
    """momentum=None in nn.BatchNorm2d is a cumulative average: 1 / num_batches_tracked."""
    bn = nn.BatchNorm2d(4, momentum=None).double()
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    for step in range(1, 4):
        x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * step + step
        bn(x)
        ref.batch_norm(x, rm, rv, None, None, True, ref.cumulative_momentum(step))
    assert int(bn.num_batches_tracked) == 3
    torch.testing.assert_close(rm, bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, bn.running_var, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        ref.cumulative_momentum(0)


def test_batch_norm_edge_cases():
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    # empty batch: empty output, stats untouched (as torch)
    y = ref.batch_norm(torch.randn(0, 4, 3, 3, dtype=torch.float64), rm, rv, None, None, True)
    assert y.shape == (0, 4, 3, 3) and torch.equal(rm, rm0) and torch.equal(rv, rv0)
    with pytest.raises(ValueError, match="more than 1 value"):
        ref.batch_norm(torch.randn(1, 4, dtype=torch.float64), rm, rv, None, None, True)
    with pytest.raises(ValueError, match="evaluation mode"):
        ref.batch_norm(torch.randn(3, 4, dtype=torch.float64), None, None, None, None, False)
    with pytest.raises(ValueError, match="weight"):
        ref.batch_norm(torch.randn(3, 4, dtype=torch.float64), rm, rv, torch.ones(5), None, False)
    with pytest.raises(ValueError, match="residual"):
        ref.batch_norm_relu(torch.randn(3, 4, 2), rm, rv, residual=torch.randn(3, 4, 3))
    # one value per channel is fine in eval
    x1 = torch.randn(1, 4, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(ref.batch_norm(x1, rm, rv), F.batch_norm(x1, rm, rv))


def test_batch_norm_reference_does_not_call_torch_batch_norm(monkeypatch):
    """The oracle is independent: it must not route through F.batch_norm / torch.batch_norm."""
    def boom(*a, **k):
        raise AssertionError("reference called torch's batch_norm")
    monkeypatch.setattr(F, "batch_norm", boom)
    monkeypatch.setattr(torch, "batch_norm", boom)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    ref.batch_norm_relu(x, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), training=True)


# ----------------------------------------------------------------------------- multiply-add counter

def test_mac_counter_on_hand_counted_layers():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),             # out 8x5x5 = 200 values x 3*3*3 = 5400
        nn.Conv2d(8, 8, 3, padding=1, groups=4),             # 200 values x (8/4)*3*3 = 3600
        nn.ConvTranspose2d(8, 4, 2, stride=2),               # in 200 values x 4*2*2 = 3200
        nn.ReLU(), nn.Flatten(),                             # not counted
        nn.Linear(4 * 10 * 10, 6),                           # 6 x 400 = 2400
    )
    count = count_macs(model, torch.randn(2, 3, 9, 9))      # batch of 2: everything twice
    assert count.by_module == {"0": 2 * 5400, "1": 2 * 3600, "2": 2 * 3200, "5": 2 * 2400}
    assert count.total == 2 * (5400 + 3600 + 3200 + 2400)
    assert count.by_type["Conv2d"] == 2 * 9000
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    # hooks are removed afterwards
    assert all(not m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------- published figures

def _meta(name, **config):
    with torch.device("meta"):
        return models.create(name, **config)


def _macs_224(model):
    return count_macs(model, torch.empty(1, 3, 224, 224, device="meta")).total


# Parameter counts. Published: K l.1330 (ResNet-50 25.6M); the others are the paper's / torchvision's
# 11.7M / 21.8M / 44.5M / 60.2M. torchvision's exact counts (its model cards) pin the structure.
PARAMS = {
    "resnet18": (11.7e6, 11_689_512),
    "resnet34": (21.8e6, 21_797_672),
    "resnet50": (25.6e6, 25_557_032),
    "resnet101": (44.5e6, 44_549_160),
    "resnet152": (60.2e6, 60_192_808),
}
# Multiply-adds per 224x224 image, convolutions + fc only (BN, ReLU, pooling, additions and biases
# are not counted: "1 FLOP = 1 multiply+add", P l.1205). The paper's row (P l.1203) is for v1
# (stride in the bottleneck's first 1x1 conv); torchvision's v1.5 (stride on the 3x3, our default)
# costs more in the bottleneck nets: its model cards print 1.81 / 3.66 / 4.09 / 7.80 / 11.51 GFLOPS.
PAPER_GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}
TORCHVISION_GFLOPS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.80,
                      "resnet152": 11.51}


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_parameter_count(name):
    published, exact = PARAMS[name]
    n = count_params(_meta(name))
    assert abs(n - published) / published < 0.02, (name, n, published)
    assert n == exact, (name, n, exact)
    assert count_params(_meta(name, stride_in_1x1=True)) == n  # v1 and v1.5 differ only in strides


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_flops(name):
    v1 = _macs_224(_meta(name, stride_in_1x1=True))
    assert abs(v1 - PAPER_GFLOPS[name] * 1e9) / (PAPER_GFLOPS[name] * 1e9) < 0.05, (name, v1)
    v15 = _macs_224(_meta(name))
    assert abs(v15 - TORCHVISION_GFLOPS[name] * 1e9) / (TORCHVISION_GFLOPS[name] * 1e9) < 0.01, (name, v15)
    if "resnet18" in name or "resnet34" in name:
        assert v1 == v15  # BasicBlocks have no 1x1 conv to move the stride to


@pytest.mark.parametrize("depth,published,bottleneck", [(110, 1.7e6, False), (164, 1.7e6, True),
                                                       (1001, 10.2e6, True)])
def test_preact_resnet_parameter_count(depth, published, bottleneck):
    """K l.1399: pre-act-ResNet 110 / 164 / 1001 on CIFAR-10: 1.7M / 1.7M / 10.2M (rounded to 0.1M)."""
    with torch.device("meta"):
        model = resnet.preact_resnet(depth, num_classes=10)
    block = resnet.PreActBottleneck if bottleneck else resnet.PreActBasicBlock
    assert all(type(b) is block for b in model.layer1)
    n = count_params(model)
    assert abs(n - published) / published < 0.02, (depth, n)


def test_registry_figures_agree_with_the_documents():
    for name in RESNETS:
        figs = models.get(name).figures
        assert figs["params"].value == PARAMS[name][0]
        assert figs["macs"].value == PAPER_GFLOPS[name] * 1e9 and figs["macs"].config == {"stride_in_1x1": True}
        assert figs["macs_v1_5"].value == TORCHVISION_GFLOPS[name] * 1e9
    assert models.get("resnet50").figures["params"].source.startswith("K")
    assert models.get("preact_resnet110").figures["params"].value == 1.7e6


# ----------------------------------------------------------------------------- structure

def test_resnet_torchvision_parameter_names():
    keys = set(_meta("resnet50").state_dict())
    for k in ["conv1.weight", "bn1.running_var", "bn1.num_batches_tracked", "layer1.0.conv3.weight",
              "layer1.0.bn3.bias", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean",
              "layer2.3.conv2.weight", "layer3.5.bn2.weight", "layer4.2.bn3.running_var", "fc.weight", "fc.bias"]:
        assert k in keys, k
    assert "layer1.1.downsample.0.weight" not in keys and "layer3.6.conv1.weight" not in keys
    assert len(keys) == 320  # torchvision's resnet50 state_dict has 320 entries
    keys18 = set(_meta("resnet18").state_dict())
    assert "layer1.0.downsample.0.weight" not in keys18 and "layer2.0.downsample.1.weight" in keys18
    assert "layer1.0.conv3.weight" not in keys18 and len(keys18) == 122
    m = _meta("resnet50")
    assert m.layer3[0].conv2.stride == (2, 2) and m.layer3[0].conv1.stride == (1, 1)  # v1.5
    m = _meta("resnet50", stride_in_1x1=True)
    assert m.layer3[0].conv1.stride == (2, 2) and m.layer3[0].conv2.stride == (1, 1)  # v1
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))  # BN follows every conv


def _fx_patterns(model):
    """(#BatchNorm2d->ReLU, #add(BatchNorm2d, .)->ReLU) in the torch.fx graph, each BN feeding only that."""
    gm = torch.fx.symbolic_trace(model)
    mods = dict(gm.named_modules())

    def is_mod(node, kind):
        return node.op == "call_module" and isinstance(mods[node.target], kind)

    def single_use_bn(node):
        return is_mod(node, nn.BatchNorm2d) and len(node.users) == 1

    bn_relu = bn_add_relu = 0
    for node in gm.graph.nodes:
        if single_use_bn(node) and is_mod(next(iter(node.users)), nn.ReLU):
            bn_relu += 1
        # an addition of a BN output (either operand; the shortcut's BN may be the other) feeding a ReLU
        elif node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add) \
                and any(single_use_bn(a) for a in node.args if isinstance(a, torch.fx.Node)) \
                and len(node.users) == 1 and is_mod(next(iter(node.users)), nn.ReLU):
            bn_add_relu += 1
    return bn_relu, bn_add_relu


@pytest.mark.parametrize("name,blocks,convs_per_block", [("resnet18", 8, 2), ("resnet50", 16, 3)])
def test_resnet_fx_sees_fusable_patterns(name, blocks, convs_per_block):
    model, _ = models.create_small(name)
    bn_relu, bn_add_relu = _fx_patterns(model)
    # stem + every BN but the last of each block -> ReLU; the last BN of every block -> add -> ReLU
    assert bn_relu == 1 + blocks * (convs_per_block - 1)
    assert bn_add_relu == blocks


def test_preact_order_and_final_bn_relu():
    model = resnet.preact_resnet(20, width=4)  # 6n+2, n=3
    gm = torch.fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    order = [type(mods[n.target]).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert order[:4] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]       # stem, then BN-ReLU-conv
    assert order[-4:] == ["BatchNorm2d", "ReLU", "AdaptiveAvgPool2d", "Linear"]
    bn_relu, bn_add_relu = _fx_patterns(model)
    assert bn_relu == 2 * 9 + 1 and bn_add_relu == 0                    # 2 per unit + the final one
    # no activation after the addition: a unit's output can be negative
    x = torch.randn(2, 3, 8, 8)
    assert (model.layer1[0](model.conv1(x)) < 0).any()
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet.preact_resnet(21)
    with pytest.raises(ValueError, match="9n\\+2"):
        resnet.preact_resnet(30, bottleneck=True)


def test_resnet_options():
    m = resnet.resnet18(width=4, num_classes=3, zero_init_residual=True)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for layer in (m.layer1, m.layer2) for b in layer)
    m = resnet.resnet50(width=4, num_classes=3, zero_init_residual=True)
    assert float(m.layer4[2].bn3.weight.detach().abs().sum()) == 0 and float(m.layer4[2].bn2.weight.detach().sum()) > 0
    a = resnet.resnet34(width=4, num_classes=3, shortcut="A")
    assert not any("downsample" in k for k in a.state_dict())
    c = resnet.resnet34(width=4, num_classes=3, shortcut="C")
    assert all(b.downsample is not None for layer in (c.layer1, c.layer4) for b in layer)
    x = torch.randn(2, 3, 32, 32)
    assert a(x).shape == c(x).shape == (2, 3)
    g = resnet.resnet18(width=4, num_classes=5, in_channels=1)
    assert g(torch.randn(1, 1, 40, 40)).shape == (1, 5)
    with pytest.raises(ValueError):
        resnet.resnet18(shortcut="D")


# ----------------------------------------------------------------------------- registry and small configs

def test_registry():
    names = models.list_models()
    for name in RESNETS + ["preact_resnet110", "preact_resnet164"]:
        assert name in names
        assert "BNR" in models.get(name).families
    assert names == sorted(names) and set(models.list_models("BNR")) >= set(RESNETS)
    assert isinstance(models.create("resnet18", width=8, num_classes=10), resnet.ResNet)
    with pytest.raises(KeyError, match="unknown model"):
        models.get("resnet19")
    with pytest.raises(ValueError, match="already registered"):
        models.register("resnet18", resnet.resnet18, example_input=lambda b, c: None)
    assert models.example_input("resnet50", 3).shape == (3, 3, 32, 32)
    assert models.example_input("resnet50", 1, {}).shape == (1, 3, 224, 224)


@pytest.mark.parametrize("name", RESNETS + ["preact_resnet110", "preact_resnet164"])
def test_small_config_forward_backward(name):
    model, x = models.create_small(name, batch=2)
    assert x.shape == (2, 3, 32, 32)
    model.train()
    y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 1
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 10)
