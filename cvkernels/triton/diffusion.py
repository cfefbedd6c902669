"""Fused diffusion sampler steps in Triton: one pass over the latents per step.

Every sampler cvkernels implements (DDPM, DDIM, Euler ancestral, DPM-Solver++ 1S/2M, their SDE
variants) is, per sample b and element i, the same affine form once its per-sample
coefficients are known (cvkernels/ops/diffusion.py builds them, in float64, from the schedule):

    m    = m_uncond + g * (m_cond - m_uncond)          classifier-free guidance (HAS_COND)
    x0   = p_x * x + p_m * m                           prediction -> data (epsilon/sample/v)
    x0c  = clamp(x0, -r, r)                            (CLIP)
         | clamp(x0, -s_b, s_b) / s_b                  (THRESH: s_b per-sample quantile, phase 1)
    prev = c_x * x + c_m * m + c_0 * x0c + c_h * h + std * z

h is the DPM-Solver history (the previous step's x0); z is a caller-provided noise tensor
(NOISE_GIVEN) or standard normal noise from Philox keyed by (seed, offset + b*N + i) (NOISE_PHILOX;
with RNG_TENSOR the seed and a base offset are read from a device int64 pair, so a captured CUDA
graph replays with whatever seed was written there).
DDPM's learned variances make std elementwise (VAR_MODE): learned std = sqrt(v), learned_range
std = exp(0.5 * (f * max_log + (1 - f) * min_log)), f = (v + 1) / 2, times the row's noise flag.

The coefficient row of sample b (fp32, COEF_K entries, row stride 0 when every sample shares a
timestep):  0 p_x, 1 p_m, 2 c_x, 3 c_m, 4 c_0, 5 c_h, 6 std (or the noise flag for learned
variances), 7 min_log, 8 max_log.

All arithmetic is fp32 whatever the storage dtype (fp16/bf16/fp32). Tensors are 2-D (B, N)
views with a row stride and unit inner stride; offsets are 64-bit. Grid: (cdiv(N, BLOCK), B).
Dynamic thresholding takes two phases: _x0_abs_kernel writes |x0| (fp32), the launcher takes the
per-sample quantile, then _step_kernel applies it.
"""
import torch
import triton
import triton.language as tl

from ._common import interpreted

COEF_K = 9
VAR_FIXED, VAR_LEARNED, VAR_LEARNED_RANGE = 0, 1, 2
NOISE_NONE, NOISE_GIVEN, NOISE_PHILOX = 0, 1, 2


@triton.jit
def _model_output(mu_ptr, mc_ptr, b, offs, mask, s_mu, s_mc, g, HAS_COND: tl.constexpr):
    m = tl.load(mu_ptr + b * s_mu + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_COND:
        mc = tl.load(mc_ptr + b * s_mc + offs, mask=mask, other=0.0).to(tl.float32)
        m = m + g * (mc - m)
    return m


@triton.jit
def _x0_abs_kernel(x_ptr, mu_ptr, mc_ptr, coef_ptr, out_ptr, N, s_x, s_mu, s_mc, s_coef, g,
                   HAS_COND: tl.constexpr, BLOCK: tl.constexpr):
    """Phase 1 of dynamic thresholding: |x0| of every element, fp32, (B, N) contiguous."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < N
    crow = coef_ptr + b * s_coef
    p_x = tl.load(crow + 0)
    p_m = tl.load(crow + 1)
    x = tl.load(x_ptr + b * s_x + offs, mask=mask, other=0.0).to(tl.float32)
    m = _model_output(mu_ptr, mc_ptr, b, offs, mask, s_mu, s_mc, g, HAS_COND)
    x0 = p_x * x + p_m * m
    tl.store(out_ptr + b * N + offs, tl.abs(x0), mask=mask)


@triton.jit
def _step_kernel(x_ptr, mu_ptr, mc_ptr, pv_ptr, h_ptr, z_ptr, coef_ptr, thr_ptr, prev_ptr, x0_ptr, rng_ptr,
                 N, s_x, s_mu, s_mc, s_pv, s_h, s_z, s_coef, s_prev, s_x0,
                 g, clip_range, seed, offset,
                 HAS_COND: tl.constexpr, CLIP: tl.constexpr, THRESH: tl.constexpr,
                 HAS_HIST: tl.constexpr, VAR_MODE: tl.constexpr, NOISE: tl.constexpr,
                 USE_CM: tl.constexpr, WRITE_X0: tl.constexpr, RNG_TENSOR: tl.constexpr,
                 BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < N
    crow = coef_ptr + b * s_coef
    p_x = tl.load(crow + 0)
    p_m = tl.load(crow + 1)
    c_x = tl.load(crow + 2)
    c_m = tl.load(crow + 3)
    c_0 = tl.load(crow + 4)
    std = tl.load(crow + 6)

    x = tl.load(x_ptr + b * s_x + offs, mask=mask, other=0.0).to(tl.float32)
    m = _model_output(mu_ptr, mc_ptr, b, offs, mask, s_mu, s_mc, g, HAS_COND)
    x0 = p_x * x + p_m * m
    if THRESH:
        s = tl.load(thr_ptr + b)
        x0 = tl.minimum(tl.maximum(x0, -s), s) / s
    elif CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip_range), clip_range)
    prev = c_x * x + c_0 * x0
    if USE_CM:
        prev += c_m * m
    if HAS_HIST:
        c_h = tl.load(crow + 5)
        hist = tl.load(h_ptr + b * s_h + offs, mask=mask, other=0.0).to(tl.float32)
        prev += c_h * hist
    if NOISE != 0:
        if VAR_MODE == 1:  # learned: the model predicts the variance itself (diffusers' convention)
            v = tl.load(pv_ptr + b * s_pv + offs, mask=mask, other=1.0).to(tl.float32)
            std_e = tl.sqrt(v) * std
        elif VAR_MODE == 2:  # learned_range: interpolation in log space between beta~_t and beta_t
            v = tl.load(pv_ptr + b * s_pv + offs, mask=mask, other=0.0).to(tl.float32)
            min_log = tl.load(crow + 7)
            max_log = tl.load(crow + 8)
            frac = (v + 1.0) * 0.5
            std_e = tl.exp(0.5 * (frac * max_log + (1.0 - frac) * min_log)) * std
        else:
            std_e = std
        if NOISE == 1:
            z = tl.load(z_ptr + b * s_z + offs, mask=mask, other=0.0).to(tl.float32)
        elif RNG_TENSOR:  # (seed, base offset) read from device memory: a CUDA graph replays fresh noise
            z = tl.randn(tl.load(rng_ptr), tl.load(rng_ptr + 1) + offset + b * N + offs)
        else:
            z = tl.randn(seed, offset + b * N + offs)
        # skip the product where std is 0 (t = 0): keeps an inf/nan-free result even if z is not
        prev += tl.where(std_e != 0.0, std_e * z, 0.0)
    tl.store(prev_ptr + b * s_prev + offs, prev.to(prev_ptr.dtype.element_ty), mask=mask)
    if WRITE_X0:
        tl.store(x0_ptr + b * s_x0 + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers

def _block(N, device):
    if interpreted(device):  # few, big programs under the interpreter
        return max(16, min(triton.next_power_of_2(max(N, 1)), 1 << 14))
    return 1024


def as_rows(t, B):
    """t as a (B, N) view with unit inner stride (a contiguous copy when its strides do not allow)."""
    v = t.reshape(B, -1)
    if v.shape[1] > 1 and v.stride(1) != 1:
        v = v.contiguous()
    return v


def _row_stride(v):
    return v.stride(0) if v.shape[0] > 1 else 0


def x0_abs(sample, model_output, cond_model_output, coefs, guidance_scale):
    """|x0| per element, float32 (B, N)."""
    B = sample.shape[0]
    N = 1
    for d in sample.shape[1:]:
        N *= d
    out = torch.empty((B, N), dtype=torch.float32, device=sample.device)
    if B == 0 or N == 0:
        return out
    x = as_rows(sample, B)
    mu = as_rows(model_output, B)
    mc = as_rows(cond_model_output, B) if cond_model_output is not None else mu
    BLOCK = _block(N, sample.device)
    _x0_abs_kernel[(triton.cdiv(N, BLOCK), B)](
        x, mu, mc, coefs, out, N, _row_stride(x), _row_stride(mu), _row_stride(mc), coefs.stride(0),
        float(guidance_scale), HAS_COND=cond_model_output is not None, BLOCK=BLOCK)
    return out


def step(sample, model_output, cond_model_output, predicted_variance, history, noise, coefs, thresh,
         guidance_scale, clip, clip_range, var_mode, noise_mode, seed, offset, write_x0, use_cm=True, rng=None):
    """Launches _step_kernel; returns (prev_sample, pred_original_sample or an empty tensor), both
    contiguous with sample's shape and dtype."""
    B = sample.shape[0]
    prev = torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
    x0 = torch.empty(sample.shape if write_x0 else (0,), dtype=sample.dtype, device=sample.device)
    if sample.numel() == 0:
        return prev, x0
    x = as_rows(sample, B)
    N = x.shape[1]
    mu = as_rows(model_output, B)
    mc = as_rows(cond_model_output, B) if cond_model_output is not None else mu
    pv = as_rows(predicted_variance, B) if predicted_variance is not None else mu
    h = as_rows(history, B) if history is not None else mu
    z = as_rows(noise, B) if noise is not None else mu
    prev_v = prev.view(B, N)
    x0_v = x0.view(B, N) if write_x0 else prev_v
    thr = thresh if thresh is not None else coefs
    BLOCK = _block(N, sample.device)
    _step_kernel[(triton.cdiv(N, BLOCK), B)](
        x, mu, mc, pv, h, z, coefs, thr, prev_v, x0_v, rng if rng is not None else coefs,
        N, _row_stride(x), _row_stride(mu), _row_stride(mc), _row_stride(pv), _row_stride(h),
        _row_stride(z), coefs.stride(0), prev_v.stride(0), x0_v.stride(0),
        float(guidance_scale), float(clip_range), int(seed), int(offset),
        HAS_COND=cond_model_output is not None, CLIP=bool(clip), THRESH=thresh is not None,
        HAS_HIST=history is not None, VAR_MODE=int(var_mode), NOISE=int(noise_mode),
        USE_CM=bool(use_cm), WRITE_X0=bool(write_x0), RNG_TENSOR=rng is not None, BLOCK=BLOCK)
    return prev, x0
