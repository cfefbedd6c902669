"""Benchmark suite: fused diffusion sampler steps against diffusers' ``scheduler.step``.

Kernels (one sampler step on a batch of latents; mode "eval" only, the steps are inference):
    ddim        DDIMScheduler, Stable Diffusion's configuration (scaled_linear, no clipping), eta 0
    ddim+cfg    the same with classifier-free guidance fused (diffusers: guidance in torch, then step)
    ddpm        DDPMScheduler, fixed_small with noise (cvkernels: in-kernel Philox; diffusers: randn)
    euler_a     EulerAncestralDiscreteScheduler (noise every step)
    dpmpp_2m    DPMSolverMultistepScheduler, the 2M update (history read, x0 written)
    ddim-loop50 a 50-step DDIM loop with a zero-cost stand-in model: step overhead alone
Shapes: Stable Diffusion latents B = 1 / 8 / 32 x 4x64x64 (512 px) and 4x128x128 (1024 px), and
pixel space 3x256x256; fp16 and fp32 on the GPU. CPU: a tiny mode (B = 1 / 2 x 4x16x16 .. 4x32x32).

Providers:
    cvkernels          cvkernels.diffusion.<Scheduler>.step (fused kernel; no x0 output)
    diffusers          diffusers.<Scheduler>.step, eager
    diffusers+compile  torch.compile of a function calling diffusers' step (graph breaks allowed:
                       diffusers' step reads Python-side state)
Floor: bytes = reads (sample, model output(s), history) + writes (prev_sample, and x0 where the
next step needs it), element size of the dtype. The harness reports GB/s and the fraction of the
measured copy bandwidth.
"""
from typing import List, Optional, Sequence

import torch

from .harness import Case

FAMILY = "diffusion"
LATENTS = ((4, 64, 64), (4, 128, 128), (3, 256, 256))
GPU_BATCHES = (1, 8, 32)
GPU_DTYPES = (torch.float16, torch.float32)
GPU_QUICK_DTYPES = (torch.float16,)
CPU_SHAPES = ((1, (4, 16, 16)), (2, (4, 32, 32)))
CPU_DTYPES = (torch.float32,)
KERNELS = ("ddim", "ddim+cfg", "ddpm", "euler_a", "dpmpp_2m", "ddim-loop50")
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

# kernel -> (scheduler class, constructor kwargs, tensors read, tensors written)
_SPEC = {
    "ddim": ("DDIMScheduler", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), 2, 1),
    "ddim+cfg": ("DDIMScheduler", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), 3, 1),
    "ddpm": ("DDPMScheduler", dict(), 2, 1),
    "euler_a": ("EulerAncestralDiscreteScheduler", dict(SD), 2, 1),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(SD), 3, 2),
    "ddim-loop50": ("DDIMScheduler", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), 2, 1),
}
STEPS = 50
GUIDANCE = 7.5


def _diffusers():
    try:
        import diffusers
        return diffusers
    except Exception:  # noqa: BLE001
        return None


def _make(kernel, lib, device):
    cls, kw, _, _ = _SPEC[kernel]
    if lib == "cvkernels":
        import cvkernels.diffusion as cvd
        extra = {} if cls == "DPMSolverMultistepScheduler" else dict(return_pred_original_sample=False)
        s = getattr(cvd, cls)(**kw, **extra)
    else:
        s = getattr(_diffusers(), cls)(**kw)
    s.set_timesteps(STEPS, device=device)
    s.is_scale_input_called = True  # the stand-in model takes no scaled input (silences diffusers' warning)
    return s


def _step_fn(kernel, sched, inputs, lib):
    """A zero-argument callable doing one step (or the 50-step loop) with the scheduler's state
    reset before each call, so it can be timed repeatedly."""
    x, m, mc = inputs["sample"], inputs["model_output"], inputs.get("cond")
    ts = sched.timesteps
    i = 10  # a step in the middle of the schedule
    t = ts[i]
    t_int = int(t)
    ours = lib == "cvkernels"

    if kernel == "ddim-loop50":
        def loop():
            y = x
            for tt in ts.tolist():
                y = sched.step(m, tt, y).prev_sample
            return y
        return loop
    if kernel == "ddim+cfg":
        if ours:
            return lambda: sched.step(m, t_int, x, cond_model_output=mc, guidance_scale=GUIDANCE).prev_sample
        return lambda: sched.step(m + GUIDANCE * (mc - m), t, x).prev_sample
    if kernel in ("ddim", "ddpm"):
        tt = t_int if ours else t
        return lambda: sched.step(m, tt, x).prev_sample
    if kernel == "euler_a":
        def euler():
            sched._step_index = i
            return sched.step(m, t, x).prev_sample
        return euler
    if kernel == "dpmpp_2m":
        hist = inputs["history"]

        def dpm():
            sched._step_index = i
            sched.lower_order_nums = 1
            sched.model_outputs = [hist, hist]
            return sched.step(m, t, x).prev_sample
        return dpm
    raise ValueError(kernel)


def _provider(kernel, lib, compile_=False):
    def factory(inputs, mode):
        device = inputs["sample"].device
        sched = _make(kernel, lib, device)
        fn = _step_fn(kernel, sched, inputs, lib)
        if compile_:
            fn = torch.compile(fn, dynamic=False)
        return fn
    return factory


def _setup(batch, shape, dtype, device, kernel):
    def setup():
        try:
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001
            pass
        full = (batch,) + tuple(shape)
        out = {"sample": torch.randn(full, device=device, dtype=dtype),
               "model_output": torch.randn(full, device=device, dtype=dtype)}
        if kernel == "ddim+cfg":
            out["cond"] = torch.randn(full, device=device, dtype=dtype)
        if kernel == "dpmpp_2m":
            out["history"] = torch.randn(full, device=device, dtype=dtype)
        return out
    return setup


def traffic_bytes(kernel, batch, shape, element_size):
    n = batch
    for d in shape:
        n *= d
    _, _, reads, writes = _SPEC[kernel]
    per_step = (reads + writes) * n * element_size
    return per_step * (STEPS if kernel == "ddim-loop50" else 1)


def cases(device, quick: bool = False, dtypes: Optional[Sequence[torch.dtype]] = None) -> List[Case]:
    device = torch.device(device)
    if device.type != "cuda":
        grid, default_dtypes = CPU_SHAPES, CPU_DTYPES
    elif quick:
        grid = tuple((b, s) for b in (1, 32) for s in LATENTS[:2])
        default_dtypes = GPU_QUICK_DTYPES
    else:
        grid = tuple((b, s) for s in LATENTS for b in GPU_BATCHES)
        default_dtypes = GPU_DTYPES
    have_diffusers = _diffusers() is not None
    out = []
    for dtype in (dtypes or default_dtypes):
        esize = torch.empty((), dtype=dtype).element_size()
        for kernel in KERNELS:
            for batch, shape in grid:
                providers = {"cvkernels": _provider(kernel, "cvkernels")}
                if have_diffusers:
                    providers["diffusers"] = _provider(kernel, "diffusers")
                    providers["diffusers+compile"] = _provider(kernel, "diffusers", compile_=True)
                out.append(Case(
                    kernel=kernel, family=FAMILY, shape=f"{batch}x" + "x".join(map(str, shape)), dtype=dtype,
                    layout="contiguous", setup=_setup(batch, shape, dtype, device, kernel), providers=providers,
                    bytes={"eval": traffic_bytes(kernel, batch, shape, esize)}, modes=("eval",)))
    return out


def describe(device) -> str:
    import os
    from .. import _dispatch
    device = torch.device(device)
    text = f"cvkernels diffusion path on {device.type}: {_dispatch.choose('diffusion', device.type)}"
    if _diffusers() is None:
        text += "; diffusers is not installed: no baselines (pip install diffusers)"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        text += "; TRITON_INTERPRET=1 is set: Triton kernels run in the interpreter (very slow, not a benchmark)"
    return text
