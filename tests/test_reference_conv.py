"""The float64 convolution references (reference/ops/conv.py) against torch's own F.conv2d /
F.conv_transpose2d in float64: torch is the independent check of the oracle here.

Outputs and gradients (input, weight, bias) over a grid of option combinations (groups 1/2,
depthwise with channel multiplier 2, dilation, stride larger than the kernel, padding larger than
half the kernel, 'same' / 'valid', rectangular kernels, output_padding, empty batch, unbatched
input, non-contiguous and channels_last inputs), a bounded hypothesis fuzz of the option space,
the shape helpers, the error messages, and that the reference never routes through torch's conv.
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reference.ops import conv as ref  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)
f64 = torch.float64


def _leaf(shape, layout="contiguous"):
    if layout == "channels_last":
        t = torch.randn(shape, dtype=f64).contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        t = torch.randn((*shape[:-1], 2 * shape[-1]), dtype=f64)[..., ::2]
    else:
        t = torch.randn(shape, dtype=f64)
    return t.requires_grad_()


def _compare(ours, theirs, leaves):
    """Same output (shape, dtype, values) and same gradients for a random upstream gradient."""
    assert ours.shape == theirs.shape and ours.dtype == f64
    torch.testing.assert_close(ours, theirs, **TOL)
    if ours.numel() == 0:
        return
    grad = torch.randn_like(theirs)
    g_ours = torch.autograd.grad(ours, leaves, grad, allow_unused=True)
    g_torch = torch.autograd.grad(theirs, leaves, grad, allow_unused=True)
    for a, e, leaf in zip(g_ours, g_torch, leaves):
        assert a is not None and a.shape == leaf.shape
        torch.testing.assert_close(a, e, **TOL)


# ----------------------------------------------------------------------------- conv2d grid

# (input shape, weight shape, kwargs)
CONV_CASES = [
    ((2, 3, 9, 8), (5, 3, 3, 3), {}),                                               # plain
    ((2, 3, 9, 8), (5, 3, 3, 3), dict(padding=1)),
    ((2, 4, 11, 10), (6, 2, 3, 3), dict(groups=2, padding=1, stride=2)),             # grouped
    ((2, 4, 10, 9), (8, 1, 3, 3), dict(groups=4, padding=1)),                        # depthwise x2
    ((1, 4, 12, 12), (8, 1, 5, 5), dict(groups=4, padding=2, stride=2)),             # depthwise k5 s2
    ((2, 3, 13, 12), (4, 3, 3, 3), dict(dilation=2, padding=2)),                     # dilated
    ((2, 4, 17, 16), (4, 1, 3, 3), dict(dilation=(3, 2), padding=(3, 2), groups=4)),  # dilated DW
    ((2, 3, 11, 10), (4, 3, 2, 2), dict(stride=3)),                                  # stride > kernel
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(padding=3)),                                   # padding > k/2
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(padding=(4, 0), stride=(2, 1))),
    ((2, 3, 8, 9), (4, 3, 3, 3), dict(padding="same")),
    ((2, 3, 8, 9), (4, 3, 4, 2), dict(padding="same", dilation=(1, 3))),             # even kernel: asymmetric
    ((2, 4, 8, 9), (6, 2, 3, 3), dict(padding="same", dilation=2, groups=2)),
    ((2, 3, 8, 9), (4, 3, 3, 3), dict(padding="valid", stride=2)),
    ((2, 3, 10, 9), (4, 3, 1, 5), dict(padding=(0, 2))),                             # rectangular 1x5
    ((2, 3, 10, 9), (4, 3, 5, 1), dict(padding=(2, 0), stride=(1, 2))),              # rectangular 5x1
    ((2, 6, 9, 9), (6, 2, 3, 2), dict(groups=3, stride=(2, 1), dilation=(1, 2), padding=(1, 3))),
    ((2, 6, 7, 7), (9, 2, 1, 1), dict(groups=3)),                                    # grouped 1x1
    ((2, 3, 6, 5), (4, 3, 6, 5), {}),                                                # kernel == input
    ((0, 3, 8, 8), (4, 3, 3, 3), dict(padding=1)),                                   # empty batch
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("xs,ws,kw", CONV_CASES, ids=[f"{i}" for i in range(len(CONV_CASES))])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_matches_torch(xs, ws, kw, bias):
    x, w = _leaf(xs), _leaf(ws)
    b = _leaf((ws[0],)) if bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    _compare(ref.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw), leaves)


@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
def test_conv2d_layouts(layout):
    x, w, b = _leaf((2, 4, 9, 8), layout), _leaf((6, 2, 3, 3), layout), _leaf((6,))
    _compare(ref.conv2d(x, w, b, stride=2, padding=1, groups=2), F.conv2d(x, w, b, stride=2, padding=1, groups=2),
             [x, w, b])


def test_conv2d_unbatched_tuple_args_and_float32():
    x, w = _leaf((3, 9, 8)), _leaf((4, 3, 3, 2))
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    _compare(ref.conv2d(x, w, None, **kw), F.conv2d(x, w, None, **kw), [x, w])
    # lists are accepted like tuples
    _compare(ref.conv2d(x, w, None, stride=[2, 1], padding=[1, 2], dilation=[1, 2]),
             F.conv2d(x, w, None, **kw), [x, w])
    # lower-precision inputs are computed (and returned) in float64
    x32, w32 = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    y = ref.conv2d(x32, w32, padding=1)
    assert y.dtype == f64
    torch.testing.assert_close(y, F.conv2d(x32.double(), w32.double(), padding=1), **TOL)


def test_conv2d_gradcheck():
    x, w, b = _leaf((1, 4, 5, 4)), _leaf((4, 2, 2, 3)), _leaf((4,))
    assert torch.autograd.gradcheck(lambda *a: ref.conv2d(*a, stride=(1, 2), padding=(1, 2), dilation=(2, 1),
                                                          groups=2), (x, w, b))
    x2, w2 = _leaf((1, 2, 3, 3)), _leaf((2, 1, 2, 2))          # double backward too (tiny: it is slow)
    assert torch.autograd.gradgradcheck(lambda *a: ref.conv2d(*a, padding=1, groups=2), (x2, w2))


# ----------------------------------------------------------------------------- conv_transpose2d grid

# (input shape, weight shape (C_in, C_out / groups, kH, kW), kwargs)
CONVT_CASES = [
    ((2, 3, 5, 4), (3, 4, 3, 3), {}),
    ((2, 4, 5, 6), (4, 3, 2, 2), dict(stride=2)),                                    # U-Net up-conv
    ((2, 4, 4, 4), (4, 2, 4, 4), dict(stride=2, padding=1)),                         # DCGAN 4x4/2
    ((2, 4, 5, 4), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((2, 4, 5, 4), (4, 3, 3, 3), dict(stride=(3, 2), padding=(1, 0), output_padding=(2, 1))),
    ((2, 4, 5, 6), (4, 3, 3, 3), dict(groups=2, stride=2, padding=1)),               # grouped
    ((2, 4, 5, 5), (4, 2, 3, 3), dict(groups=4, stride=2, padding=1, output_padding=1)),  # depthwise x2
    ((2, 3, 5, 4), (3, 2, 3, 3), dict(dilation=2, padding=1)),                       # dilated
    ((2, 3, 5, 4), (3, 2, 2, 3), dict(dilation=(3, 1), stride=2, output_padding=(2, 1))),  # op < dilation
    ((2, 3, 4, 4), (3, 2, 2, 2), dict(stride=3)),                                    # stride > kernel: gaps
    ((2, 3, 6, 5), (3, 2, 3, 3), dict(padding=2)),                                   # padding > k/2
    ((2, 3, 6, 5), (3, 2, 1, 4), dict(stride=(1, 2), padding=(0, 1))),               # rectangular
    ((1, 6, 3, 3), (6, 2, 16, 16), dict(stride=8, padding=4, groups=3)),             # FCN-style 8x
    ((0, 3, 4, 4), (3, 2, 3, 3), dict(stride=2, padding=1)),                         # empty batch
]


@pytest.mark.parametrize("xs,ws,kw", CONVT_CASES, ids=[f"{i}" for i in range(len(CONVT_CASES))])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv_transpose2d_matches_torch(xs, ws, kw, bias):
    x, w = _leaf(xs), _leaf(ws)
    b = _leaf((ws[1] * kw.get("groups", 1),)) if bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    _compare(ref.conv_transpose2d(x, w, b, **kw), F.conv_transpose2d(x, w, b, **kw), leaves)


@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
def test_conv_transpose2d_layouts_and_unbatched(layout):
    x, w, b = _leaf((2, 4, 5, 6), layout), _leaf((4, 3, 3, 3), layout), _leaf((6,))
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    _compare(ref.conv_transpose2d(x, w, b, **kw), F.conv_transpose2d(x, w, b, **kw), [x, w, b])
    x3 = _leaf((4, 3, 5))
    _compare(ref.conv_transpose2d(x3, w, b, **kw), F.conv_transpose2d(x3, w, b, **kw), [x3, w, b])


def test_conv_transpose2d_gradcheck_and_adjointness():
    x, w, b = _leaf((1, 4, 3, 4)), _leaf((4, 2, 3, 2)), _leaf((4,))
    kw = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2))
    assert torch.autograd.gradcheck(lambda *a: ref.conv_transpose2d(*a, **kw), (x, w, b))
    # the transposed conv is the adjoint of the conv with the same weight tensor (read as the conv's
    # (C_out, C_in / g, kH, kW)): <conv(y), x> == <y, convT(x)> for y of convT(x)'s shape
    conv_kw = dict(stride=(2, 3), padding=(1, 0), groups=2, dilation=(1, 2))
    xd, wd = x.detach(), w.detach()
    convt = ref.conv_transpose2d(xd, wd, None, output_padding=(1, 2), **conv_kw)
    y = torch.randn(convt.shape, dtype=f64)
    assert ref.conv2d(y, wd, **conv_kw).shape == xd.shape
    torch.testing.assert_close((ref.conv2d(y, wd, **conv_kw) * xd).sum(), (y * convt).sum(), **TOL)


# ----------------------------------------------------------------------------- hypothesis fuzz

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@st.composite
def _conv_problem(draw, transposed):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    n = draw(st.integers(0, 2))
    kwargs = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    if transposed:
        kwargs["output_padding"] = (draw(st.integers(0, max(sh, dh) - 1)), draw(st.integers(0, max(sw, dw) - 1)))
        wshape = (cin, cout // groups, kh, kw)
        ok = min(ref.conv_transpose_output_size((h, w), (kh, kw), (sh, sw), (ph, pw), kwargs["output_padding"],
                                                (dh, dw))) >= 1
    else:
        if draw(st.booleans()):
            kwargs["padding"] = "same"
            kwargs["stride"] = 1
        wshape = (cout, cin // groups, kh, kw)
        pad = (0, 0) if kwargs["padding"] == "same" else (ph, pw)
        ok = kwargs["padding"] == "same" or min(ref.conv_output_size((h, w), (kh, kw), (sh, sw), pad, (dh, dw))) >= 1
    return (n, cin, h, w), wshape, kwargs, ok, draw(st.booleans())


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@settings(max_examples=40, deadline=None, derandomize=True)
@given(_conv_problem(transposed=False))
def test_conv2d_fuzz(problem):
    xs, ws, kw, ok, bias = problem
    x, w = _leaf(xs), _leaf(ws)
    b = _leaf((ws[0],)) if bias else None
    if not ok:
        with pytest.raises(ValueError, match="output size"):
            ref.conv2d(x, w, b, **kw)
        return
    _compare(ref.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw), [t for t in (x, w, b) if t is not None])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(_conv_problem(transposed=True))
def test_conv_transpose2d_fuzz(problem):
    xs, ws, kw, ok, bias = problem
    x, w = _leaf(xs), _leaf(ws)
    b = _leaf((ws[1] * kw["groups"],)) if bias else None
    if not ok:
        with pytest.raises(ValueError, match="output size"):
            ref.conv_transpose2d(x, w, b, **kw)
        return
    _compare(ref.conv_transpose2d(x, w, b, **kw), F.conv_transpose2d(x, w, b, **kw),
             [t for t in (x, w, b) if t is not None])


# ----------------------------------------------------------------------------- shape helpers

def test_output_size_helpers_agree_with_torch():
    for n, k, s, p, d in [(224, 7, 2, 3, 1), (227, 11, 4, 0, 1), (13, 3, 1, 1, 1), (17, 3, 2, 6, 6), (8, 2, 3, 0, 1),
                          (9, 3, 1, 0, 3)]:
        got = ref.conv_output_size(n, k, s, p, d)
        out = F.conv2d(torch.zeros(1, 1, n, 3), torch.zeros(1, 1, k, 1), stride=(s, 1), padding=(p, 0),
                       dilation=(d, 1)).shape[2]
        assert got == out, (n, k, s, p, d)
    assert ref.conv_output_size(227, 11, 4) == 55                                  # AlexNet conv1
    assert ref.conv_output_size((224, 10), (7, 3), (2, 1), (3, 0), 1) == (112, 8)  # pairs, mixed
    assert ref.conv_output_size(2, 5) == -2                                         # too small: not clamped
    for n, k, s, p, op, d in [(4, 4, 2, 1, 0, 1), (7, 2, 2, 0, 0, 1), (5, 3, 2, 1, 1, 1), (3, 16, 8, 4, 0, 1),
                              (5, 3, 3, 2, 2, 2), (1, 4, 1, 0, 0, 1)]:
        got = ref.conv_transpose_output_size(n, k, s, p, op, d)
        out = F.conv_transpose2d(torch.zeros(1, 1, n, 1), torch.zeros(1, 1, k, 1), stride=(s, 1), padding=(p, 0),
                                 output_padding=(op, 0), dilation=(d, 1)).shape[2]
        assert got == out, (n, k, s, p, op, d)
    assert ref.conv_transpose_output_size(1, 4, 1, 0) == 4                         # DCGAN first layer
    assert ref.conv_transpose_output_size((4, 5), 4, 2, 1) == (8, 10)


# ----------------------------------------------------------------------------- errors and independence

def test_errors_name_the_problem():
    x, w = torch.randn(2, 4, 6, 6, dtype=f64), torch.randn(6, 2, 3, 3, dtype=f64)
    with pytest.raises(ValueError, match="channels"):
        ref.conv2d(x, w)                                   # groups=1 needs weight (., 4, ., .)
    with pytest.raises(ValueError, match="divisible"):
        ref.conv2d(x, torch.randn(5, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="strided"):
        ref.conv2d(x, w, padding="same", stride=2, groups=2)
    with pytest.raises(ValueError, match="padding"):
        ref.conv2d(x, w, padding="full", groups=2)
    with pytest.raises(ValueError, match="bias"):
        ref.conv2d(x, w, torch.randn(5), groups=2)
    with pytest.raises(ValueError, match="output size"):
        ref.conv2d(x, torch.randn(6, 2, 7, 3), groups=2)
    with pytest.raises(ValueError, match="stride"):
        ref.conv2d(x, w, stride=0, groups=2)
    with pytest.raises(ValueError, match="dilation"):
        ref.conv2d(x, w, dilation=(1, 0), groups=2)
    with pytest.raises(ValueError, match="input"):
        ref.conv2d(torch.randn(6, 6), w)
    with pytest.raises(ValueError, match="groups"):
        ref.conv2d(x, w, groups=0)
    wt = torch.randn(4, 3, 3, 3, dtype=f64)
    with pytest.raises(ValueError, match="output_padding"):
        ref.conv_transpose2d(x, wt, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="channels"):
        ref.conv_transpose2d(x, torch.randn(3, 3, 3, 3))
    with pytest.raises(ValueError, match="divisible"):
        ref.conv_transpose2d(x, wt, groups=3)
    with pytest.raises(ValueError, match="padding"):
        ref.conv_transpose2d(x, wt, padding="same")
    with pytest.raises(ValueError, match="output size"):
        ref.conv_transpose2d(torch.randn(1, 4, 1, 1), wt, padding=2)
    # torch refuses the same things
    with pytest.raises(RuntimeError):
        F.conv_transpose2d(x, wt, stride=2, output_padding=2)


def test_reference_does_not_call_torch_convolution(monkeypatch):
    """The oracle is independent: it must not route through torch's convolution or unfold."""
    def boom(*a, **k):
        raise AssertionError("the reference called torch's convolution / unfold")
    for mod, names in ((F, ["conv2d", "conv_transpose2d", "unfold", "fold"]),
                       (torch, ["conv2d", "conv_transpose2d", "convolution", "_convolution"])):
        for name in names:
            monkeypatch.setattr(mod, name, boom)
    monkeypatch.setattr(torch.nn.Unfold, "forward", boom)
    x = torch.randn(2, 4, 6, 6, dtype=f64, requires_grad=True)
    y = ref.conv2d(x, torch.randn(4, 2, 3, 3, dtype=f64), stride=2, padding=1, groups=2)
    z = ref.conv_transpose2d(y, torch.randn(4, 2, 3, 3, dtype=f64), stride=2, padding=1, output_padding=1, groups=2)
    z.sum().backward()
    assert z.shape == (2, 4, 6, 6) and x.grad is not None
