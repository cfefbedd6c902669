"""Drop-in diffusers schedulers whose ``step`` is one fused cvkernels kernel.

    DDPMScheduler, DDIMScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler

take diffusers' constructor arguments and have its ``set_timesteps`` / ``scale_model_input`` /
``step`` / ``add_noise`` signatures and attributes (``timesteps``, ``init_noise_sigma``, ``order``,
``config``, ``alphas_cumprod``), so a diffusers pipeline can use them. ``step`` returns an object
with ``prev_sample`` and ``pred_original_sample`` (tuple-indexable like diffusers' outputs).

Extensions over diffusers:
  * ``step(..., cond_model_output=c, guidance_scale=s)``: classifier-free guidance fused into the
    step; model_output is the unconditional output.
  * DDPM / DDIM accept per-sample timesteps: a (B,) tensor of timesteps, one per sample.
  * Noise: ``variance_noise`` (a tensor) or ``generator`` (drawn as diffusers draws it: same noise)
    or, with neither, in-kernel Philox noise from ``seed`` (default: drawn from torch's CPU
    generator, so torch.manual_seed makes runs reproducible).
  * ``return_pred_original_sample=False`` in the constructor skips writing x0 (one pass less).

The per-timestep coefficient rows are built in float64 on set_timesteps from the float32
schedule diffusers uses and cached per device; a step with a Python-int timestep passes a view
of that table (no host-to-device copy).
"""
import math
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor

from .ops import diffusion as ops

__all__ = ["SchedulerOutput", "DDPMScheduler", "DDIMScheduler", "EulerAncestralDiscreteScheduler",
           "DPMSolverMultistepScheduler", "make_betas", "rescale_zero_terminal_snr", "sample_loop",
           "CUDAGraphSampler"]


class SchedulerOutput:
    """prev_sample and pred_original_sample; out[0], out["prev_sample"], out.to_tuple() work."""

    def __init__(self, prev_sample, pred_original_sample=None):
        self.prev_sample = prev_sample
        self.pred_original_sample = pred_original_sample

    def to_tuple(self):
        return tuple(v for v in (self.prev_sample, self.pred_original_sample) if v is not None)

    def keys(self):
        return [k for k in ("prev_sample", "pred_original_sample") if getattr(self, k) is not None]

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self):
        return len(self.to_tuple())


class _Config(dict):
    """Frozen dict with attribute access (diffusers' FrozenDict)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas=None, cls="scheduler"):
    """float32 betas computed as diffusers computes them."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        T = num_train_timesteps
        return torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float32)
    raise NotImplementedError(f"{cls}: beta_schedule {beta_schedule!r} is not implemented "
                              f"(linear, scaled_linear, squaredcos_cap_v2)")


def rescale_zero_terminal_snr(betas):
    """Lin et al. 2023, Alg. 1 (in the betas' dtype, as diffusers)."""
    abar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt ** 2
    return 1 - torch.cat([abar[0:1], abar[1:] / abar[:-1]])


def _spaced(spacing, T, n, steps_offset, cls, dtype=np.int64):
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(dtype)
    if spacing == "leading":
        ratio = T // n
        return ((np.arange(0, n) * ratio).round()[::-1].copy().astype(dtype) + steps_offset).astype(dtype)
    if spacing == "trailing":
        ratio = T / n
        return (np.round(np.arange(T, 0, -ratio)).astype(dtype) - 1).astype(dtype)
    raise ValueError(f"{cls}: timestep_spacing {spacing!r} is not supported; choose 'linspace', 'leading' or "
                     f"'trailing'")


class _Scheduler:
    order = 1
    _cls = "Scheduler"

    def _check_ready(self, model_output, sample):
        """step() needs set_timesteps first and a model output shaped like the sample."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        if model_output.shape != sample.shape:
            raise ValueError(f"{self._cls}.step: model_output shape {tuple(model_output.shape)} does not match "
                             f"sample shape {tuple(sample.shape)}")

    @classmethod
    def from_config(cls, config=None, **kwargs):
        """Builds the scheduler from a diffusers scheduler config (a dict, or an object with
        ``.config``), as ``diffusers.<Scheduler>.from_config``: keys the constructor does not take
        (``_class_name``, other schedulers' options) are ignored; ``kwargs`` override."""
        import inspect
        config = getattr(config, "config", config) or {}
        params = inspect.signature(cls.__init__).parameters
        names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        merged = {k: v for k, v in dict(config).items() if k in names}
        merged.update(kwargs)
        return cls(**merged)

    def _rng_args(self):
        """With ``self.rng`` (an int64 (seed, offset) tensor on the latents' device) the kernels read the
        Philox seed from device memory and step k draws at offset base + k * 2**32: a captured CUDA
        graph replays with fresh noise after ``rng[0]`` is rewritten (see CUDAGraphSampler)."""
        if getattr(self, "rng", None) is None:
            return {}
        k = self._rng_counter
        self._rng_counter += 1
        return {"rng": self.rng, "offset": k << 32}

    def _init_schedule(self, cfg):
        self.config = _Config(cfg)
        self.rng = None
        self._rng_counter = 0
        betas = make_betas(cfg["num_train_timesteps"], cfg["beta_start"], cfg["beta_end"], cfg["beta_schedule"],
                           cfg.get("trained_betas"), self._cls)
        if cfg.get("rescale_betas_zero_snr"):
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.num_inference_steps = None
        self._tables = {}

    def __len__(self):
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        return sample

    def _table(self, key, device, build):
        device = torch.device(device)
        k = (key, str(device))
        if k not in self._tables:
            self._tables[k] = build().to(device=device, dtype=torch.float32).contiguous()
        return self._tables[k]

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        acp = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        a = acp[timesteps.to(original_samples.device)].flatten()
        a = a.reshape(-1, *([1] * (original_samples.dim() - 1)))
        return a.sqrt() * original_samples + (1 - a).sqrt() * noise

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        acp = self.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)
        a = acp[timesteps.to(sample.device)].flatten()
        a = a.reshape(-1, *([1] * (sample.dim() - 1)))
        return a.sqrt() * noise - (1 - a).sqrt() * sample

    # -- timesteps of a step call: an int, a 0-d tensor or a (B,) tensor
    def _timestep_values(self, timestep, B):
        """(python int or None, (B,) int64 CPU tensor or None), after range checks."""
        T = self.config.num_train_timesteps
        if isinstance(timestep, Tensor):
            if timestep.is_floating_point() and not torch.equal(timestep, timestep.round()):
                raise ValueError(f"{self._cls}.step: timestep must hold integer values, got {timestep}")
            if timestep.dim() > 1 or (timestep.dim() == 1 and timestep.numel() not in (1, B)):
                raise ValueError(f"{self._cls}.step: timestep must be an int, a 0-d tensor or a ({B},) tensor "
                                 f"(one per sample), got shape {tuple(timestep.shape)}")
            values = timestep.detach().reshape(-1).to("cpu", torch.int64)
            if values.numel() == 1:
                return int(values[0]), None
            bad = (values < 0) | (values >= T)
            if bool(bad.any()):
                raise ValueError(f"{self._cls}.step: timestep {values[bad][0].item()} is out of range "
                                 f"[0, {T - 1}] (num_train_timesteps={T})")
            return None, values
        if not isinstance(timestep, (int, np.integer)) and not (isinstance(timestep, float) and timestep.is_integer()):
            raise TypeError(f"{self._cls}.step: timestep must be an int or a tensor, got {type(timestep).__name__}")
        t = int(timestep)
        if not 0 <= t < T:
            raise ValueError(f"{self._cls}.step: timestep {t} is out of range [0, {T - 1}] "
                             f"(num_train_timesteps={T})")
        return t, None

    @staticmethod
    def _draw_noise(model_output, generator, variance_noise, needed):
        if not needed:
            return None
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("step: pass either generator or variance_noise, not both")
            return variance_noise
        if generator is None:
            return None
        gen_device = generator.device if hasattr(generator, "device") else torch.device("cpu")
        # as diffusers' randn_tensor: drawn on the generator's device in model_output's dtype
        z = torch.randn(model_output.shape, generator=generator, device=gen_device, dtype=model_output.dtype)
        return z.to(model_output.device)


def _check_pred(cls, prediction_type, allowed=ops.PREDICTION_TYPES):
    if prediction_type not in allowed:
        raise ValueError(f"{cls}: prediction_type {prediction_type!r} must be one of {allowed}")


class DDPMScheduler(_Scheduler):
    """diffusers.DDPMScheduler on the fused step kernel."""
    _cls = "DDPMScheduler"

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, return_pred_original_sample: bool = True):
        _check_pred(self._cls, prediction_type)
        if variance_type not in ops.VARIANCE_TYPES:
            raise ValueError(f"{self._cls}: variance_type {variance_type!r} must be one of {ops.VARIANCE_TYPES}")
        self._init_schedule(dict(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, variance_type=variance_type,
            clip_sample=clip_sample, prediction_type=prediction_type, thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio, clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value, timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr))
        self.variance_type = variance_type
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.return_pred_original_sample = return_pred_original_sample
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self._prev = list(range(-1, num_train_timesteps - 1))  # previous timestep of every training timestep

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      timesteps: Optional[List[int]] = None):
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            for i in range(1, len(timesteps)):
                if timesteps[i] >= timesteps[i - 1]:
                    raise ValueError("`custom_timesteps` must be in descending order.")
            if timesteps[0] >= T:
                raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: {T}.")
            ts = np.array(timesteps, dtype=np.int64)
            self.custom_timesteps = True
            self.num_inference_steps = len(ts)
        else:
            if num_inference_steps is None or num_inference_steps > T:
                raise ValueError(f"{self._cls}.set_timesteps: num_inference_steps must be in [1, {T}], "
                                 f"got {num_inference_steps}")
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            ts = _spaced(self.config.timestep_spacing, T, num_inference_steps, self.config.steps_offset, self._cls)
        self.timesteps = torch.from_numpy(ts).to(device)
        prev = np.full(T, -2, dtype=np.int64)  # -2: not a timestep of this schedule
        for i, t in enumerate(ts):
            if 0 <= t < T:
                prev[t] = ts[i + 1] if i + 1 < len(ts) else -1
        self._prev = prev.tolist()  # Python ints: torch.compile folds the lookups
        self._tables = {}

    def previous_timestep(self, timestep):
        t = int(timestep)
        p = int(self._prev[t])
        if p == -2:
            raise ValueError(f"{self._cls}.step: timestep {t} is not one of the scheduler's timesteps "
                             f"{self.timesteps.tolist()} (set by set_timesteps)")
        return p

    def _rows(self):
        acp = self.alphas_cumprod.double()
        prev = torch.tensor(self._prev, dtype=torch.int64)
        a_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], torch.ones_like(acp))
        t = torch.arange(len(acp))
        return ops.ddpm_coefs(acp, a_prev, (t > 0).double(), self.config.prediction_type, self.variance_type)

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None, return_dict: bool = True, *,
             cond_model_output: Optional[Tensor] = None, guidance_scale: float = 1.0,
             variance_noise: Optional[Tensor] = None, seed: Optional[int] = None, backend: Optional[str] = None):
        cfg = self.config
        predicted_variance = None
        C = sample.shape[1] if sample.dim() > 1 else None
        if (C is not None and model_output.dim() == sample.dim() and model_output.shape[1] == 2 * C
                and self.variance_type in ("learned", "learned_range")):
            model_output, predicted_variance = torch.split(model_output, C, dim=1)
            if cond_model_output is not None:  # guidance on the prediction, the variance from the conditional one
                cond_model_output, predicted_variance = torch.split(cond_model_output, C, dim=1)
        if model_output.shape != sample.shape:
            raise ValueError(f"{self._cls}.step: model_output shape {tuple(model_output.shape)} does not match "
                             f"sample shape {tuple(sample.shape)}")
        t, ts = self._timestep_values(timestep, sample.shape[0])
        table = self._table("ddpm", sample.device, self._rows)
        if ts is None:
            self.previous_timestep(t)
            rows = table[t:t + 1]
            needs_noise = t > 0
        else:
            for v in ts.tolist():
                self.previous_timestep(v)
            rows = table[ts.to(sample.device)]
            needs_noise = bool((ts > 0).any())
        var_mode = {"learned": ops.VAR_LEARNED, "learned_range": ops.VAR_LEARNED_RANGE}.get(self.variance_type, 0)
        noise = self._draw_noise(model_output, generator, variance_noise, needs_noise)
        prev, x0 = ops.launch(
            "DDPMScheduler.step", sample, model_output, rows, **self._rng_args(),
            cond_model_output=cond_model_output,
            guidance_scale=guidance_scale, predicted_variance=predicted_variance, noise=noise, seed=seed,
            clip=cfg.clip_sample and not cfg.thresholding, clip_range=cfg.clip_sample_range,
            thresholding=cfg.thresholding, ratio=cfg.dynamic_thresholding_ratio, max_value=cfg.sample_max_value,
            var_mode=var_mode, add_noise=needs_noise, write_x0=self.return_pred_original_sample, backend=backend)
        if not return_dict:
            return (prev, x0)
        return SchedulerOutput(prev, x0)


class DDIMScheduler(_Scheduler):
    """diffusers.DDIMScheduler on the fused step kernel."""
    _cls = "DDIMScheduler"

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False, return_pred_original_sample: bool = True):
        _check_pred(self._cls, prediction_type)
        self._init_schedule(dict(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset, prediction_type=prediction_type,
            thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range, sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing, rescale_betas_zero_snr=rescale_betas_zero_snr))
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.return_pred_original_sample = return_pred_original_sample
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))

    def set_timesteps(self, num_inference_steps: int, device=None):
        T = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"{self._cls}.set_timesteps: num_inference_steps must be in [1, {T}], "
                             f"got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        ts = _spaced(self.config.timestep_spacing, T, num_inference_steps, self.config.steps_offset, self._cls)
        self.timesteps = torch.from_numpy(ts).to(device)
        self._tables = {}

    def _rows_builder(self, eta, use_clipped):
        def build():
            acp = self.alphas_cumprod.double()
            T = len(acp)
            prev = torch.arange(T) - T // self.num_inference_steps
            a_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], self.final_alpha_cumprod.double())
            return ops.ddim_coefs(acp, a_prev, eta, self.config.prediction_type, use_clipped)
        return build

    def step(self, model_output: Tensor, timestep, sample: Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise: Optional[Tensor] = None,
             return_dict: bool = True, *, cond_model_output: Optional[Tensor] = None, guidance_scale: float = 1.0,
             seed: Optional[int] = None, backend: Optional[str] = None):
        self._check_ready(model_output, sample)
        cfg = self.config
        t, ts = self._timestep_values(timestep, sample.shape[0])
        table = self._table(("ddim", float(eta), bool(use_clipped_model_output)), sample.device,
                            self._rows_builder(float(eta), bool(use_clipped_model_output)))
        rows = table[t:t + 1] if ts is None else table[ts.to(sample.device)]
        noise = self._draw_noise(model_output, generator, variance_noise, eta > 0)
        prev, x0 = ops.launch(
            "DDIMScheduler.step", sample, model_output, rows, **self._rng_args(),
            cond_model_output=cond_model_output,
            guidance_scale=guidance_scale, noise=noise, seed=seed, clip=cfg.clip_sample and not cfg.thresholding,
            clip_range=cfg.clip_sample_range, thresholding=cfg.thresholding, ratio=cfg.dynamic_thresholding_ratio,
            max_value=cfg.sample_max_value, add_noise=eta > 0, write_x0=self.return_pred_original_sample,
            use_cm=not use_clipped_model_output, backend=backend)
        if not return_dict:
            return (prev, x0)
        return SchedulerOutput(prev, x0)


class _SigmaScheduler(_Scheduler):
    """Shared step-index bookkeeping of the sigma-space schedulers (diffusers' semantics)."""

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def index_for_timestep(self, timestep, schedule_timesteps=None):
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        idx = (schedule_timesteps.cpu() == torch.as_tensor(timestep).cpu()).nonzero()
        if len(idx) == 0:
            raise ValueError(f"{self._cls}.step: timestep {float(timestep)} is not one of the scheduler's "
                             f"timesteps (set by set_timesteps)")
        return idx[1 if len(idx) > 1 else 0].item()

    def _init_step_index(self, timestep):
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _check_step_args(self, model_output, timestep, sample):
        self._check_ready(model_output, sample)
        if isinstance(timestep, Tensor) and timestep.numel() > 1:
            raise ValueError(f"{self._cls}.step: one timestep per call (the scheduler keeps a step index); use "
                             f"cvkernels.ops.diffusion for per-sample sigmas")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= self.num_inference_steps:
            raise ValueError(f"{self._cls}.step: called more times than the {self.num_inference_steps} "
                             f"timesteps set")


class EulerAncestralDiscreteScheduler(_SigmaScheduler):
    """diffusers.EulerAncestralDiscreteScheduler on the fused step kernel."""
    _cls = "EulerAncestralDiscreteScheduler"

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 timestep_spacing: str = "linspace", steps_offset: int = 0, rescale_betas_zero_snr: bool = False,
                 return_pred_original_sample: bool = True):
        _check_pred(self._cls, prediction_type)
        self.return_pred_original_sample = return_pred_original_sample
        self._init_schedule(dict(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, prediction_type=prediction_type,
            timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr))
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2 ** -24  # as diffusers: a finite sigma at the last training timestep
        sig = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        self.sigmas = torch.from_numpy(np.concatenate([sig[::-1], [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps,
                                                      dtype=float)[::-1].copy())
        self._step_index = None
        self._begin_index = None
        self.is_scale_input_called = False

    @property
    def init_noise_sigma(self):
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return self.sigmas.max()
        return (self.sigmas.max() ** 2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int, device=None):
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        ts = _spaced(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset,
                     self._cls, dtype=np.float32)
        if cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, cfg.num_train_timesteps - 1, num_inference_steps, dtype=np.float32)[::-1].copy()
        sig = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        sig = np.interp(ts, np.arange(0, len(sig)), sig)
        self.sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(ts).to(device=device)
        self._step_index = None
        self._begin_index = None
        self._tables = {}

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        self.is_scale_input_called = True
        return sample / ((sigma ** 2 + 1) ** 0.5)

    def _rows(self):
        s = self.sigmas.double()
        return ops.euler_ancestral_coefs(s[:-1], s[1:], self.config.prediction_type)

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None, return_dict: bool = True, *,
             cond_model_output: Optional[Tensor] = None, guidance_scale: float = 1.0,
             variance_noise: Optional[Tensor] = None, seed: Optional[int] = None, backend: Optional[str] = None):
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError("Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to "
                             f"`{self._cls}.step()` is not supported. Pass one of `scheduler.timesteps`.")
        self._check_step_args(model_output, timestep, sample)
        i = self._step_index
        rows = self._table("euler_a", sample.device, self._rows)[i:i + 1]
        noise = self._draw_noise(model_output, generator, variance_noise, True)
        # diffusers computes in float32 and returns model_output's dtype
        prev, x0 = ops.launch(
            "EulerAncestralDiscreteScheduler.step", sample, model_output, rows, **self._rng_args(),
            cond_model_output=cond_model_output, guidance_scale=guidance_scale, noise=noise, seed=seed,
            add_noise=True, write_x0=self.return_pred_original_sample, use_cm=False, backend=backend)
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return (prev, x0)
        return SchedulerOutput(prev, x0)


class DPMSolverMultistepScheduler(_SigmaScheduler):
    """diffusers.DPMSolverMultistepScheduler (dpmsolver++ / sde-dpmsolver++, orders 1 and 2) on the
    fused step kernel; the other options of diffusers raise NotImplementedError."""
    _cls = "DPMSolverMultistepScheduler"

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint", lower_order_final: bool = True,
                 euler_at_final: bool = False, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, use_lu_lambdas: bool = False, use_flow_sigmas: bool = False,
                 flow_shift: float = 1.0, final_sigmas_type: str = "zero", lambda_min_clipped: float = -float("inf"),
                 variance_type: Optional[str] = None, timestep_spacing: str = "linspace", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential", **unsupported):
        _check_pred(self._cls, prediction_type)
        extras = [k for k, v in dict(use_karras_sigmas=use_karras_sigmas, use_exponential_sigmas=use_exponential_sigmas,
                                     use_beta_sigmas=use_beta_sigmas, use_lu_lambdas=use_lu_lambdas,
                                     use_flow_sigmas=use_flow_sigmas).items() if v]
        extras += [k for k, v in unsupported.items() if v]
        if use_dynamic_shifting:
            extras.append("use_dynamic_shifting")
        if variance_type is not None:
            extras.append("variance_type")
        if extras or solver_order not in (1, 2):
            raise NotImplementedError(f"{self._cls}: {', '.join(extras) or f'solver_order={solver_order}'} "
                                      f"is not implemented by cvkernels (orders 1-2, default sigmas)")
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
            raise NotImplementedError(f"{self._cls}: algorithm_type {algorithm_type!r} is not implemented "
                                      f"(dpmsolver++, sde-dpmsolver++)")
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"{self._cls}: solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"{self._cls}: final_sigmas_type must be 'zero' or 'sigma_min', got "
                             f"{final_sigmas_type!r}")
        self._init_schedule(dict(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, solver_order=solver_order,
            prediction_type=prediction_type, thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
            algorithm_type=algorithm_type, solver_type=solver_type, lower_order_final=lower_order_final,
            euler_at_final=euler_at_final, final_sigmas_type=final_sigmas_type,
            lambda_min_clipped=lambda_min_clipped, timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr))
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2 ** -24
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.init_noise_sigma = 1.0
        self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps,
                                                      dtype=np.float32)[::-1].copy())
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, timesteps=None):
        cfg = self.config
        T = cfg.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        if timesteps is not None:
            ts = np.array(timesteps).astype(np.int64)
        else:
            clipped_idx = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            last = T - clipped_idx
            n = num_inference_steps
            if cfg.timestep_spacing == "linspace":
                ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
            elif cfg.timestep_spacing == "leading":
                ratio = last // (n + 1)
                ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + cfg.steps_offset
            elif cfg.timestep_spacing == "trailing":
                ratio = T / n
                ts = np.arange(last, 0, -ratio).round().copy().astype(np.int64) - 1
            else:
                raise ValueError(f"{self._cls}: timestep_spacing {cfg.timestep_spacing!r} is not supported; choose "
                                 f"'linspace', 'leading' or 'trailing'")
        sig = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        sig = np.interp(ts, np.arange(0, len(sig)), sig)
        if cfg.final_sigmas_type == "sigma_min":
            last_sigma = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        else:
            last_sigma = 0.0
        self.sigmas = torch.from_numpy(np.concatenate([sig, [last_sigma]]).astype(np.float32))
        self.timesteps = torch.from_numpy(ts).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(ts)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._tables = {}

    def _rows(self, second):
        def build():
            s = self.sigmas.double()
            cfg = self.config
            if not second:
                return ops.dpmpp_coefs(s[:-1], s[1:], None, cfg.prediction_type, cfg.solver_type, cfg.algorithm_type)
            # row i: the 2M update of step i (i >= 1); row 0 is never used
            s1 = torch.cat([s[:1], s[:-2]])
            return ops.dpmpp_coefs(s[:-1], s[1:], s1, cfg.prediction_type, cfg.solver_type, cfg.algorithm_type)
        return build

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None,
             variance_noise: Optional[Tensor] = None, return_dict: bool = True, *,
             cond_model_output: Optional[Tensor] = None, guidance_scale: float = 1.0, seed: Optional[int] = None,
             backend: Optional[str] = None):
        self._check_step_args(model_output, timestep, sample)
        cfg = self.config
        i = self._step_index
        n = len(self.timesteps)
        lower_order_final = (i == n - 1) and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                                              or cfg.final_sigmas_type == "zero")
        second = cfg.solver_order == 2 and self.lower_order_nums >= 1 and not lower_order_final
        rows = self._table(("dpm", second), sample.device, self._rows(second))[i:i + 1]
        sde = cfg.algorithm_type == "sde-dpmsolver++"
        noise = None
        if sde:
            noise = self._draw_noise(model_output, generator, variance_noise, True)
        history = self.model_outputs[-1] if second else None
        prev, x0 = ops.launch(
            "DPMSolverMultistepScheduler.step", sample, model_output, rows, **self._rng_args(),
            cond_model_output=cond_model_output,
            guidance_scale=guidance_scale, history=history, noise=noise, seed=seed, thresholding=cfg.thresholding,
            ratio=cfg.dynamic_thresholding_ratio, max_value=cfg.sample_max_value, add_noise=sde, write_x0=True,
            use_cm=False, backend=backend)
        x0 = x0.to(model_output.dtype)
        for k in range(cfg.solver_order - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = x0
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev, x0)


# ----------------------------------------------------------------------------- sampling loops

def _timestep_list(scheduler):
    ts = scheduler.timesteps.detach().cpu()
    return ts.tolist() if ts.is_floating_point() else [int(t) for t in ts.tolist()]


def sample_loop(model, scheduler, latents: Tensor, guidance_scale: Optional[float] = None, **step_kwargs) -> Tensor:
    """The standard denoising loop over ``scheduler.timesteps`` (set_timesteps first):
    x <- scheduler.step(model(scale_model_input(x, t), t), t, x).prev_sample.

    model(x, t) returns the model output; with ``guidance_scale`` it returns the pair
    (unconditional, conditional) and the guidance is fused into the step. t is a Python number
    (the loop never reads a device tensor on the host), so the loop can run inside CUDA-graph
    capture once the scheduler's tables exist (CUDAGraphSampler does a warm-up pass first).
    """
    x = latents
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)  # no host-side timestep lookup
        scheduler._step_index = None
    if hasattr(scheduler, "model_outputs"):
        scheduler.model_outputs = [None] * len(scheduler.model_outputs)
        scheduler.lower_order_nums = 0
    for t in _timestep_list(scheduler):
        x_in = scheduler.scale_model_input(x, t)
        out = model(x_in, t)
        if guidance_scale is not None:
            uncond, cond = out
            x = scheduler.step(uncond, t, x, cond_model_output=cond, guidance_scale=guidance_scale,
                               **step_kwargs).prev_sample
        else:
            x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x


class CUDAGraphSampler:
    """A whole sampling loop (model + fused steps) captured once in a CUDA graph and replayed.

        sampler = CUDAGraphSampler(model, scheduler, latents_like, guidance_scale=7.5)
        images = sampler(x_T, seed=1234)      # copies x_T in, writes the seed, replays

    The scheduler draws its noise in-kernel from ``scheduler.rng`` (a device (seed, offset) pair
    this class owns), so each replay with a new seed gets new noise. On a CPU, or with
    ``use_graph=False``, it runs the same loop eagerly (same results for the same seed).
    """

    def __init__(self, model, scheduler, latents_like: Tensor, guidance_scale: Optional[float] = None,
                 use_graph: Optional[bool] = None, **step_kwargs):
        if scheduler.num_inference_steps is None:
            raise ValueError("CUDAGraphSampler: call scheduler.set_timesteps first")
        self.model, self.scheduler = model, scheduler
        self.guidance_scale, self.step_kwargs = guidance_scale, step_kwargs
        device = latents_like.device
        self.static_in = torch.empty_like(latents_like)
        scheduler.rng = torch.zeros(2, dtype=torch.int64, device=device)
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        self.graph = None
        self.static_out = None

    def _run(self):
        self.scheduler._rng_counter = 0
        return sample_loop(self.model, self.scheduler, self.static_in, self.guidance_scale, **self.step_kwargs)

    def __call__(self, latents: Tensor, seed: int = 0) -> Tensor:
        self.static_in.copy_(latents)
        self.scheduler.rng[0] = int(seed)
        if not self.use_graph:
            return self._run()
        if self.graph is None:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up: builds the tables, compiles the kernels
                self._run()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = self._run()
        self.graph.replay()
        return self.static_out.clone()
