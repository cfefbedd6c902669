"""Model-level parity for the transformer reference models (ARCHITECTURES.md kernels FA, SWA):
each model, converted with cvkernels.convert (nn.MultiheadAttention, timm-style ViT Attention,
Swin WindowAttention / SwinTransformerBlock routed to the flash and shifted-window kernels, and
the BN+ReLU / conv passes where a backbone has them), gives the same outputs, input gradients
and parameter gradients as the unconverted model, in train and eval mode, within 2x of the
unconverted fp32 model's own distance to the float64 model."""
import copy

import pytest
import torch
from torch import nn

import cvkernels
from reference import models
from tolerances import assert_close_2x

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL_FLOOR = 2e-3  # relative to max(1, |value|): fp32 rounding compounded over the layers
ATTENTION_FAMILIES = ("FA", "SWA")
# the same blocks at other widths / depths as a model that is run (listed here, not silently dropped)
COVERED_BY = {
    "vit_l_16": "vit_b_16", "vit_h_14": "vit_b_16", "deit_small": "deit_tiny", "deit_base": "deit_tiny",
    "deit_small_distilled": "deit_tiny_distilled", "deit_base_distilled": "deit_tiny_distilled",
}


def _attention_models():
    names = set()
    for family in ATTENTION_FAMILIES:
        names.update(models.list_models(family=family))
    return sorted(names)


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _attention_modules(model):
    """Modules convert should route: MHA, timm-style Attention, Swin WindowAttention and blocks."""
    found = []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if type(m) is nn.MultiheadAttention or kind in ("Attention", "WindowAttention", "SwinTransformerBlock"):
            found.append(name)
    return found


def test_every_attention_model_is_run_or_covered():
    names = _attention_models()
    assert {"transformer_base", "bert_base", "vit_b_16", "deit_tiny", "swin_t", "detr_resnet50"} <= set(names)
    for name, by in COVERED_BY.items():
        assert name in names and by in names


@pytest.mark.parametrize("name", [n for n in _attention_models() if n not in COVERED_BY])
def test_converted_attention_model_parity(name):
    torch.manual_seed(0)
    model, x = models.create_small(name, batch=2)
    model = model.to(DEVICE)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = 0.0  # random masks would differ between the runs
            if isinstance(m, nn.MultiheadAttention):
                m.dropout = 0.0
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0, 0.1)
    x = x.to(DEVICE)
    expected = _attention_modules(model)
    assert expected, f"{name} has no attention module for convert to route"
    converted = cvkernels.convert(copy.deepcopy(model), backend="triton")
    modules = dict(converted.named_modules())
    routed = [n for n in expected if getattr(modules[n], "_cvkernels_kernel", None)]
    assert routed == expected, f"{name}: routed {routed} of {expected}"
    oracle = copy.deepcopy(model).double()
    floating = x.is_floating_point()
    for train in (True, False):
        runs = {}
        for who, net, dtype in (("torch", model, torch.float32), ("cvk", converted, torch.float32),
                                ("oracle", oracle, torch.float64)):
            net.train(train)
            xi = x.detach().to(dtype).clone().requires_grad_() if floating else x
            runs[who] = (net, xi, _flat(net(xi)))
        grads = [torch.randn_like(y) for y in runs["torch"][2]]
        for who, (net, xi, ys) in runs.items():
            torch.autograd.backward(ys, [g.to(y.dtype) for g, y in zip(grads, ys)])

        def named(who):
            net, xi, ys = runs[who]
            out = [(f"output{i}", y) for i, y in enumerate(ys)]
            if floating:
                out.append(("grad_input", xi.grad))
            return out + [(n, p.grad) for n, p in net.named_parameters() if p.requires_grad]

        for (qname, a), (_, t), (_, o) in zip(named("cvk"), named("torch"), named("oracle")):
            if t is None and o is None:  # a parameter the loss does not reach (e.g. an unused pooler)
                assert a is None, qname
                continue
            assert a is not None and t is not None, qname
            assert_close_2x(a, o, t, f"{name} {qname} ({'train' if train else 'eval'})", floor=MODEL_FLOOR)
        for net, _, _ in runs.values():
            net.zero_grad()
    assert list(model.state_dict()) == list(converted.state_dict())


def test_converted_vit_deepcopies_and_pickles():
    import pickle
    torch.manual_seed(0)
    model, x = models.create_small("vit_b_16", batch=1)
    model.eval()
    converted = cvkernels.convert(copy.deepcopy(model), backend="triton")
    block_attn = converted.blocks[0].attn
    assert isinstance(block_attn, type(model.blocks[0].attn)) and type(block_attn).__name__ == "Attention"
    expected, oracle = model(x), copy.deepcopy(model).double()(x.double())
    for clone in (copy.deepcopy(converted), pickle.loads(pickle.dumps(converted))):
        assert clone.blocks[0].attn._cvkernels_kernel == "flash_attention"
        assert_close_2x(clone(x), oracle, expected, "output", floor=MODEL_FLOOR)
