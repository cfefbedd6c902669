"""Model-level parity for the CNNs of the convolution family (ARCHITECTURES.md kernels DW, GC,
DIL, TC): each reference model, converted with cvkernels.convert (conv routing, conv+activation
epilogues and BN+ReLU fusion), gives the same outputs, input and parameter gradients and running
statistics as the unconverted model, in train and eval mode, within 2x of the unconverted fp32
model's own distance to the float64 model."""
import copy

import pytest
import torch
from torch import nn

import cvkernels
from reference import models
from tolerances import assert_close_2x

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL_FLOOR = 2e-3  # relative to max(1, |value|): fp32 rounding compounded over the layers
CONV_FAMILIES = ("DW", "GC", "DIL", "TC")


# Models whose routed convolutions are the same kinds (and options) as a model that runs here, left
# out to keep the interpreted-Triton CPU suite fast; each still runs in the parity sweep
# (tests/test_models_sweep.py) and fully converted there on a GPU:
SKIP = {
    "resnext101_32x8d",                       # resnext50_32x4d's blocks, 3x the depth
    "wide_unet", "scse_unet", "unetpp",       # unet's 2x2/2 transposed convs (+ BN-ReLU)
    "deconvnet",                              # fcn8s / unet transposed convs
    "denoising_autoencoder",                  # conv_autoencoder itself, with input noise
    "stargan_generator", "pix2pix_generator",  # cyclegan_generator / dcgan_generator transposed convs
    "deeplab_v2", "pspnet", "parsenet",       # dilated 3x3 convs as deeplabv3plus / oct_denoiser
}


def _conv_models():
    names = set()
    for family in CONV_FAMILIES:
        names.update(models.list_models(family=family))
    return sorted(names - SKIP)


def _is_routed(m):
    return isinstance(m, (cvkernels.nn.Conv2d, cvkernels.nn.ConvTranspose2d))


@pytest.mark.parametrize("name", _conv_models())
def test_converted_conv_model_parity(name):
    torch.manual_seed(0)
    model, x = models.create_small(name, batch=2)
    model = model.to(DEVICE)
    with torch.no_grad():  # non-trivial BN affine parameters and running statistics
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = 0.0  # random masks would differ between the three runs; not a cvkernels op
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = x.to(DEVICE)
    converted = cvkernels.convert(copy.deepcopy(model), backend="triton")
    spec = models.get(name)
    n_routed = sum(_is_routed(m) for m in converted.modules())
    expected = sum((type(m) is nn.Conv2d and (m.groups > 1 or tuple(m.dilation) != (1, 1)))
                   or type(m) is nn.ConvTranspose2d for m in model.modules())
    assert n_routed == expected > 0, f"{name}: {n_routed} of {expected} convolutions routed ({spec.families})"
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
        named = lambda who: [("output", runs[who][2]), ("grad_input", runs[who][1].grad)] + [  # noqa: E731
            (n, p.grad) for n, p in runs[who][0].named_parameters()]
        for (qname, a), (_, t), (_, o) in zip(named("cvk"), named("torch"), named("oracle")):
            assert a is not None and t is not None, qname
            assert_close_2x(a, o, t, f"{name} {qname} ({'train' if train else 'eval'})", floor=MODEL_FLOOR)
        for net, _, _ in runs.values():
            net.zero_grad()
    sa, sb, so = model.state_dict(), converted.state_dict(), oracle.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if sa[k].is_floating_point():
            assert_close_2x(sb[k], so[k], sa[k], k, floor=MODEL_FLOOR)
        else:
            assert torch.equal(sb[k], sa[k]), k
