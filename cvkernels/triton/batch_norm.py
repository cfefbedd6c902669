"""Triton kernels for fused BatchNorm(+residual add)+ReLU, and their launchers.

Every input is viewed as a 3-D strided tensor (N, C, S) (see :func:`_ncs_layout`):
contiguous NCHW stays (N, C, H*W); channels_last and (N, C) inputs collapse to
(1, C, N*H*W) with channels innermost. Kernels walk it in tiles of [BLOCK_S, BLOCK_C]:
a tile index t covers (n, s-block) = divmod(t, SB), so no per-element division is needed.

Passes over memory (x, y, g of the input's size; everything else is O(C)):
  training forward   stats (read x) -> finalize (O(C)) -> apply (read x [+res], write y)
  eval forward       apply (read x [+res], write y), per-channel scale computed in the tile
  backward           reduce (read g, y, x) -> dx (read g, y, x, write dx [+ grad_res])
Each tile's (count, mean, M2) is taken in fp32 (fp64 for fp64 input) with the corrected
two-pass algorithm; the tiles are merged with Chan's parallel formula in fp64, so mean and
variance stay within a few ulps for large N*H*W and |mean| >> std (the C++ kernel's scheme).
The backward's per-channel sums accumulate in fp32 (fp64 for fp64 input).
"""
import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _tile_ptrs(base, t, SB, S, sN, sC, sS, offs_c, mask_c, BLOCK_S: tl.constexpr):
    # tile t = (n, s-block); 64-bit offsets: the collapsed S axis can pass 2**31 elements.
    n = t // SB
    sb = t - n * SB
    offs_s = sb.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    mask = (offs_s < S)[:, None] & mask_c[None, :]
    ptrs = base + n.to(tl.int64) * sN + offs_s[:, None] * sS + offs_c[None, :].to(tl.int64) * sC
    return ptrs, mask, sb


@triton.jit
def _row_sum(v, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ROW_GROUP: tl.constexpr):
    """Sum of a [BLOCK_S, BLOCK_C] tile over its rows.

    ROW_GROUP > 1 (on the interpreter) sums groups of ROW_GROUP rows first: the interpreter runs
    tl.sum(axis=0) as numpy's running sum down all BLOCK_S rows, whose rounding error grows with
    BLOCK_S (sum of 1024 squares: ~20 ulps); two levels of ~sqrt(BLOCK_S) rows keep it near a
    GPU's, which adds a few rows per thread and combines the threads in a tree (ROW_GROUP = 1).
    """
    if ROW_GROUP > 1:
        v = tl.sum(tl.reshape(v, [BLOCK_S // ROW_GROUP, ROW_GROUP, BLOCK_C]), axis=1)
    return tl.sum(v, axis=0)


@triton.jit
def _bn_stats_partial_kernel(
    x_ptr, part_cnt_ptr, part_mean_ptr, part_m2_ptr,
    C, S, SB, sN, sC, sS, num_tiles, tiles_per_split,
    ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ROW_GROUP: tl.constexpr,
):
    split = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    # the merged (count, mean, M2) are float64 whatever the input: a tile's moments are
    # accurate to ~1 ulp of std, but merging them in fp32 rounds the mean by ~ulp(|mean|) per tile
    cnt = tl.zeros([BLOCK_C], dtype=tl.float64)
    mean = tl.zeros([BLOCK_C], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float64)
    t_begin = split * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, num_tiles)
    for t in range(t_begin, t_end):
        ptrs, mask, sb = _tile_ptrs(x_ptr, t, SB, S, sN, sC, sS, offs_c, mask_c, BLOCK_S)
        x = tl.load(ptrs, mask=mask, other=0.0).to(ACC)
        n_tile = tl.minimum(S - sb * BLOCK_S, BLOCK_S).to(ACC)
        # corrected two-pass (Chan, Golub & LeVeque), as the C++ kernel: m0 = sum(x) / n carries
        # the rounding error of an fp32 sum of n values of size |mean|; the deviations' sum
        # corrects it, so the tile mean is accurate to ~eps * std, not ~eps * |mean| * sqrt(n)
        m0 = _row_sum(x, BLOCK_S, BLOCK_C, ROW_GROUP) / n_tile
        d = tl.where(mask, x - m0[None, :], 0.0)
        d_sum = _row_sum(d, BLOCK_S, BLOCK_C, ROW_GROUP).to(tl.float64)
        d_sq = _row_sum(d * d, BLOCK_S, BLOCK_C, ROW_GROUP).to(tl.float64)
        n_b = n_tile.to(tl.float64)
        tile_mean = m0.to(tl.float64) + d_sum / n_b
        tile_m2 = tl.maximum(d_sq - d_sum * d_sum / n_b, 0.0)
        # Chan et al.: merge (cnt, mean, m2) with (n_b, tile_mean, tile_m2)
        total = cnt + n_b
        delta = tile_mean - mean
        mean += delta * (n_b / total)
        m2 += tile_m2 + delta * delta * (cnt * n_b / total)
        cnt = total
    out = split * C + offs_c
    tl.store(part_cnt_ptr + out, cnt, mask=mask_c)
    tl.store(part_mean_ptr + out, mean, mask=mask_c)
    tl.store(part_m2_ptr + out, m2, mask=mask_c)


@triton.jit
def _bn_stats_finalize_kernel(
    part_cnt_ptr, part_mean_ptr, part_m2_ptr, num_splits, C,
    mean_ptr, invstd_ptr, running_mean_ptr, running_var_ptr, momentum, eps,
    HAS_RUNNING: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # the partials are float64 (see _bn_stats_partial_kernel); mean, invstd and the running
    # statistics are rounded once, at the end
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    cnt = tl.zeros([BLOCK_C], dtype=tl.float64)
    mean = tl.zeros([BLOCK_C], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float64)
    for split in range(0, num_splits):
        idx = split * C + offs_c
        n_b = tl.load(part_cnt_ptr + idx, mask=mask_c, other=0.0)
        mean_b = tl.load(part_mean_ptr + idx, mask=mask_c, other=0.0)
        m2_b = tl.load(part_m2_ptr + idx, mask=mask_c, other=0.0)
        total = cnt + n_b
        safe_total = tl.where(total > 0, total, 1.0)
        delta = mean_b - mean
        mean += delta * (n_b / safe_total)
        m2 += m2_b + delta * delta * (cnt * n_b / safe_total)
        cnt = total
    safe_cnt = tl.where(cnt > 0, cnt, 1.0)  # lanes past C
    var = m2 / safe_cnt
    invstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + offs_c, mean.to(mean_ptr.dtype.element_ty), mask=mask_c)
    tl.store(invstd_ptr + offs_c, invstd.to(invstd_ptr.dtype.element_ty), mask=mask_c)
    if HAS_RUNNING:
        rm = tl.load(running_mean_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float64)
        rv = tl.load(running_var_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float64)
        unbiased = m2 / tl.where(cnt > 1, cnt - 1.0, 1.0)
        rm = (1.0 - momentum) * rm + momentum * mean
        rv = (1.0 - momentum) * rv + momentum * unbiased
        tl.store(running_mean_ptr + offs_c, rm.to(running_mean_ptr.dtype.element_ty), mask=mask_c)
        tl.store(running_var_ptr + offs_c, rv.to(running_var_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _channel_affine(mean_ptr, stat_ptr, w_ptr, b_ptr, offs_c, mask_c, eps,
                    STAT_IS_VAR: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                    ACC: tl.constexpr):
    """Per-channel (mean, scale, shift) with y = (x - mean) * scale + shift.

    The mean is subtracted before scaling, never folded into the shift: with a tiny batch
    variance, scale is ~1/sqrt(eps) and x * scale - mean * scale would cancel catastrophically.
    """
    mean = tl.load(mean_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
    stat = tl.load(stat_ptr + offs_c, mask=mask_c, other=1.0).to(ACC)
    if STAT_IS_VAR:
        scale = 1.0 / tl.sqrt(stat + eps)
    else:
        scale = stat
    if HAS_WEIGHT:
        scale *= tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
    if HAS_BIAS:
        shift = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
    else:
        shift = tl.zeros_like(mean)
    return mean, scale, shift


@triton.jit
def _bn_relu_apply_kernel(
    x_ptr, res_ptr, y_ptr, mean_ptr, stat_ptr, w_ptr, b_ptr,
    C, S, SB, eps,
    sxN, sxC, sxS, srN, srC, srS, syN, syC, syS,
    STAT_IS_VAR: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr, ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    t = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mean, scale, shift = _channel_affine(mean_ptr, stat_ptr, w_ptr, b_ptr, offs_c, mask_c, eps,
                                         STAT_IS_VAR, HAS_WEIGHT, HAS_BIAS, ACC)
    x_ptrs, mask, _ = _tile_ptrs(x_ptr, t, SB, S, sxN, sxC, sxS, offs_c, mask_c, BLOCK_S)
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
    y = (x - mean[None, :]) * scale[None, :] + shift[None, :]
    if HAS_RES:
        r_ptrs, _, _ = _tile_ptrs(res_ptr, t, SB, S, srN, srC, srS, offs_c, mask_c, BLOCK_S)
        y += tl.load(r_ptrs, mask=mask, other=0.0).to(ACC)
    y = tl.maximum(y, 0.0)
    y_ptrs, _, _ = _tile_ptrs(y_ptr, t, SB, S, syN, syC, syS, offs_c, mask_c, BLOCK_S)
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_relu_bwd_reduce_kernel(
    g_ptr, y_ptr, x_ptr, mean_ptr, invstd_ptr, part_db_ptr, part_dw_ptr,
    C, S, SB, num_tiles, tiles_per_split,
    sgN, sgC, sgS, syN, syC, syS, sxN, sxC, sxS,
    ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ROW_GROUP: tl.constexpr,
):
    split = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mean = tl.load(mean_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
    invstd = tl.load(invstd_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
    sum_g = tl.zeros([BLOCK_C], dtype=ACC)
    sum_g_xhat = tl.zeros([BLOCK_C], dtype=ACC)
    t_begin = split * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, num_tiles)
    for t in range(t_begin, t_end):
        g_ptrs, mask, _ = _tile_ptrs(g_ptr, t, SB, S, sgN, sgC, sgS, offs_c, mask_c, BLOCK_S)
        y_ptrs, _, _ = _tile_ptrs(y_ptr, t, SB, S, syN, syC, syS, offs_c, mask_c, BLOCK_S)
        x_ptrs, _, _ = _tile_ptrs(x_ptr, t, SB, S, sxN, sxC, sxS, offs_c, mask_c, BLOCK_S)
        y = tl.load(y_ptrs, mask=mask, other=0.0)
        g = tl.where(y > 0, tl.load(g_ptrs, mask=mask, other=0.0).to(ACC), 0.0)
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
        sum_g += _row_sum(g, BLOCK_S, BLOCK_C, ROW_GROUP)
        sum_g_xhat += _row_sum(g * (x - mean[None, :]), BLOCK_S, BLOCK_C, ROW_GROUP) * invstd
    out = split * C + offs_c
    tl.store(part_db_ptr + out, sum_g, mask=mask_c)
    tl.store(part_dw_ptr + out, sum_g_xhat, mask=mask_c)


@triton.jit
def _bn_relu_bwd_dx_kernel(
    g_ptr, y_ptr, x_ptr, dx_ptr, dres_ptr, mean_ptr, invstd_ptr, w_ptr, sum_g_ptr, sum_g_xhat_ptr,
    C, S, SB, inv_count,
    sgN, sgC, sgS, syN, syC, syS, sxN, sxC, sxS, sdN, sdC, sdS, srN, srC, srS,
    TRAINING: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_RES: tl.constexpr,
    ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    t = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    invstd = tl.load(invstd_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
    if HAS_WEIGHT:
        scale = invstd * tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
    else:
        scale = invstd
    g_ptrs, mask, _ = _tile_ptrs(g_ptr, t, SB, S, sgN, sgC, sgS, offs_c, mask_c, BLOCK_S)
    y_ptrs, _, _ = _tile_ptrs(y_ptr, t, SB, S, syN, syC, syS, offs_c, mask_c, BLOCK_S)
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    g = tl.where(y > 0, tl.load(g_ptrs, mask=mask, other=0.0).to(ACC), 0.0)
    if TRAINING:
        # dx = scale * (g - mean(g) - xhat * mean(g * xhat))
        mean = tl.load(mean_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
        mean_g = tl.load(sum_g_ptr + offs_c, mask=mask_c, other=0.0).to(ACC) * inv_count
        mean_gx = tl.load(sum_g_xhat_ptr + offs_c, mask=mask_c, other=0.0).to(ACC) * inv_count
        x_ptrs, _, _ = _tile_ptrs(x_ptr, t, SB, S, sxN, sxC, sxS, offs_c, mask_c, BLOCK_S)
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
        xhat = (x - mean[None, :]) * invstd[None, :]
        dx = scale[None, :] * (g - mean_g[None, :] - xhat * mean_gx[None, :])
    else:
        dx = g * scale[None, :]
    dx_ptrs, _, _ = _tile_ptrs(dx_ptr, t, SB, S, sdN, sdC, sdS, offs_c, mask_c, BLOCK_S)
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if HAS_RES:
        r_ptrs, _, _ = _tile_ptrs(dres_ptr, t, SB, S, srN, srC, srS, offs_c, mask_c, BLOCK_S)
        tl.store(r_ptrs, g.to(dres_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def stat_dtype(dtype):
    """dtype of saved mean/invstd and of the accumulators."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _ncs_view(t, collapse):
    """(N, C, *spatial) -> a 3-D view (N, C, S), or (1, C, N*S) when collapse; None if no view."""
    N, C = t.shape[0], t.shape[1]
    S = 1
    for d in t.shape[2:]:
        S *= d
    try:
        v = t.view(N, C, S)
        if collapse:
            v = v.transpose(0, 1).view(C, N * S).unsqueeze(0)
    except RuntimeError:
        return None
    return v


def _ncs_layout(x):
    """Chooses the (N, C, S) view of x: collapsed when channels are innermost (channels_last, (N, C))."""
    v = _ncs_view(x, collapse=True)
    if v is not None and (v.stride(1) == 1 or x.shape[1] == 1 or x.dim() == 2):
        return True
    return False


def _view_like(t, collapse):
    """t as the (N, C, S) view x uses; a contiguous copy when t's strides do not allow it."""
    v = _ncs_view(t, collapse)
    if v is None:
        # channels-innermost copy for the collapsed view, plain contiguous otherwise
        t = t.movedim(1, -1).contiguous().movedim(-1, 1) if collapse else t.contiguous()
        v = _ncs_view(t, collapse)
    return v


def _from_ncs(v, shape, collapse):
    """Inverse of _ncs_view: the (N, C, S) or (1, C, N*S) view back to `shape`."""
    if not collapse:
        return v.reshape(shape)
    return v.squeeze(0).transpose(0, 1).reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def _out_view(out, collapse):
    """A writable (N, C, S) view of `out`, or a temporary to copy back (returned second)."""
    v = _ncs_view(out, collapse)
    if v is not None:
        return v, None
    tmp = _view_like(torch.empty(out.shape, dtype=out.dtype, device=out.device), collapse)
    return tmp, tmp


def _next_pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


def _blocks(C, S, channels_inner):
    """Tile [BLOCK_S, BLOCK_C] of about 4096 elements, contiguous along the inner axis."""
    if channels_inner:
        block_c = min(_next_pow2(C), 64)
        block_s = max(16, min(_next_pow2(S), 4096 // block_c))
    else:
        block_s = min(_next_pow2(S), 1024)
        block_c = max(1, min(_next_pow2(C), 4096 // block_s))
    return block_s, block_c


@functools.lru_cache(maxsize=None)
def _num_sms(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_splits(x, num_tiles, c_blocks):
    if x.device.type == "cuda":
        target = 4 * _num_sms(x.device.index if x.device.index is not None else torch.cuda.current_device())
    else:  # the interpreter runs programs one after another: few programs, big tiles
        target = 4
    return max(1, min(num_tiles, triton.cdiv(target, max(c_blocks, 1))))


class _Geometry:
    """Shape, tiling and views shared by the forward and backward launches."""

    def __init__(self, x):
        self.collapse = _ncs_layout(x)
        self.xv = _view_like(x, self.collapse)
        N, C, S = self.xv.shape
        self.N, self.C, self.S = N, C, S
        self.count = N * S
        self.block_s, self.block_c = _blocks(C, S, channels_inner=self.xv.stride(1) == 1)
        self.SB = triton.cdiv(S, self.block_s)
        self.num_tiles = N * self.SB
        self.c_blocks = triton.cdiv(C, self.block_c)
        self.acc = _acc(x.dtype)
        # rows per group of the reductions' two-level row sums on the interpreter (see _row_sum)
        self.row_group = 1 if x.device.type != "cpu" else 1 << (self.block_s.bit_length() - 1) // 2

    def view(self, t):
        return _view_like(t, self.collapse)

    def splits(self, x):
        num_splits = _num_splits(x, self.num_tiles, self.c_blocks)
        tiles_per_split = triton.cdiv(self.num_tiles, num_splits)
        return triton.cdiv(self.num_tiles, tiles_per_split), tiles_per_split

    def tile_grid(self):
        return (self.num_tiles, self.c_blocks)


def _strides(v):
    return v.stride(0), v.stride(1), v.stride(2)


def _contig_1d(t):
    return t if t is None or t.is_contiguous() else t.contiguous()


def bn_relu_forward(input, weight, bias, residual, running_mean, running_var, training, momentum, eps):
    """Launches the forward. Returns (output, save_mean, save_invstd); updates running stats in place."""
    x = input
    C = x.shape[1]
    sdt = stat_dtype(x.dtype)
    y = torch.empty_like(x)
    if training:
        mean = torch.empty(C, dtype=sdt, device=x.device)
        invstd = torch.empty(C, dtype=sdt, device=x.device)
    if x.numel() == 0:
        if not training:
            mean = running_mean.to(sdt, copy=True)
            invstd = torch.rsqrt(running_var.to(sdt) + eps)
        return y, mean, invstd
    geo = _Geometry(x)
    xv = geo.xv
    weight, bias = _contig_1d(weight), _contig_1d(bias)
    if training:
        num_splits, tiles_per_split = geo.splits(x)
        parts = torch.empty((3, num_splits, C), dtype=torch.float64, device=x.device)
        _bn_stats_partial_kernel[(num_splits, geo.c_blocks)](
            xv, parts[0], parts[1], parts[2], C, geo.S, geo.SB, *_strides(xv),
            geo.num_tiles, tiles_per_split,
            ACC=geo.acc, BLOCK_S=geo.block_s, BLOCK_C=geo.block_c, ROW_GROUP=geo.row_group)
        has_running = running_mean is not None
        rm = _contig_1d(running_mean) if has_running else mean
        rv = _contig_1d(running_var) if has_running else invstd
        fin_block = min(_next_pow2(C), 256)
        _bn_stats_finalize_kernel[(triton.cdiv(C, fin_block),)](
            parts[0], parts[1], parts[2], num_splits, C, mean, invstd, rm, rv,
            float(momentum), float(eps),
            HAS_RUNNING=has_running, ACC=geo.acc, BLOCK_C=fin_block)
        if has_running:
            if rm is not running_mean:
                running_mean.copy_(rm)
            if rv is not running_var:
                running_var.copy_(rv)
        mean_arg, stat_arg, stat_is_var = mean, invstd, False
    else:
        mean_arg, stat_arg, stat_is_var = _contig_1d(running_mean), _contig_1d(running_var), True
    rv_ = geo.view(residual) if residual is not None else xv
    yv, y_tmp = _out_view(y, geo.collapse)
    _bn_relu_apply_kernel[geo.tile_grid()](
        xv, rv_, yv, mean_arg, stat_arg,
        weight if weight is not None else xv, bias if bias is not None else xv,
        C, geo.S, geo.SB, float(eps), *_strides(xv), *_strides(rv_), *_strides(yv),
        STAT_IS_VAR=stat_is_var, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, ACC=geo.acc, BLOCK_S=geo.block_s, BLOCK_C=geo.block_c)
    if y_tmp is not None:
        y.copy_(_from_ncs(y_tmp, y.shape, geo.collapse))
    if not training:
        mean = running_mean.to(sdt, copy=True)
        invstd = torch.rsqrt(running_var.to(sdt) + eps)
    return y, mean, invstd


def bn_relu_backward(grad_output, output, input, weight, save_mean, save_invstd, training, has_residual):
    """Launches the backward. Returns (grad_input, grad_weight, grad_bias, grad_residual)."""
    x = input
    C = x.shape[1]
    sdt = stat_dtype(x.dtype)
    wdt = weight.dtype if weight is not None else sdt
    dx = torch.empty_like(x)
    dres = torch.empty_like(x) if has_residual else torch.empty(0, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        zeros = torch.zeros(C, dtype=wdt, device=x.device)
        return dx, zeros, zeros.clone(), dres
    geo = _Geometry(x)
    xv, gv, yv = geo.xv, geo.view(grad_output), geo.view(output)
    mean, invstd = save_mean.contiguous(), save_invstd.contiguous()
    weight = _contig_1d(weight)
    num_splits, tiles_per_split = geo.splits(x)
    parts = torch.empty((2, num_splits, C), dtype=sdt, device=x.device)
    _bn_relu_bwd_reduce_kernel[(num_splits, geo.c_blocks)](
        gv, yv, xv, mean, invstd, parts[0], parts[1],
        C, geo.S, geo.SB, geo.num_tiles, tiles_per_split,
        *_strides(gv), *_strides(yv), *_strides(xv),
        ACC=geo.acc, BLOCK_S=geo.block_s, BLOCK_C=geo.block_c, ROW_GROUP=geo.row_group)
    sums = parts.sum(dim=1)  # (2, C): sum(g), sum(g * xhat)
    dxv, dx_tmp = _out_view(dx, geo.collapse)
    drv, dr_tmp = _out_view(dres, geo.collapse) if has_residual else (dxv, None)
    _bn_relu_bwd_dx_kernel[geo.tile_grid()](
        gv, yv, xv, dxv, drv, mean, invstd, weight if weight is not None else mean, sums[0], sums[1],
        C, geo.S, geo.SB, 1.0 / geo.count,
        *_strides(gv), *_strides(yv), *_strides(xv), *_strides(dxv), *_strides(drv),
        TRAINING=bool(training), HAS_WEIGHT=weight is not None, HAS_RES=bool(has_residual),
        ACC=geo.acc, BLOCK_S=geo.block_s, BLOCK_C=geo.block_c)
    for out, tmp in ((dx, dx_tmp), (dres, dr_tmp)):
        if tmp is not None:
            out.copy_(_from_ncs(tmp, out.shape, geo.collapse))
    return dx, sums[1].to(wdt, copy=True), sums[0].to(wdt, copy=True), dres
