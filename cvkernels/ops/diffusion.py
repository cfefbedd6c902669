"""Fused diffusion sampler steps: registered ops, the torch composite path, and the functional API.

Registered ops (Triton, cvkernels/triton/diffusion.py), inference only (no autograd formula:
inputs that require grad, under grad mode, take the differentiable torch path instead):
  cvkernels::triton_diffusion_step     (prev_sample, pred_original_sample) in one pass
  cvkernels::triton_diffusion_x0_abs   |x0| per element, phase 1 of dynamic thresholding

Every sampler reduces to one per-sample coefficient row (see the Triton module's docstring);
the builders below compute the rows in float64 from the schedule quantities and store them as
float32. The functional API (ddpm_step, ddim_step, euler_ancestral_step, dpmpp_step) takes
scalars or per-sample (B,) tensors for the schedule quantities, so a batch whose samples sit at
different timesteps is one launch. cvkernels.diffusion's schedulers build the rows once per
set_timesteps and pass views of a device table (no host-device traffic per step).

Noise: a caller-provided tensor (exact parity with any other implementation that uses the same
noise), or standard normal Philox noise keyed by (seed, offset + b * N + i), drawn in-kernel;
the torch path reproduces Triton's Philox-4x32-10 + Box-Muller bit for bit in the integer part
(the float transform agrees to an ulp), so both backends give the same noise for the same seed.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _dispatch

FAMILY = "diffusion"
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
COEF_K = 9
VAR_FIXED, VAR_LEARNED, VAR_LEARNED_RANGE = 0, 1, 2
NOISE_NONE, NOISE_GIVEN, NOISE_PHILOX = 0, 1, 2


def _kernels():
    from ..triton import diffusion
    return diffusion


# ----------------------------------------------------------------------------- registered ops

@torch.library.custom_op("cvkernels::triton_diffusion_step", mutates_args=())
def _triton_step(sample: Tensor, model_output: Tensor, cond_model_output: Optional[Tensor],
                 predicted_variance: Optional[Tensor], history: Optional[Tensor], noise: Optional[Tensor],
                 coefs: Tensor, thresh: Optional[Tensor], guidance_scale: float, clip: bool, clip_range: float,
                 var_mode: int, noise_mode: int, seed: int, offset: int, write_x0: bool,
                 use_cm: bool, rng: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    return _kernels().step(sample, model_output, cond_model_output, predicted_variance, history, noise, coefs,
                           thresh, guidance_scale, clip, clip_range, var_mode, noise_mode, seed, offset, write_x0,
                           use_cm, rng)


@torch.library.register_fake("cvkernels::triton_diffusion_step")
def _fake_step(sample, model_output, cond_model_output, predicted_variance, history, noise, coefs, thresh,
               guidance_scale, clip, clip_range, var_mode, noise_mode, seed, offset, write_x0, use_cm, rng=None):
    prev = torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
    x0 = torch.empty(sample.shape if write_x0 else (0,), dtype=sample.dtype, device=sample.device)
    return prev, x0


@torch.library.custom_op("cvkernels::triton_diffusion_x0_abs", mutates_args=())
def _triton_x0_abs(sample: Tensor, model_output: Tensor, cond_model_output: Optional[Tensor], coefs: Tensor,
                   guidance_scale: float) -> Tensor:
    return _kernels().x0_abs(sample, model_output, cond_model_output, coefs, guidance_scale)


@torch.library.register_fake("cvkernels::triton_diffusion_x0_abs")
def _fake_x0_abs(sample, model_output, cond_model_output, coefs, guidance_scale):
    n = 1
    for d in sample.shape[1:]:
        n *= d
    return sample.new_empty((sample.shape[0], n), dtype=torch.float32)


# ----------------------------------------------------------------------------- Philox noise (torch)

_M32 = 0xFFFFFFFF


def _umul32(a, b):
    """(hi, lo) 32-bit words of a * b for uint32 values held in int64 tensors (no overflow)."""
    t = a * (b & 0xFFFF)
    u = a * (b >> 16) + (t >> 16)
    return u >> 16, ((u & 0xFFFF) << 16) | (t & 0xFFFF)


def philox_randn(seed: int, offsets: Tensor) -> Tensor:
    """Standard normal float32 noise equal to Triton's ``tl.randn(seed, offsets)`` (Philox-4x32,
    10 rounds, counters (offset lo, offset hi, 0, 0), key = seed; Box-Muller on the first two
    words). ``offsets``: an int64 tensor."""
    seed = int(seed) & ((1 << 64) - 1)
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    off = offsets.to(torch.int64)
    c0 = off & _M32
    c1 = (off >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _umul32(c2, torch.full_like(c2, 0xCD9E8D57))
        hi_a, lo_a = _umul32(c0, torch.full_like(c0, 0xD2511F53))
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + 0x9E3779B9) & _M32
        k1 = (k1 + 0xBB67AE85) & _M32

    def uniform(x):
        x = torch.where(x >= (1 << 31), x - (1 << 32), x)  # bitcast to int32
        x = torch.where(x < 0, -x - 1, x)
        return x.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)

    u1 = torch.clamp_min(uniform(c0), 1.0e-7)
    th = torch.tensor(6.283185307179586, dtype=torch.float32) * uniform(c1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(th)


# ----------------------------------------------------------------------------- torch path

def _torch_step(sample, model_output, cond_model_output, predicted_variance, history, noise, coefs, thresh,
                guidance_scale, clip, clip_range, var_mode, noise_mode, seed, offset, write_x0, use_cm=True, rng=None):
    """The kernel's contract on torch ops (differentiable; fp64 inputs compute in fp64)."""
    if rng is not None and noise_mode == NOISE_PHILOX:
        seed, base = (int(v) for v in rng.tolist())
        offset = base + int(offset)
    B = sample.shape[0]
    acc = torch.float64 if sample.dtype == torch.float64 else torch.float32
    shape = (B,) + (1,) * (sample.dim() - 1)
    c = coefs.to(acc)

    def col(i):
        return c[:, i].reshape(shape)

    x = sample.to(acc)
    m = model_output.to(acc)
    if cond_model_output is not None:
        m = m + guidance_scale * (cond_model_output.to(acc) - m)
    x0 = col(0) * x + col(1) * m
    if thresh is not None:
        s = thresh.to(acc).reshape(shape)
        x0 = torch.minimum(torch.maximum(x0, -s), s) / s
    elif clip:
        x0 = x0.clamp(-clip_range, clip_range)
    prev = col(2) * x + col(4) * x0
    if use_cm:
        prev = prev + col(3) * m
    if history is not None:
        prev = prev + col(5) * history.to(acc)
    if noise_mode != NOISE_NONE:
        std = col(6)
        if var_mode == VAR_LEARNED:
            std = torch.sqrt(predicted_variance.to(acc)) * std
        elif var_mode == VAR_LEARNED_RANGE:
            frac = (predicted_variance.to(acc) + 1.0) * 0.5
            std = torch.exp(0.5 * (frac * col(8) + (1.0 - frac) * col(7))) * std
        if noise_mode == NOISE_GIVEN:
            z = noise.to(acc)
        else:
            n = sample[0].numel() if B else 0
            idx = torch.arange(B * n, device=sample.device, dtype=torch.int64) + int(offset)
            z = philox_randn(seed, idx).reshape(sample.shape).to(acc)
        prev = prev + torch.where(std != 0, std * z, torch.zeros((), dtype=acc, device=sample.device))
    x0_out = x0.to(sample.dtype) if write_x0 else sample.new_empty(0)
    return prev.to(sample.dtype), x0_out


def _torch_x0_abs(sample, model_output, cond_model_output, coefs, guidance_scale):
    B = sample.shape[0]
    acc = torch.float64 if sample.dtype == torch.float64 else torch.float32
    x = sample.reshape(B, -1).to(acc)
    m = model_output.reshape(B, -1).to(acc)
    if cond_model_output is not None:
        m = m + guidance_scale * (cond_model_output.reshape(B, -1).to(acc) - m)
    c = coefs.to(acc)
    return (c[:, 0:1] * x + c[:, 1:2] * m).abs().to(torch.float32 if acc == torch.float32 else acc)


# ----------------------------------------------------------------------------- coefficient rows

def _f64(v, device):
    if isinstance(v, Tensor):
        return v.to(device=device, dtype=torch.float64)
    return torch.tensor(float(v), dtype=torch.float64, device=device)


def _rows(*cols):
    """Stacks broadcast float64 columns into (B, COEF_K) rows (missing trailing columns = 0)."""
    cols = torch.broadcast_tensors(*cols)
    out = torch.stack(cols, dim=-1)
    if out.shape[-1] < COEF_K:
        pad = torch.zeros(out.shape[:-1] + (COEF_K - out.shape[-1],), dtype=out.dtype, device=out.device)
        out = torch.cat([out, pad], dim=-1)
    return out.reshape(-1, COEF_K)


def _x0_coefs(prediction_type, sqrt_a, sqrt_1ma, fn):
    """x0 = p_x * x + p_m * m for the three prediction types (VP parametrization)."""
    if prediction_type == "epsilon":
        return 1.0 / sqrt_a, -sqrt_1ma / sqrt_a
    if prediction_type == "sample":
        return torch.zeros_like(sqrt_a), torch.ones_like(sqrt_a)
    if prediction_type == "v_prediction":
        return sqrt_a, -sqrt_1ma
    raise ValueError(f"{fn}: unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def ddpm_coefs(alpha_prod_t, alpha_prod_t_prev, noise_on, prediction_type="epsilon", variance_type="fixed_small",
               device="cpu", fn="ddpm_step"):
    """Rows of the DDPM posterior step (Ho et al. 2020, eq. 6-7) from the cumulative alphas."""
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"{fn}: unknown variance_type {variance_type!r}; expected one of {VARIANCE_TYPES}")
    a_t, a_prev = _f64(alpha_prod_t, device), _f64(alpha_prod_t_prev, device)
    on = _f64(noise_on, device)
    beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
    cur_alpha = a_t / a_prev
    cur_beta = 1 - cur_alpha
    p_x, p_m = _x0_coefs(prediction_type, a_t.sqrt(), beta_prod_t.sqrt(), fn)
    c_0 = a_prev.sqrt() * cur_beta / beta_prod_t
    c_x = cur_alpha.sqrt() * beta_prod_prev / beta_prod_t
    variance = torch.clamp(beta_prod_prev / beta_prod_t * cur_beta, min=1e-20)
    zero = torch.zeros_like(a_t)
    min_log, max_log = zero, zero
    if variance_type in ("fixed_small", "fixed_small_log"):
        std = variance.sqrt() if variance_type == "fixed_small" else torch.exp(0.5 * torch.log(variance))
    elif variance_type in ("fixed_large", "fixed_large_log"):
        # fixed_large_log: beta_t in log space, std = exp(log(beta_t) / 2) (diffusers' step takes the square
        # root of the log itself, which is NaN; see reference.ops.diffusion)
        std = cur_beta.sqrt() if variance_type == "fixed_large" else torch.exp(0.5 * torch.log(cur_beta))
    else:
        std = torch.ones_like(a_t)
        min_log, max_log = torch.log(variance), torch.log(cur_beta)
    return _rows(p_x, p_m, c_x, zero, c_0, zero, std * on, min_log, max_log)


def ddim_coefs(alpha_prod_t, alpha_prod_t_prev, eta=0.0, prediction_type="epsilon",
               use_clipped_model_output=False, device="cpu", fn="ddim_step"):
    """Rows of the DDIM step (Song et al. 2021, eq. 12) with sigma_t = eta * sqrt(beta~_t)."""
    a_t, a_prev = _f64(alpha_prod_t, device), _f64(alpha_prod_t_prev, device)
    sa, sb, sap = a_t.sqrt(), (1 - a_t).sqrt(), a_prev.sqrt()
    p_x, p_m = _x0_coefs(prediction_type, sa, sb, fn)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = float(eta) * variance.sqrt()
    direction = (1 - a_prev - std ** 2).sqrt()
    zero = torch.zeros_like(a_t)
    if use_clipped_model_output:  # eps recomputed from the clipped x0: eps = (x - sqrt(a) x0) / sqrt(1 - a)
        c_x, c_m, c_0 = direction / sb, zero, sap - direction * sa / sb
    else:
        if prediction_type == "epsilon":
            e_x, e_m = zero, torch.ones_like(a_t)
        elif prediction_type == "sample":
            e_x, e_m = 1.0 / sb, -sa / sb
        else:
            e_x, e_m = sb, sa
        c_x, c_m, c_0 = direction * e_x, direction * e_m, sap
    std = std if float(eta) > 0 else zero
    return _rows(p_x, p_m, c_x, c_m, c_0, zero, std)


def euler_ancestral_coefs(sigma_from, sigma_to, prediction_type="epsilon", device="cpu", fn="euler_ancestral_step"):
    """Rows of the ancestral Euler step (Karras et al. 2022 / k-diffusion) in sigma space."""
    sf, st = _f64(sigma_from, device), _f64(sigma_to, device)
    sigma_up = (st ** 2 * (sf ** 2 - st ** 2) / sf ** 2).sqrt()
    sigma_down = (st ** 2 - sigma_up ** 2).sqrt()
    dt = sigma_down - sf
    if prediction_type == "epsilon":
        p_x, p_m = torch.ones_like(sf), -sf
    elif prediction_type == "v_prediction":
        p_x, p_m = 1.0 / (sf ** 2 + 1), -sf / (sf ** 2 + 1).sqrt()
    elif prediction_type == "sample":
        p_x, p_m = torch.zeros_like(sf), torch.ones_like(sf)
    else:
        raise ValueError(f"{fn}: unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    zero = torch.zeros_like(sf)
    return _rows(p_x, p_m, 1 + dt / sf, zero, -dt / sf, zero, sigma_up)


def dpmpp_coefs(sigma_s0, sigma_t, sigma_s1=None, prediction_type="epsilon", solver_type="midpoint",
                algorithm_type="dpmsolver++", device="cpu", fn="dpmpp_step"):
    """Rows of DPM-Solver++ (Lu et al. 2022): first order when sigma_s1 is None, else the 2M
    multistep update with the previous data prediction as history; sde-dpmsolver++ adds noise."""
    if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
        raise ValueError(f"{fn}: algorithm_type must be 'dpmsolver++' or 'sde-dpmsolver++', got {algorithm_type!r}")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"{fn}: solver_type must be 'midpoint' or 'heun', got {solver_type!r}")

    def alpha_sigma(s):
        alpha = 1.0 / (s ** 2 + 1).sqrt()
        return alpha, s * alpha

    s0, t = _f64(sigma_s0, device), _f64(sigma_t, device)
    alpha_s0, sig_s0 = alpha_sigma(s0)
    alpha_t, sig_t = alpha_sigma(t)
    lam_t = torch.log(alpha_t) - torch.log(sig_t)
    lam_s0 = torch.log(alpha_s0) - torch.log(sig_s0)
    h = lam_t - lam_s0
    if prediction_type == "epsilon":
        p_x, p_m = 1.0 / alpha_s0, -sig_s0 / alpha_s0
    elif prediction_type == "sample":
        p_x, p_m = torch.zeros_like(s0), torch.ones_like(s0)
    elif prediction_type == "v_prediction":
        p_x, p_m = alpha_s0, -sig_s0
    else:
        raise ValueError(f"{fn}: unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    zero = torch.zeros_like(s0)
    sde = algorithm_type == "sde-dpmsolver++"
    if sde:
        c_x = sig_t / sig_s0 * torch.exp(-h)
        a = alpha_t * (1 - torch.exp(-2.0 * h))
        std = sig_t * (1.0 - torch.exp(-2.0 * h)).sqrt()
    else:
        c_x = sig_t / sig_s0
        a = -alpha_t * (torch.exp(-h) - 1.0)
        std = zero
    c_0, c_h = a, zero
    if sigma_s1 is not None:
        s1 = _f64(sigma_s1, device)
        alpha_s1, sig_s1 = alpha_sigma(s1)
        lam_s1 = torch.log(alpha_s1) - torch.log(sig_s1)
        r0 = (lam_s0 - lam_s1) / h
        if solver_type == "midpoint":
            k = 0.5 * a
        elif sde:
            k = alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
        else:
            k = alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)
        c_0 = c_0 + k / r0
        c_h = -k / r0
    return _rows(p_x, p_m, c_x, zero, c_0, c_h, std)


# ----------------------------------------------------------------------------- launch

def _check_tensor(fn, name, t, sample, same_shape=True):
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {t.dtype}")
    if t.device != sample.device:
        raise ValueError(f"{fn}: {name} is on {t.device} but sample is on {sample.device}")
    if same_shape and t.shape != sample.shape:
        raise ValueError(f"{fn}: {name} must have sample's shape {tuple(sample.shape)}, got {tuple(t.shape)}")


def _check_step(fn, sample, model_output, cond_model_output, predicted_variance, history, noise):
    if not isinstance(sample, Tensor):
        raise TypeError(f"{fn}: sample must be a Tensor, got {type(sample).__name__}")
    if not sample.is_floating_point():
        raise TypeError(f"{fn}: sample must be a floating-point tensor, got {sample.dtype}")
    if sample.dim() < 1:
        raise ValueError(f"{fn}: sample must have a batch dimension, got a 0-d tensor")
    for name, t in (("model_output", model_output), ("cond_model_output", cond_model_output),
                    ("predicted_variance", predicted_variance), ("history", history), ("noise", noise)):
        if t is not None:
            _check_tensor(fn, name, t, sample)


def _supported(sample, *tensors):
    if sample.dtype not in _KERNEL_DTYPES:
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (sample,) + tensors):
        return False  # the kernel has no backward: the differentiable torch path runs
    return True


def _quantile_scale(abs_x0, ratio, max_value):
    """Per-sample dynamic-thresholding scale s = clamp(quantile(|x0|, ratio), 1, max_value), with
    torch.quantile's linear interpolation, from a top-k selection (no full sort)."""
    B, N = abs_x0.shape
    pos = float(ratio) * (N - 1)
    lo = int(math.floor(pos))
    frac = pos - lo
    k = N - lo
    top = abs_x0.topk(k, dim=1, sorted=True).values
    v_lo = top[:, k - 1]
    v_hi = top[:, k - 2] if k >= 2 else v_lo
    s = torch.lerp(v_lo, v_hi, frac) if frac else v_lo
    return torch.clamp(s, min=1.0, max=float(max_value)).to(torch.float32)


def launch(fn, sample, model_output, coefs, *, cond_model_output=None, guidance_scale=1.0, predicted_variance=None,
           history=None, noise=None, seed=None, offset=0, clip=False, clip_range=1.0, thresholding=False,
           ratio=0.995, max_value=1.0, var_mode=VAR_FIXED, add_noise=True, write_x0=True, use_cm=True,
           rng=None, backend=None):
    """Runs one fused step with precomputed coefficient rows ``coefs`` ((B, COEF_K) or (1, COEF_K)
    float32 on sample's device). Returns (prev_sample, pred_original_sample or None).
    rng: None, or an int64 tensor (seed, base offset) on sample's device read by the kernel (the
    noise offset is then base + offset): what a CUDA-graph-captured loop uses."""
    if rng is not None and (not isinstance(rng, Tensor) or rng.dtype != torch.int64 or rng.numel() != 2
                            or rng.device != sample.device):
        raise ValueError(f"{fn}: rng must be an int64 tensor of 2 elements (seed, offset) on sample's device")
    _check_step(fn, sample, model_output, cond_model_output, predicted_variance, history, noise)
    B = sample.shape[0]
    if coefs.dim() != 2 or coefs.shape[1] != COEF_K or coefs.shape[0] not in (1, B):
        raise ValueError(f"{fn}: coefficient rows must have shape (1 or {B}, {COEF_K}), got {tuple(coefs.shape)}")
    coefs = coefs.to(device=sample.device, dtype=torch.float32)
    if coefs.shape[0] != B:
        coefs = coefs.expand(B, COEF_K)
    if var_mode != VAR_FIXED and predicted_variance is None and add_noise:
        raise ValueError(f"{fn}: the learned variance types need predicted_variance")
    if not add_noise:
        noise_mode = NOISE_NONE
    elif noise is not None:
        noise_mode = NOISE_GIVEN
    else:
        noise_mode = NOISE_PHILOX
        if seed is None and rng is None:
            seed = int(torch.randint(0, 2 ** 62, (), dtype=torch.int64).item())
    seed = int(seed or 0)
    name = _dispatch.choose(FAMILY, sample.device.type, backend,
                            supported=_supported(sample, model_output, cond_model_output, predicted_variance,
                                                 history, noise))
    thresh = None
    if thresholding:
        if name == "torch":
            abs_x0 = _torch_x0_abs(sample, model_output, cond_model_output, coefs, float(guidance_scale))
        else:
            abs_x0 = torch.ops.cvkernels.triton_diffusion_x0_abs(sample, model_output, cond_model_output, coefs,
                                                                 float(guidance_scale))
        thresh = _quantile_scale(abs_x0, ratio, max_value) if abs_x0.numel() else None
    args = (sample, model_output, cond_model_output, predicted_variance if noise_mode else None, history,
            noise if noise_mode == NOISE_GIVEN else None, coefs, thresh, float(guidance_scale), bool(clip),
            float(clip_range), int(var_mode) if noise_mode else VAR_FIXED, int(noise_mode), seed, int(offset),
            bool(write_x0), bool(use_cm), rng.contiguous() if rng is not None and noise_mode == NOISE_PHILOX else None)
    if name == "torch":
        prev, x0 = _torch_step(*args)
    else:
        prev, x0 = torch.ops.cvkernels.triton_diffusion_step(*args)
    return prev, (x0 if write_x0 else None)


# ----------------------------------------------------------------------------- public API

def _noise_flag(timestep_is_nonzero):
    return 1.0 if timestep_is_nonzero is True else (0.0 if timestep_is_nonzero is False else timestep_is_nonzero)


def ddpm_step(model_output: Tensor, sample: Tensor, alpha_prod_t, alpha_prod_t_prev, *, add_noise=True,
              prediction_type: str = "epsilon", variance_type: str = "fixed_small", clip_sample: bool = True,
              clip_sample_range: float = 1.0, thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
              sample_max_value: float = 1.0, predicted_variance: Optional[Tensor] = None,
              cond_model_output: Optional[Tensor] = None, guidance_scale: float = 1.0, noise: Optional[Tensor] = None,
              seed: Optional[int] = None, offset: int = 0, return_pred_original_sample: bool = True,
              backend: Optional[str] = None):
    """One DDPM ancestral step x_t -> x_{t-1} (diffusers' ``DDPMScheduler.step`` semantics).

    alpha_prod_t, alpha_prod_t_prev: the cumulative alphas at t and at the previous timestep (1.0
    past the end), floats or per-sample (B,) tensors. add_noise: False (or a per-sample bool/0-1
    tensor) where t = 0. model_output is the unconditional output when cond_model_output is given:
    the step uses model_output + guidance_scale * (cond_model_output - model_output).
    Returns (prev_sample, pred_original_sample or None).
    """
    fn = "ddpm_step"
    if not isinstance(sample, Tensor):
        raise TypeError(f"{fn}: sample must be a Tensor, got {type(sample).__name__}")
    rows = ddpm_coefs(alpha_prod_t, alpha_prod_t_prev, _noise_flag(add_noise), prediction_type, variance_type,
                      device=sample.device, fn=fn).float()
    var_mode = {"learned": VAR_LEARNED, "learned_range": VAR_LEARNED_RANGE}.get(variance_type, VAR_FIXED)
    return launch(fn, sample, model_output, rows, cond_model_output=cond_model_output, guidance_scale=guidance_scale,
                  predicted_variance=predicted_variance, noise=noise, seed=seed, offset=offset,
                  clip=clip_sample and not thresholding, clip_range=clip_sample_range, thresholding=thresholding,
                  ratio=dynamic_thresholding_ratio, max_value=sample_max_value, var_mode=var_mode,
                  add_noise=add_noise is not False, write_x0=return_pred_original_sample, backend=backend)


def ddim_step(model_output: Tensor, sample: Tensor, alpha_prod_t, alpha_prod_t_prev, *, eta: float = 0.0,
              use_clipped_model_output: bool = False, prediction_type: str = "epsilon", clip_sample: bool = True,
              clip_sample_range: float = 1.0, thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
              sample_max_value: float = 1.0, cond_model_output: Optional[Tensor] = None, guidance_scale: float = 1.0,
              noise: Optional[Tensor] = None, seed: Optional[int] = None, offset: int = 0,
              return_pred_original_sample: bool = True, backend: Optional[str] = None):
    """One DDIM step (diffusers' ``DDIMScheduler.step`` semantics); alpha_prod_t_prev is the final
    alpha (1.0 with set_alpha_to_one) past the end. Noise only when eta > 0."""
    fn = "ddim_step"
    if not isinstance(sample, Tensor):
        raise TypeError(f"{fn}: sample must be a Tensor, got {type(sample).__name__}")
    rows = ddim_coefs(alpha_prod_t, alpha_prod_t_prev, eta, prediction_type, use_clipped_model_output,
                      device=sample.device, fn=fn).float()
    return launch(fn, sample, model_output, rows, cond_model_output=cond_model_output, guidance_scale=guidance_scale,
                  noise=noise, seed=seed, offset=offset, clip=clip_sample and not thresholding,
                  clip_range=clip_sample_range, thresholding=thresholding, ratio=dynamic_thresholding_ratio,
                  max_value=sample_max_value, add_noise=float(eta) > 0, write_x0=return_pred_original_sample,
                  use_cm=not use_clipped_model_output, backend=backend)


def euler_ancestral_step(model_output: Tensor, sample: Tensor, sigma_from, sigma_to, *,
                         prediction_type: str = "epsilon", cond_model_output: Optional[Tensor] = None,
                         guidance_scale: float = 1.0, noise: Optional[Tensor] = None, seed: Optional[int] = None,
                         offset: int = 0, return_pred_original_sample: bool = True, backend: Optional[str] = None):
    """One ancestral Euler step from sigma_from to sigma_to (diffusers'
    ``EulerAncestralDiscreteScheduler.step``); sample is in sigma space (unscaled)."""
    fn = "euler_ancestral_step"
    if not isinstance(sample, Tensor):
        raise TypeError(f"{fn}: sample must be a Tensor, got {type(sample).__name__}")
    rows = euler_ancestral_coefs(sigma_from, sigma_to, prediction_type, device=sample.device, fn=fn).float()
    return launch(fn, sample, model_output, rows, cond_model_output=cond_model_output, guidance_scale=guidance_scale,
                  noise=noise, seed=seed, offset=offset, add_noise=True, write_x0=return_pred_original_sample,
                  use_cm=False, backend=backend)


def dpmpp_step(model_output: Tensor, sample: Tensor, sigma_s0, sigma_t, *, sigma_s1=None,
               prev_pred_original_sample: Optional[Tensor] = None, prediction_type: str = "epsilon",
               solver_type: str = "midpoint", algorithm_type: str = "dpmsolver++", thresholding: bool = False,
               dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
               cond_model_output: Optional[Tensor] = None, guidance_scale: float = 1.0,
               noise: Optional[Tensor] = None, seed: Optional[int] = None, offset: int = 0,
               backend: Optional[str] = None):
    """One DPM-Solver++ step from sigma_s0 to sigma_t: first order, or the 2M update when the previous
    step's sigma (sigma_s1) and data prediction (prev_pred_original_sample) are given.
    Returns (prev_sample, pred_original_sample): keep the second for the next step's history."""
    fn = "dpmpp_step"
    if not isinstance(sample, Tensor):
        raise TypeError(f"{fn}: sample must be a Tensor, got {type(sample).__name__}")
    if (sigma_s1 is None) != (prev_pred_original_sample is None):
        raise ValueError(f"{fn}: sigma_s1 and prev_pred_original_sample must be given together (2M step)")
    rows = dpmpp_coefs(sigma_s0, sigma_t, sigma_s1, prediction_type, solver_type, algorithm_type,
                       device=sample.device, fn=fn).float()
    return launch(fn, sample, model_output, rows, cond_model_output=cond_model_output, guidance_scale=guidance_scale,
                  history=prev_pred_original_sample, noise=noise, seed=seed, offset=offset,
                  thresholding=thresholding, ratio=dynamic_thresholding_ratio, max_value=sample_max_value,
                  add_noise=algorithm_type == "sde-dpmsolver++", write_x0=True, use_cm=False, backend=backend)
