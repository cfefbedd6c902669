"""Swin (shifted) window attention with timm 1.0's semantics: registered ops, autograd and the
functional API.

Registered ops (Triton, custom_op + register_fake; see cvkernels/triton/window_attention.py):
  cvkernels::triton_window_attention_forward(qkv, table, mask, num_heads, window_size,
        shift_size, valid_size, scale) -> (out, lse)
  cvkernels::triton_window_attention_backward(grad_out, qkv, table, mask, out, lse, num_heads,
        window_size, shift_size, valid_size, scale) -> (grad_qkv, grad_table)
Both work on qkv maps (B, Hp, Wp, 3C); the windows form (B_, N, 3C) is the map of B_ images of
one window each.

Public functions:
  shifted_window_attention(qkv (B, H, W, 3C), table, num_heads, window_size, shift_size, scale)
      -> (B, H, W, C): roll, partition, W-MSA / SW-MSA, merge, roll back (before timm's proj)
  window_attention(qkv (B_, N, 3C), table, num_heads, window_size, mask, scale) -> (B_, N, C):
      timm's WindowAttention.forward after its qkv Linear and before its proj
The torch path (backend='torch', dropout, a differentiable mask, float64 on CUDA, windows over
256 tokens, head_dim over 128 (over 64 for fp32 windows of more than 64 tokens), CPU without the
Triton interpreter) is a plain composite of the same math, in the input's precision, as timm
computes it.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _dispatch

FAMILY = "window_attention"
MAX_TOKENS = 256      # N = Mh * Mw: the whole key row of a window sits in registers
MAX_HEAD_DIM = 128    # sm_90 shared memory (227 KB) fits head_dim 128 at N = 256 in 16-bit ...
MAX_HEAD_DIM_WIDE = 64  # ... and 64 in fp32 when N > 64 (see bench/NOTES.md)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

IntPair = Union[int, Sequence[int]]


# ----------------------------------------------------------------------------- registered ops

@torch.library.custom_op("cvkernels::triton_window_attention_forward", mutates_args=())
def _triton_forward(qkv: Tensor, relative_position_bias_table: Tensor, mask: Optional[Tensor], num_heads: int,
                    window_size: List[int], shift_size: List[int], valid_size: List[int],
                    scale: float) -> Tuple[Tensor, Tensor]:
    from ..triton import window_attention as kernels
    return kernels.forward(qkv, relative_position_bias_table, mask, num_heads, window_size, shift_size, valid_size,
                           scale)


@torch.library.custom_op("cvkernels::triton_window_attention_backward", mutates_args=())
def _triton_backward(grad_out: Tensor, qkv: Tensor, relative_position_bias_table: Tensor, mask: Optional[Tensor],
                     out: Tensor, lse: Tensor, num_heads: int, window_size: List[int], shift_size: List[int],
                     valid_size: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    from ..triton import window_attention as kernels
    return kernels.backward(grad_out, qkv, relative_position_bias_table, mask, out, lse, num_heads, window_size,
                            shift_size, valid_size, scale)


@torch.library.register_fake("cvkernels::triton_window_attention_forward")
def _fake_forward(qkv, relative_position_bias_table, mask, num_heads, window_size, shift_size, valid_size, scale):
    B, Hp, Wp, C3 = qkv.shape
    windows = B * (Hp // window_size[0]) * (Wp // window_size[1])
    stat = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    return (qkv.new_empty((B, Hp, Wp, C3 // 3)),
            qkv.new_empty((windows, num_heads, window_size[0] * window_size[1]), dtype=stat))


@torch.library.register_fake("cvkernels::triton_window_attention_backward")
def _fake_backward(grad_out, qkv, relative_position_bias_table, mask, out, lse, num_heads, window_size, shift_size,
                   valid_size, scale):
    return qkv.new_empty(qkv.shape), torch.empty_like(relative_position_bias_table)


# ----------------------------------------------------------------------------- autograd

class _WindowAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, table, mask, num_heads, window_size, shift_size, valid_size, scale):
        out, lse = torch.ops.cvkernels.triton_window_attention_forward(
            qkv, table, mask, num_heads, window_size, shift_size, valid_size, scale)
        ctx.save_for_backward(qkv, table, mask, out, lse)
        ctx.args = (num_heads, window_size, shift_size, valid_size, scale)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        qkv, table, mask, out, lse = ctx.saved_tensors
        grad_qkv, grad_table = torch.ops.cvkernels.triton_window_attention_backward(
            grad_out, qkv, table, mask, out, lse, *ctx.args)
        return (grad_qkv if ctx.needs_input_grad[0] else None,
                grad_table if ctx.needs_input_grad[1] else None,
                None, None, None, None, None, None)


# ----------------------------------------------------------------------------- torch composite

def relative_position_index(win_h: int, win_w: int, device=None) -> Tensor:
    """(N, N) int64 index into the bias table: (hi - hj + Mh - 1) * (2Mw - 1) + (wi - wj + Mw - 1)."""
    hi = torch.arange(win_h, device=device).repeat_interleave(win_w)
    wi = torch.arange(win_w, device=device).repeat(win_h)
    return (hi[:, None] - hi[None, :] + win_h - 1) * (2 * win_w - 1) + (wi[:, None] - wi[None, :] + win_w - 1)


def _regions(padded, window, shift, device):
    r = torch.arange(padded, device=device)
    if shift == 0:
        return torch.zeros_like(r)
    return (r >= padded - window).long() + (r >= padded - shift).long()


def shift_attention_mask(padded_size: Sequence[int], window_size: Sequence[int], shift_size: Sequence[int],
                         dtype=torch.float32, device=None) -> Optional[Tensor]:
    """timm's SW-MSA mask (nW, N, N) of an (Hp, Wp) map: -100 between tokens of different shift
    regions, 0 within one; None when there is no shift."""
    Hp, Wp = padded_size
    mh, mw = window_size
    if not any(shift_size):
        return None
    label = _regions(Hp, mh, shift_size[0], device)[:, None] * 3 + _regions(Wp, mw, shift_size[1], device)[None, :]
    windows = label.reshape(Hp // mh, mh, Wp // mw, mw).permute(0, 2, 1, 3).reshape(-1, mh * mw)
    differ = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(differ.shape, dtype=dtype, device=device).masked_fill_(differ, -100.0)


def _roll_valid(x, shifts, valid):
    """Rolls dims 1 and 2 by `shifts` over their first valid[0] / valid[1] entries only."""
    for dim, s, n in ((1, shifts[0], valid[0]), (2, shifts[1], valid[1])):
        if s == 0:
            continue
        if n == x.shape[dim]:
            x = torch.roll(x, s, dim)
        else:
            x = torch.cat([torch.roll(x.narrow(dim, 0, n), s, dim), x.narrow(dim, n, x.shape[dim] - n)], dim)
    return x


def _torch_windows(qkv, table, num_heads, window_size, mask, scale, dropout_p, training=True):
    """(B_, N, 3C) -> (B_, N, C): timm's WindowAttention math in qkv's precision."""
    B_, N, C3 = qkv.shape
    C = C3 // 3
    q, k, v = qkv.reshape(B_, N, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    index = relative_position_index(window_size[0], window_size[1], qkv.device)
    bias = table[index.reshape(-1)].reshape(N, N, num_heads).permute(2, 0, 1).to(qkv.dtype)
    attn = (q * scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(B_ // nw, nw, num_heads, N, N) + mask.to(attn.dtype).unsqueeze(1).unsqueeze(0)
        attn = attn.view(B_, num_heads, N, N)
    attn = attn.softmax(dim=-1)
    if dropout_p > 0.0:
        attn = F.dropout(attn, dropout_p, training=training)
    return (attn @ v).transpose(1, 2).reshape(B_, N, C)


def _torch_map(qkv, table, num_heads, window_size, shift_size, valid_size, scale, dropout_p, mask=None):
    """(B, Hp, Wp, 3C) -> (B, Hp, Wp, C): roll, partition, attention, merge, roll back."""
    B, Hp, Wp, C3 = qkv.shape
    mh, mw = window_size
    shifted = _roll_valid(qkv, (-shift_size[0], -shift_size[1]), valid_size)
    nw = (Hp // mh) * (Wp // mw)
    windows = shifted.reshape(B, Hp // mh, mh, Wp // mw, mw, C3).permute(0, 1, 3, 2, 4, 5).reshape(B * nw, mh * mw, C3)
    if mask is None:
        mask = shift_attention_mask((Hp, Wp), window_size, shift_size, qkv.dtype, qkv.device)
    out = _torch_windows(windows, table, num_heads, window_size, mask, scale, dropout_p)
    out = out.reshape(B, Hp // mh, Wp // mw, mh, mw, C3 // 3).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C3 // 3)
    return _roll_valid(out, shift_size, valid_size)


# ----------------------------------------------------------------------------- arguments

def _pair(value, name, fn, minimum):
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[-1]))
    else:
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value!r}")
    return pair


def _check_common(fn, qkv, table, num_heads, window_size, rank, layout):
    if not isinstance(qkv, Tensor):
        raise TypeError(f"{fn}: qkv must be a Tensor, got {type(qkv).__name__}")
    if qkv.dim() != rank:
        raise ValueError(f"{fn}: qkv must be {rank}-D {layout}, got shape {tuple(qkv.shape)}")
    if not qkv.is_floating_point():
        raise TypeError(f"{fn}: qkv must be a floating-point tensor, got {qkv.dtype}")
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"{fn}: num_heads must be a positive int, got {num_heads!r}")
    if qkv.shape[-1] % 3 != 0:
        raise ValueError(f"{fn}: the last dim of qkv ({qkv.shape[-1]}) must be 3 * C (q, k, v)")
    C = qkv.shape[-1] // 3
    if C % num_heads != 0:
        raise ValueError(f"{fn}: C = {C} (qkv's last dim / 3) is not divisible by num_heads={num_heads}")
    window = _pair(window_size, "window_size", fn, 1)
    if not isinstance(table, Tensor):
        raise TypeError(f"{fn}: relative_position_bias_table must be a Tensor, got {type(table).__name__}")
    T = (2 * window[0] - 1) * (2 * window[1] - 1)
    if tuple(table.shape) != (T, num_heads):
        raise ValueError(f"{fn}: relative_position_bias_table must have shape ((2*{window[0]}-1)*(2*{window[1]}-1), "
                         f"num_heads) = {(T, num_heads)}, got {tuple(table.shape)}")
    if not table.is_floating_point():
        raise TypeError(f"{fn}: relative_position_bias_table must be floating-point, got {table.dtype}")
    if table.device != qkv.device:
        raise ValueError(f"{fn}: relative_position_bias_table is on {table.device} but qkv is on {qkv.device}")
    return window, C


def _check_scale(fn, scale, head_dim):
    if scale is None:
        return head_dim ** -0.5 if head_dim > 0 else 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{fn}: scale must be a float or None, got {scale!r}")
    return float(scale)


def _check_dropout(fn, dropout_p):
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{fn}: dropout_p must be a float in [0, 1], got {dropout_p!r}")
    return float(dropout_p)


def _kernel_supported(qkv, table, mask, window, head_dim, dropout_p):
    dtype_ok = qkv.dtype in _KERNEL_DTYPES or (qkv.dtype == torch.float64 and qkv.device.type == "cpu")
    mask_ok = mask is None or not (mask.requires_grad and torch.is_grad_enabled())
    n = window[0] * window[1]
    wide = qkv.dtype in (torch.float32, torch.float64) and n > 64
    return (dtype_ok and mask_ok and dropout_p == 0.0 and n <= MAX_TOKENS
            and 0 < head_dim <= (MAX_HEAD_DIM_WIDE if wide else MAX_HEAD_DIM))


# ----------------------------------------------------------------------------- public API

def shifted_window_attention(qkv: Tensor, relative_position_bias_table: Tensor, num_heads: int,
                             window_size: IntPair, shift_size: IntPair = 0, scale: Optional[float] = None, *,
                             unpadded_size: Optional[Sequence[int]] = None, dropout_p: float = 0.0,
                             backend: Optional[str] = None) -> Tensor:
    """Fused (shifted) window attention on a qkv feature map: Swin's W-MSA / SW-MSA before proj.

    Equivalent to timm 1.0's SwinTransformerBlock._attn between its qkv Linear and its proj:
    roll the map by (-shift_h, -shift_w), partition it into Mh x Mw windows, per window and head
    softmax((q * scale) @ k^T + relative position bias + shift mask) @ v, merge the windows and
    roll back. One kernel does all of it by index arithmetic (no rolled or partitioned copies).

    Args:
        qkv: (B, H, W, 3C), the qkv Linear applied to every token of the (padded) map, last dim
            ordered (3, heads, head_dim) as timm; H, W multiples of the window; any strides;
            float16 / bfloat16 / float32 (float64 on CPU).
        relative_position_bias_table: ((2Mh-1)(2Mw-1), num_heads), entry
            (hi-hj+Mh-1)*(2Mw-1) + (wi-wj+Mw-1) biases query i against key j. Any float dtype.
        num_heads: heads; C % num_heads == 0, head_dim = C // num_heads.
        window_size: M or (Mh, Mw).
        shift_size: s or (sh, sw) with 0 <= s < M; 0 everywhere is W-MSA (no mask). The SW-MSA
            mask (-100 between tokens of different shift regions) is that of the (H, W) map.
        scale: default head_dim ** -0.5.
        unpadded_size: (h, w) of the map before it was zero-padded to (H, W) (timm rolls the
            unpadded map and pads after): only the first h rows / w columns are rolled. Default (H, W).
        dropout_p: attention dropout (runs the torch path when > 0).
        backend: None (automatic) | 'triton' | 'torch'.

    Returns:
        (B, H, W, C), C ordered (heads, head_dim), in qkv's dtype.
    """
    fn = "shifted_window_attention"
    window, C = _check_common(fn, qkv, relative_position_bias_table, num_heads, window_size, 4, "(B, H, W, 3C)")
    shift = _pair(shift_size, "shift_size", fn, 0)
    if shift[0] >= window[0] or shift[1] >= window[1]:
        raise ValueError(f"{fn}: shift_size {shift} must be smaller than window_size {window}")
    B, H, W, _ = qkv.shape
    if H % window[0] or W % window[1]:
        raise ValueError(f"{fn}: the spatial size of qkv ({H}, {W}) must be a multiple of window_size {window} "
                         f"(pad the map before the qkv Linear, see unpadded_size)")
    if unpadded_size is None:
        valid = (H, W)
    else:
        valid = _pair(tuple(unpadded_size), "unpadded_size", fn, 1)
        if valid[0] > H or valid[1] > W:
            raise ValueError(f"{fn}: unpadded_size {valid} exceeds qkv's spatial size ({H}, {W})")
    head_dim = C // num_heads
    scale = _check_scale(fn, scale, head_dim)
    dropout_p = _check_dropout(fn, dropout_p)
    supported = _kernel_supported(qkv, relative_position_bias_table, None, window, head_dim, dropout_p)
    name = _dispatch.choose(FAMILY, qkv.device.type, backend, supported=supported)
    if name == "torch":
        return _torch_map(qkv, relative_position_bias_table, num_heads, window, shift, valid, scale, dropout_p)
    out, _ = _WindowAttentionFunction.apply(qkv, relative_position_bias_table, None, num_heads, list(window),
                                            list(shift), list(valid), scale)
    return out


def window_attention(qkv: Tensor, relative_position_bias_table: Tensor, num_heads: int, window_size: IntPair,
                     mask: Optional[Tensor] = None, scale: Optional[float] = None, *, dropout_p: float = 0.0,
                     backend: Optional[str] = None) -> Tensor:
    """Attention over already-partitioned windows: timm's WindowAttention.forward(x, mask)
    between its qkv Linear and its proj.

    Args:
        qkv: (B_, N, 3C) with N = Mh * Mw tokens per window (row-major), last dim ordered
            (3, heads, head_dim); any strides; float16 / bfloat16 / float32 (float64 on CPU).
        relative_position_bias_table: ((2Mh-1)(2Mw-1), num_heads).
        num_heads, window_size, scale: as in :func:`shifted_window_attention`.
        mask: None or additive (nW, N, N) with B_ % nW == 0; window b gets mask[b % nW]
            (timm's 0 / -100 shift mask, or any float values). Treated as a constant by the
            kernel; a mask that requires grad runs the torch path.
        dropout_p, backend: as in :func:`shifted_window_attention`.

    Returns:
        (B_, N, C) in qkv's dtype.
    """
    fn = "window_attention"
    window, C = _check_common(fn, qkv, relative_position_bias_table, num_heads, window_size, 3, "(B_, N, 3C)")
    B_, N, _ = qkv.shape
    if N != window[0] * window[1]:
        raise ValueError(f"{fn}: qkv has {N} tokens per window but window_size {window} has {window[0] * window[1]}")
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError(f"{fn}: mask must be a Tensor or None, got {type(mask).__name__}")
        if mask.dim() != 3 or mask.shape[1:] != (N, N) or mask.shape[0] < 1:
            raise ValueError(f"{fn}: mask must have shape (nW, {N}, {N}), got {tuple(mask.shape)}")
        if B_ % mask.shape[0] != 0:
            raise ValueError(f"{fn}: the number of windows B_ = {B_} is not a multiple of the mask's nW = "
                             f"{mask.shape[0]}")
        if not mask.is_floating_point():
            raise TypeError(f"{fn}: mask must be a floating-point (additive) tensor, got {mask.dtype}")
        if mask.device != qkv.device:
            raise ValueError(f"{fn}: mask is on {mask.device} but qkv is on {qkv.device}")
    head_dim = C // num_heads
    scale = _check_scale(fn, scale, head_dim)
    dropout_p = _check_dropout(fn, dropout_p)
    supported = _kernel_supported(qkv, relative_position_bias_table, mask, window, head_dim, dropout_p)
    name = _dispatch.choose(FAMILY, qkv.device.type, backend, supported=supported)
    if name == "torch":
        return _torch_windows(qkv, relative_position_bias_table, num_heads, window, mask, scale, dropout_p)
    qkv_map = qkv.unflatten(1, window)  # B_ images of one window each
    out, _ = _WindowAttentionFunction.apply(qkv_map, relative_position_bias_table, mask, num_heads, list(window),
                                            [0, 0], list(window), scale)
    return out.flatten(1, 2)
