"""Flash attention (cvkernels/triton/flash_attention.py) against the float64 oracle
(reference/ops/attention.py) with flash-attention's rule: the kernel's error is at most 2x the
error of torch's own SDPA run in the same precision. Forward and every gradient (q, k, v and a
float mask), causal / masks / GQA / dropout / cross attention, layouts, empty inputs, errors,
opcheck, torch.compile, and the nn.MultiheadAttention drop-in against torch's module."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import cvkernels
from cvkernels.nn.attention import MultiheadAttention
from cvkernels.ops import attention as attn_ops
from helpers import gradcheck, opcheck, poisoned_outputs
from reference.ops.attention import scaled_dot_product_attention as ref_sdpa
from tolerances import assert_close, assert_close_2x

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ops = torch.ops.cvkernels


def _qkv(B, H, Hkv, Nq, Nk, D, Dv=None, layout="bhnd"):
    """float64 CPU q, k, v; layout 'bnhd' gives (B, H, N, D) views of (B, N, H, D) storage."""
    Dv = D if Dv is None else Dv
    if layout == "bnhd":
        q = torch.randn(B, Nq, H, D, dtype=torch.float64).transpose(1, 2)
        k = torch.randn(B, Nk, Hkv, D, dtype=torch.float64).transpose(1, 2)
        v = torch.randn(B, Nk, Hkv, Dv, dtype=torch.float64).transpose(1, 2)
    elif layout == "noncontiguous":
        q = torch.randn(B, H, Nq, 2 * D, dtype=torch.float64)[..., ::2]
        k = torch.randn(B, Hkv, Nk, D + 3, dtype=torch.float64)[..., 3:]
        v = torch.randn(B, Hkv, 2 * Nk, Dv, dtype=torch.float64)[:, :, ::2]
    else:
        q = torch.randn(B, H, Nq, D, dtype=torch.float64)
        k = torch.randn(B, Hkv, Nk, D, dtype=torch.float64)
        v = torch.randn(B, Hkv, Nk, Dv, dtype=torch.float64)
    return q, k, v


def _cast(t, dtype):
    """A leaf on DEVICE in `dtype` keeping t's strides (layout)."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=DEVICE)
    out.copy_(t)
    return out.requires_grad_(True)


def _mask(kind, B, H, Nq, Nk, dtype):
    if kind is None:
        return None
    if kind == "bool":
        m = torch.rand(B, 1, Nq, Nk) > 0.3
        m[..., 0] = True  # every row sees something (all-masked rows have their own test)
        return m
    if kind == "key_padding":  # (B, 1, 1, Nk), as nn.MultiheadAttention's key_padding_mask
        m = torch.ones(B, 1, 1, Nk, dtype=torch.bool)
        m[0, ..., Nk // 2:] = False
        return m
    if kind == "float":
        return torch.randn(1, H, Nq, Nk, dtype=dtype)
    raise ValueError(kind)


def _check_case(B, H, Hkv, Nq, Nk, D, dtype, causal=False, mask_kind=None, layout="bhnd", Dv=None,
                mask_grad=False):
    q64, k64, v64 = _qkv(B, H, Hkv, Nq, Nk, D, Dv, layout)
    m64 = _mask(mask_kind, B, H, Nq, Nk, torch.float64)
    q, k, v = (_cast(t, dtype) for t in (q64, k64, v64))
    qt, kt, vt = (_cast(t, dtype) for t in (q64, k64, v64))
    mask = mask_t = None
    if m64 is not None:
        mask = m64.to(DEVICE) if m64.dtype == torch.bool else _cast(m64, dtype).requires_grad_(mask_grad)
        mask_t = mask.detach().clone().requires_grad_(mask_grad) if mask.dtype != torch.bool else mask
    # the oracle sees the dtype-rounded inputs, in float64
    qr, kr, vr = (t.detach().double().cpu().requires_grad_(True) for t in (q, k, v))
    mr = None if mask is None else (mask.cpu() if mask.dtype == torch.bool
                                    else mask.detach().double().cpu().requires_grad_(mask_grad))
    gqa = H != Hkv
    with poisoned_outputs():
        out = cvkernels.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa,
                                                     backend="triton")
    out_t = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask_t, is_causal=causal, enable_gqa=gqa)
    out_r = ref_sdpa(qr, kr, vr, attn_mask=mr, is_causal=causal)
    assert out.shape == out_r.shape and out.dtype == dtype
    assert_close_2x(out.cpu(), out_r, out_t.cpu(), "output")
    grad = torch.randn(out.shape, dtype=torch.float64)
    inputs = [(q, qt, qr, "dq"), (k, kt, kr, "dk"), (v, vt, vr, "dv")]
    if mask_grad:
        inputs.append((mask, mask_t, mr, "dmask"))
    with poisoned_outputs():
        got = torch.autograd.grad(out, [a for a, _, _, _ in inputs], grad.to(DEVICE, dtype))
    want_t = torch.autograd.grad(out_t, [b for _, b, _, _ in inputs], grad.to(DEVICE, dtype))
    want_r = torch.autograd.grad(out_r, [c for _, _, c, _ in inputs], grad)
    for g, gt, gr, (_, _, _, name) in zip(got, want_t, want_r, inputs):
        assert g.shape == gr.shape, name
        assert_close_2x(g.cpu(), gr, gt.cpu(), name)
    return out, q


CASES = [  # B, H, Hkv, Nq, Nk, D
    (2, 2, 2, 7, 7, 32),
    (1, 2, 2, 197, 197, 64),
    (2, 1, 1, 13, 29, 80),       # cross attention, head dim not a power of two
    (1, 4, 2, 20, 11, 40),       # GQA, Nq > Nk
    (1, 2, 1, 1, 9, 128),        # one query, MQA
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_parity(case, dtype):
    _check_case(*case, dtype)


def test_vit_l_384_sequence_length():
    """N = 577 (ViT-L/16 at 384 px: 24 x 24 patches + class token): ten query and key blocks."""
    _check_case(1, 1, 1, 577, 577, 64, torch.bfloat16)


@pytest.mark.parametrize("Nq,Nk", [(7, 7), (13, 5), (5, 13), (70, 70)])
@pytest.mark.parametrize("dtype", (torch.float16, torch.float32), ids=str)
def test_causal(Nq, Nk, dtype):
    _check_case(2, 2, 2, Nq, Nk, 32, dtype, causal=True)


@pytest.mark.parametrize("kind", ["bool", "key_padding", "float"])
def test_masks(kind):
    _check_case(2, 2, 2, 17, 23, 32, torch.float32, mask_kind=kind)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
def test_float_mask_gradient(dtype):
    """A float mask that requires grad gets the score gradient, summed over its broadcast dims."""
    _check_case(2, 2, 2, 9, 19, 16, dtype, mask_kind="float", mask_grad=True)


@pytest.mark.parametrize("layout", ["bnhd", "noncontiguous"])
def test_layouts(layout):
    out, q = _check_case(2, 3, 3, 11, 14, 32, torch.float32, layout=layout)
    if layout == "bnhd":  # read in place and written in the same (B, N, H, D) order
        assert out.transpose(1, 2).is_contiguous()


def test_value_head_dim_differs():
    _check_case(1, 2, 2, 9, 12, 32, torch.float32, Dv=48)


def test_head_dim_256():
    _check_case(1, 1, 1, 5, 9, 256, torch.float32)


def test_fully_masked_rows_give_zeros():
    q, k, v = (t.float().requires_grad_() for t in _qkv(1, 2, 2, 6, 5, 16))
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[2] = False
    out = cvkernels.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend="triton")
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(out).all() and (out[:, :, 2] == 0).all()
    assert_close(out, expected)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and (q.grad[:, :, 2] == 0).all()
    float_mask = torch.zeros(6, 5).masked_fill(~mask, float("-inf"))
    out_f = cvkernels.scaled_dot_product_attention(q, k, v, attn_mask=float_mask, backend="triton")
    assert_close(out_f, expected)


def test_empty_inputs():
    for B, Nq, Nk in ((0, 5, 7), (2, 0, 7), (2, 5, 0)):
        q = torch.randn(B, 2, Nq, 16, requires_grad=True)
        k = torch.randn(B, 2, Nk, 16, requires_grad=True)
        v = torch.randn(B, 2, Nk, 16, requires_grad=True)
        out = cvkernels.scaled_dot_product_attention(q, k, v, backend="triton")
        assert_close(out, F.scaled_dot_product_attention(q, k, v))
        out.sum().backward()
        assert q.grad.shape == q.shape and k.grad.shape == k.shape and (v.grad == 0).all()


def test_three_and_five_dim_inputs():
    q, k, v = (torch.randn(3, 7, 16) for _ in range(3))
    assert_close(cvkernels.scaled_dot_product_attention(q, k, v, backend="triton"),
                 F.scaled_dot_product_attention(q, k, v))
    q, k, v = (torch.randn(2, 2, 2, 5, 16) for _ in range(3))
    mask = torch.rand(5, 5) > 0.2
    mask[:, 0] = True
    assert_close(cvkernels.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend="triton"),
                 F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_scale_argument():
    q, k, v = (t.float() for t in _qkv(1, 2, 2, 9, 9, 32))
    assert_close(cvkernels.scaled_dot_product_attention(q, k, v, scale=0.3, backend="triton"),
                 F.scaled_dot_product_attention(q, k, v, scale=0.3))


# ----------------------------------------------------------------------------- dropout

def test_dropout_matches_oracle_with_the_kernels_mask():
    B, H, Nq, Nk, D, p = 1, 2, 17, 21, 16, 0.3
    q, k, v = (t.requires_grad_() for t in _qkv(B, H, H, Nq, Nk, D))
    seed = torch.tensor([1234], dtype=torch.int64)
    out, _ = attn_ops.attention(q, k, v, dropout_p=p, seed=seed, backend="triton")
    keep = attn_ops.dropout_keep_mask(seed, (B, H, Nq, Nk), p)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.05
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    expected = ref_sdpa(qr, kr, vr, dropout_p=p, keep_mask=keep)
    assert_close(out, expected)
    grad = torch.randn_like(out)
    for g, gr in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (qr, kr, vr), grad)):
        assert_close(g, gr)


def test_dropout_is_reproducible_from_the_seed():
    q, k, v = (t.float() for t in _qkv(1, 2, 2, 16, 16, 16))
    torch.manual_seed(7)
    a = cvkernels.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend="triton")
    torch.manual_seed(7)
    b = cvkernels.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend="triton")
    c = cvkernels.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend="triton")
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- flash-attn API

def test_flash_attn_func_causal_is_bottom_right():
    B, Nq, Nk, H, D = 2, 5, 12, 2, 32
    q = torch.randn(B, Nq, H, D)
    k, v = torch.randn(B, Nk, H, D), torch.randn(B, Nk, H, D)
    out = cvkernels.flash_attn_func(q, k, v, causal=True, backend="triton")
    mask = torch.ones(Nq, Nk, dtype=torch.bool).tril(Nk - Nq)
    expected = ref_sdpa(q.transpose(1, 2).double(), k.transpose(1, 2).double(), v.transpose(1, 2).double(),
                        attn_mask=mask).transpose(1, 2)
    assert out.shape == (B, Nq, H, D)
    assert_close(out, expected.float())


# ----------------------------------------------------------------------------- registration

def test_gradcheck_float64():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 1, 5, 6, 16))
    bias = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    gradcheck(lambda q, k, v, b: cvkernels.scaled_dot_product_attention(q, k, v, attn_mask=b, enable_gqa=True,
                                                                        backend="triton"), (q, k, v, bias))
    gradcheck(lambda q, k, v: cvkernels.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                                     backend="triton"), (q, k, v))


def test_opcheck():
    q, k, v = (t.float().requires_grad_() for t in _qkv(1, 2, 2, 9, 7, 16))
    mask = torch.randn(1, 2, 9, 7)
    seed = torch.tensor([3], dtype=torch.int64)
    opcheck(ops.triton_flash_attention_forward, (q, k, v, None, None, 0.25, True, 0, 0.0))
    opcheck(ops.triton_flash_attention_forward, (q, k, v, mask, seed, 0.25, False, 0, 0.2))
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse = ops.triton_flash_attention_forward(q, k, v, mask, None, 0.25, False, 0, 0.0)
    g = torch.randn_like(out)
    opcheck(ops.triton_flash_attention_backward, (g, q, k, v, out, lse, mask, None, 0.25, False, 0, 0.0, True))


def test_compile_fullgraph():
    q, k, v = (t.float().requires_grad_() for t in _qkv(2, 2, 2, 9, 9, 16, layout="bnhd"))

    def fn(q, k, v):
        return cvkernels.scaled_dot_product_attention(q, k, v, is_causal=True, backend="triton").sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    out.backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    fn(q, k, v).backward()
    assert_close(out, fn(q, k, v))
    for a, t in zip(grads, (q, k, v)):
        assert_close(a, t.grad)


def test_double_backward_is_refused():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 1, 1, 4, 4, 16))
    out = cvkernels.scaled_dot_product_attention(q, k, v, backend="triton")
    (dq,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError):
        dq.sum().backward()


# ----------------------------------------------------------------------------- errors

def test_errors():
    q, k, v = (torch.randn(1, 4, 5, 16) for _ in range(3))
    sdpa = cvkernels.scaled_dot_product_attention
    with pytest.raises(ValueError, match="enable_gqa"):
        sdpa(q, k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match="multiple"):
        sdpa(q, k[:, :3], v[:, :3], enable_gqa=True)
    with pytest.raises(ValueError, match="head dims"):
        sdpa(q, k[..., :8], v)
    with pytest.raises(ValueError, match="up to 256"):
        big = torch.randn(1, 1, 3, 264)
        sdpa(big, big, big, backend="triton")
    with pytest.raises(ValueError, match="broadcast"):
        sdpa(q, k, v, attn_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="not both"):
        sdpa(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool), is_causal=True)
    with pytest.raises(TypeError, match="dtype"):
        sdpa(q, k.half(), v)
    with pytest.raises(TypeError, match="attn_mask"):
        sdpa(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="dropout_p"):
        sdpa(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="at least 3"):
        sdpa(q[0, 0], k[0, 0], v[0, 0])
    with pytest.raises(ValueError, match="sequence lengths"):
        sdpa(q, k, v[:, :, :3])
    # head dims past the kernel's range run torch's SDPA when no backend is named
    big = torch.randn(1, 1, 3, 264)
    assert_close(sdpa(big, big, big), F.scaled_dot_product_attention(big, big, big))


# ----------------------------------------------------------------------------- fuzzing

@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(B=st.integers(1, 2), Hkv=st.integers(1, 2), group=st.integers(1, 2), Nq=st.integers(1, 40),
       Nk=st.integers(1, 40), D=st.sampled_from([16, 24, 40, 64]), causal=st.booleans(),
       mask=st.sampled_from([None, "bool", "float"]), layout=st.sampled_from(["bhnd", "bnhd"]))
def test_fuzz(B, Hkv, group, Nq, Nk, D, causal, mask, layout):
    if causal and mask is not None:
        mask = None
    _check_case(B, Hkv * group, Hkv, Nq, Nk, D, torch.float32, causal=causal, mask_kind=mask, layout=layout)


# ----------------------------------------------------------------------------- nn.MultiheadAttention

@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 12])
def test_multihead_attention_matches_torch(batch_first, kdim):
    ref = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim).to(DEVICE)
    mha = MultiheadAttention.from_module(copy.deepcopy(ref), backend="triton")
    assert isinstance(mha, nn.MultiheadAttention)
    assert mha.state_dict().keys() == ref.state_dict().keys()
    B, L, S = 3, 7, 9

    def shaped(n, e):
        return torch.randn((B, n, e) if batch_first else (n, B, e), device=DEVICE)

    q, k, v = shaped(L, 16), shaped(S, kdim or 16), shaped(S, kdim or 16)
    kpm = torch.rand(B, S, device=DEVICE) > 0.7
    kpm[:, 0] = False
    am = torch.rand(L, S, device=DEVICE) > 0.8
    for kw in (dict(), dict(key_padding_mask=kpm), dict(attn_mask=am), dict(attn_mask=am, key_padding_mask=kpm),
               dict(attn_mask=torch.randn(B * 4, L, S, device=DEVICE)),
               dict(key_padding_mask=torch.randn(B, S, device=DEVICE))):
        expected, _ = ref(q, k, v, need_weights=False, **kw)
        out, weights = mha(q, k, v, need_weights=False, **kw)
        assert weights is None
        assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_multihead_attention_self_attention_gradients_and_fallbacks():
    ref = nn.MultiheadAttention(16, 2, batch_first=True)
    mha = MultiheadAttention.from_module(copy.deepcopy(ref), backend="triton")
    x = torch.randn(2, 6, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(xr, xr, xr, need_weights=False, attn_mask=causal, is_causal=True)[0].square().sum().backward()
    mha(xm, xm, xm, need_weights=False, attn_mask=causal, is_causal=True)[0].square().sum().backward()
    assert_close(xm.grad, xr.grad, atol=1e-5, rtol=1e-4)
    assert_close(mha.in_proj_weight.grad, ref.in_proj_weight.grad, atol=1e-5, rtol=1e-4)
    assert_close(mha.out_proj.weight.grad, ref.out_proj.weight.grad, atol=1e-5, rtol=1e-4)
    # need_weights=True is torch's own path: same weights as torch
    out, w = mha(x, x, x)
    out_r, w_r = ref(x, x, x)
    assert_close(w, w_r) and assert_close(out, out_r)
    # unbatched input
    assert_close(mha(x[0], x[0], x[0], need_weights=False)[0], ref(x[0], x[0], x[0], need_weights=False)[0],
                 atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="is_causal"):
        mha(x, x, x, need_weights=False, is_causal=True)


def test_multihead_attention_constructor_and_state_dict():
    mha = cvkernels.nn.MultiheadAttention(32, 4, dropout=0.0, batch_first=True)
    ref = nn.MultiheadAttention(32, 4, batch_first=True)
    mha.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 32)
    assert_close(mha(x, x, x, need_weights=False)[0], ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-4)


def test_convert_swaps_multihead_attention():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.attn(x, x, x, need_weights=False)[0])

    net = Net()
    expected = net(torch.ones(1, 3, 16))
    weight = net.attn.in_proj_weight
    cvkernels.convert(net)
    assert type(net.attn) is cvkernels.nn.MultiheadAttention and net.attn.in_proj_weight is weight
    assert_close(net(torch.ones(1, 3, 16)), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="long sequences need a GPU")
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_long_sequence_gpu(dtype):
    """N = 16384: no N x N buffer (the memory used stays a small multiple of q, k, v)."""
    B, H, N, D = 1, 4, 16384, 64
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = cvkernels.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.sum().backward()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 16 * q.numel() * q.element_size()
    expected = F.scaled_dot_product_attention(q[:, :, :1024].detach(), k[:, :, :1024].detach(),
                                              v[:, :, :1024].detach(), is_causal=True)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(out[:, :, :1024], expected, **tol)
    assert math.isfinite(q.grad.float().abs().max().item())
