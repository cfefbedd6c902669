"""Triton kernels for Swin's shifted-window attention (timm 1.0 semantics) and their launchers.

One fused kernel per direction, working on feature maps by index arithmetic only: no rolled,
padded, partitioned or merged copy is ever made.

Input: the qkv map (B, Hp, Wp, 3C) — timm's qkv Linear applied per token commutes with the
cyclic shift and the window partition, so the kernel takes its output — last dim ordered
(3, heads, head_dim) as timm reshapes it, any strides. The window frame (rolled, padded) maps
to the qkv map by

    window-frame row r in [0, Hp)  <-  qkv row  (r + shift_h) mod H   if r < H, else r

(columns alike), H <= Hp being the valid (unpadded) size: timm rolls the H x W map first and
pads bottom/right after, and this is that order. The map is a bijection, so each token belongs
to exactly one window and the gradient map needs no atomics.

Window (b, wh, ww) of the frame holds rows wh*Mh .. +Mh, columns ww*Mw .. +Mw; token
n = ih*Mw + iw. For one (window, head):

    S[i, j] = scale * q_i . k_j + table[(ih_i - ih_j + Mh - 1) * (2Mw - 1) + (iw_i - iw_j + Mw - 1), head]
              + (-100 if region(i) != region(j))     shift mask, regions of the padded frame
              + mask[window mod nW, i, j]            optional explicit additive mask
    out_i = sum_j softmax_j(S[i, :]) v_j,            lse_i = logsumexp_j S[i, j]

region(r) per dimension = 0 for r < Hp - M, 1 for r < Hp - shift, else 2 (the slices
(0, -M), (-M, -shift), (-shift, None)), constant when that dimension's shift is 0. The output
(B, Hp, Wp, C) is written at the qkv position of each token: the window merge and the reverse
shift come for free.

The whole key row of a window (N = Mh*Mw <= 256, padded to a power of two and masked) lives in
registers; query rows go in blocks of BLOCK_M (all of them at once when N <= BLOCK_M). Products
run on tl.dot with float32 accumulation (float64 for float64 in the interpreter).

Backward (one kernel): program (p, head) walks a fixed set of windows, recomputes P from q, k
and the saved lse, and writes dq, dk, dv straight into the (B, Hp, Wp, 3C) gradient map. The
bias-table gradient is dS summed over windows: each program accumulates it for its windows and
writes one partial (num_partials, heads, N, N), summed afterwards and folded into the table by a
fixed-order gather over the relative index (deterministic; no float atomics anywhere).
"""
import functools

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, interpreted, next_pow2

# ----------------------------------------------------------------------------- device code

@triton.jit
def _tokens(offs, wh, ww, H, W, Hp, Wp, shift_h, shift_w, MH: tl.constexpr, MW: tl.constexpr, SHIFTED: tl.constexpr):
    """Token indices `offs` of window (wh, ww) -> in-window (ih, iw), qkv-map source (sr, sc) and
    shift-region label.

    Frame row r = wh*Mh + ih reads qkv row (r + shift_h) mod H when r < H (the roll over the
    unpadded rows), row r itself in the padding. Region per dimension: 0 for r < Hp - M, 1 for
    r < Hp - shift, else 2; 0 everywhere when that dimension's shift is 0; label = 3*reg_h + reg_w.
    (One helper, not several: the interpreter pays for every call of a jitted function.)"""
    ih = offs // MW
    iw = offs % MW
    r = wh * MH + ih
    c = ww * MW + iw
    sr = tl.where(r < H, (r + shift_h) % H, r)
    sc = tl.where(c < W, (c + shift_w) % W, c)
    if SHIFTED:
        reg_h = (r >= Hp - MH).to(r.dtype) + (r >= Hp - shift_h).to(r.dtype)
        reg_w = (c >= Wp - MW).to(c.dtype) + (c >= Wp - shift_w).to(c.dtype)
        label = tl.where(shift_h > 0, reg_h, 0) * 3 + tl.where(shift_w > 0, reg_w, 0)
    else:
        label = ih * 0
    return ih, iw, sr, sc, label


@triton.jit
def _logits(q, k, table_ptr, mask_ptr, stt, sth, smw, smi, smj, head, mask_window,
            ih_q, iw_q, lab_q, offs_q, valid_q, ih_k, iw_k, lab_k, offs_k, valid_k, scale,
            MH: tl.constexpr, MW: tl.constexpr, SHIFTED: tl.constexpr, HAS_MASK: tl.constexpr,
            ACC: tl.constexpr, PRECISION: tl.constexpr):
    """Scaled scores + relative position bias + shift mask + explicit mask; -inf on padded keys."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * scale
    valid = valid_q[:, None] & valid_k[None, :]
    rel = (ih_q[:, None] - ih_k[None, :] + (MH - 1)) * (2 * MW - 1) + (iw_q[:, None] - iw_k[None, :] + (MW - 1))
    s += tl.load(table_ptr + rel * stt + head * sth, mask=valid, other=0.0).to(ACC)
    if SHIFTED:
        s += tl.where(lab_q[:, None] != lab_k[None, :], -100.0, 0.0).to(ACC)
    if HAS_MASK:
        m = tl.load(mask_ptr + mask_window * smw + offs_q[:, None] * smi + offs_k[None, :] * smj, mask=valid, other=0.0)
        s += m.to(ACC)
    return tl.where(valid_k[None, :], s, float("-inf"))


@triton.jit
def _swin_fwd_kernel(
    qkv_ptr, table_ptr, mask_ptr, out_ptr, lse_ptr,
    H, W, Hp, Wp, nWw, windows_per_image, num_mask_windows, C, D, num_heads,
    sqb, sqh, sqw, sqc, stt, sth, smw, smi, smj, sob, soh, sow, soc,
    shift_h, shift_w, scale,
    MH: tl.constexpr, MW: tl.constexpr, SHIFTED: tl.constexpr, HAS_MASK: tl.constexpr,
    IDX: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    N: tl.constexpr = MH * MW
    ONE_BLOCK: tl.constexpr = BLOCK_M >= N
    window = tl.program_id(0).to(IDX)
    head = tl.program_id(1).to(IDX)
    b = window // windows_per_image
    wi = window % windows_per_image
    wh = wi // nWw
    ww = wi % nWw
    offs_d = tl.arange(0, BLOCK_D).to(IDX)
    mask_d = offs_d < D
    ch = head * D + offs_d  # channel of this head within q (k: + C, v: + 2C)
    ch_q = ch * sqc
    ch_k = (C + ch) * sqc
    ch_v = (2 * C + ch) * sqc

    offs_k = tl.arange(0, BLOCK_N).to(IDX)
    valid_k = offs_k < N
    ih_k, iw_k, sr_k, sc_k, lab_k = _tokens(offs_k, wh, ww, H, W, Hp, Wp, shift_h, shift_w, MH, MW, SHIFTED)
    tok_k = b * sqb + sr_k * sqh + sc_k * sqw
    kv_mask = valid_k[:, None] & mask_d[None, :]
    k = tl.load(qkv_ptr + tok_k[:, None] + ch_k[None, :], mask=kv_mask, other=0.0)
    v = tl.load(qkv_ptr + tok_k[:, None] + ch_v[None, :], mask=kv_mask, other=0.0)
    if UPCAST:  # bf16 tl.dot is wrong in the CPU interpreter (triton 3.9); fp32 products of bf16 are exact
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    mask_window = window % num_mask_windows

    for m0 in range(0, N, BLOCK_M):
        if ONE_BLOCK:  # the query rows are the key rows
            offs_q, valid_q, ih_q, iw_q, sr_q, sc_q, lab_q = offs_k, valid_k, ih_k, iw_k, sr_k, sc_k, lab_k
            tok_q = tok_k
        else:
            offs_q = m0 + tl.arange(0, BLOCK_M).to(IDX)
            valid_q = offs_q < N
            ih_q, iw_q, sr_q, sc_q, lab_q = _tokens(offs_q, wh, ww, H, W, Hp, Wp, shift_h, shift_w, MH, MW, SHIFTED)
            tok_q = b * sqb + sr_q * sqh + sc_q * sqw
        q_mask = valid_q[:, None] & mask_d[None, :]
        q = tl.load(qkv_ptr + tok_q[:, None] + ch_q[None, :], mask=q_mask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        s = _logits(q, k, table_ptr, mask_ptr, stt, sth, smw, smi, smj, head, mask_window,
                    ih_q, iw_q, lab_q, offs_q, valid_q, ih_k, iw_k, lab_k, offs_k, valid_k, scale,
                    MH, MW, SHIFTED, HAS_MASK, ACC, PRECISION)
        row_max = tl.max(s, axis=1)
        p = tl.exp(s - row_max[:, None])
        row_sum = tl.sum(p, axis=1)
        o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION, out_dtype=ACC) / row_sum[:, None]
        out_tok = b * sob + sr_q * soh + sc_q * sow
        tl.store(out_ptr + out_tok[:, None] + ch[None, :] * soc, o.to(out_ptr.dtype.element_ty), mask=q_mask)
        lse = row_max + tl.log(row_sum)
        tl.store(lse_ptr + (window * num_heads + head) * N + offs_q, lse, mask=valid_q)


@triton.jit
def _swin_bwd_kernel(
    qkv_ptr, table_ptr, mask_ptr, out_ptr, dout_ptr, lse_ptr, dqkv_ptr, dbias_ptr,
    H, W, Hp, Wp, nWw, windows_per_image, num_mask_windows, C, D, num_heads,
    num_windows, windows_per_program,
    sqb, sqh, sqw, sqc, stt, sth, smw, smi, smj, sob, soh, sow, soc,
    sdb, sdh, sdw, sdc, sgb, sgh, sgw, sgc,
    shift_h, shift_w, scale,
    MH: tl.constexpr, MW: tl.constexpr, SHIFTED: tl.constexpr, HAS_MASK: tl.constexpr,
    IDX: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # qkv / out / dout / dqkv strides: (sq*), (so*), (sd*), (sg*)
    N: tl.constexpr = MH * MW
    ONE_BLOCK: tl.constexpr = BLOCK_M >= N
    part = tl.program_id(0).to(IDX)
    head = tl.program_id(1).to(IDX)
    offs_d = tl.arange(0, BLOCK_D).to(IDX)
    mask_d = offs_d < D
    ch = head * D + offs_d
    ch_k = (C + ch) * sqc
    ch_v = (2 * C + ch) * sqc
    offs_k = tl.arange(0, BLOCK_N).to(IDX)
    valid_k = offs_k < N
    part_base = dbias_ptr + (part * num_heads + head) * N * N
    dbias_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)  # used when ONE_BLOCK

    w_begin = part * windows_per_program
    w_end = tl.minimum(w_begin + windows_per_program, num_windows)
    for window in range(w_begin, w_end):
        b = window // windows_per_image
        wi = window % windows_per_image
        wh = wi // nWw
        ww = wi % nWw
        mask_window = window % num_mask_windows
        ih_k, iw_k, sr_k, sc_k, lab_k = _tokens(offs_k, wh, ww, H, W, Hp, Wp, shift_h, shift_w, MH, MW, SHIFTED)
        kv_mask = valid_k[:, None] & mask_d[None, :]
        tok_k = b * sqb + sr_k * sqh + sc_k * sqw
        k = tl.load(qkv_ptr + tok_k[:, None] + ch_k[None, :], mask=kv_mask, other=0.0)
        v = tl.load(qkv_ptr + tok_k[:, None] + ch_v[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
        for m0 in range(0, N, BLOCK_M):
            if ONE_BLOCK:  # the query rows are the key rows
                offs_q, valid_q, ih_q, iw_q, sr_q, sc_q, lab_q = offs_k, valid_k, ih_k, iw_k, sr_k, sc_k, lab_k
            else:
                offs_q = m0 + tl.arange(0, BLOCK_M).to(IDX)
                valid_q = offs_q < N
                ih_q, iw_q, sr_q, sc_q, lab_q = _tokens(offs_q, wh, ww, H, W, Hp, Wp, shift_h, shift_w, MH, MW, SHIFTED)
            q_mask = valid_q[:, None] & mask_d[None, :]
            q = tl.load(qkv_ptr + (b * sqb + sr_q * sqh + sc_q * sqw)[:, None] + (ch * sqc)[None, :],
                        mask=q_mask, other=0.0)
            o = tl.load(out_ptr + (b * sob + sr_q * soh + sc_q * sow)[:, None] + (ch * soc)[None, :],
                        mask=q_mask, other=0.0)
            do = tl.load(dout_ptr + (b * sdb + sr_q * sdh + sc_q * sdw)[:, None] + (ch * sdc)[None, :],
                         mask=q_mask, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(lse_ptr + (window * num_heads + head) * N + offs_q, mask=valid_q, other=0.0)
            delta = tl.sum(do.to(ACC) * o.to(ACC), axis=1)
            s = _logits(q, k, table_ptr, mask_ptr, stt, sth, smw, smi, smj, head, mask_window,
                        ih_q, iw_q, lab_q, offs_q, valid_q, ih_k, iw_k, lab_k, offs_k, valid_k, scale,
                        MH, MW, SHIFTED, HAS_MASK, ACC, PRECISION)
            p = tl.exp(s - lse[:, None])
            p = tl.where(valid_q[:, None], p, 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION, out_dtype=ACC)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION, out_dtype=ACC)
            ds = p * (dp - delta[:, None])  # d loss / d S: also the bias (and explicit mask) gradient
            dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION, out_dtype=ACC) * scale
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION, out_dtype=ACC)
            tl.store(dqkv_ptr + (b * sgb + sr_q * sgh + sc_q * sgw)[:, None] + (ch * sgc)[None, :],
                     dq.to(dqkv_ptr.dtype.element_ty), mask=q_mask)
            if ONE_BLOCK:
                dbias_acc += ds
            else:  # this program owns its partial: read-modify-write, no other writer
                pmask = valid_q[:, None] & valid_k[None, :]
                pptr = part_base + offs_q[:, None] * N + offs_k[None, :]
                prev = tl.load(pptr, mask=pmask, other=0.0)
                tl.store(pptr, prev + ds, mask=pmask)
                tl.debug_barrier()  # the next window's load may map these elements to other threads
        g_tok = b * sgb + sr_k * sgh + sc_k * sgw
        tl.store(dqkv_ptr + g_tok[:, None] + ((C + ch) * sgc)[None, :],
                 (dk * scale).to(dqkv_ptr.dtype.element_ty), mask=kv_mask)
        tl.store(dqkv_ptr + g_tok[:, None] + ((2 * C + ch) * sgc)[None, :],
                 dv.to(dqkv_ptr.dtype.element_ty), mask=kv_mask)
    if ONE_BLOCK:
        pmask = valid_k[:, None] & valid_k[None, :]
        tl.store(part_base + offs_k[:, None] * N + offs_k[None, :], dbias_acc, mask=pmask)


# ----------------------------------------------------------------------------- launchers

def _index_type(*tensors):
    """int32 index arithmetic unless an offset into a tensor can reach 2**31: then int64. The
    interpreter always gets int64: it checks every int32 operation for overflow, at a cost."""
    if interpreted(tensors[0].device):
        return tl.int64
    span = 0
    for t in tensors:
        if t is None:
            continue
        span = max(span, t.numel(), 1 + sum((d - 1) * abs(st) for d, st in zip(t.shape, t.stride()) if d > 0))
    return tl.int64 if span >= 2**31 - 1 else tl.int32


def _precision(t):
    if t.dtype != torch.float32:
        return "ieee"
    if not interpreted(t.device) and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"  # what torch's fp32 matmuls do when the user allowed TF32
    return "ieee"


def _upcast(t):
    return t.dtype == torch.bfloat16 and interpreted(t.device)


def _blocks(device, dtype, n, d, backward, block_m=None):
    """(BLOCK_M, BLOCK_N, BLOCK_D, launch options). Interpreter: one query block (fewest ops).
    GPU: chosen from the sm_90 compile report (registers / spills / shared memory, bench/NOTES.md),
    not yet from timings: N <= 64 takes all query rows at once (the backward keeps the bias
    gradient in registers), larger windows go in 16-row query blocks."""
    block_n = max(16, next_pow2(n))
    block_d = max(16, next_pow2(d))
    options = {}
    if interpreted(device):
        bm = block_n
    else:
        wide = dtype == torch.float32 or dtype == torch.float64  # FMA dot layouts: twice the registers
        if block_n > 64:
            bm, options = 16, dict(num_warps=8, num_stages=1)
        elif not backward:
            bm, options = block_n, dict(num_warps=8 if wide else 4)
        elif wide:
            bm, options = 16, dict(num_warps=8, num_stages=1)
        else:
            bm, options = (64 if block_d <= 32 else 32), dict(num_warps=8, num_stages=1)
    if block_m is not None:
        bm = block_m
    bm = max(16, min(next_pow2(bm), block_n))
    return bm, block_n, block_d, options


def _geometry(qkv, num_heads, window_size, shift_size, valid_size):
    B, Hp, Wp, C3 = qkv.shape
    mh, mw = window_size
    C = C3 // 3
    return dict(B=B, Hp=Hp, Wp=Wp, C=C, D=C // num_heads, MH=mh, MW=mw, N=mh * mw,
                nWh=Hp // mh, nWw=Wp // mw, H=valid_size[0], W=valid_size[1],
                sh=shift_size[0], sw=shift_size[1])


def _mask_args(mask, like):
    if mask is None:
        return like, 1, 0, 0, 0
    return mask, mask.shape[0], mask.stride(0), mask.stride(1), mask.stride(2)


def forward(qkv, table, mask, num_heads, window_size, shift_size, valid_size, scale, block_m=None):
    """qkv (B, Hp, Wp, 3C), table ((2Mh-1)(2Mw-1), heads), mask None or (nW, N, N) ->
    out (B, Hp, Wp, C) in qkv's dtype, lse (B * nWh * nWw, heads, N) float32 (float64 for float64)."""
    g = _geometry(qkv, num_heads, window_size, shift_size, valid_size)
    windows = g["B"] * g["nWh"] * g["nWw"]
    out = torch.empty((g["B"], g["Hp"], g["Wp"], g["C"]), dtype=qkv.dtype, device=qkv.device)
    stat = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    lse = torch.empty((windows, num_heads, g["N"]), dtype=stat, device=qkv.device)
    if windows == 0 or g["C"] == 0:
        return out, lse
    bm, bn, bd, options = _blocks(qkv.device, qkv.dtype, g["N"], g["D"], False, block_m)
    m, nmask, smw, smi, smj = _mask_args(mask, table)
    _swin_fwd_kernel[(windows, num_heads)](
        qkv, table, m, out, lse,
        g["H"], g["W"], g["Hp"], g["Wp"], g["nWw"], g["nWh"] * g["nWw"], nmask, g["C"], g["D"], num_heads,
        *qkv.stride(), table.stride(0), table.stride(1), smw, smi, smj, *out.stride(),
        g["sh"], g["sw"], float(scale),
        MH=g["MH"], MW=g["MW"], SHIFTED=bool(g["sh"] or g["sw"]), HAS_MASK=mask is not None,
        IDX=_index_type(qkv, out, lse), ACC=acc_dtype(qkv.dtype), PRECISION=_precision(qkv), UPCAST=_upcast(qkv),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, **options)
    return out, lse


def _num_partials(device, windows, heads, requested=None):
    if requested is not None:
        return max(1, min(windows, int(requested)))
    if interpreted(device):
        want = 2  # the interpreter's cost is per program step: few programs, long window loops
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        want = 8 * torch.cuda.get_device_properties(index).multi_processor_count
    else:  # meta: as for an H100
        want = 8 * 132
    return max(1, min(windows, triton.cdiv(want, max(heads, 1))))


@functools.lru_cache(maxsize=32)
def _table_gather(mh, mw, device):
    """(T, maxcount) int64: for each table row, the flat (i * N + j) pairs whose relative index
    is that row, in increasing order, padded with N*N (a zero row appended to dS). Folding dS
    into the table by gather + sum keeps the reduction order fixed (deterministic)."""
    n = mh * mw
    coords = torch.stack(torch.meshgrid(torch.arange(mh), torch.arange(mw), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    index = ((rel[0] + mh - 1) * (2 * mw - 1) + (rel[1] + mw - 1)).reshape(-1)
    T = (2 * mh - 1) * (2 * mw - 1)
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=T)
    start = torch.cumsum(counts, 0) - counts
    sorted_idx = index[order]
    rank = torch.arange(n * n) - start[sorted_idx]
    gather = torch.full((T, int(counts.max())), n * n, dtype=torch.int64)
    gather[sorted_idx, rank] = order
    return gather.to(device)


def fold_bias_grad(dbias, window_size, dtype):
    """(heads, N, N) gradient of the gathered bias -> ((2Mh-1)(2Mw-1), heads) table gradient."""
    heads, n, _ = dbias.shape
    flat = dbias.reshape(heads, n * n).t()
    flat = torch.cat([flat, flat.new_zeros(1, heads)], 0)
    gather = _table_gather(window_size[0], window_size[1], str(dbias.device))
    return flat[gather].sum(1).to(dtype)


def backward(grad_out, qkv, table, mask, out, lse, num_heads, window_size, shift_size, valid_size, scale,
             block_m=None, num_partials=None):
    """-> grad_qkv (B, Hp, Wp, 3C) in qkv's dtype, grad_table (table's shape and dtype)."""
    g = _geometry(qkv, num_heads, window_size, shift_size, valid_size)
    windows = g["B"] * g["nWh"] * g["nWw"]
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    stat = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    if windows == 0 or g["C"] == 0:
        return dqkv.zero_(), torch.zeros_like(table)
    bm, bn, bd, options = _blocks(qkv.device, qkv.dtype, g["N"], g["D"], True, block_m)
    parts = _num_partials(qkv.device, windows, num_heads, num_partials)
    per = triton.cdiv(windows, parts)
    parts = triton.cdiv(windows, per)
    n = g["N"]
    one_block = bm >= n
    alloc = torch.empty if one_block else torch.zeros  # multi-block programs accumulate into theirs
    dbias = alloc((parts, num_heads, n, n), dtype=stat, device=qkv.device)
    m, nmask, smw, smi, smj = _mask_args(mask, table)
    _swin_bwd_kernel[(parts, num_heads)](
        qkv, table, m, out, grad_out, lse, dqkv, dbias,
        g["H"], g["W"], g["Hp"], g["Wp"], g["nWw"], g["nWh"] * g["nWw"], nmask, g["C"], g["D"], num_heads,
        windows, per,
        *qkv.stride(), table.stride(0), table.stride(1), smw, smi, smj, *out.stride(),
        *grad_out.stride(), *dqkv.stride(),
        g["sh"], g["sw"], float(scale),
        MH=g["MH"], MW=g["MW"], SHIFTED=bool(g["sh"] or g["sw"]), HAS_MASK=mask is not None,
        IDX=_index_type(qkv, out, grad_out, dqkv, lse, dbias), ACC=acc_dtype(qkv.dtype),
        PRECISION=_precision(qkv), UPCAST=_upcast(qkv),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, **options)
    grad_table = fold_bias_grad(dbias.sum(0), window_size, table.dtype)
    return dqkv, grad_table
