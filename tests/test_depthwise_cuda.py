"""The CUDA C++ depthwise conv2d ops (csrc/cuda/depthwise_conv2d.cu) against F.conv2d in float64.

cvkernels::depthwise_conv2d_forward / _backward_input / _backward_weight are called directly and
compared with F.conv2d(groups=C_in) and its autograd gradients, computed in float64 on the same
(dtype-rounded) inputs. GPU-only: skipped unless CUDA is available and the ops have CUDA kernels.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import poisoned_outputs


def _cuda_ops_registered():
    if not torch.cuda.is_available():
        return False
    try:
        import cvkernels  # noqa: F401  (loads the compiled library)
        return torch._C._dispatch_has_kernel_for_dispatch_key("cvkernels::depthwise_conv2d_forward", "CUDA")
    except Exception:  # library not built / op not registered
        return False


pytestmark = pytest.mark.skipif(not _cuda_ops_registered(),
                                reason="needs a GPU and cvkernels built with its CUDA depthwise kernels")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "channels_last"]
ACTIVATIONS = {0: lambda t: t, 1: F.relu, 2: lambda t: F.hardtanh(t, 0.0, 6.0), 3: F.silu}


def _ops():
    ops = torch.ops.cvkernels
    return ops.depthwise_conv2d_forward, ops.depthwise_conv2d_backward_input, ops.depthwise_conv2d_backward_weight


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _base_tol(dtype, kh, kw):
    if dtype == torch.float32:
        return 1e-3 if kh * kw > 49 else 1e-4
    return 1e-2 if dtype == torch.float16 else 5e-2


def _assert_close(actual, expected, dtype, terms, kh, kw, what):
    """assert_close against the float64 oracle: rtol = base tolerance of the dtype, atol = base *
    sqrt(terms) (the number of products summed per output element)."""
    base = _base_tol(dtype, kh, kw)
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{what}: NaN in the output (an element left unwritten?)"
    torch.testing.assert_close(actual.double(), expected, rtol=base, atol=base * math.sqrt(max(terms, 1)),
                               msg=lambda m: f"{what}: {m}")


def _make(shape, dtype, layout, scale=1.0):
    t = torch.randn(shape, device="cuda", dtype=torch.float64) * scale
    t = t.to(dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        big = torch.randn((*shape[:-1], 2 * shape[-1]), device="cuda", dtype=torch.float64).to(dtype)
        big[..., ::2] = t
        t = big[..., ::2]
        assert not t.is_contiguous()
    return t


def _strictly_channels_last(t):
    """channels_last and not also NCHW-contiguous (size-1 dims make a layout ambiguous; torch then
    suggests NCHW)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _run_case(N, C, M, H, W, k, stride, padding, dilation, dtype, layout, activation=0, bias=False,
              backward=True):
    fwd, bwd_input, bwd_weight = _ops()
    kh, kw = _pair(k)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    C_out = C * M
    x = _make((N, C, H, W), dtype, layout)
    w = _make((C_out, 1, kh, kw), dtype, "nchw", scale=1.0 / math.sqrt(kh * kw))
    b = _make((C_out,), dtype, "nchw") if bias else None

    x64, w64 = x.double().requires_grad_(True), w.double().requires_grad_(True)
    b64 = b.double() if bias else None
    conv64 = F.conv2d(x64, w64, b64, stride, padding, dilation, groups=C)
    ref = ACTIVATIONS[activation](conv64)
    OH, OW = ref.shape[2], ref.shape[3]

    with poisoned_outputs():
        y = fwd(x, w, b, list(stride), list(padding), list(dilation), activation)
    _assert_close(y, ref.detach(), dtype, kh * kw, kh, kw, f"forward act={activation}")
    if _strictly_channels_last(x) and C_out > 1 and OH * OW > 1:
        assert y.is_contiguous(memory_format=torch.channels_last), "channels_last input must give channels_last output"
    if layout == "nchw":
        assert y.is_contiguous(), "NCHW input must give a contiguous output"

    if not backward:
        return
    gy = _make((N, C_out, OH, OW), dtype, "channels_last" if layout == "channels_last" else "nchw")
    gx_ref, gw_ref = torch.autograd.grad(conv64, (x64, w64), gy.double())
    with poisoned_outputs():
        gx = bwd_input(gy, w, list(x.shape), list(stride), list(padding), list(dilation))
        gw = bwd_weight(gy, x, list(w.shape), list(stride), list(padding), list(dilation))
    _assert_close(gx, gx_ref, dtype, kh * kw * M, kh, kw, "grad_input")
    _assert_close(gw, gw_ref, dtype, N * OH * OW, kh, kw, "grad_weight")
    if _strictly_channels_last(gy) and C > 1 and H * W > 1:
        assert gx.is_contiguous(memory_format=torch.channels_last), "channels_last grad_output must give a " \
            "channels_last grad_input"
    assert gw.is_contiguous()


# (N, C, M, H, W, kernel, stride, padding, dilation)
CASES = [
    # kernel sizes, 'same' padding
    (2, 8, 1, 13, 13, 1, 1, 0, 1),
    (2, 8, 1, 13, 13, 3, 1, 1, 1),
    (2, 8, 1, 13, 13, 5, 1, 2, 1),
    (2, 8, 1, 13, 13, 7, 1, 3, 1),
    (1, 8, 1, 13, 13, 31, 1, 15, 1),
    (2, 8, 1, 13, 13, (3, 5), 1, (1, 2), 1),
    (2, 8, 1, 7, 7, (5, 3), 1, (2, 1), 1),
    # strides
    (2, 8, 1, 13, 13, 3, 2, 1, 1),
    (2, 8, 1, 13, 13, 5, 2, 2, 1),
    (2, 8, 1, 13, 13, 7, 2, 3, 1),
    (2, 8, 1, 13, 13, 3, 3, 1, 1),
    (2, 8, 1, 13, 13, 5, 3, 0, 1),
    (2, 8, 1, 13, 13, 3, (1, 2), (0, 1), 1),
    (2, 8, 1, 13, 13, 3, (2, 1), (1, 0), 1),
    # padding 0..k
    (2, 8, 1, 7, 7, 3, 1, 0, 1),
    (2, 8, 1, 7, 7, 3, 1, 2, 1),
    (2, 8, 1, 7, 7, 3, 1, 3, 1),
    (2, 8, 1, 7, 7, 5, 2, 5, 1),
    (2, 8, 1, 13, 13, 7, 1, 7, 1),
    # dilation
    (2, 8, 1, 13, 13, 3, 1, 2, 2),
    (2, 8, 1, 13, 13, 5, 1, 4, 2),
    (2, 8, 1, 13, 13, 3, 2, 1, 2),
    (2, 8, 1, 13, 13, 3, 1, (2, 1), (2, 1)),
    # channel multiplier
    (2, 4, 2, 13, 13, 3, 1, 1, 1),
    (2, 4, 2, 13, 13, 5, 2, 2, 1),
    (2, 3, 2, 7, 7, 7, 1, 3, 2),
    # odd sizes and channel counts (vectorized and scalar channel paths, several channel blocks)
    (3, 6, 1, 9, 14, 3, 1, 1, 1),
    (2, 40, 1, 7, 7, 3, 1, 1, 1),
    (1, 264, 1, 7, 7, 3, 2, 1, 1),
    (2, 24, 1, 13, 7, 5, 1, 2, 1),
    (2, 1, 1, 13, 13, 3, 1, 1, 1),
    (2, 8, 1, 1, 1, 3, 1, 1, 1),
    (2, 8, 1, 4, 4, 9, 1, 4, 1),
]


def _case_id(c):
    N, C, M, H, W, k, s, p, d = c
    return f"N{N}-C{C}-M{M}-{H}x{W}-k{k}-s{s}-p{p}-d{d}".replace(" ", "")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_and_gradients(case, dtype, layout):
    _run_case(*case, dtype=dtype, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", [0, 1, 2, 3])
def test_activations_and_bias(activation, dtype, layout):
    _run_case(2, 16, 1, 13, 13, 3, 1, 1, 1, dtype=dtype, layout=layout, activation=activation, bias=True,
              backward=False)
    _run_case(2, 8, 2, 7, 7, 5, 2, 2, 1, dtype=dtype, layout=layout, activation=activation, bias=True,
              backward=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noncontiguous_input(dtype):
    _run_case(2, 8, 1, 13, 13, 3, 1, 1, 1, dtype=dtype, layout="noncontiguous", bias=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_misaligned_channels_last(dtype):
    """A channels_last view at an odd storage offset cannot use vector loads: the scalar path runs."""
    fwd, bwd_input, bwd_weight = _ops()
    N, C, H, W = 2, 16, 9, 9
    flat = torch.randn(N * C * H * W + 1, device="cuda").to(dtype)
    x = flat[1:].view(N, H, W, C).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16 != 0
    w = torch.randn(C, 1, 3, 3, device="cuda").to(dtype)
    ref = F.conv2d(x.double(), w.double(), None, 1, 1, 1, C)
    y = fwd(x, w, None, [1, 1], [1, 1], [1, 1], 0)
    _assert_close(y, ref, dtype, 9, 3, 3, "forward (misaligned)")
    gy = flat[1:].view(N, H, W, C).permute(0, 3, 1, 2)  # misaligned grad_output too
    x64, w64 = x.double().requires_grad_(True), w.double().requires_grad_(True)
    gx_ref, gw_ref = torch.autograd.grad(F.conv2d(x64, w64, None, 1, 1, 1, C), (x64, w64), gy.double())
    _assert_close(bwd_input(gy, w, list(x.shape), [1, 1], [1, 1], [1, 1]), gx_ref, dtype, 9, 3, 3, "grad_input")
    _assert_close(bwd_weight(gy, x, list(w.shape), [1, 1], [1, 1], [1, 1]), gw_ref, dtype, N * H * W, 3, 3,
                  "grad_weight")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_batch(layout):
    fwd, bwd_input, bwd_weight = _ops()
    x = _make((0, 8, 7, 7), torch.float16, layout)
    w = torch.randn(16, 1, 3, 3, device="cuda", dtype=torch.float16)
    y = fwd(x, w, None, [2, 2], [1, 1], [1, 1], 1)
    assert y.shape == (0, 16, 4, 4)
    gy = torch.randn(0, 16, 4, 4, device="cuda", dtype=torch.float16)
    assert bwd_input(gy, w, [0, 8, 7, 7], [2, 2], [1, 1], [1, 1]).shape == (0, 8, 7, 7)
    gw = bwd_weight(gy, x, [16, 1, 3, 3], [2, 2], [1, 1], [1, 1])
    assert gw.shape == (16, 1, 3, 3) and gw.dtype == torch.float16
    assert torch.equal(gw, torch.zeros_like(gw))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grad_weight_is_deterministic(layout):
    _, _, bwd_weight = _ops()
    x = _make((8, 32, 28, 28), torch.float32, layout)
    gy = _make((8, 32, 28, 28), torch.float32, layout)
    a = bwd_weight(gy, x, [32, 1, 7, 7], [1, 1], [3, 3], [1, 1])
    b = bwd_weight(gy, x, [32, 1, 7, 7], [1, 1], [3, 3], [1, 1])
    assert torch.equal(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_larger_shapes(layout):
    """Model-like sizes: many blocks, several grad-weight splits, 16-byte vectors."""
    _run_case(4, 96, 1, 56, 56, 3, 1, 1, 1, dtype=torch.float16, layout=layout)
    _run_case(4, 96, 1, 56, 56, 3, 2, 1, 1, dtype=torch.bfloat16, layout=layout)
    _run_case(2, 128, 1, 28, 28, 7, 1, 3, 1, dtype=torch.float32, layout=layout)


def test_more_than_2_31_elements():
    """Element offsets are 64-bit: the last image of a > 2^31-element batch is convolved correctly."""
    fwd, _, _ = _ops()
    N, C, H, W = 33, 64, 1024, 1024  # 2.2e9 elements
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * N * C * H * W * 2:
        pytest.skip("not enough GPU memory for a > 2^31-element tensor")
    x = torch.empty(N, H, W, C, device="cuda", dtype=torch.float16).permute(0, 3, 1, 2)
    x[:-1].zero_()
    x[-1].copy_(torch.randn(C, H, W, device="cuda").to(torch.float16))
    w = torch.randn(C, 1, 3, 3, device="cuda", dtype=torch.float16)
    y = fwd(x, w, None, [1, 1], [1, 1], [1, 1], 0)
    ref = F.conv2d(x[-1:].double(), w.double(), None, 1, 1, 1, C)
    _assert_close(y[-1:], ref, torch.float16, 9, 3, 3, "forward, last image")
    del x, y


def _args(**over):
    x = torch.randn(2, 4, 8, 8, device="cuda")
    w = torch.randn(8, 1, 3, 3, device="cuda")
    args = dict(input=x, weight=w, bias=None, stride=[1, 1], padding=[1, 1], dilation=[1, 1], activation=0)
    args.update(over)
    return args


def _forward(a):
    fwd, _, _ = _ops()
    return fwd(a["input"], a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"], a["activation"])


def _cuda(*shape, dtype=torch.float32):
    return torch.randn(*shape, device="cuda", dtype=dtype)


# (overrides built lazily: collection must not touch CUDA on a machine without it, expected message)
BAD_FORWARD = [
    (lambda: dict(input=torch.randn(2, 4, 8, 8)), "input must be a CUDA tensor"),
    (lambda: dict(input=_cuda(2, 4, 8, 8, dtype=torch.float64)), "input must be float32"),
    (lambda: dict(input=_cuda(4, 8, 8)), "input must be 4-D"),
    (lambda: dict(weight=_cuda(8, 1, 3, 3, dtype=torch.float16)), "weight must have input's dtype"),
    (lambda: dict(weight=_cuda(8, 2, 3, 3)), "weight must have shape"),
    (lambda: dict(weight=_cuda(6, 1, 3, 3)), r"weight\.size\(0\)"),
    (lambda: dict(bias=_cuda(5)), "bias must have shape"),
    (lambda: dict(bias=_cuda(8, dtype=torch.float16)), "bias must have input's dtype"),
    (lambda: dict(stride=[0, 1]), "stride must be positive"),
    (lambda: dict(padding=[-1, 0]), "padding must be non-negative"),
    (lambda: dict(dilation=[1, 0]), "dilation must be positive"),
    (lambda: dict(activation=4), "activation must be"),
    (lambda: dict(weight=_cuda(8, 1, 11, 11), padding=[0, 0]), "smaller than the dilated kernel"),
]


@pytest.mark.parametrize("over, match", BAD_FORWARD, ids=[m for _, m in BAD_FORWARD])
def test_forward_bad_input(over, match):
    with pytest.raises(RuntimeError, match=match):
        _forward(_args(**over()))


def test_backward_bad_input():
    _, bwd_input, bwd_weight = _ops()
    x = torch.randn(2, 4, 8, 8, device="cuda")
    w = torch.randn(8, 1, 3, 3, device="cuda")
    gy = torch.randn(2, 8, 8, 8, device="cuda")
    with pytest.raises(RuntimeError, match="input_size must have 4 values"):
        bwd_input(gy, w, [2, 4, 8], [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="grad_output must have shape"):
        bwd_input(gy, w, [2, 4, 9, 9], [1, 1], [0, 0], [1, 1])
    with pytest.raises(RuntimeError, match="weight must have grad_output's dtype"):
        bwd_input(gy, w.half(), [2, 4, 8, 8], [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="grad_output must be a CUDA tensor"):
        bwd_input(gy.cpu(), w, [2, 4, 8, 8], [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="weight_size must have 4 values"):
        bwd_weight(gy, x, [8, 1, 3], [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="weight_size must have shape"):
        bwd_weight(gy, x, [8, 2, 3, 3], [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="grad_output must have shape"):
        bwd_weight(gy, x, [8, 1, 5, 5], [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="grad_output must have input's dtype"):
        bwd_weight(gy.half(), x, [8, 1, 3, 3], [1, 1], [1, 1], [1, 1])
