"""Triton kernels for 2-D convolution and their launchers.

One convolution y = conv(x, w), x: (N, C_in, H, W), w: (C_out, C_in/G, KH, KW), G groups,
y: (N, C_out, OH, OW), has three directions, each a kernel here:

  conv        y[n, co, oh, ow] = sum_{ci, kh, kw} x[n, ci, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
                                                  * w[co, ci, kh, kw]     (ci in co's group)
  transposed  dx[n, ci, ih, iw] = sum_{co, kh, kw} dy[n, co, oh, ow] * w[co, ci, kh, kw]
              over the (oh, ow) with oh*sh = ih + ph - kh*dh (exactly) -- conv2d's grad-input,
              which is also conv_transpose2d's forward (gathered, no zero-insertion buffer)
  weight      dw[co, ci, kh, kw] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, ci, ih, iw]

conv_transpose2d(x, w) is the transposed direction applied to x; its grad-input is the conv
direction applied to dy and its grad-weight the weight direction with x and dy swapped.

Two kernel shapes serve them:
  depthwise (C_in/G == 1): direct kernels over a [pixels, channels] tile, one multiply-add per
      tap, no GEMM. Channel multiplier M = C_out / C_in: output channel co reads input co // M.
  everything else: implicit GEMM with tl.dot. The reduction runs tap by tap (kh, kw outer) and
      over input channels in BLOCK_K chunks inside, so no per-element (ci, kh, kw) decoding;
      with channels_last the K chunk is contiguous.
The weight direction is a reduction over N*OH*OW, split across programs into a float32 partial
buffer that a final sum folds (deterministic, nothing serializes over the pixels).

Every tensor is addressed through its four strides, so NCHW, channels_last and other strided
inputs run without copies; outputs take the input's suggested memory format. Pixel offsets are
64-bit. Padding is the top/left amount; the bottom/right side follows from the output size
(asymmetric 'same' padding costs nothing). Accumulation is float32 (float64 for float64).
Epilogue: + bias, then activation ACT (0 none, 1 ReLU, 2 ReLU6, 3 SiLU).
"""
import math

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, dot as _dot, interpreted, next_pow2, splits_for, upcast_dot as _upcast

ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "relu6": 2, "silu": 3}


# ----------------------------------------------------------------------------- shared device code

@triton.jit
def _pixel_coords(offs, OH, OW):
    """Flat pixel index -> (n, h, w) of an (N, OH, OW) grid."""
    w = offs % OW
    t = offs // OW
    return t // OH, t % OH, w


@triton.jit
def _gather_coord(o, pad, k, dil, stride, I):
    """Input coordinate read by output coordinate o at tap k (conv direction), and its validity."""
    i = o * stride - pad + k * dil
    return i, (i >= 0) & (i < I)


@triton.jit
def _scatter_coord(i, pad, k, dil, stride, O):
    """Output coordinate that input coordinate i feeds through tap k (transposed direction):
    o with o*stride == i + pad - k*dil, and whether it exists. No division of negatives."""
    t = i + pad - k * dil
    t_pos = tl.maximum(t, 0)
    o = t_pos // stride
    return o, (t >= 0) & (o * stride == t) & (o < O)


@triton.jit
def _phase_pixels(offs, phase, N, H, W, stride_h, stride_w, pad_h, pad_w, IDX: tl.constexpr):
    """Pixels of one stride phase of the transposed direction.

    dx pixel ih only receives taps kh with ih + pad - kh*dil divisible by stride: those of its
    phase r = (ih + pad) mod stride. A program works on one phase (r_h, r_w) and loops over its
    taps only (a 1/(stride_h*stride_w) share), instead of masking the others out.
    Returns n, ih, iw of the flat phase-pixel indices `offs`, their validity, and (r_h, r_w)."""
    r_h = phase // stride_w
    r_w = phase % stride_w
    base_h = ((r_h - pad_h) % stride_h + stride_h) % stride_h  # the phase's first row
    base_w = ((r_w - pad_w) % stride_w + stride_w) % stride_w
    HJ = (H - base_h + stride_h - 1) // stride_h
    WJ = (W - base_w + stride_w - 1) // stride_w
    n, jh, jw = _pixel_coords(offs, tl.maximum(HJ, 1), tl.maximum(WJ, 1))
    valid = offs < N.to(IDX) * HJ * WJ
    return n, base_h + jh * stride_h, base_w + jw * stride_w, valid, r_h, r_w


@triton.jit
def _epilogue(acc, b_ptr, offs_c, mask_c, HAS_BIAS: tl.constexpr, ACT: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(acc.dtype)[None, :]
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACT == 2:
        acc = tl.minimum(tl.maximum(acc, 0.0), 6.0)
    elif ACT == 3:
        acc = acc / (1.0 + tl.exp(-acc))
    return acc


# ----------------------------------------------------------------------------- depthwise (direct)

@triton.jit
def _dw_conv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    P, C_out, H, W, OH, OW, M,
    sxn, sxc, sxh, sxw, swc, swh, sww, syn, syc, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, IDX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_p = tl.program_id(0).to(IDX) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask_c = offs_c < C_out
    n, oh, ow = _pixel_coords(offs_p, OH, OW)
    ci = (offs_c // M).to(IDX)
    x_base = x_ptr + n[:, None] * sxn + ci[None, :] * sxc
    w_base = w_ptr + offs_c.to(IDX) * swc
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for kh in range(KH):
        ih, ok_h = _gather_coord(oh, pad_h, kh, dil_h, stride_h, H)
        ok_h = ok_h & mask_p
        for kw in range(KW):
            iw, ok_w = _gather_coord(ow, pad_w, kw, dil_w, stride_w, W)
            ok = ok_h & ok_w
            xv = tl.load(x_base + (ih * sxh + iw * sxw)[:, None], mask=ok[:, None] & mask_c[None, :], other=0.0)
            wv = tl.load(w_base + kh * swh + kw * sww, mask=mask_c, other=0.0)
            acc += xv.to(ACC) * wv.to(ACC)[None, :]
    acc = _epilogue(acc, b_ptr, offs_c, mask_c, HAS_BIAS, ACT)
    y_ptrs = y_ptr + (n * syn + oh * syh + ow * syw)[:, None] + offs_c.to(IDX)[None, :] * syc
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _dw_conv_transposed_kernel(
    dy_ptr, w_ptr, b_ptr, dx_ptr, tap0_ptr,
    N, C_in, H, W, OH, OW, M,
    sdn, sdc, sdh, sdw, swc, swh, sww, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW, tap_step_h, tap_step_w,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, IDX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # (H, W) is the size of dx (this kernel's output), (OH, OW) that of dy; program axis 2 is
    # the stride phase, tap0_ptr its first taps (see _phase_pixels).
    offs_p = tl.program_id(0).to(IDX) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n, ih, iw, mask_p, r_h, r_w = _phase_pixels(offs_p, tl.program_id(2), N, H, W, stride_h, stride_w, pad_h, pad_w, IDX)
    kh0 = tl.load(tap0_ptr + r_h)
    kw0 = tl.load(tap0_ptr + stride_h + r_w)
    mask_c = offs_c < C_in
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for m in range(M):
        co = offs_c.to(IDX) * M + m
        dy_base = dy_ptr + n[:, None] * sdn + co[None, :] * sdc
        for kh in range(kh0, KH, tap_step_h):
            oh, ok_h = _scatter_coord(ih, pad_h, kh, dil_h, stride_h, OH)
            ok_h = ok_h & mask_p
            for kw in range(kw0, KW, tap_step_w):
                ow, ok_w = _scatter_coord(iw, pad_w, kw, dil_w, stride_w, OW)
                ok = ok_h & ok_w
                g = tl.load(dy_base + (oh * sdh + ow * sdw)[:, None], mask=ok[:, None] & mask_c[None, :], other=0.0)
                wv = tl.load(w_ptr + co * swc + kh * swh + kw * sww, mask=mask_c, other=0.0)
                acc += g.to(ACC) * wv.to(ACC)[None, :]
    acc = _epilogue(acc, b_ptr, offs_c, mask_c, HAS_BIAS, ACT)
    dx_ptrs = dx_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + offs_c.to(IDX)[None, :] * sxc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _dw_weight_grad_kernel(
    dy_ptr, x_ptr, part_ptr,
    P, C_out, H, W, OH, OW, M,
    sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KW, num_taps, taps_per_program, num_tiles, tiles_per_split,
    IDX: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # program (tap group, channel block, split): partial[split, tap, co] = sum over its pixel
    # tiles, for each tap of its group (one tap per program on a GPU; all of them in the
    # interpreter, whose cost is per program)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    mask_c = offs_c < C_out
    co = offs_c.to(IDX)
    ci = co // M
    t_begin = split.to(IDX) * tiles_per_split  # IDX loop index: t * BLOCK_P can pass 2**31
    t_end = tl.minimum(t_begin + tiles_per_split, num_tiles)
    tap_begin = tl.program_id(0) * taps_per_program
    for tap in range(tap_begin, tl.minimum(tap_begin + taps_per_program, num_taps)):
        kh = tap // KW
        kw = tap % KW
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
        for t in range(t_begin, t_end):
            offs_p = t * BLOCK_P + tl.arange(0, BLOCK_P)
            n, oh, ow = _pixel_coords(offs_p, OH, OW)
            ih, ok_h = _gather_coord(oh, pad_h, kh, dil_h, stride_h, H)
            iw, ok_w = _gather_coord(ow, pad_w, kw, dil_w, stride_w, W)
            mask_p = offs_p < P
            g = tl.load(dy_ptr + (n * sdn + oh * sdh + ow * sdw)[:, None] + co[None, :] * sdc,
                        mask=mask_p[:, None] & mask_c[None, :], other=0.0)
            ok = (mask_p & ok_h & ok_w)[:, None] & mask_c[None, :]
            xv = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + ci[None, :] * sxc, mask=ok, other=0.0)
            acc += g.to(ACC) * xv.to(ACC)
        tl.store(part_ptr + (split * num_taps + tap) * C_out + offs_c, tl.sum(acc, axis=0), mask=mask_c)


# ----------------------------------------------------------------------------- implicit GEMM

@triton.jit
def _conv_gemm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    P, C_in_g, C_out_g, H, W, OH, OW,
    sxn, sxc, sxh, sxw, swo, swi, swh, sww, syn, syc, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, IDX: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # y[pixels, co] = sum over taps and ci chunks of x[pixels @ tap, ci] @ w[ci, co @ tap]
    g = tl.program_id(2)
    offs_m = tl.program_id(0).to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < P
    mask_n = offs_n < C_out_g
    co = g.to(IDX) * C_out_g + offs_n
    n, oh, ow = _pixel_coords(offs_m, OH, OW)
    x_base = x_ptr + n * sxn + g.to(IDX) * C_in_g * sxc
    w_base = w_ptr + co[None, :] * swo
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for kh in range(KH):
        ih, ok_h = _gather_coord(oh, pad_h, kh, dil_h, stride_h, H)
        ok_h = ok_h & mask_m
        for kw in range(KW):
            iw, ok_w = _gather_coord(ow, pad_w, kw, dil_w, stride_w, W)
            ok = ok_h & ok_w
            a_base = x_base + ih * sxh + iw * sxw
            b_base = w_base + kh * swh + kw * sww
            for c0 in range(0, C_in_g, BLOCK_K):
                ci = c0 + offs_k
                mask_k = ci < C_in_g
                a = tl.load(a_base[:, None] + ci[None, :].to(IDX) * sxc,
                            mask=ok[:, None] & mask_k[None, :], other=0.0)
                b = tl.load(b_base + ci[:, None] * swi, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                acc += _dot(a, b, PRECISION, ACC, UPCAST)
    acc = _epilogue(acc, b_ptr, co, mask_n, HAS_BIAS, ACT)
    y_ptrs = y_ptr + (n * syn + oh * syh + ow * syw)[:, None] + co[None, :] * syc
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv_transposed_gemm_kernel(
    dy_ptr, w_ptr, b_ptr, dx_ptr, tap0_ptr,
    N, C_in_g, C_out_g, H, W, OH, OW,
    sdn, sdc, sdh, sdw, swo, swi, swh, sww, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW, tap_step_h, tap_step_w,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, IDX: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # dx[pixels, ci] = sum over the phase's taps and co chunks of dy[pixels @ tap, co] @ w[co, ci @ tap];
    # (H, W) is dx's size, (OH, OW) dy's; program axis 2 is (group, stride phase).
    num_phases = stride_h * stride_w
    g = tl.program_id(2) // num_phases
    offs_m = tl.program_id(0).to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n, ih, iw, mask_m, r_h, r_w = _phase_pixels(offs_m, tl.program_id(2) % num_phases, N, H, W,
                                                stride_h, stride_w, pad_h, pad_w, IDX)
    kh0 = tl.load(tap0_ptr + r_h)
    kw0 = tl.load(tap0_ptr + stride_h + r_w)
    mask_n = offs_n < C_in_g
    ci = g.to(IDX) * C_in_g + offs_n
    dy_base = dy_ptr + n * sdn + g.to(IDX) * C_out_g * sdc
    w_base = w_ptr + offs_n[None, :].to(IDX) * swi + g.to(IDX) * C_out_g * swo
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for kh in range(kh0, KH, tap_step_h):
        oh, ok_h = _scatter_coord(ih, pad_h, kh, dil_h, stride_h, OH)
        ok_h = ok_h & mask_m
        for kw in range(kw0, KW, tap_step_w):
            ow, ok_w = _scatter_coord(iw, pad_w, kw, dil_w, stride_w, OW)
            ok = ok_h & ok_w
            a_base = dy_base + oh * sdh + ow * sdw
            b_base = w_base + kh * swh + kw * sww
            for c0 in range(0, C_out_g, BLOCK_K):
                co = c0 + offs_k
                mask_k = co < C_out_g
                a = tl.load(a_base[:, None] + co[None, :].to(IDX) * sdc,
                            mask=ok[:, None] & mask_k[None, :], other=0.0)
                b = tl.load(b_base + co[:, None].to(IDX) * swo, mask=mask_k[:, None] & mask_n[None, :],
                            other=0.0)
                acc += _dot(a, b, PRECISION, ACC, UPCAST)
    acc = _epilogue(acc, b_ptr, ci, mask_n, HAS_BIAS, ACT)
    dx_ptrs = dx_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + ci[None, :] * sxc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv_weight_grad_gemm_kernel(
    dy_ptr, x_ptr, part_ptr,
    P, C_in_g, C_out_g, H, W, OH, OW,
    sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KW, num_taps, taps_per_program,
    num_tiles, tiles_per_split, num_splits,
    IDX: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # program (tap group, (co block, ci block), (group, split)), for each tap of its group:
    #   partial[g, split, co, ci, tap] = sum over its pixel tiles of dy[co, pixels] @ x[pixels @ tap, ci]
    blocks_n = tl.cdiv(C_in_g, BLOCK_N)
    pid_m = tl.program_id(1) // blocks_n
    pid_n = tl.program_id(1) % blocks_n
    g = tl.program_id(2) // num_splits
    split = tl.program_id(2) % num_splits
    offs_co = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_co = offs_co < C_out_g
    mask_ci = offs_ci < C_in_g
    co = g.to(IDX) * C_out_g + offs_co
    ci = g.to(IDX) * C_in_g + offs_ci
    tap_begin = tl.program_id(0) * taps_per_program
    for tap in range(tap_begin, tl.minimum(tap_begin + taps_per_program, num_taps)):
        kh = tap // KW
        kw = tap % KW
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
        t_begin = split.to(IDX) * tiles_per_split
        t_end = tl.minimum(t_begin + tiles_per_split, num_tiles)
        for t in range(t_begin, t_end):
            offs_p = t * BLOCK_K + tl.arange(0, BLOCK_K)
            mask_p = offs_p < P
            n, oh, ow = _pixel_coords(offs_p, OH, OW)
            ih, ok_h = _gather_coord(oh, pad_h, kh, dil_h, stride_h, H)
            iw, ok_w = _gather_coord(ow, pad_w, kw, dil_w, stride_w, W)
            ok = mask_p & ok_h & ok_w
            a = tl.load(dy_ptr + co[:, None] * sdc + (n * sdn + oh * sdh + ow * sdw)[None, :],
                        mask=mask_co[:, None] & mask_p[None, :], other=0.0)
            b = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + ci[None, :] * sxc,
                        mask=ok[:, None] & mask_ci[None, :], other=0.0)
            acc += _dot(a, b, PRECISION, ACC, UPCAST)
        out = ((tl.program_id(2).to(IDX) * C_out_g + offs_co[:, None]) * C_in_g + offs_ci[None, :]) * num_taps + tap
        tl.store(part_ptr + out, acc, mask=mask_co[:, None] & mask_ci[None, :])


# ----------------------------------------------------------------------------- launchers

def _strides4(t):
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def memory_format_of(t):
    """torch's ``suggest_memory_format`` (ATen's rule, which cuDNN convolutions and the CUDA C++
    kernels follow): channels_last when t's strides order its dims C, W, H, N from the innermost,
    size-1 dims fitting either way; contiguous otherwise."""
    if t.dim() != 4:
        return torch.contiguous_format
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return torch.contiguous_format
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return torch.contiguous_format
        if d == 0 and smallest == strides[1]:  # N and C strides tie: ambiguous, not channels_last
            return torch.contiguous_format
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return torch.channels_last


def empty_conv_output(shape, like):
    """The output of a kernel whose main input is `like`, in `like`'s memory format
    (channels_last stays channels_last). Shared with the fake implementations."""
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format_of(like))


def _precision(t):
    if t.dtype != torch.float32:
        return "ieee"
    if not interpreted(t.device) and torch.backends.cudnn.allow_tf32:
        return "tf32"  # what cuDNN does for fp32 convolutions under torch's defaults
    return "ieee"


def _index_type(*tensors):
    """int32 index arithmetic (fewer registers) unless an offset into a tensor, or a pixel
    count, can reach 2**31: then int64."""
    span = 0
    for t in tensors:
        span = max(span, t.numel(), 1 + sum((d - 1) * abs(st) for d, st in zip(t.shape, t.stride()) if d > 0))
    return tl.int64 if span >= 2**31 - 1 else tl.int32


def is_depthwise(weight, groups):
    """weight (C_out, C_in/G, KH, KW) with one input channel per group: the direct kernels apply."""
    return weight.shape[1] == 1 and groups > 1


def _dw_blocks(device, P, C, channels_last):
    if interpreted(device):  # interpreter: its cost is per program and per op, not per element
        block_c = max(1, min(next_pow2(C), 128))
        return max(16, min(next_pow2(P), 65536 // block_c)), block_c
    if channels_last:
        block_c = min(next_pow2(C), 64)
        return max(16, 2048 // block_c), block_c
    return 128, max(1, min(next_pow2(C), 8))


def _gemm_blocks(device, P, K, N):
    bn = max(16, min(next_pow2(N), 128))
    gpu = not interpreted(device)
    bk = max(16, min(next_pow2(K), 64 if gpu else 128))
    bm = 128 if gpu else max(16, min(next_pow2(P), 1024))
    if gpu and bn == 128 and bk == 64:
        bm = 64
    return bm, bn, bk


def conv2d(x, w, bias, stride, padding, dilation, groups, output_size, activation):
    """y = act(conv(x, w) + bias); x (N, C_in, H, W), w (C_out, C_in/groups, KH, KW),
    output_size (OH, OW), padding the (top, left) amounts."""
    N, C_in, H, W = x.shape
    C_out, C_in_g, KH, KW = w.shape
    OH, OW = output_size
    y = empty_conv_output((N, C_out, OH, OW), x)
    P = N * OH * OW
    if y.numel() == 0:
        return y
    common = (*stride, *padding, *dilation, KH, KW)
    idx = _index_type(x, w, y)
    b = bias if bias is not None else w
    if is_depthwise(w, groups):
        bp, bc = _dw_blocks(x.device, P, C_out, y.stride(1) == 1)
        grid = (triton.cdiv(P, bp), triton.cdiv(C_out, bc))
        _dw_conv_kernel[grid](
            x, w, b, y, P, C_out, H, W, OH, OW, C_out // C_in,
            *_strides4(x), w.stride(0), w.stride(2), w.stride(3), *_strides4(y), *common,
            HAS_BIAS=bias is not None, ACT=activation, IDX=idx, ACC=acc_dtype(x.dtype), BLOCK_P=bp, BLOCK_C=bc)
        return y
    C_out_g = C_out // groups
    bm, bn, bk = _gemm_blocks(x.device, P, C_in_g, C_out_g)
    grid = (triton.cdiv(P, bm), triton.cdiv(C_out_g, bn), groups)
    _conv_gemm_kernel[grid](
        x, w, b, y, P, C_in_g, C_out_g, H, W, OH, OW,
        *_strides4(x), *_strides4(w), *_strides4(y), *common,
        HAS_BIAS=bias is not None, ACT=activation, IDX=idx, ACC=acc_dtype(x.dtype), PRECISION=_precision(x), UPCAST=_upcast(x),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return y


def conv2d_transposed(dy, w, bias, input_size, stride, padding, dilation, groups, activation):
    """dx = act(conv2d's grad-input(dy, w) + bias) of size input_size (N, C_in, H, W): the
    gradient of conv2d w.r.t. its input, and conv_transpose2d's forward (bias over C_in)."""
    N, C_in, H, W = input_size
    C_out, C_in_g, KH, KW = w.shape
    OH, OW = dy.shape[2], dy.shape[3]
    dx = empty_conv_output((N, C_in, H, W), dy)
    if dx.numel() == 0:
        return dx
    if dy.numel() == 0 or C_out == 0:  # nothing flows back: only the bias (and activation) remain
        dx.zero_()
        if bias is not None:
            dx += bias.to(dx.dtype)[None, :, None, None]
        return _torch_activation(dx, activation)
    common = (*stride, *padding, *dilation, KH, KW)
    idx = _index_type(dy, w, dx)
    tap0, step_h, step_w = _phase_taps(KH, KW, stride, dilation, dy.device)
    phases = stride[0] * stride[1]
    P_phase = N * triton.cdiv(H, stride[0]) * triton.cdiv(W, stride[1])  # the largest phase
    b = bias if bias is not None else w
    if is_depthwise(w, groups):
        bp, bc = _dw_blocks(dy.device, P_phase, C_in, dx.stride(1) == 1)
        grid = (triton.cdiv(P_phase, bp), triton.cdiv(C_in, bc), phases)
        _dw_conv_transposed_kernel[grid](
            dy, w, b, dx, tap0, N, C_in, H, W, OH, OW, C_out // C_in,
            *_strides4(dy), w.stride(0), w.stride(2), w.stride(3), *_strides4(dx), *common, step_h, step_w,
            HAS_BIAS=bias is not None, ACT=activation, IDX=idx, ACC=acc_dtype(dy.dtype), BLOCK_P=bp, BLOCK_C=bc)
        return dx
    C_out_g = C_out // groups
    bm, bn, bk = _gemm_blocks(dy.device, P_phase, C_out_g, C_in_g)
    grid = (triton.cdiv(P_phase, bm), triton.cdiv(C_in_g, bn), groups * phases)
    _conv_transposed_gemm_kernel[grid](
        dy, w, b, dx, tap0, N, C_in_g, C_out_g, H, W, OH, OW,
        *_strides4(dy), *_strides4(w), *_strides4(dx), *common, step_h, step_w,
        HAS_BIAS=bias is not None, ACT=activation, IDX=idx, ACC=acc_dtype(dy.dtype), PRECISION=_precision(dy),
        UPCAST=_upcast(dy), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return dx


def _first_taps(k, stride, dilation):
    """Per phase r in [0, stride): the first tap kk with kk*dilation = r (mod stride), or k when
    the phase has none; the taps of a phase repeat every stride / gcd(stride, dilation)."""
    step = stride // math.gcd(stride, dilation)
    return [next((kk for kk in range(min(k, step)) if (r - kk * dilation) % stride == 0), k)
            for r in range(stride)], step


def _phase_taps(KH, KW, stride, dilation, device):
    first_h, step_h = _first_taps(KH, stride[0], dilation[0])
    first_w, step_w = _first_taps(KW, stride[1], dilation[1])
    return torch.tensor(first_h + first_w, dtype=torch.int32, device=device), step_h, step_w


def conv2d_weight_grad(dy, x, weight_size, stride, padding, dilation, groups):
    """dw (weight_size = (C_out, C_in/groups, KH, KW), in x's dtype) = sum over pixels of dy * x
    at each tap: conv2d's gradient w.r.t. its weight."""
    C_out, C_in_g, KH, KW = weight_size
    N, C_in, H, W = x.shape
    OH, OW = dy.shape[2], dy.shape[3]
    P = N * OH * OW
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if P == 0 or C_out == 0 or C_in_g == 0:
        return torch.zeros(weight_size, dtype=x.dtype, device=x.device)
    common = (*stride, *padding, *dilation, KW)
    taps = KH * KW
    if C_in_g == 1 and groups > 1:
        bp, bc = _dw_blocks(x.device, P, C_out, dy.stride(1) == 1)
        c_blocks = triton.cdiv(C_out, bc)
        num_tiles = triton.cdiv(P, bp)
        num_splits, per_split = splits_for(x.device, num_tiles, taps * c_blocks)
        part = torch.empty((num_splits, taps, C_out), dtype=acc, device=x.device)
        per_program = taps if interpreted(x.device) else 1
        _dw_weight_grad_kernel[(triton.cdiv(taps, per_program), c_blocks, num_splits)](
            dy, x, part, P, C_out, H, W, OH, OW, C_out // C_in,
            *_strides4(dy), *_strides4(x), *common, taps, per_program, num_tiles, per_split,
            IDX=_index_type(dy, x, part), ACC=acc_dtype(x.dtype), BLOCK_P=bp, BLOCK_C=bc)
        return part.sum(0).t().contiguous().view(weight_size).to(x.dtype)
    C_out_g = C_out // groups
    bm = max(16, min(next_pow2(C_out_g), 64))
    bn = max(16, min(next_pow2(C_in_g), 64))
    bk = 64 if not interpreted(x.device) else max(16, min(next_pow2(P), 1024))
    mn_blocks = triton.cdiv(C_out_g, bm) * triton.cdiv(C_in_g, bn)
    num_tiles = triton.cdiv(P, bk)
    num_splits, per_split = splits_for(x.device, num_tiles, taps * mn_blocks * groups)
    part = torch.empty((groups * num_splits, C_out_g, C_in_g, taps), dtype=acc, device=x.device)
    per_program = taps if interpreted(x.device) else 1
    _conv_weight_grad_gemm_kernel[(triton.cdiv(taps, per_program), mn_blocks, groups * num_splits)](
        dy, x, part, P, C_in_g, C_out_g, H, W, OH, OW,
        *_strides4(dy), *_strides4(x), *common, taps, per_program, num_tiles, per_split, num_splits,
        IDX=_index_type(dy, x, part), ACC=acc_dtype(x.dtype), PRECISION=_precision(x), UPCAST=_upcast(x), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    dw = part.view(groups, num_splits, C_out_g, C_in_g, taps).sum(1)
    return dw.reshape(weight_size).to(x.dtype)


def _torch_activation(t, activation):
    if activation == 1:
        return t.relu_()
    if activation == 2:
        return t.clamp_(0.0, 6.0)
    if activation == 3:
        return t.mul_(torch.sigmoid(t))
    return t
