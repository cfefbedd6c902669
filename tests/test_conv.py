"""Convolution family: depthwise / grouped / dilated conv2d and conv_transpose2d kernels against
the float64 reference in reference/ops/conv.py (outputs and all three gradients)."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import cvkernels
from cvkernels.ops import conv as conv_ops
from helpers import gradcheck, leaf, make_input, opcheck, poisoned_outputs
from reference.ops import conv as ref
from tolerances import assert_close_2x

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "noncontiguous"]

TORCH_ACT = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6, "silu": F.silu}


def _weight(shape, dtype, device, fan_in):
    w = torch.randn(shape, dtype=torch.float64, device=device) / fan_in ** 0.5
    return w.to(dtype)


def _check_all(results, dtype, names):
    k, o, t = results["kernel"], results["ref"], results["torch"]
    for name, a, e, tt in zip(names, k, o, t):
        if a is None:
            continue
        assert a.dtype == dtype, name
        assert a.shape == e.shape, name
        assert torch.isfinite(a).all(), f"{name}: non-finite values (an unwritten output element?)"
        assert_close_2x(a, e, tt, name=name)


def _run(fn_kernel, fn_ref, fn_torch, x, w, b, grad_shape_from_output=True, backend="triton"):
    """Runs kernel (under poisoned allocations), float64 reference and torch in x's dtype;
    returns {name: [y, dx, dw, db]}."""
    results = {}
    for name in ("kernel", "ref", "torch"):
        cast = torch.float64 if name == "ref" else None
        xi, wi = leaf(x, cast), leaf(w, cast)
        bi = leaf(b, cast) if b is not None else None
        if name == "kernel":
            with poisoned_outputs():
                y = fn_kernel(xi, wi, bi)
        elif name == "ref":
            y = fn_ref(xi, wi, bi)
        else:
            y = fn_torch(xi, wi, bi)
        results[name] = [y, xi, wi, bi]
    grad = torch.randn(results["ref"][0].shape, dtype=torch.float64, device=x.device)
    grad = make_input(tuple(grad.shape), x.dtype, x.device, "channels_last" if x.dim() == 4 and
                      x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else "contiguous")
    out = {}
    for name, (y, xi, wi, bi) in results.items():
        leaves = [t for t in (xi, wi, bi) if t is not None]
        if name == "kernel":
            with poisoned_outputs():
                grads = torch.autograd.grad(y, leaves, grad.to(y.dtype))
        else:
            grads = torch.autograd.grad(y, leaves, grad.to(y.dtype))
        grads = list(grads) + [None] * (3 - len(grads))
        out[name] = [y] + grads
    return out


# ----------------------------------------------------------------------------- conv2d

# (N, C_in, H, W, C_out, groups, kernel, stride, padding, dilation)
CONV_CASES = [
    # depthwise, multiplier 1 and 2, square / rectangular, odd sizes
    (2, 4, 7, 7, 4, 4, 3, 1, 1, 1),
    (2, 3, 13, 11, 6, 3, (3, 5), (2, 1), (1, 2), 1),
    (1, 17, 7, 9, 17, 17, 5, 2, 2, 1),
    (2, 4, 13, 13, 8, 4, 3, 3, 4, (2, 1)),          # stride > kernel, padding > kernel/2, dilation
    (2, 5, 9, 9, 5, 5, 1, 1, 0, 1),                  # 1x1 depthwise
    (1, 4, 9, 9, 4, 4, 2, 1, "same", 1),             # even kernel, asymmetric 'same'
    (1, 6, 10, 10, 6, 6, 7, 1, "same", 2),           # ConvNeXt-style 7x7 'same', dilated
    # grouped (2, 4 = C/4, 3) and dilated implicit GEMM
    (2, 8, 9, 7, 12, 2, 3, 1, 1, 1),
    (2, 16, 7, 7, 16, 4, 3, 2, 1, 1),
    (2, 6, 11, 11, 9, 3, (1, 3), 1, (0, 1), 1),
    (2, 8, 13, 13, 8, 1, 3, 2, 2, 2),                # dilated dense, stride with dilation
    (1, 8, 15, 15, 8, 2, 3, 1, 6, 6),                # ASPP-style d=6
    (2, 3, 9, 9, 5, 1, 3, 1, "valid", 1),            # dense (explicit backend only)
]


def _conv_fns(stride, padding, dilation, groups, activation=None, backend="triton"):
    act = TORCH_ACT[activation]

    def kernel(x, w, b):
        return cvkernels.conv2d(x, w, b, stride, padding, dilation, groups, activation=activation, backend=backend)

    def reference(x, w, b):
        return act(ref.conv2d(x, w, b, stride, padding, dilation, groups))

    def plain(x, w, b):
        return act(F.conv2d(x, w, b, stride, padding, dilation, groups))
    return kernel, reference, plain


def _conv_case(case, dtype, layout, bias=True, activation=None, device=KERNEL_DEVICE, backend="triton"):
    N, C_in, H, W, C_out, groups, k, stride, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = make_input((N, C_in, H, W), dtype, device, layout)
    w = _weight((C_out, C_in // groups, kh, kw), dtype, device, C_in // groups * kh * kw)
    b = torch.randn(C_out, dtype=torch.float64, device=device).to(dtype) if bias else None
    res = _run(*_conv_fns(stride, padding, dilation, groups, activation, backend), x, w, b)
    _check_all(res, dtype, ["output", "grad_input", "grad_weight", "grad_bias"])
    y = res["kernel"][0]
    if layout == "channels_last" and y.shape[1] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last), "channels_last input, channels_last output"
    return res


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv2d(case, dtype):
    _conv_case(case, dtype, "contiguous")


@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[3], CONV_CASES[8], CONV_CASES[10]], ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
def test_conv2d_layouts(case, layout):
    _conv_case(case, torch.float32, layout)


@pytest.mark.parametrize("activation", ["relu", "relu6", "silu"])
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[7]], ids=str)
def test_conv2d_fused_activation(case, activation):
    _conv_case(case, torch.float32, "contiguous", activation=activation)


def test_conv2d_activation_without_grad_is_fused():
    x = make_input((2, 4, 8, 8), torch.float32, KERNEL_DEVICE)
    w = _weight((4, 1, 3, 3), torch.float32, KERNEL_DEVICE, 9)
    with torch.no_grad():
        y = cvkernels.conv2d(x, w, None, 1, 1, groups=4, activation="silu", backend="triton")
    assert_close_2x(y, F.silu(ref.conv2d(x.double(), w.double(), None, 1, 1, 1, 4)),
                    F.silu(F.conv2d(x, w, None, 1, 1, 1, 4)))


def test_depthwise_large_kernel_31():
    """RepLKNet's 31x31 depthwise: 961 taps, padding 15."""
    _conv_case((1, 4, 9, 8, 4, 4, 31, 1, 15, 1), torch.float32, "channels_last")


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[7]], ids=str)
def test_conv2d_empty_batch(case):
    case = (0,) + case[1:]
    N, C_in, H, W, C_out, groups, k, stride, padding, dilation = case
    x = torch.randn(0, C_in, H, W, device=KERNEL_DEVICE, requires_grad=True)
    w = torch.randn(C_out, C_in // groups, k, k, device=KERNEL_DEVICE, requires_grad=True)
    y = cvkernels.conv2d(x, w, None, stride, padding, dilation, groups, backend="triton")
    assert y.shape == F.conv2d(x, w, None, stride, padding, dilation, groups).shape
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


def test_conv2d_unbatched_input():
    x = torch.randn(4, 9, 9, device=KERNEL_DEVICE)
    w = torch.randn(8, 1, 3, 3, device=KERNEL_DEVICE)
    y = cvkernels.conv2d(x, w, None, 1, 1, groups=4)
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1, groups=4), atol=1e-5, rtol=1e-4)


def test_conv2d_gradcheck_float64():
    if KERNEL_DEVICE != "cpu":
        pytest.skip("float64 kernels run on the CPU interpreter only")
    for groups, c_out, k, stride, padding, dilation in [(3, 6, 3, 2, 1, 1), (2, 4, (2, 3), 1, (1, 0), 2)]:
        x = torch.randn(1, 6 if groups == 3 else 4, 6, 5, dtype=torch.float64, requires_grad=True)
        c_in = x.shape[1]
        k2 = (k, k) if isinstance(k, int) else k
        w = torch.randn(c_out, c_in // groups, *k2, dtype=torch.float64, requires_grad=True)
        b = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
        gradcheck(lambda x, w, b: cvkernels.conv2d(x, w, b, stride, padding, dilation, groups, backend="triton"),
                  (x, w, b))


def test_conv2d_double_backward_is_refused():
    x = torch.randn(1, 4, 6, 6, device=KERNEL_DEVICE, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, device=KERNEL_DEVICE, requires_grad=True)
    y = cvkernels.conv2d(x, w, None, 1, 1, groups=4, backend="triton")
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


# ----------------------------------------------------------------------------- conv_transpose2d

# (N, C_in, H, W, C_out, groups, kernel, stride, padding, output_padding, dilation)
TRANSPOSED_CASES = [
    (2, 8, 5, 5, 4, 1, 2, 2, 0, 0, 1),            # U-Net 2x2/2 up-conv
    (2, 8, 4, 4, 4, 1, 4, 2, 1, 0, 1),            # DCGAN 4x4/2, padding 1
    (1, 6, 7, 5, 9, 3, 3, 2, 1, 1, 1),            # groups, output_padding
    (2, 4, 5, 6, 4, 4, 3, 2, 1, 1, 2),            # depthwise transposed, dilation
    (1, 5, 7, 7, 3, 1, (3, 2), (3, 1), (2, 0), (1, 0), (1, 2)),  # stride > kernel, rectangular
    (1, 3, 2, 3, 5, 1, 16, 8, 4, 0, 1),           # FCN-8s 8x upsampling (16x16/8)
]


def _transposed_fns(stride, padding, output_padding, groups, dilation, activation=None):
    act = TORCH_ACT[activation]

    def kernel(x, w, b):
        return cvkernels.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation,
                                          activation=activation, backend="triton")

    def reference(x, w, b):
        return act(ref.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation))

    def plain(x, w, b):
        return act(F.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation))
    return kernel, reference, plain


def _transposed_case(case, dtype, layout, bias=True, activation=None):
    N, C_in, H, W, C_out, groups, k, stride, padding, output_padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = make_input((N, C_in, H, W), dtype, KERNEL_DEVICE, layout)
    w = _weight((C_in, C_out // groups, kh, kw), dtype, KERNEL_DEVICE, C_in // groups * kh * kw)
    b = torch.randn(C_out, dtype=torch.float64, device=KERNEL_DEVICE).to(dtype) if bias else None
    res = _run(*_transposed_fns(stride, padding, output_padding, groups, dilation, activation), x, w, b)
    _check_all(res, dtype, ["output", "grad_input", "grad_weight", "grad_bias"])


@pytest.mark.parametrize("case", TRANSPOSED_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv_transpose2d(case, dtype):
    _transposed_case(case, dtype, "contiguous")


@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
def test_conv_transpose2d_layouts(layout):
    _transposed_case(TRANSPOSED_CASES[2], torch.float32, layout)


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_conv_transpose2d_fused_activation(activation):
    _transposed_case(TRANSPOSED_CASES[1], torch.float32, "contiguous", activation=activation)


def test_conv_transpose2d_gradcheck_float64():
    if KERNEL_DEVICE != "cpu":
        pytest.skip("float64 kernels run on the CPU interpreter only")
    x = torch.randn(1, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    gradcheck(lambda x, w, b: cvkernels.conv_transpose2d(x, w, b, 2, 1, 1, 2, 1, backend="triton"), (x, w, b))


def test_conv_transpose2d_empty_batch():
    x = torch.randn(0, 4, 5, 5, device=KERNEL_DEVICE, requires_grad=True)
    w = torch.randn(4, 2, 2, 2, device=KERNEL_DEVICE, requires_grad=True)
    y = cvkernels.conv_transpose2d(x, w, None, 2, backend="triton")
    assert y.shape == (0, 2, 10, 10)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


# ----------------------------------------------------------------------------- fuzzing

@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n=st.integers(1, 2), c=st.integers(1, 5), mult=st.integers(1, 2), g_kind=st.sampled_from(["dw", "g1", "g2"]),
    h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 3), pw=st.integers(0, 3),
    dh=st.integers(1, 2), dw=st.integers(1, 2), transposed=st.booleans(), cl=st.booleans(),
)
def test_fuzz_conv_options(n, c, mult, g_kind, h, w, kh, kw, sh, sw, ph, pw, dh, dw, transposed, cl):
    groups = {"dw": c, "g1": 1, "g2": 1 if c % 2 else 2}[g_kind]
    c_in = c if groups != 2 else c
    c_out = c * mult if g_kind == "dw" else groups * mult
    if transposed:
        oph, opw = min(sh, dh) - 1, 0
        out_h = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
        out_w = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
        if out_h < 1 or out_w < 1:
            return
        x = make_input((n, c_in, h, w), torch.float32, KERNEL_DEVICE, "channels_last" if cl else "contiguous")
        wt = _weight((c_in, c_out // groups, kh, kw), torch.float32, KERNEL_DEVICE, kh * kw)
        res = _run(*_transposed_fns((sh, sw), (ph, pw), (oph, opw), groups, (dh, dw)), x, wt, None)
    else:
        if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
            return
        x = make_input((n, c_in, h, w), torch.float32, KERNEL_DEVICE, "channels_last" if cl else "contiguous")
        wt = _weight((c_out, c_in // groups, kh, kw), torch.float32, KERNEL_DEVICE, kh * kw)
        res = _run(*_conv_fns((sh, sw), (ph, pw), (dh, dw), groups), x, wt, None)
    _check_all(res, torch.float32, ["output", "grad_input", "grad_weight"])


# ----------------------------------------------------------------------------- registration

def _op_args(depthwise):
    x = torch.randn(2, 4, 7, 6, device=KERNEL_DEVICE)
    w = torch.randn(8, 1 if depthwise else 2, 3, 3, device=KERNEL_DEVICE)
    groups = 4 if depthwise else 2
    b = torch.randn(8, device=KERNEL_DEVICE)
    y = F.conv2d(x, w, b, 2, 1, 1, groups)
    return x, w, b, groups, torch.randn_like(y), [y.shape[2], y.shape[3]]


@pytest.mark.parametrize("depthwise", [True, False], ids=["depthwise", "gemm"])
def test_opcheck(depthwise):
    x, w, b, groups, g, out_hw = _op_args(depthwise)
    ops = torch.ops.cvkernels
    opcheck(ops.triton_conv2d, (x, w, b, [2, 2], [1, 1], [1, 1], groups, out_hw, 1))
    opcheck(ops.triton_conv2d, (x.to(memory_format=torch.channels_last), w, None, [2, 2], [1, 1], [1, 1], groups,
                                out_hw, 0))
    opcheck(ops.triton_conv2d_transposed, (g, w, None, list(x.shape), [2, 2], [1, 1], [1, 1], groups, 0))
    opcheck(ops.triton_conv2d_weight_grad, (g, x, list(w.shape), [2, 2], [1, 1], [1, 1], groups))


def test_compile_fullgraph():
    x = torch.randn(2, 4, 8, 8, device=KERNEL_DEVICE, requires_grad=True)
    w1 = torch.randn(8, 1, 3, 3, device=KERNEL_DEVICE, requires_grad=True)
    w2 = torch.randn(8, 2, 2, 2, device=KERNEL_DEVICE, requires_grad=True)

    def fn(x, w1, w2):
        y = cvkernels.conv2d(x, w1, None, 1, 1, 1, 4, activation="relu", backend="triton")
        return cvkernels.conv_transpose2d(y, w2, None, 2, 0, 0, 4, backend="triton")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(x, w1, w2)
    expected = fn(x, w1, w2)
    torch.testing.assert_close(out, expected)
    g = torch.autograd.grad(out.sum(), (x, w1, w2))
    e = torch.autograd.grad(expected.sum(), (x, w1, w2))
    for a, b in zip(g, e):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- routing and errors

def test_routing_dense_conv_runs_torch():
    x = torch.randn(1, 4, 6, 6, device=KERNEL_DEVICE, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, device=KERNEL_DEVICE)
    assert "Convolution" in type(cvkernels.conv2d(x, w).grad_fn).__name__
    dw = torch.randn(4, 1, 3, 3, device=KERNEL_DEVICE)
    assert "Conv2dFunction" in type(cvkernels.conv2d(x, dw, groups=4).grad_fn).__name__
    dil = torch.randn(5, 4, 3, 3, device=KERNEL_DEVICE)
    assert "Conv2dFunction" in type(cvkernels.conv2d(x, dil, dilation=2).grad_fn).__name__
    assert "Convolution" in type(cvkernels.conv2d(x, dw, groups=4, backend="torch").grad_fn).__name__


@pytest.mark.parametrize("bad, match", [
    (dict(groups=3), "groups=3 does not divide"),
    (dict(weight_shape=(8, 2, 3, 3), groups=4), "expects 8 input channels"),
    (dict(padding=-1), "padding must be >= 0"),
    (dict(stride=0), "stride must be >= 1"),
    (dict(weight_dtype=torch.float64), "weight dtype"),
    (dict(weight_device="meta"), "weight is on meta"),
    (dict(bias_shape=(3,)), "bias must have shape"),
    (dict(input_shape=(4, 4)), "input must be 4-D"),
    (dict(padding="full"), "padding must be"),
    (dict(padding="same", stride=2), "strided"),
    (dict(activation="gelu"), "activation must be"),
    (dict(kernel=9), "smaller than the dilated kernel"),
])
def test_conv2d_bad_input(bad, match):
    x = torch.randn(*bad.get("input_shape", (1, 4, 6, 6)))
    w = torch.randn(*bad.get("weight_shape", (8, 1, bad.get("kernel", 3), bad.get("kernel", 3))),
                    dtype=bad.get("weight_dtype", torch.float32), device=bad.get("weight_device", "cpu"))
    b = torch.randn(*bad["bias_shape"]) if "bias_shape" in bad else None
    with pytest.raises((ValueError, TypeError), match=match):
        cvkernels.conv2d(x, w, b, bad.get("stride", 1), bad.get("padding", 0), 1, bad.get("groups", 4),
                         activation=bad.get("activation"))


def test_conv_transpose2d_bad_input():
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="expects 3 input channels"):
        cvkernels.conv_transpose2d(x, torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="output_padding"):
        cvkernels.conv_transpose2d(x, torch.randn(4, 2, 3, 3), stride=2, output_padding=2)
    with pytest.raises(ValueError, match="groups=3 does not divide"):
        cvkernels.conv_transpose2d(x, torch.randn(4, 2, 3, 3), groups=3)
    with pytest.raises(TypeError, match="integer|floating"):
        cvkernels.conv_transpose2d(x.long(), torch.randn(4, 2, 3, 3).long())


# ----------------------------------------------------------------------------- nn modules and convert

def test_nn_conv2d_is_a_drop_in():
    torch_conv = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=3, bias=True, padding_mode="reflect")
    ours = cvkernels.nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=3, bias=True, padding_mode="reflect")
    ours.load_state_dict(torch_conv.state_dict())
    assert list(ours.state_dict()) == list(torch_conv.state_dict())
    assert isinstance(ours, nn.Conv2d)
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(ours(x), torch_conv(x), atol=1e-5, rtol=1e-4)
    back = ours.to_conv()
    assert type(back) is nn.Conv2d and back.weight is ours.weight


def test_nn_conv_transpose2d_output_size():
    torch_conv = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2)
    ours = cvkernels.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2)
    ours.load_state_dict(torch_conv.state_dict())
    x = torch.randn(1, 4, 5, 5)
    for size in (None, [10, 10], [9, 10]):
        torch.testing.assert_close(ours(x, output_size=size), torch_conv(x, output_size=size), atol=1e-5, rtol=1e-4)


class _Block(nn.Module):
    """Conv modules called from a custom forward, a shared depthwise conv, and a Sequential tail."""

    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.dense = nn.Conv2d(4, 8, 1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.tail = nn.Sequential(nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
                                  nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU6())

    def forward(self, x):
        x = self.dw(self.dw(x))
        return self.tail(self.up(self.dense(x)))


def test_convert_parity_and_structure():
    model = _Block()
    reference = copy.deepcopy(model)
    cvkernels.convert(model)
    assert type(model.dw) is cvkernels.nn.Conv2d and type(model.dense) is nn.Conv2d
    assert type(model.up) is cvkernels.nn.ConvTranspose2d
    assert model.tail[0].activation == "relu" and isinstance(model.tail[1], nn.Identity)
    assert model.tail[2].activation == "relu6" and isinstance(model.tail[3], nn.Identity)
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 4, 6, 6, device=KERNEL_DEVICE)
    model.to(KERNEL_DEVICE), reference.to(KERNEL_DEVICE)
    y, y_ref = model(x), reference(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x), y_ref, atol=1e-5, rtol=1e-4)


def test_int64_indexing_path(monkeypatch):
    """Tensors past 2**31 elements switch the kernels to 64-bit index arithmetic; run that
    variant on small shapes (its arithmetic is the same, only the type differs)."""
    import triton.language as tl

    from cvkernels.triton import conv as kernels
    monkeypatch.setattr(kernels, "_index_type", lambda *tensors: tl.int64)
    assert kernels._index_type() == tl.int64
    _conv_case(CONV_CASES[1], torch.float32, "channels_last")
    _conv_case(CONV_CASES[8], torch.float32, "contiguous")
    _transposed_case(TRANSPOSED_CASES[2], torch.float32, "contiguous")


def test_index_type_threshold():
    import triton.language as tl

    from cvkernels.triton.conv import _index_type
    small = torch.empty(2, 3, 4, 5)
    assert _index_type(small) == tl.int32
    big = torch.empty((2, 2), device="meta").as_strided((2, 2), (2**31, 1))  # an offset past 2**31, no memory
    assert _index_type(small, big) == tl.int64
    assert _index_type(torch.empty(2**31, device="meta")) == tl.int64


def test_convert_with_a_backend_conv_lacks():
    """convert(backend="cpp") names the BatchNorm backend; convolutions fall back to automatic."""
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU())
    reference = copy.deepcopy(model)
    cvkernels.convert(model, backend="cpp" if cvkernels.has_ops() else "triton")
    assert model[0].backend in (None, "triton")
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-4)
