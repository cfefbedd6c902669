"""Shifted-window (Swin) attention: the fused Triton kernels against the float64 oracle in
reference/ops/window_attention.py (outputs, qkv and bias-table gradients), the flash-attention
2x rule for low precision, timm 1.0 semantics (roll before pad, mask of the padded size), the
explicit-mask windows form, registration, compile, nn module and block fusion."""
import contextlib
import copy
import importlib.util
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from cvkernels.nn import window_attention as nn_wa
from cvkernels.ops import window_attention as wa
from cvkernels.triton import window_attention as kernels
from helpers import gradcheck, leaf, make_input, opcheck, poisoned_outputs
from reference.ops import window_attention as ref
from tolerances import assert_close, assert_close_2x

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HAS_TIMM = importlib.util.find_spec("timm") is not None


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _table(window, heads, dtype, device=KERNEL_DEVICE):
    mh, mw = _pair(window)
    return (torch.randn((2 * mh - 1) * (2 * mw - 1), heads, dtype=torch.float64, device=device)).to(dtype)


def _check(results, dtype, names):
    k, o, t = results["kernel"], results["ref"], results["torch"]
    for name, a, e, tt in zip(names, k, o, t):
        assert a.dtype == dtype, name
        assert a.shape == e.shape, name
        assert torch.isfinite(a).all(), f"{name}: non-finite values (an unwritten output element?)"
        assert_close_2x(a, e, tt, name=name)


def _three_way(fn_kernel, fn_ref, fn_torch, inputs, backward=True):
    """Runs kernel (allocations poisoned), float64 oracle and the torch composite in the inputs'
    precision; returns {name: [output, *input grads]}."""
    runs = {}
    for name, fn in (("kernel", fn_kernel), ("ref", fn_ref), ("torch", fn_torch)):
        leaves = [leaf(t, torch.float64 if name == "ref" else None) for t in inputs]
        with poisoned_outputs() if name == "kernel" else contextlib.nullcontext():
            runs[name] = (fn(*leaves), leaves)
    if not backward:
        return {name: [y] for name, (y, _) in runs.items()}
    dtype = inputs[0].dtype
    grad = torch.randn(runs["ref"][0].shape, dtype=torch.float64, device=inputs[0].device).to(dtype)
    out = {}
    for name, (y, leaves) in runs.items():
        with poisoned_outputs() if name == "kernel" else contextlib.nullcontext():
            grads = torch.autograd.grad(y, leaves, grad.to(y.dtype))
        out[name] = [y, *grads]
    return out


def _map_case(B, H, W, heads, head_dim, window, shift, dtype, layout="contiguous", backward=True, unpadded=None):
    C = heads * head_dim
    qkv = make_input((B, H, W, 3 * C), dtype, KERNEL_DEVICE, layout)
    table = _table(window, heads, dtype)

    def kernel(q, t):
        return wa.shifted_window_attention(q, t, heads, window, shift, unpadded_size=unpadded, backend="triton")

    def oracle(q, t):
        return ref.shifted_window_attention(q, t, heads, window, shift, unpadded_size=unpadded)

    def plain(q, t):
        return wa.shifted_window_attention(q, t, heads, window, shift, unpadded_size=unpadded, backend="torch")

    res = _three_way(kernel, oracle, plain, [qkv, table], backward)
    _check(res, dtype, ["output", "grad_qkv", "grad_table"][:len(res["kernel"])])
    return res


# ----------------------------------------------------------------------------- feature-map form

# (B, H, W, heads, head_dim, window, shift)
MAP_CASES = [
    (1, 14, 14, 2, 16, 7, 0),              # W-MSA, Swin's window 7
    (1, 14, 14, 2, 16, 7, 3),              # SW-MSA
]


@pytest.mark.parametrize("case", MAP_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shifted_window_attention(case, dtype):
    _map_case(*case, dtype)


@pytest.mark.parametrize("case", [
    (1, 16, 16, 1, 32, 8, 4),              # window 8, head_dim 32 (Swin's)
    (1, 12, 16, 2, 24, (6, 8), (3, 2)),    # rectangular window, head_dim 24 (non power of two)
    (1, 12, 24, 1, 20, 12, (6, 0)),        # window 12 (N = 144 of 256), shift in one dimension only
    (2, 4, 8, 1, 64, 4, (2, 3)),           # head_dim 64, batch 2
], ids=str)
def test_shifted_window_attention_shapes(case):
    _map_case(*case, torch.float32)


def test_window_16_forward_and_backward():
    _map_case(1, 16, 16, 1, 16, 16, 8, torch.float32)   # N = 256, the largest the kernel takes


def test_swin_t_stage1_resolution_forward():
    """56 x 56 with window 7 (Swin-T stage 1: 64 windows), forward only."""
    _map_case(1, 56, 56, 1, 16, 7, 3, torch.float32, backward=False)


def test_unpadded_size_rolls_before_padding():
    """timm rolls the unpadded map and pads after: with unpadded_size only the valid rows and
    columns roll, and the mask is that of the padded size."""
    _map_case(1, 14, 14, 2, 16, 7, 3, torch.float32, unpadded=(10, 12))


@pytest.mark.parametrize("layout", ["noncontiguous", "transposed"])
def test_noncontiguous_qkv(layout):
    heads, D, H = 2, 16, 14
    if layout == "transposed":   # (B, W, H, 3C) storage viewed as (B, H, W, 3C)
        qkv = torch.randn(1, H, H, 3 * heads * D, device=KERNEL_DEVICE).transpose(1, 2)
        assert not qkv.is_contiguous()
        table = _table(7, heads, torch.float32)
        res = _three_way(lambda q, t: wa.shifted_window_attention(q, t, heads, 7, 3, backend="triton"),
                         lambda q, t: ref.shifted_window_attention(q, t, heads, 7, 3),
                         lambda q, t: wa.shifted_window_attention(q, t, heads, 7, 3, backend="torch"), [qkv, table])
        _check(res, torch.float32, ["output", "grad_qkv", "grad_table"])
    else:
        _map_case(1, H, H, heads, D, 7, 3, torch.float32, layout="noncontiguous")


def test_multi_block_path_and_partials():
    """Query rows in blocks of 16 (the GPU path for N > 64: dK/dV accumulate across blocks, the
    table-gradient partial is read-modify-written by its owner) and several partials."""
    heads, D, H, W, M, s = 2, 16, 7, 14, 7, 3
    qkv = torch.randn(1, H, W, 3 * heads * D, device=KERNEL_DEVICE)
    table = _table(M, heads, torch.float32)
    scale = D ** -0.5
    for block_m, parts in ((16, 2),):
        with poisoned_outputs():
            out, lse = kernels.forward(qkv, table, None, heads, (M, M), (s, s), (H, W), scale, block_m=block_m)
        q, t = leaf(qkv, torch.float64), leaf(table, torch.float64)
        expected = ref.shifted_window_attention(q, t, heads, M, s)
        grad = torch.randn_like(out)
        with poisoned_outputs():
            dq, dt = kernels.backward(grad, qkv, table, None, out, lse, heads, (M, M), (s, s), (H, W), scale,
                                      block_m=block_m, num_partials=parts)
        eq, et = torch.autograd.grad(expected, (q, t), grad.double())
        assert_close(out, expected, torch.float32)
        assert_close(dq, eq, torch.float32, atol=2e-5)
        assert_close(dt, et, torch.float32, atol=5e-5)
        assert_close(lse.view(-1), torch.logsumexp(_oracle_logits(q, t, heads, M, s), -1).reshape(-1),
                     torch.float32)


def _oracle_logits(qkv, table, heads, M, s):
    B, H, W, C3 = qkv.shape
    D = C3 // 3 // heads
    win = ref.window_partition(torch.roll(qkv, (-s, -s), (1, 2)), M, M)
    q, k, _ = win.reshape(win.shape[0], M * M, 3, heads, D).permute(2, 0, 3, 1, 4)
    logits = (q * D ** -0.5) @ k.transpose(-2, -1) + ref.relative_position_bias(table, M, M)
    mask = ref.shift_attention_mask(H, W, M, s, device=qkv.device)
    if mask is not None:
        logits = (logits.reshape(B, -1, heads, M * M, M * M) + mask[None, :, None]).flatten(0, 1)
    return logits


def test_backward_is_deterministic():
    heads, D, H = 2, 16, 14
    qkv = torch.randn(1, H, H, 3 * heads * D, device=KERNEL_DEVICE, requires_grad=True)
    table = _table(7, heads, torch.float32).requires_grad_()
    grad = torch.randn(1, H, H, heads * D, device=KERNEL_DEVICE)
    first = torch.autograd.grad(wa.shifted_window_attention(qkv, table, heads, 7, 3, backend="triton"),
                                (qkv, table), grad)
    again = torch.autograd.grad(wa.shifted_window_attention(qkv, table, heads, 7, 3, backend="triton"),
                                (qkv, table), grad)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_empty_batch():
    heads, D = 2, 16
    qkv = torch.randn(0, 14, 14, 3 * heads * D, device=KERNEL_DEVICE, requires_grad=True)
    table = _table(7, heads, torch.float32).requires_grad_()
    out = wa.shifted_window_attention(qkv, table, heads, 7, 3, backend="triton")
    assert out.shape == (0, 14, 14, heads * D)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape and torch.equal(table.grad, torch.zeros_like(table))
    windows = torch.randn(0, 49, 3 * heads * D, device=KERNEL_DEVICE)
    mask = torch.zeros(4, 49, 49, device=KERNEL_DEVICE)
    assert wa.window_attention(windows, table.detach(), heads, 7, mask, backend="triton").shape == (0, 49, heads * D)


def test_gradcheck_float64():
    if KERNEL_DEVICE != "cpu":
        pytest.skip("float64 kernels run on the CPU interpreter only")
    heads, D = 2, 2
    qkv = torch.randn(1, 2, 4, 3 * heads * D, dtype=torch.float64, requires_grad=True)
    table = torch.randn(9, heads, dtype=torch.float64, requires_grad=True)
    gradcheck(lambda q, t: wa.shifted_window_attention(q, t, heads, 2, 1, backend="triton"), (qkv, table))
    windows = torch.randn(2, 4, 3 * heads * D, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(2, 4, 4, dtype=torch.float64)
    gradcheck(lambda q, t: wa.window_attention(q, t, heads, 2, mask, backend="triton"), (windows, table))


def test_double_backward_is_refused():
    qkv = torch.randn(1, 4, 4, 12, device=KERNEL_DEVICE, requires_grad=True)
    table = torch.randn(9, 2, device=KERNEL_DEVICE)
    out = wa.shifted_window_attention(qkv, table, 2, 2, 1, backend="triton")
    (g,) = torch.autograd.grad(out.square().sum(), qkv, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


# ----------------------------------------------------------------------------- windows form (explicit mask)

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_window_attention_with_mask(dtype):
    heads, D, M, s, H = 2, 16, 7, 3, 14
    mask = ref.shift_attention_mask(H, H, M, s, device=KERNEL_DEVICE).to(dtype)   # (4, 49, 49): -100 / 0
    windows = make_input((8, M * M, 3 * heads * D), dtype, KERNEL_DEVICE)   # 2 images x 4 windows
    table = _table(M, heads, dtype)
    res = _three_way(lambda q, t: wa.window_attention(q, t, heads, M, mask, backend="triton"),
                     lambda q, t: ref.window_attention(q, t, heads, M, mask),
                     lambda q, t: wa.window_attention(q, t, heads, M, mask, backend="torch"), [windows, table])
    _check(res, dtype, ["output", "grad_qkv", "grad_table"])


def test_window_attention_without_mask_and_arbitrary_mask():
    heads, D, M = 1, 16, (4, 6)
    windows = make_input((3, 24, 3 * heads * D), torch.float32, KERNEL_DEVICE, "noncontiguous")
    table = _table(M, heads, torch.float32)
    for mask in (None, torch.randn(3, 24, 24, device=KERNEL_DEVICE)):
        res = _three_way(lambda q, t: wa.window_attention(q, t, heads, M, mask, backend="triton"),
                         lambda q, t: ref.window_attention(q, t, heads, M, mask),
                         lambda q, t: wa.window_attention(q, t, heads, M, mask, backend="torch"), [windows, table])
        _check(res, torch.float32, ["output", "grad_qkv", "grad_table"])


def test_mask_path_equals_map_path():
    """timm's path (roll, partition, WindowAttention with the (nW, N, N) mask buffer) and the fused
    map path give the same windows."""
    heads, D, M, s, H = 2, 16, 7, 3, 14
    qkv = torch.randn(2, H, H, 3 * heads * D, device=KERNEL_DEVICE)
    table = _table(M, heads, torch.float32)
    mask = wa.shift_attention_mask((H, H), (M, M), (s, s), torch.float32, KERNEL_DEVICE)
    assert torch.equal(mask, ref.shift_attention_mask(H, H, M, s, device=KERNEL_DEVICE).float())
    windows = ref.window_partition(torch.roll(qkv, (-s, -s), (1, 2)), M, M)
    out_windows = wa.window_attention(windows, table, heads, M, mask, backend="triton")
    out_map = wa.shifted_window_attention(qkv, table, heads, M, s, backend="triton")
    as_windows = ref.window_partition(torch.roll(out_map, (-s, -s), (1, 2)), M, M)
    torch.testing.assert_close(out_windows, as_windows, atol=1e-6, rtol=1e-5)


def test_shift_mask_matches_oracle_in_one_dimension():
    for size, window, shift in (((14, 21), (7, 7), (0, 3)), ((12, 8), (6, 4), (2, 0)), ((8, 8), (8, 8), (3, 3))):
        ours = wa.shift_attention_mask(size, window, shift, torch.float64)
        theirs = ref.shift_attention_mask(size[0], size[1], window, shift)
        assert torch.equal(ours, theirs), (size, window, shift)


# ----------------------------------------------------------------------------- fuzzing

@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(mh=st.integers(2, 8), mw=st.integers(2, 8), data=st.data(), heads=st.integers(1, 2),
       head_dim=st.sampled_from([8, 16, 20]), B=st.integers(1, 2), nwh=st.integers(1, 2), nww=st.integers(1, 2),
       padded=st.booleans())
def test_fuzz_window_shift_heads(mh, mw, data, heads, head_dim, B, nwh, nww, padded):
    sh = data.draw(st.integers(0, mh - 1))
    sw = data.draw(st.integers(0, mw - 1))
    H, W = nwh * mh, nww * mw
    unpadded = None
    if padded:
        unpadded = (data.draw(st.integers(max(1, H - mh + 1), H)), data.draw(st.integers(max(1, W - mw + 1), W)))
    _map_case(B, H, W, heads, head_dim, (mh, mw), (sh, sw), torch.float32, unpadded=unpadded)


# ----------------------------------------------------------------------------- registration and compile

def _op_args(mask):
    heads, D, M, H, W = 1, 16, 4, 4, 8
    qkv = torch.randn(1, H, W, 3 * heads * D, device=KERNEL_DEVICE)
    table = torch.randn(49, heads, device=KERNEL_DEVICE)
    m = torch.randn(2, 16, 16, device=KERNEL_DEVICE) if mask else None
    shift = [0, 0] if mask else [2, 1]
    return qkv, table, m, heads, [M, M], shift, [H, W], D ** -0.5


@pytest.mark.parametrize("mask", [False, True], ids=["shift", "mask"])
def test_opcheck(mask):
    args = _op_args(mask)
    ops = torch.ops.cvkernels
    opcheck(ops.triton_window_attention_forward, args)
    out, lse = ops.triton_window_attention_forward(*args)
    qkv, table, m = args[:3]
    opcheck(ops.triton_window_attention_backward, (torch.randn_like(out), qkv, table, m, out, lse, *args[3:]))


def test_compile_fullgraph():
    heads, D = 2, 16
    qkv = torch.randn(1, 7, 14, 3 * heads * D, device=KERNEL_DEVICE, requires_grad=True)
    table = _table(7, heads, torch.float32).requires_grad_()

    def fn(qkv, table):
        return wa.shifted_window_attention(qkv, table, heads, 7, 3, backend="triton") * 2.0

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(qkv, table)
    expected = fn(qkv, table)
    torch.testing.assert_close(out, expected)
    for a, b in zip(torch.autograd.grad(out.sum(), (qkv, table)), torch.autograd.grad(expected.sum(), (qkv, table))):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- routing and errors

def _autograd_nodes(t):
    names, todo = [], [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None:
            names.append(type(node).__name__)
            todo.extend(n for n, _ in node.next_functions)
    return " ".join(names)


def test_routing_torch_path_for_dropout_and_differentiable_mask():
    qkv = torch.randn(4, 16, 3 * 16, device=KERNEL_DEVICE, requires_grad=True)
    table = torch.randn(49, 1, device=KERNEL_DEVICE)
    out = wa.window_attention(qkv, table, 1, 4, backend="triton")
    assert "WindowAttentionFunction" in _autograd_nodes(out)
    out = wa.window_attention(qkv, table, 1, 4, dropout_p=0.5, backend="triton")
    assert "WindowAttentionFunction" not in _autograd_nodes(out)
    mask = torch.randn(2, 16, 16, device=KERNEL_DEVICE, requires_grad=True)
    out = wa.window_attention(qkv, table, 1, 4, mask, backend="triton")
    out.sum().backward()
    assert mask.grad is not None and torch.isfinite(mask.grad).all()
    expected = ref.window_attention(qkv.double(), table, 1, 4, mask.detach())
    assert_close(out, expected, torch.float32)


def _bad(**kw):
    base = dict(qkv=torch.randn(1, 14, 14, 96), table=torch.randn(169, 2), heads=2, window=7, shift=3)
    base.update(kw)
    return base


@pytest.mark.parametrize("bad, exc, match", [
    (_bad(qkv=torch.randn(14, 14, 96)), ValueError, "qkv must be 4-D"),
    (_bad(qkv=torch.randn(1, 14, 14, 95)), ValueError, r"3 \* C"),
    (_bad(heads=5, table=torch.randn(169, 5)), ValueError, "not divisible by num_heads"),
    (_bad(heads=0), ValueError, "num_heads must be a positive int"),
    (_bad(table=torch.randn(170, 2)), ValueError, "relative_position_bias_table must have shape"),
    (_bad(table=torch.randn(169, 2, device="meta")), ValueError, "relative_position_bias_table is on meta"),
    (_bad(table=torch.randn(169, 2).long()), TypeError, "relative_position_bias_table must be floating"),
    (_bad(qkv=torch.randn(1, 15, 14, 96)), ValueError, "multiple of window_size"),
    (_bad(shift=7), ValueError, "smaller than window_size"),
    (_bad(shift=-1), ValueError, "shift_size must be >= 0"),
    (_bad(window=0, table=torch.randn(1, 2)), ValueError, "window_size must be >= 1"),
    (_bad(window=2.5), TypeError, "window_size must be an int or a pair"),
    (_bad(qkv=torch.randint(0, 3, (1, 14, 14, 96))), TypeError, "qkv must be a floating-point"),
    (_bad(qkv="x"), TypeError, "qkv must be a Tensor"),
])
def test_shifted_window_attention_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        wa.shifted_window_attention(bad["qkv"], bad["table"], bad["heads"], bad["window"], bad["shift"])


def test_other_bad_input():
    qkv, table = torch.randn(1, 14, 14, 96), torch.randn(169, 2)
    with pytest.raises(ValueError, match="exceeds"):
        wa.shifted_window_attention(qkv, table, 2, 7, 3, unpadded_size=(15, 14))
    with pytest.raises(TypeError, match="scale must be"):
        wa.shifted_window_attention(qkv, table, 2, 7, 3, scale="big")
    with pytest.raises(ValueError, match="dropout_p"):
        wa.shifted_window_attention(qkv, table, 2, 7, 3, dropout_p=1.5)
    with pytest.raises(ValueError, match="no 'cuda' backend"):
        wa.shifted_window_attention(qkv, table, 2, 7, 3, backend="cuda")
    windows = torch.randn(8, 49, 96)
    with pytest.raises(ValueError, match="qkv must be 3-D"):
        wa.window_attention(qkv, table, 2, 7)
    with pytest.raises(ValueError, match="tokens per window"):
        wa.window_attention(torch.randn(8, 48, 96), table, 2, 7)
    with pytest.raises(ValueError, match="mask must have shape"):
        wa.window_attention(windows, table, 2, 7, torch.zeros(4, 49, 48))
    with pytest.raises(ValueError, match="not a multiple of the mask's nW"):
        wa.window_attention(windows, table, 2, 7, torch.zeros(3, 49, 49))
    with pytest.raises(TypeError, match="mask must be a floating-point"):
        wa.window_attention(windows, table, 2, 7, torch.zeros(4, 49, 49, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask is on meta"):
        wa.window_attention(windows, table, 2, 7, torch.zeros(4, 49, 49, device="meta"))


# ----------------------------------------------------------------------------- nn module

def _timm_state_dict(dim, heads, window, head_dim=None, qkv_bias=True):
    mh, mw = _pair(window)
    attn_dim = (head_dim or dim // heads) * heads
    sd = {
        "relative_position_bias_table": torch.randn((2 * mh - 1) * (2 * mw - 1), heads) * 0.5,
        "qkv.weight": torch.randn(3 * attn_dim, dim) / dim ** 0.5,
        "proj.weight": torch.randn(dim, attn_dim) / attn_dim ** 0.5,
        "proj.bias": torch.randn(dim) * 0.1,
    }
    if qkv_bias:
        sd["qkv.bias"] = torch.randn(3 * attn_dim) * 0.5
    return sd


def _oracle_windows(sd, x, heads, window, mask=None, scale=None):
    sd = {k: v.to(x.device) for k, v in sd.items()}
    qkv = x.double() @ sd["qkv.weight"].double().t()
    if "qkv.bias" in sd:
        qkv = qkv + sd["qkv.bias"].double()
    out = ref.window_attention(qkv, sd["relative_position_bias_table"], heads, window, mask, scale)
    return out @ sd["proj.weight"].double().t() + sd["proj.bias"].double()


def test_nn_window_attention_state_dict_round_trip():
    dim, heads, M = 32, 2, 7
    sd = _timm_state_dict(dim, heads, M)
    module = nn_wa.WindowAttention(dim, heads, window_size=M, backend="triton").to(KERNEL_DEVICE)
    module.load_state_dict(sd)  # strict: exactly timm's keys
    assert set(module.state_dict()) == set(sd)
    assert "relative_position_index" in dict(module.named_buffers())
    assert torch.equal(module.relative_position_index.cpu(), ref.relative_position_index(M, M))
    x = torch.randn(4, M * M, dim, device=KERNEL_DEVICE)
    mask = ref.shift_attention_mask(14, 14, M, 3, device=KERNEL_DEVICE).float()
    out = module(x, mask)
    torch_module = nn_wa.WindowAttention(dim, heads, window_size=M, backend="torch").to(KERNEL_DEVICE)
    torch_module.load_state_dict(module.state_dict())
    assert_close_2x(out, _oracle_windows(sd, x, heads, M, mask), torch_module(x, mask))
    again = nn_wa.WindowAttention(dim, heads, window_size=M, backend="triton").to(KERNEL_DEVICE)
    again.load_state_dict(copy.deepcopy(module.state_dict()))
    torch.testing.assert_close(again(x, mask), out)


def test_nn_window_attention_loads_old_timm_state_dict_with_index():
    """timm < 1.0 kept relative_position_index in the state_dict: it loads (and must match)."""
    sd = _timm_state_dict(16, 2, 4)
    module = nn_wa.WindowAttention(16, 2, window_size=4)
    module.load_state_dict({**sd, "relative_position_index": ref.relative_position_index(4, 4)})
    assert torch.equal(module.relative_position_bias_table, sd["relative_position_bias_table"])
    with pytest.raises(RuntimeError, match="does not match window_size"):
        module.load_state_dict({**sd, "relative_position_index": ref.relative_position_index(4, 4).flip(0)})


def test_nn_window_attention_head_dim_and_no_qkv_bias():
    dim, heads, head_dim, M = 24, 2, 16, (4, 6)
    sd = _timm_state_dict(dim, heads, M, head_dim=head_dim, qkv_bias=False)
    module = nn_wa.WindowAttention(dim, heads, head_dim=head_dim, window_size=M, qkv_bias=False,
                                   backend="triton").to(KERNEL_DEVICE)
    module.load_state_dict(sd)
    assert module.qkv.out_features == 3 * heads * head_dim and module.proj.in_features == heads * head_dim
    x = torch.randn(2, 24, dim, device=KERNEL_DEVICE)
    expected = _oracle_windows(sd, x, heads, M, scale=head_dim ** -0.5)
    torch.testing.assert_close(module(x), expected.float(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("shift", [3, 0])
def test_forward_map_padded(shift):
    """H = W = 10 with window 7: timm pads to 14 after rolling; padded tokens carry the qkv bias."""
    dim, heads, M = 32, 2, 7
    sd = _timm_state_dict(dim, heads, M)
    module = nn_wa.WindowAttention(dim, heads, window_size=M, backend="triton").to(KERNEL_DEVICE)
    module.load_state_dict(sd)
    torch_module = nn_wa.WindowAttention(dim, heads, window_size=M, backend="torch").to(KERNEL_DEVICE)
    torch_module.load_state_dict(sd)
    x = torch.randn(1, 10, 10, dim, device=KERNEL_DEVICE)
    names = ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table"]
    results = {}
    for name, mod in (("kernel", module), ("torch", torch_module), ("ref", None)):
        xi = leaf(x, torch.float64 if mod is None else None)
        if mod is None:
            params = [leaf(sd[n].to(KERNEL_DEVICE), torch.float64) for n in names]
            y = ref.swin_block_attention(xi, params[0], params[1], params[2], params[3], params[4], heads, M, shift)
        else:
            params = [dict(mod.named_parameters())[n] for n in names]
            with poisoned_outputs() if name == "kernel" else contextlib.nullcontext():
                y = mod.forward_map(xi, shift)
        results[name] = (y, [xi] + params)
    grad = torch.randn(1, 10, 10, dim, device=KERNEL_DEVICE)
    res = {name: [y, *torch.autograd.grad(y, leaves, grad.to(y.dtype))] for name, (y, leaves) in results.items()}
    _check(res, torch.float32, ["output", "grad_x"] + ["grad_" + n for n in names])


class _TimmWindowAttention(nn.Module):
    """timm 1.0's WindowAttention (non-fused path) written out in plain torch, named as timm's."""

    def __init__(self, dim, heads, window_size):
        super().__init__()
        self.dim, self.num_heads, self.window_size = dim, heads, _pair(window_size)
        mh, mw = self.window_size
        self.window_area = mh * mw
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * mh - 1) * (2 * mw - 1), heads) * 0.5)
        self.register_buffer("relative_position_index", ref.relative_position_index(mh, mw), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        x = (self.attn_drop(attn.softmax(-1)) @ v).transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))


_TimmWindowAttention.__name__ = "WindowAttention"


class _TimmLikeBlock(nn.Module):
    """The attention half of timm 1.0's SwinTransformerBlock (its _attn, written out in plain torch:
    roll, pad, partition, mask of the padded size, merge, crop, roll back)."""

    def __init__(self, dim, heads, window_size, shift_size):
        super().__init__()
        self.window_size, self.shift_size = _pair(window_size), _pair(shift_size)
        self.window_area = self.window_size[0] * self.window_size[1]
        self.attn = _TimmWindowAttention(dim, heads, self.window_size)

    def _attn(self, x):
        B, H, W, C = x.shape
        has_shift = any(self.shift_size)
        shifted_x = torch.roll(x, (-self.shift_size[0], -self.shift_size[1]), (1, 2)) if has_shift else x
        pad_h = (self.window_size[0] - H % self.window_size[0]) % self.window_size[0]
        pad_w = (self.window_size[1] - W % self.window_size[1]) % self.window_size[1]
        shifted_x = F.pad(shifted_x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        windows = ref.window_partition(shifted_x, *self.window_size)
        mask = ref.shift_attention_mask(Hp, Wp, self.window_size, self.shift_size, x.dtype, x.device)
        out = self.attn(windows, mask=mask)
        shifted_x = ref.window_reverse(out, *self.window_size, Hp, Wp)[:, :H, :W, :]
        return torch.roll(shifted_x, self.shift_size, (1, 2)) if has_shift else shifted_x


class SwinTransformerBlock(_TimmLikeBlock):
    """Named as timm's, for the convert matchers."""


def _block_oracle(block, x):
    p = dict(block.attn.named_parameters())
    return ref.swin_block_attention(x, p["qkv.weight"], p["qkv.bias"], p["proj.weight"], p["proj.bias"],
                                    p["relative_position_bias_table"], block.attn.num_heads, block.window_size,
                                    block.shift_size)


def test_fuse_swin_block():
    block = _TimmLikeBlock(32, 2, 7, 3).to(KERNEL_DEVICE)
    x = torch.randn(1, 10, 10, 32, device=KERNEL_DEVICE)
    plain = block._attn(x)
    expected = _block_oracle(block, x)
    fused = nn_wa.fuse_swin_block(block, backend="triton")
    assert fused is block and isinstance(block, _TimmLikeBlock)
    with poisoned_outputs():
        out = block._attn(x)
    assert_close_2x(out, expected, plain)
    torch.testing.assert_close(nn_wa.fused_swin_attn(block, x), out)
    for clone in (copy.deepcopy(block), pickle.loads(pickle.dumps(block))):
        assert getattr(type(clone), "_cvk_swin_base", None) is _TimmLikeBlock
        torch.testing.assert_close(clone._attn(x), out)
    nn_wa.unfuse_swin_block(block)
    assert type(block) is _TimmLikeBlock
    torch.testing.assert_close(block._attn(x), plain)


def test_convert_routes():
    """WINDOW_ROUTES as cvkernels.convert applies them: the matchers pick timm's classes (not
    cvkernels' own, not SwinV2's), and the replacement methods give timm's results."""
    block = SwinTransformerBlock(32, 2, (7, 7), (3, 3)).to(KERNEL_DEVICE)
    attn = block.attn
    routes = nn_wa.WINDOW_ROUTES
    assert routes["swin_block"][2](block) and not routes["swin_block"][2](_TimmLikeBlock(32, 2, 7, 3))
    assert routes["window_attention"][2](attn)
    assert not routes["window_attention"][2](nn_wa.WindowAttention(32, 2, window_size=7))
    v2 = _TimmWindowAttention(32, 2, 7)
    v2.logit_scale = nn.Parameter(torch.zeros(2, 1, 1))
    assert not routes["window_attention"][2](v2)
    x = torch.randn(1, 14, 14, 32, device=KERNEL_DEVICE)
    windows = ref.window_partition(torch.roll(x, (-3, -3), (1, 2)), 7, 7)
    mask = ref.shift_attention_mask(14, 14, 7, 3, device=KERNEL_DEVICE).float()
    plain_block, plain_attn = block._attn(x), attn(windows, mask)
    expected_block = _block_oracle(block, x)
    for kind, module in (("swin_block", block), ("window_attention", attn)):
        family, methods, _ = routes[kind]
        assert family == "window_attention"
        module.__class__ = type(type(module).__name__, (type(module),), dict(methods))
        module.__dict__["_cvk_backend"] = "triton"
    assert_close_2x(block._attn(x), expected_block, plain_block)
    p = dict(attn.named_parameters())
    qkv = windows.double() @ p["qkv.weight"].double().t() + p["qkv.bias"].double()
    expected_attn = ref.window_attention(qkv, p["relative_position_bias_table"], 2, 7, mask)
    expected_attn = expected_attn @ p["proj.weight"].double().t() + p["proj.bias"].double()
    assert_close_2x(attn(windows, mask), expected_attn, plain_attn)


@pytest.mark.parametrize("roll_before_pad", [True, False], ids=["roll-pad", "pad-roll"])
def test_reference_swin_block_both_orders(roll_before_pad):
    """reference/models/swin.py's block (timm's roll-then-pad, or the detection code's pad-then-roll)
    at a padded resolution: the fused _attn follows the block's order."""
    from reference.models import swin
    torch.manual_seed(0)
    block = swin.SwinTransformerBlock(32, (10, 9), 2, window_size=7, shift_size=3,
                                      roll_before_pad=roll_before_pad).to(KERNEL_DEVICE)
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 0.5)
    assert nn_wa.is_swin_block(block) and nn_wa.is_window_attention(block.attn)
    x = torch.randn(1, 10, 9, 32, device=KERNEL_DEVICE)
    expected = block.double()._attn(x.double())
    block.float()
    assert_close_2x(nn_wa.fused_swin_attn(block, x, backend="triton"), expected, block._attn(x))


def test_nn_attn_dropout_in_training_runs_torch_path():
    module = nn_wa.WindowAttention(16, 1, window_size=4, attn_drop=0.5, backend="triton").to(KERNEL_DEVICE).train()
    x = torch.randn(2, 16, 16, device=KERNEL_DEVICE)
    torch.manual_seed(1)
    a = module(x)
    torch.manual_seed(1)
    b = module(x)
    torch.testing.assert_close(a, b)  # the same dropout mask from the same seed
    module.eval()
    expected = _oracle_windows({k: v for k, v in module.state_dict().items()}, x, 1, 4)
    torch.testing.assert_close(module(x), expected.float(), atol=2e-5, rtol=1e-4)
    assert not torch.allclose(a, module(x))


# ----------------------------------------------------------------------------- timm parity

@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed")
@pytest.mark.parametrize("resolution, shift", [((14, 14), 3), ((10, 10), 3), ((14, 14), 0)])
def test_timm_swin_block_parity(resolution, shift):
    from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention as TimmWindowAttention
    torch.manual_seed(0)
    block = SwinTransformerBlock(32, resolution, num_heads=2, window_size=7, shift_size=shift).to(KERNEL_DEVICE)
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 0.5)
    x = torch.randn(2, *resolution, 32, device=KERNEL_DEVICE)
    xn = block.norm1(x).detach()
    params = list(block.attn.parameters())

    def grads(y):
        return torch.autograd.grad(y, params, torch.ones_like(y) * 0.01 + y.detach())

    expected = block._attn(xn)
    g_expected = grads(expected)
    out = nn_wa.fused_swin_attn(block, xn, backend="triton")
    g_out = grads(out)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    for a, b in zip(g_out, g_expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    full = block(x)
    nn_wa.fuse_swin_block(block, backend="triton")
    torch.testing.assert_close(block(x), full, atol=2e-5, rtol=1e-4)
    theirs = TimmWindowAttention(32, 2, window_size=7).to(KERNEL_DEVICE)
    ours = nn_wa.WindowAttention(32, 2, window_size=7, backend="triton").to(KERNEL_DEVICE)
    ours.load_state_dict(theirs.state_dict())
    assert set(ours.state_dict()) == set(theirs.state_dict())
    w = torch.randn(4, 49, 32, device=KERNEL_DEVICE)
    torch.testing.assert_close(ours(w), theirs(w), atol=2e-5, rtol=1e-4)
