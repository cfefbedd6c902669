"""Flash attention: registered ops, autograd, and the functional API with SDPA's signature
(and flash-attn's ``flash_attn_func``).

Registered ops (cvkernels/triton/flash_attention.py), autograd by register_autograd:
  cvkernels::triton_flash_attention_forward   (out, lse) = attention(q, k, v, mask)
  cvkernels::triton_flash_attention_backward  (dq, dk, dv, dmask) by recomputation from lse

Semantics follow torch.nn.functional.scaled_dot_product_attention: a boolean ``attn_mask``
is True where attention is allowed, a float one is added to the scores, ``is_causal`` is
top-left aligned, a row that sees no key returns zeros (SDPA's documented behaviour since
torch 2.5), dropout is applied whenever ``dropout_p > 0``.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _dispatch

FAMILY = "flash_attention"
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NO_TENSOR = torch.empty(0)


def _kernels():
    from ..triton import flash_attention
    return flash_attention


def _expand_mask(mask, q, k):
    """attn_mask broadcast to (B, H, Nq, Nk) by strides (no copy)."""
    if mask is None:
        return None
    return mask.broadcast_to((q.shape[0], q.shape[1], q.shape[2], k.shape[2]))


# ----------------------------------------------------------------------------- registered ops

@torch.library.custom_op("cvkernels::triton_flash_attention_forward", mutates_args=())
def _triton_forward(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], seed: Optional[Tensor],
                    scale: float, causal: bool, causal_offset: int, dropout_p: float) -> Tuple[Tensor, Tensor]:
    return _kernels().forward(q, k, v, _expand_mask(attn_mask, q, k), seed, scale, causal, causal_offset,
                              dropout_p)


@torch.library.register_fake("cvkernels::triton_flash_attention_forward")
def _fake_forward(q, k, v, attn_mask, seed, scale, causal, causal_offset, dropout_p):
    out = _kernels().empty_like_layout(q, v.shape[-1])
    return out, q.new_empty(q.shape[:-1], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)


@torch.library.custom_op("cvkernels::triton_flash_attention_backward", mutates_args=())
def _triton_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                     attn_mask: Optional[Tensor], seed: Optional[Tensor], scale: float, causal: bool,
                     causal_offset: int, dropout_p: float, mask_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, dbias = _kernels().backward(grad_out, q, k, v, out, lse, _expand_mask(attn_mask, q, k), seed, scale,
                                            causal, causal_offset, dropout_p, mask_grad)
    if dbias is None:
        dmask = q.new_empty(0)
    else:  # the gradient of a broadcast mask sums over the dimensions it was broadcast along
        dmask = dbias.sum_to_size(attn_mask.shape).to(attn_mask.dtype)
    return dq, dk, dv, dmask


@torch.library.register_fake("cvkernels::triton_flash_attention_backward")
def _fake_backward(grad_out, q, k, v, out, lse, attn_mask, seed, scale, causal, causal_offset, dropout_p, mask_grad):
    kernels = _kernels()
    dmask = attn_mask.new_empty(attn_mask.shape) if mask_grad else q.new_empty(0)
    return (kernels.empty_like_layout(q, q.shape[-1]), kernels.empty_like_layout(k, k.shape[-1]),
            kernels.empty_like_layout(v, v.shape[-1]), dmask)


def _setup_context(ctx, inputs, output):
    q, k, v, attn_mask, seed, scale, causal, causal_offset, dropout_p = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, seed)
    ctx.args = (scale, causal, causal_offset, dropout_p)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    """Gradients of q, k, v and of a float attn_mask that requires one; a second backward
    through them is refused (the backward op has no autograd formula)."""
    q, k, v, out, lse, attn_mask, seed = ctx.saved_tensors
    mask_grad = attn_mask is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dmask = torch.ops.cvkernels.triton_flash_attention_backward(
        grad_out, q, k, v, out, lse, attn_mask, seed, *ctx.args, mask_grad)
    return dq, dk, dv, (dmask if mask_grad else None), None, None, None, None, None


torch.library.register_autograd("cvkernels::triton_flash_attention_forward", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- arguments

def _check(fn, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 3:
            raise ValueError(f"{fn}: {name} must have at least 3 dims (..., N, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {t.dtype}")
        if t.dtype != query.dtype:
            raise TypeError(f"{fn}: {name} dtype {t.dtype} differs from query's {query.dtype}")
        if t.device != query.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but query is on {query.device}")
    if not (query.dim() == key.dim() == value.dim()):
        raise ValueError(f"{fn}: query, key and value must have the same number of dims, got "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"{fn}: query and key head dims differ ({query.shape[-1]} vs {key.shape[-1]})")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"{fn}: key and value sequence lengths differ ({key.shape[-2]} vs {value.shape[-2]})")
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(f"{fn}: key {tuple(key.shape)} and value {tuple(value.shape)} differ in batch or heads")
    if query.dim() >= 4 and query.shape[:-3] != key.shape[:-3]:
        raise ValueError(f"{fn}: query batch dims {tuple(query.shape[:-3])} differ from key's {tuple(key.shape[:-3])}")
    if query.dim() == 3 and query.shape[0] != key.shape[0]:
        raise ValueError(f"{fn}: query batch {query.shape[0]} differs from key's {key.shape[0]}")
    if query.dim() >= 4:
        hq, hkv = query.shape[-3], key.shape[-3]
        if hq != hkv:
            if not enable_gqa:
                raise ValueError(f"{fn}: query has {hq} heads and key/value {hkv}: pass enable_gqa=True for "
                                 f"grouped-query attention")
            if hkv == 0 or hq % hkv != 0:
                raise ValueError(f"{fn}: the {hq} query heads must be a multiple of the {hkv} key/value heads")
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{fn}: dropout_p must be in [0, 1], got {dropout_p!r}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"{fn}: scale must be a float or None, got {type(scale).__name__}")
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"{fn}: attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
        if is_causal:
            raise ValueError(f"{fn}: pass either attn_mask or is_causal=True, not both (as SDPA)")
        if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            raise TypeError(f"{fn}: attn_mask must be bool or query's dtype {query.dtype}, got {attn_mask.dtype}")
        if attn_mask.device != query.device:
            raise ValueError(f"{fn}: attn_mask is on {attn_mask.device} but query is on {query.device}")
        target = (*query.shape[:-1], key.shape[-2])
        try:
            torch.broadcast_shapes(attn_mask.shape, target)
            ok = torch.broadcast_shapes(attn_mask.shape, target) == torch.Size(target)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{fn}: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                             f"(..., Nq, Nk) = {target}")


def _to_4d(t):
    """(..., H, N, D) -> (B, H, N, D) as a view where the strides allow; 3-D (B, N, D) -> (B, 1, N, D)."""
    if t.dim() == 3:
        return t.unsqueeze(1)
    if t.dim() == 4:
        return t
    return t.reshape(-1, *t.shape[-3:])


def _mask_to_4d(mask, query, key):
    """attn_mask for the 4-D view of query (see _to_4d): (B, 1, Nq, Nk)-style for 3-D inputs."""
    if mask is None or query.dim() == 4:
        return mask
    if query.dim() == 3:
        return mask.unsqueeze(-3)
    full = mask.broadcast_to((*query.shape[:-1], key.shape[-2]))  # more than one batch dim
    return full.reshape(-1, *full.shape[-3:])


def _kernel_supported(q, k, v, dropout_p):
    dtype_ok = q.dtype in _KERNEL_DTYPES or (q.dtype == torch.float64 and q.device.type == "cpu")
    return dtype_ok and q.shape[-1] <= 256 and v.shape[-1] <= 256 and dropout_p < 1.0


def _new_seed(device):
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
              enable_gqa: bool = False, *, causal_offset: Optional[int] = None, seed: Optional[Tensor] = None,
              backend: Optional[str] = None, fn: str = "scaled_dot_product_attention"):
    """The shared body of scaled_dot_product_attention and flash_attn_func; returns (out, name
    of the backend that ran). causal_offset: key j visible from query i when j <= i + offset
    (default 0, SDPA's top-left alignment). seed: an int64 tensor of one element fixing the
    dropout mask (default: drawn from torch's generator)."""
    _check(fn, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    if backend not in (None, "torch") and max(query.shape[-1], value.shape[-1]) > _kernels().MAX_HEAD_DIM:
        raise ValueError(f"{fn}: the {backend} kernel takes head dims up to {_kernels().MAX_HEAD_DIM}, got "
                         f"{query.shape[-1]} (query/key) and {value.shape[-1]} (value); backend=None runs torch's SDPA")
    name = _dispatch.choose(FAMILY, query.device.type, backend,
                            supported=_kernel_supported(query, key, value, dropout_p))
    if name == "torch":
        if causal_offset and is_causal:  # SDPA aligns top-left: build the shifted mask
            n_q, n_k = query.shape[-2], key.shape[-2]
            attn_mask = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device).tril(causal_offset)
            is_causal = False
        gqa = {"enable_gqa": True} if enable_gqa else {}
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, **gqa), name
    ndim = query.dim()
    q, k, v = _to_4d(query), _to_4d(key), _to_4d(value)
    mask = _mask_to_4d(attn_mask, query, key)
    if dropout_p > 0 and seed is None:
        seed = _new_seed(query.device)
    out, _ = torch.ops.cvkernels.triton_flash_attention_forward(q, k, v, mask, seed if dropout_p > 0 else None, scale,
                                                                bool(is_causal), int(causal_offset or 0),
                                                                float(dropout_p))
    if ndim == 3:
        out = out.squeeze(1)
    elif ndim > 4:
        out = out.reshape(*query.shape[:-1], value.shape[-1])
    return out, name


# ----------------------------------------------------------------------------- public API

def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *, backend: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` on the cvkernels flash-attention kernel.

    Args:
        query: (B, H, Nq, D) (or (..., H, Nq, D), or (B, Nq, D)); float16/bfloat16/float32 (float64
            through the CPU interpreter); any strides: the (B, Nq, H, D) layout passed as
            ``x.transpose(1, 2)`` is read in place, and the output keeps query's layout.
        key: (B, Hkv, Nk, D); value: (B, Hkv, Nk, Dv). Hkv == H, or H % Hkv == 0 with enable_gqa.
        attn_mask: None, bool (True = attend) or float (added to the scores, query's dtype; it gets a
            gradient when it requires one), broadcastable to (B, H, Nq, Nk).
        dropout_p: probability of dropping an attention weight (applied whenever > 0, as SDPA).
        is_causal: top-left aligned causal mask (query i sees keys j <= i), not with attn_mask.
        scale: softmax scale, default 1/sqrt(D).
        enable_gqa: allow fewer key/value heads than query heads.
        backend: None (automatic) | 'triton' | 'torch'.

    Returns:
        (B, H, Nq, Dv). Head dims up to 256 (any, e.g. 40, 80, 96); fp32 uses TF32 in the
        matrix products when ``torch.backends.cuda.matmul.allow_tf32`` is set.
    """
    return attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend=backend)[0]


def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                    causal: bool = False, *, backend: Optional[str] = None) -> Tensor:
    """flash-attn's ``flash_attn_func`` on (B, N, H, D) tensors (read in place, no transposes copied).

    q: (B, Nq, H, D), k: (B, Nk, Hkv, D), v: (B, Nk, Hkv, Dv), H % Hkv == 0 (GQA as flash-attn).
    causal is aligned to the bottom-right corner of the score matrix, as flash-attn >= 2.1
    (query i sees keys j <= i + Nk - Nq). Returns (B, Nq, H, Dv).
    """
    if not all(isinstance(t, Tensor) and t.dim() == 4 for t in (q, k, v)):
        raise ValueError("flash_attn_func: q, k and v must be 4-D (B, N, H, D) tensors")
    offset = k.shape[1] - q.shape[1] if causal else 0
    out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, dropout_p, causal, softmax_scale,
                    q.shape[2] != k.shape[2], causal_offset=offset, backend=backend, fn="flash_attn_func")[0]
    return out.transpose(1, 2)


def dropout_keep_mask(seed: Tensor, shape, dropout_p: float, device=None) -> Tensor:
    """The (B, H, Nq, Nk) bool mask of kept attention weights that the kernel draws for ``seed``
    (an int64 tensor of one element, as passed to ``attention(..., seed=)``)."""
    return _kernels().dropout_keep_mask(seed, tuple(shape), float(dropout_p), device or seed.device)
