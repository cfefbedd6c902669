"""Flash attention in Triton (the FlashAttention-2 algorithm): a tiled online-softmax forward
that keeps only the per-row logsumexp, and a backward that recomputes the probabilities block
by block (one kernel over key blocks for dK/dV, one over query blocks for dQ: no N x N matrix
in memory and no atomics, so gradients are deterministic).

Tensors (any strides: the (B, N, H, D) layout is the transposed view, nothing is copied):
    q (B, H, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv); H a multiple of Hkv (GQA/MQA:
    query head h reads key/value head h // (H // Hkv));
    bias: None, or a float (additive) / bool (True = attend) tensor already broadcast to
    (B, H, Nq, Nk) by strides (0 for broadcast dimensions);
    causal: key j is visible from query i when j <= i + causal_offset (0: top-left aligned as
    SDPA's is_causal; Nk - Nq: bottom-right aligned as flash-attn);
    dropout: keep with probability 1 - p, from Philox keyed by (seed + b*H + h) and offset
    i*Nk + j, so the backward regenerates the forward's mask exactly.
Scores are kept in log2 units (s * log2(e)) so the softmax uses exp2. A row with no visible key
gives output 0 and logsumexp +inf (its probabilities are 0 in the backward), as SDPA does.
"""
import torch
import triton
import triton.language as tl

from ._common import acc_dtype, dot, interpreted, next_pow2, upcast_dot

LOG2E = 1.4426950408889634
BIAS_NONE, BIAS_FLOAT, BIAS_BOOL = 0, 1, 2
MAX_HEAD_DIM = 256


@triton.jit
def _load_block(ptr, b, h, sb, sh, rows, sr, cols, sc, n_rows, n_cols):
    """The (rows, cols) block of head (b, h) of a strided 4-D tensor, zeros outside (n_rows, n_cols)."""
    return tl.load(ptr + b.to(tl.int64) * sb + h.to(tl.int64) * sh + rows[:, None] * sr + cols[None, :] * sc,
                   mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _store_block(ptr, value, b, h, sb, sh, rows, sr, cols, sc, n_rows, n_cols):
    tl.store(ptr + b.to(tl.int64) * sb + h.to(tl.int64) * sh + rows[:, None] * sr + cols[None, :] * sc,
             value.to(ptr.dtype.element_ty), mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))


@triton.jit
def _masked_scores(s, rows, cols, b, h, Bias, Seed, sbb, sbh, sbm, sbn, N_Q, N_K, causal_offset, dropout_p,
                   BIAS: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr):
    """Scores s (log2 units) of the (rows, cols) block with bias and masks applied, and the dropout
    keep mask. rows / cols are broadcastable 2-D index blocks (either orientation)."""
    inside = (rows < N_Q) & (cols < N_K)
    visible = inside
    if CAUSAL:
        visible = visible & (cols <= rows + causal_offset)
    if BIAS != 0:
        bias_ptrs = Bias + b.to(tl.int64) * sbb + h.to(tl.int64) * sbh + rows * sbm + cols * sbn
        if BIAS == 1:
            s += tl.load(bias_ptrs, mask=inside, other=0.0).to(ACC) * 1.4426950408889634
        else:
            visible = visible & (tl.load(bias_ptrs, mask=inside, other=0) != 0)
    s = tl.where(visible, s, float("-inf"))
    keep = visible
    if DROPOUT:
        seed = tl.load(Seed) + b.to(tl.int64) * 65537 + h
        keep = tl.rand(seed, rows * N_K + cols) >= dropout_p
    return s, keep


@triton.jit
def _flash_fwd_kernel(Q, K, V, Bias, Seed, O, LSE,
                sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                sbb, sbh, sbm, sbn, sob, soh, som, sod,
                H, H_KV, N_Q, N_K, D, DV, qk_scale, causal_offset, dropout_p,
                BIAS: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // (H // H_KV)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_block(Q, b, h, sqb, sqh, rows, sqm, offs_d, sqd, N_Q, D)

    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], ACC)
    hi = N_K
    if CAUSAL:
        hi = tl.maximum(tl.minimum(N_K, (pid_m + 1) * BLOCK_M + causal_offset), 0)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kt = _load_block(K, b, hk, skb, skh, offs_d, skd, cols, skn, D, N_K)
        s = dot(q, kt, PRECISION, ACC, UPCAST) * qk_scale
        s, keep = _masked_scores(s, rows[:, None], cols[None, :], b, h, Bias, Seed, sbb, sbh, sbm, sbn, N_Q, N_K,
                                 causal_offset, dropout_p, BIAS, CAUSAL, DROPOUT, ACC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: keep exp2 finite
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
        v = _load_block(V, b, hk, svb, svh, cols, svn, offs_dv, svd, N_K, DV)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, PRECISION, ACC, UPCAST)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    _store_block(O, out, b, h, sob, soh, rows, som, offs_dv, sod, N_Q, DV)
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + bh.to(tl.int64) * N_Q + rows, lse, mask=rows < N_Q)


@triton.jit
def _flash_bwd_delta_kernel(O, DO, Delta, sob, soh, som, sod, sdb, sdh, sdm, sdd, H, N_Q, DV, ACC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    """delta[b, h, i] = sum_d o * do: the row term of softmax's backward."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    o = _load_block(O, b, h, sob, soh, rows, som, offs_dv, sod, N_Q, DV).to(ACC)
    do = _load_block(DO, b, h, sdb, sdh, rows, sdm, offs_dv, sdd, N_Q, DV).to(ACC)
    tl.store(Delta + bh.to(tl.int64) * N_Q + rows, tl.sum(o * do, 1), mask=rows < N_Q)


@triton.jit
def _flash_bwd_kv_kernel(Q, K, V, Bias, Seed, DO, LSE, Delta, DK, DV_,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                   sbb, sbh, sbm, sbn, sdb, sdh, sdm, sdd,
                   sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
                   H, H_KV, N_Q, N_K, D, DV, qk_scale, sm_scale, causal_offset, dropout_p,
                   BIAS: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                   PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dK, dV of one block of keys of one key/value head, summed over the query heads that
    share it (GQA) and over all query blocks that see it. Works on transposed blocks (keys as
    rows): sT = k q^T, so dV = pT do and dK = dsT q need no transposes of p."""
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // H_KV
    hk = bhk % H_KV
    group = H // H_KV
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _load_block(K, b, hk, skb, skh, cols, skn, offs_d, skd, N_K, D)
    v = _load_block(V, b, hk, svb, svh, cols, svn, offs_dv, svd, N_K, DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], ACC)
    lo = 0
    if CAUSAL:  # query blocks entirely before this key block's first visible row are skipped
        lo = tl.maximum(pid_n * BLOCK_N - causal_offset, 0) // BLOCK_M * BLOCK_M
    for g in range(0, group):
        h = hk * group + g
        row_base = (b * H + h).to(tl.int64) * N_Q
        for start_m in range(lo, N_Q, BLOCK_M):
            rows = start_m + offs_m
            q = _load_block(Q, b, h, sqb, sqh, rows, sqm, offs_d, sqd, N_Q, D)
            do = _load_block(DO, b, h, sdb, sdh, rows, sdm, offs_dv, sdd, N_Q, DV)
            lse = tl.load(LSE + row_base + rows, mask=rows < N_Q, other=float("inf"))
            delta = tl.load(Delta + row_base + rows, mask=rows < N_Q, other=0.0)
            st = dot(k, tl.trans(q), PRECISION, ACC, UPCAST) * qk_scale
            st, keep = _masked_scores(st, rows[None, :], cols[:, None], b, h, Bias, Seed, sbb, sbh, sbm, sbn,
                                      N_Q, N_K, causal_offset, dropout_p, BIAS, CAUSAL, DROPOUT, ACC)
            pt = tl.exp2(st - lse[None, :])
            dpt = dot(v, tl.trans(do), PRECISION, ACC, UPCAST)
            if DROPOUT:
                pt_kept = tl.where(keep, pt / (1.0 - dropout_p), 0.0)
                dv += dot(pt_kept.to(do.dtype), do, PRECISION, ACC, UPCAST)
                dpt = tl.where(keep, dpt / (1.0 - dropout_p), 0.0)
            else:
                dv += dot(pt.to(do.dtype), do, PRECISION, ACC, UPCAST)
            dst = pt * (dpt - delta[None, :])
            dk += dot(dst.to(q.dtype), q, PRECISION, ACC, UPCAST)
    dk = dk * sm_scale
    _store_block(DK, dk, b, hk, sdkb, sdkh, cols, sdkn, offs_d, sdkd, N_K, D)
    _store_block(DV_, dv, b, hk, sdvb, sdvh, cols, sdvn, offs_dv, sdvd, N_K, DV)


@triton.jit
def _flash_bwd_q_kernel(Q, K, V, Bias, Seed, DO, LSE, Delta, DQ, DBias,
                  sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                  sbb, sbh, sbm, sbn, sdb, sdh, sdm, sdd, sdqb, sdqh, sdqm, sdqd,
                  H, H_KV, N_Q, N_K, D, DV, qk_scale, sm_scale, causal_offset, dropout_p,
                  BIAS: tl.constexpr, BIAS_GRAD: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                  PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dQ of one block of queries (and, with BIAS_GRAD, the score gradient of every (i, j) it
    visits, written to DBias (B, H, Nq, Nk) in ACC; blocks it skips stay zero)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // (H // H_KV)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_block(Q, b, h, sqb, sqh, rows, sqm, offs_d, sqd, N_Q, D)
    do = _load_block(DO, b, h, sdb, sdh, rows, sdm, offs_dv, sdd, N_Q, DV)
    lse = tl.load(LSE + bh.to(tl.int64) * N_Q + rows, mask=rows < N_Q, other=float("inf"))
    delta = tl.load(Delta + bh.to(tl.int64) * N_Q + rows, mask=rows < N_Q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    hi = N_K
    if CAUSAL:
        hi = tl.maximum(tl.minimum(N_K, (pid_m + 1) * BLOCK_M + causal_offset), 0)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_block(K, b, hk, skb, skh, cols, skn, offs_d, skd, N_K, D)
        vt = _load_block(V, b, hk, svb, svh, offs_dv, svd, cols, svn, DV, N_K)
        s = dot(q, tl.trans(k), PRECISION, ACC, UPCAST) * qk_scale
        s, keep = _masked_scores(s, rows[:, None], cols[None, :], b, h, Bias, Seed, sbb, sbh, sbm, sbn, N_Q, N_K,
                                 causal_offset, dropout_p, BIAS, CAUSAL, DROPOUT, ACC)
        p = tl.exp2(s - lse[:, None])
        dp = dot(do, vt, PRECISION, ACC, UPCAST)
        if DROPOUT:
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        if BIAS_GRAD:
            tl.store(DBias + bh.to(tl.int64) * N_Q * N_K + rows[:, None] * N_K + cols[None, :], ds,
                     mask=(rows[:, None] < N_Q) & (cols[None, :] < N_K))
        dq += dot(ds.to(k.dtype), k, PRECISION, ACC, UPCAST)
    dq = dq * sm_scale
    _store_block(DQ, dq, b, h, sdqb, sdqh, rows, sdqm, offs_d, sdqd, N_Q, D)


@triton.jit
def _flash_dropout_mask_kernel(Seed, Keep, H, N_Q, N_K, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keep mask (B, H, Nq, Nk) the kernels above draw for `Seed` (for tests and debugging)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    seed = tl.load(Seed) + b.to(tl.int64) * 65537 + h
    keep = tl.rand(seed, rows * N_K + cols) >= dropout_p
    tl.store(Keep + bh.to(tl.int64) * N_Q * N_K + rows * N_K + cols, keep.to(tl.int8),
             mask=(rows < N_Q) & (cols < N_K))


# ----------------------------------------------------------------------------- launchers

def empty_like_layout(like, last):
    """An empty tensor shaped like `like` with its last dim `last`, whose dims are ordered in
    memory as `like`'s (a (B, N, H, D)-layout input gives a (B, N, H, D)-layout output)."""
    shape = (*like.shape[:-1], last)
    order = sorted(range(like.dim() - 1), key=lambda d: (-like.stride(d), d))  # outermost first
    out = torch.empty([shape[d] for d in order] + [last], dtype=like.dtype, device=like.device)
    inverse = [0] * (like.dim() - 1)
    for pos, d in enumerate(order):
        inverse[d] = pos
    return out.permute(*inverse, like.dim() - 1)


def _precision(t):
    if t.dtype == torch.float32 and not interpreted(t.device) and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"  # what torch's matmul (SDPA's math backend) does for fp32 under this flag
    return "ieee"


def _stat_dtype(q):
    """dtype of the row statistics (logsumexp, delta) and of the score gradient."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _head_block(d):
    return max(16, next_pow2(d))


def _fwd_config(device, n_q, n_k, d, dtype, masked):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). On the GPU: 128-row query tiles over 8 warps
    (q, the fp32 accumulator and one score tile fit the registers without spills at D <= 128,
    by the sm_90 compile report, scripts/triton_compile_report.py); a bias / mask / dropout tile
    costs registers too, and fp32 without TF32 runs on the FMA units: both take smaller tiles."""
    if interpreted(device):  # cost per program and per op: few big tiles
        return max(16, min(128, next_pow2(n_q))), max(16, min(128, next_pow2(n_k))), 1, 1
    if dtype == torch.float32:
        return 32, 32, 4, 2
    if d <= 64:
        return 128, 64, 8, 3
    if d <= 128:
        return (64, 32, 8, 2) if masked else (128, 64, 8, 2)
    return 64, 32, 8, 2


def _bwd_config(device, n_q, n_k, d, dtype, masked):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of both backward kernels."""
    if interpreted(device):
        return max(16, min(128, next_pow2(n_q))), max(16, min(128, next_pow2(n_k))), 1, 1
    if dtype == torch.float32:
        return 32, 32, 4, 1
    if d <= 64:
        return 64, 64, 8, 2
    if d <= 128:
        return (32, 32, 8, 2) if masked else (32, 64, 8, 2)
    return 32, 32, 8, 1


def _bias_args(bias):
    if bias is None:
        return BIAS_NONE, None, (0, 0, 0, 0)
    kind = BIAS_BOOL if bias.dtype == torch.bool else BIAS_FLOAT
    return kind, bias, tuple(bias.stride())


def forward(q, k, v, bias, seed, scale, causal, causal_offset, dropout_p):
    """(out (B, H, Nq, Dv) in q's layout, lse (B, H, Nq) float32 (float64 for float64 inputs) in log2 units)."""
    B, H, N_Q, D = q.shape
    H_KV, N_K, DV = k.shape[1], k.shape[2], v.shape[3]
    out = empty_like_layout(q, DV)
    lse = torch.empty((B, H, N_Q), dtype=_stat_dtype(q), device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("inf"))
    bm, bn, warps, stages = _fwd_config(q.device, N_Q, N_K, max(D, DV), q.dtype, bias is not None or dropout_p > 0)
    kind, bias_t, sb = _bias_args(bias)
    grid = (triton.cdiv(N_Q, bm), B * H)
    _flash_fwd_kernel[grid](
        q, k, v, bias_t if bias_t is not None else q, seed if seed is not None else lse, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *sb, *out.stride(),
        H, H_KV, N_Q, N_K, D, DV, scale * LOG2E, causal_offset, dropout_p,
        BIAS=kind, CAUSAL=causal, DROPOUT=dropout_p > 0, PRECISION=_precision(q), UPCAST=upcast_dot(q),
        ACC=acc_dtype(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_head_block(D), BLOCK_DV=_head_block(DV), num_warps=warps, num_stages=stages)
    return out, lse


def backward(grad_out, q, k, v, out, lse, bias, seed, scale, causal, causal_offset, dropout_p, bias_grad):
    """(dq, dk, dv in the layouts of q, k, v; dbias (B, H, Nq, Nk) float32 if bias_grad else None)."""
    B, H, N_Q, D = q.shape
    H_KV, N_K, DV = k.shape[1], k.shape[2], v.shape[3]
    dq, dk, dv = empty_like_layout(q, D), empty_like_layout(k, D), empty_like_layout(v, DV)
    dbias = torch.zeros((B, H, N_Q, N_K), dtype=_stat_dtype(q), device=q.device) if bias_grad else None
    if dk.numel():
        dk.zero_(), dv.zero_()
    if dq.numel() == 0:
        return dq, dk, dv, dbias
    if N_K == 0:
        return dq.zero_(), dk, dv, dbias
    bm, bn, warps, stages = _bwd_config(q.device, N_Q, N_K, max(D, DV), q.dtype, bias is not None or dropout_p > 0)
    delta = torch.empty((B, H, N_Q), dtype=_stat_dtype(q), device=q.device)
    _flash_bwd_delta_kernel[(triton.cdiv(N_Q, bm), B * H)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), H, N_Q, DV, acc_dtype(q.dtype),
        BLOCK_M=bm, BLOCK_DV=_head_block(DV), num_warps=warps)
    kind, bias_t, sb = _bias_args(bias)
    common = dict(BIAS=kind, CAUSAL=causal, DROPOUT=dropout_p > 0, PRECISION=_precision(q), UPCAST=upcast_dot(q),
                  ACC=acc_dtype(q.dtype),
                  BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_head_block(D), BLOCK_DV=_head_block(DV),
                  num_warps=warps, num_stages=stages)
    bias_arg = bias_t if bias_t is not None else q
    seed_arg = seed if seed is not None else lse
    sizes = (H, H_KV, N_Q, N_K, D, DV, scale * LOG2E, scale, causal_offset, dropout_p)
    _flash_bwd_kv_kernel[(triton.cdiv(N_K, bn), B * H_KV)](
        q, k, v, bias_arg, seed_arg, grad_out, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *sb, *grad_out.stride(), *dk.stride(), *dv.stride(),
        *sizes, **common)
    _flash_bwd_q_kernel[(triton.cdiv(N_Q, bm), B * H)](
        q, k, v, bias_arg, seed_arg, grad_out, lse, delta, dq, dbias if dbias is not None else delta,
        *q.stride(), *k.stride(), *v.stride(), *sb, *grad_out.stride(), *dq.stride(),
        *sizes, BIAS_GRAD=bias_grad, **common)
    return dq, dk, dv, dbias


def dropout_keep_mask(seed, shape, dropout_p, device):
    """The (B, H, Nq, Nk) bool keep mask the kernels draw for `seed` (an int64 tensor of one element)."""
    B, H, N_Q, N_K = shape
    keep = torch.empty(shape, dtype=torch.int8, device=device)
    if keep.numel():
        bm = bn = 64
        _flash_dropout_mask_kernel[(triton.cdiv(N_Q, bm), triton.cdiv(N_K, bn), B * H)](
            seed, keep, H, N_Q, N_K, dropout_p, BLOCK_M=bm, BLOCK_N=bn)
    return keep.bool()
