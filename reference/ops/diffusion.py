"""Float64 reference of the diffusion sampler steps, written out from the papers.

  DDPM     Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020, arXiv:2006.11239:
           posterior q(x_{t-1} | x_t, x_0) (eq. 6-7): mean sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0
           + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t, variance beta~_t = (1 - abar_{t-1}) /
           (1 - abar_t) beta_t ("fixed_small") or beta_t ("fixed_large"); x_0 = (x_t - sqrt(1 - abar_t)
           eps) / sqrt(abar_t) (eq. 15).
           Nichol, Dhariwal, "Improved DDPMs", ICML 2021, arXiv:2102.09672: learned interpolation
           Sigma = exp(v log beta_t + (1 - v) log beta~_t) (eq. 15, "learned_range", v = (out + 1) / 2),
           the cosine schedule (eq. 17, beta capped at 0.999).
  DDIM     Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, arXiv:2010.02502, eq. 12
           with sigma_t = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}) (eq. 16).
  v-pred   Salimans, Ho, "Progressive Distillation", ICLR 2022, arXiv:2202.00512: v = sqrt(abar) eps -
           sqrt(1 - abar) x_0, so x_0 = sqrt(abar) x_t - sqrt(1 - abar) v.
  Thresh.  Saharia et al., "Imagen", NeurIPS 2022, arXiv:2205.11487: s = the p-quantile of |x_0| per
           sample, s = max(s, 1) (capped at sample_max_value, diffusers), x_0 = clip(x_0, -s, s) / s.
  Euler a. Karras et al., "EDM", NeurIPS 2022, arXiv:2206.00364 and k-diffusion's ancestral step: in
           sigma = sqrt((1 - abar) / abar) space, sigma_up = sqrt(s_to^2 (s_from^2 - s_to^2) / s_from^2),
           sigma_down = sqrt(s_to^2 - sigma_up^2), x' = x + (x - x_0) / s_from * (sigma_down - s_from)
           + sigma_up z.
  DPM++    Lu et al., "DPM-Solver++", arXiv:2211.01095, Alg. 1 (2S first order = DDIM) and Alg. 2
           (2M): lambda = log(alpha / sigma), h = lambda_t - lambda_s, x_t = sigma_t / sigma_s x_s -
           alpha_t (e^{-h} - 1) D, D = (1 + 1 / (2 r)) x0_s - 1 / (2 r) x0_{s-1}, r = h_{prev} / h
           (the "midpoint" form diffusers names; "heun" uses the ((e^{-h} - 1) / h + 1) weight); the SDE
           variant (sde-dpmsolver++, Lu et al. sec. 5 / diffusers) x_t = sigma_t / sigma_s e^{-h} x_s +
           alpha_t (1 - e^{-2h}) D + sigma_t sqrt(1 - e^{-2h}) z.
  Zero SNR Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024,
           arXiv:2305.08891, Alg. 1.

Every function computes in float64 whatever its inputs; schedule values may be floats or per-sample
(B,) tensors. Nothing here imports cvkernels or diffusers.
"""
import math

import torch

__all__ = ["betas_for", "rescale_zero_terminal_snr", "threshold", "ddpm_step", "ddim_step",
           "euler_ancestral_step", "dpmpp_step", "sigma_from_alpha_bar"]


def betas_for(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    """beta_1..beta_T in float64: linear (DDPM), scaled_linear (Stable Diffusion), squaredcos_cap_v2."""
    T = num_train_timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {schedule!r}")


def rescale_zero_terminal_snr(betas):
    """Lin et al. 2023, Alg. 1: shift and scale sqrt(abar) so that abar_T = 0 and abar_1 is unchanged."""
    abar_sqrt = torch.cumprod(1 - betas.double(), 0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def sigma_from_alpha_bar(abar):
    return ((1 - abar) / abar) ** 0.5


def _b(v, x):
    """A float or (B,) schedule value as float64 broadcastable against x (B, ...)."""
    t = torch.as_tensor(v, dtype=torch.float64)
    return t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t


def _x0(prediction_type, model_output, x, abar):
    if prediction_type == "epsilon":
        return (x - (1 - abar).sqrt() * model_output) / abar.sqrt()
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return abar.sqrt() * x - (1 - abar).sqrt() * model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def threshold(x0, ratio=0.995, max_value=1.0):
    """Imagen's dynamic thresholding, per sample."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value)
    s = s.reshape(-1, *([1] * (x0.dim() - 1)))
    return torch.minimum(torch.maximum(x0, -s), s) / s


def _clip(x0, clip, clip_range, thresholding, ratio, max_value):
    if thresholding:
        return threshold(x0, ratio, max_value)
    if clip:
        return x0.clamp(-clip_range, clip_range)
    return x0


def ddpm_step(model_output, sample, alpha_bar_t, alpha_bar_prev, noise, add_noise=True, prediction_type="epsilon",
              variance_type="fixed_small", clip=True, clip_range=1.0, thresholding=False, ratio=0.995, max_value=1.0,
              predicted_variance=None):
    """x_{t-1} ~ q(x_{t-1} | x_t, x_0 = x0(model_output)); returns (x_{t-1}, x_0)."""
    x, m = sample.double(), model_output.double()
    abar_t, abar_prev = _b(alpha_bar_t, x), _b(alpha_bar_prev, x)
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t
    x0 = _clip(_x0(prediction_type, m, x, abar_t), clip, clip_range, thresholding, ratio, max_value)
    mean = (abar_prev.sqrt() * beta_t / (1 - abar_t)) * x0 + (alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x
    beta_tilde = torch.clamp((1 - abar_prev) / (1 - abar_t) * beta_t, min=1e-20)
    if variance_type in ("fixed_small", "fixed_small_log"):
        var = beta_tilde.expand_as(x)
    elif variance_type in ("fixed_large", "fixed_large_log"):
        var = beta_t.expand_as(x)
    elif variance_type == "learned":  # diffusers' convention: the model outputs the variance itself
        var = predicted_variance.double()
    elif variance_type == "learned_range":
        v = (predicted_variance.double() + 1) / 2
        var = torch.exp(v * torch.log(beta_t) + (1 - v) * torch.log(beta_tilde))
    else:
        raise ValueError(f"unknown variance_type {variance_type!r}")
    on = _b(add_noise if not isinstance(add_noise, bool) else float(add_noise), x)
    out = mean + torch.where(on > 0, var.sqrt() * noise.double(), torch.zeros((), dtype=torch.float64))
    return out, x0


def ddim_step(model_output, sample, alpha_bar_t, alpha_bar_prev, noise=None, eta=0.0, prediction_type="epsilon",
              use_clipped_model_output=False, clip=True, clip_range=1.0, thresholding=False, ratio=0.995,
              max_value=1.0):
    """Song et al. eq. 12: x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z."""
    x, m = sample.double(), model_output.double()
    abar_t, abar_prev = _b(alpha_bar_t, x), _b(alpha_bar_prev, x)
    x0_raw = _x0(prediction_type, m, x, abar_t)
    if prediction_type == "epsilon":
        eps = m
    elif prediction_type == "sample":
        eps = (x - abar_t.sqrt() * x0_raw) / (1 - abar_t).sqrt()
    else:
        eps = abar_t.sqrt() * m + (1 - abar_t).sqrt() * x
    x0 = _clip(x0_raw, clip, clip_range, thresholding, ratio, max_value)
    if use_clipped_model_output:
        eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    out = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).sqrt() * eps
    if eta > 0:
        out = out + sigma * noise.double()
    return out, x0


def euler_ancestral_step(model_output, sample, sigma_from, sigma_to, noise, prediction_type="epsilon"):
    x, m = sample.double(), model_output.double()
    sf, st = _b(sigma_from, x), _b(sigma_to, x)
    if prediction_type == "epsilon":
        x0 = x - sf * m
    elif prediction_type == "v_prediction":
        x0 = m * (-sf / (sf ** 2 + 1).sqrt()) + x / (sf ** 2 + 1)
    elif prediction_type == "sample":
        x0 = m
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    sigma_up = (st ** 2 * (sf ** 2 - st ** 2) / sf ** 2).sqrt()
    sigma_down = (st ** 2 - sigma_up ** 2).sqrt()
    d = (x - x0) / sf
    return x + d * (sigma_down - sf) + sigma_up * noise.double(), x0


def _alpha_sigma(s):
    alpha = 1 / (s ** 2 + 1).sqrt()
    return alpha, s * alpha


def dpmpp_step(model_output, sample, sigma_s0, sigma_t, sigma_s1=None, prev_x0=None, prediction_type="epsilon",
               solver_type="midpoint", algorithm_type="dpmsolver++", thresholding=False, ratio=0.995, max_value=1.0,
               noise=None):
    """DPM-Solver++ first order (sigma_s1 None) or 2M; returns (x_t, data prediction at s0)."""
    x, m = sample.double(), model_output.double()
    s0, t = _b(sigma_s0, x), _b(sigma_t, x)
    a_s0, g_s0 = _alpha_sigma(s0)
    a_t, g_t = _alpha_sigma(t)
    if prediction_type == "epsilon":
        x0 = (x - g_s0 * m) / a_s0
    elif prediction_type == "sample":
        x0 = m
    elif prediction_type == "v_prediction":
        x0 = a_s0 * x - g_s0 * m
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    if thresholding:
        x0 = threshold(x0, ratio, max_value)
    lam = lambda a, g: torch.log(a) - torch.log(g)  # noqa: E731
    h = lam(a_t, g_t) - lam(a_s0, g_s0)
    if sigma_s1 is None:
        D, heun_term = x0, None
    else:
        s1 = _b(sigma_s1, x)
        a_s1, g_s1 = _alpha_sigma(s1)
        r = (lam(a_s0, g_s0) - lam(a_s1, g_s1)) / h
        D1 = (x0 - prev_x0.double()) / r
        D, heun_term = x0, D1
    sde = algorithm_type == "sde-dpmsolver++"
    if sde:
        out = g_t / g_s0 * torch.exp(-h) * x + a_t * (1 - torch.exp(-2 * h)) * D
    else:
        out = g_t / g_s0 * x - a_t * (torch.exp(-h) - 1) * D
    if heun_term is not None:
        if solver_type == "midpoint":
            w = 0.5 * a_t * (1 - torch.exp(-2 * h)) if sde else -0.5 * a_t * (torch.exp(-h) - 1)
        elif sde:
            w = a_t * ((1 - torch.exp(-2 * h)) / (-2 * h) + 1)
        else:
            w = a_t * ((torch.exp(-h) - 1) / h + 1)
        out = out + w * heun_term
    if sde:
        out = out + g_t * (1 - torch.exp(-2 * h)).sqrt() * noise.double()
    return out, x0
