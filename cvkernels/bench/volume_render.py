"""Benchmark suite: NeRF volume rendering (issue 6 item 6).

Kernels (``Case.kernel``):
    volume_render         dense rays x samples: cvkernels.volume_render(sigmas (R, S),
                          rgbs (R, S, 3), t_starts, t_ends) -> color; 4096 / 65536 rays x 64 / 192
                          samples (NeRF's coarse and coarse+fine counts); NeRF's intervals (stratified
                          in [2, 6], the last one 1e10), densities uniform in [0, 2)
    volume_render_packed  packed samples with early termination (transmittance_threshold 1e-4): the
                          same ray counts, each ray a random 25-100% of S samples (unequal counts, as
                          after occupancy-grid skipping), a surface part-way along each ray
                          (density 0.05 before it, 50 after), so most rays stop soon after it
Providers:
    cvkernels      the C++ (CPU) / CUDA kernel, return_weights=False
    eager          the same quadrature as torch ops (cvkernels.volume_render(backend="torch"):
                   exclusive cumsum, exp, expm1, products and sums; packed samples scattered into
                   a padded (R, max count) layout first), what a NeRF codebase runs without kernels
    torch.compile  torch.compile of the eager composite (dynamic=False)
    nerfacc        nerfacc.render_weight_from_density + accumulate_along_rays where nerfacc is
                   installed (recorded as a failure otherwise)
    nerf_train_step       one NeRF training step, reference model vs converted (:func:`nerf_step_cases`)
Modes fwd and fwd+bwd (gradients for sigmas and rgbs; the upstream gradient is the colour's).

Bytes (:func:`traffic_bytes`; s = element size of sigmas/rgbs, t in fp32, F = 3, N samples, R rays):
    fwd     = N (s + F s + 8)  +  R (F s + 3 s + 8)           read sigma, rgb, t0, t1; write the per-ray outputs
    bwd     = N (s + F s + 8)  +  N (s + F s)  +  R (F s + 2 s + 8)   read them again, write d sigma, d rgb;
              per-ray: the colour gradient, the saved opacity / depth / kept counts
    fwd+bwd = fwd + bwd
Packed rows count the N samples that exist (not only those kept: the floor of a kernel that has to
look at every sample's interval is the same, and termination is where the kernel beats it).
Metric GB/s, fraction of the measured DRAM bandwidth.

CPU: one small case (512 rays x 64 samples, fp32, dense and packed), no torch.compile rows.
GPU quick: fp32 at 65536 x 192 dense and packed. Full GPU: 2 ray counts x 2 sample counts x 2
kernels x fp32 / fp16 / bf16 = 24 cases x 2 modes x 4 providers, a few minutes (the compiles).
"""
from typing import List, Optional, Sequence

import torch

from .harness import Case

FAMILY = "volume_render"
KERNELS = ("volume_render", "volume_render_packed")
FEATURES = 3
THRESHOLD = 1e-4
GPU_SHAPES = ((4096, 64), (4096, 192), (65536, 64), (65536, 192))
GPU_QUICK_SHAPES = ((65536, 192),)
CPU_SHAPES = ((512, 64),)
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MODES = ("fwd", "fwd+bwd")


def traffic_bytes(mode, n, rays, element_size, features=FEATURES):
    s = element_size
    fwd = n * (s + features * s + 8) + rays * (features * s + 3 * s + 8)
    bwd = n * (s + features * s + 8) + n * (s + features * s) + rays * (features * s + 2 * s + 8)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _draws(rays, samples):
    """The case's generator after the interval jitter and the packed rays' sample counts."""
    g = torch.Generator(device="cpu").manual_seed(rays * 1000 + samples)
    jitter = torch.rand(rays, samples, generator=g) * (4.0 / samples)
    counts = (torch.rand(rays, generator=g) * 0.75 + 0.25).mul(samples).long().clamp(1, samples)
    return g, jitter, counts


def _setup(kernel, rays, samples, dtype, device):
    def setup():
        try:  # a fresh compile cache per case
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001
            pass
        g, jitter, counts = _draws(rays, samples)
        edges = torch.linspace(2.0, 6.0, samples + 1)
        t0 = (edges[:-1] + jitter * 0.5).expand(rays, samples).contiguous()
        t1 = torch.cat([t0[:, 1:], torch.full((rays, 1), 1e10)], 1)  # NeRF's last interval
        if kernel == "volume_render":
            sig = torch.rand(rays, samples, generator=g) * 2.0
            rgb = torch.rand(rays, samples, FEATURES, generator=g)
            inputs = {}
        else:
            keep = torch.arange(samples)[None, :] < counts[:, None]
            surface = (torch.rand(rays, 1, generator=g) * samples).long()
            sig = torch.where(torch.arange(samples)[None, :] >= surface, 50.0, 0.05)
            sig, rgb = sig[keep], torch.rand(int(counts.sum()), FEATURES, generator=g)
            t0, t1 = t0[keep], t1[keep]
            inputs = {"offsets": torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(device)}
        inputs.update({
            "sigmas": sig.to(device=device, dtype=dtype).requires_grad_(True),
            "rgbs": rgb.to(device=device, dtype=dtype).requires_grad_(True),
            "t_starts": t0.to(device), "t_ends": t1.to(device)})
        return inputs
    return setup


def _render_fn(inputs, backend):
    from ..ops.volume_render import volume_render
    kw = {}
    if "offsets" in inputs:
        kw = dict(offsets=inputs["offsets"], transmittance_threshold=THRESHOLD, validate=False)
    s, c, t0, t1 = inputs["sigmas"], inputs["rgbs"], inputs["t_starts"], inputs["t_ends"]

    def run(s=s, c=c, t0=t0, t1=t1):
        return volume_render(s, c, t0, t1, return_weights=False, backend=backend, **kw).color
    return run, [s, c]


def _cvkernels(inputs, mode):
    return _render_fn(inputs, None)


def _eager(inputs, mode):
    return _render_fn(inputs, "torch")


def _compiled(inputs, mode):
    run, leaves = _render_fn(inputs, "torch")
    return torch.compile(run, dynamic=False), leaves


def _nerfacc(inputs, mode):
    import nerfacc  # noqa: F401  (ImportError: recorded as not available)
    s, c, t0, t1 = inputs["sigmas"], inputs["rgbs"], inputs["t_starts"], inputs["t_ends"]
    if "offsets" in inputs:
        offsets = inputs["offsets"]
        counts = offsets[1:] - offsets[:-1]
        ray_indices = torch.repeat_interleave(torch.arange(counts.numel(), device=s.device), counts)
        n_rays = counts.numel()

        def run():
            w, _, _ = nerfacc.render_weight_from_density(t0, t1, s, ray_indices=ray_indices, n_rays=n_rays)
            return nerfacc.accumulate_along_rays(w, c, ray_indices=ray_indices, n_rays=n_rays)
    else:
        def run():
            w, _, _ = nerfacc.render_weight_from_density(t0, t1, s)
            return nerfacc.accumulate_along_rays(w, c)
    return run, [s, c]


PROVIDERS = {"cvkernels": _cvkernels, "eager": _eager, "torch.compile": _compiled, "nerfacc": _nerfacc}


# ----------------------------------------------------------------------------- NeRF training step

def _nerf_setup(rays, config, device):
    def setup():
        from reference import models, nerf_scene
        torch.manual_seed(0)
        data = nerf_scene.make_dataset(2, 32, 32, seed=0, n_samples=128)
        idx = torch.randint(0, data["rays_o"].shape[0], (rays,), generator=torch.Generator().manual_seed(0))
        model = models.create("nerf", **config).to(device).train()
        return {"model": model, "rays_o": data["rays_o"][idx].to(device), "rays_d": data["rays_d"][idx].to(device),
                "target": data["target_rgb"][idx].to(device), "near": data["near"], "far": data["far"]}
    return setup


def _nerf_provider(converted):
    def factory(inputs, mode):
        import copy

        from reference.models import nerf

        from ..convert import convert
        model = copy.deepcopy(inputs["model"])
        if converted:
            model = convert(model)

        def step():
            gen = torch.Generator(device=inputs["rays_o"].device).manual_seed(0)
            out = model(inputs["rays_o"], inputs["rays_d"], inputs["near"], inputs["far"], generator=gen)
            return nerf.photometric_loss(out, inputs["target"])
        return step, list(model.parameters())
    return factory


def nerf_step_cases(device) -> List[Case]:
    """One NeRF training step (coarse + fine MLPs, stratified + hierarchical sampling, rendering,
    photometric loss; fwd and fwd+bwd) on the synthetic sphere scene: the reference model vs the same
    model after cvkernels.convert (its two VolumeRenderers on the kernel). GPU: the paper's model
    (8x256, 64 + 128 samples) on 4096 rays; CPU: the small configuration on 256 rays."""
    device = torch.device(device)
    if device.type == "cuda":
        rays, config, label = 4096, {}, "4096 rays, 8x256, 64+128"
    else:
        from reference import models
        rays, config, label = 256, dict(models.get("nerf").small_config), "256 rays, small config"
    return [Case(kernel="nerf_train_step", family=FAMILY, shape=label, dtype=torch.float32, layout="dense",
                 setup=_nerf_setup(rays, config, device),
                 providers={"cvkernels": _nerf_provider(True), "eager": _nerf_provider(False)}, modes=MODES)]


def cases(device, quick: bool = False, dtypes: Optional[Sequence[torch.dtype]] = None) -> List[Case]:
    device = torch.device(device)
    if device.type != "cuda":
        shapes, default_dtypes = CPU_SHAPES, (torch.float32,)
        providers = {k: v for k, v in PROVIDERS.items() if k != "torch.compile"}
    else:
        shapes = GPU_QUICK_SHAPES if quick else GPU_SHAPES
        default_dtypes = (torch.float32,) if quick else GPU_DTYPES
        providers = dict(PROVIDERS)
    out = []
    for dtype in (dtypes or default_dtypes):
        esize = torch.empty((), dtype=dtype).element_size()
        for kernel in KERNELS:
            for rays, samples in shapes:
                n = rays * samples
                if kernel == "volume_render_packed":  # the sample count the setup draws
                    n = int(_draws(rays, samples)[2].sum())
                out.append(Case(
                    kernel=kernel, family=FAMILY, shape=f"{rays}x{samples}", dtype=dtype,
                    layout="packed" if kernel == "volume_render_packed" else "dense",
                    setup=_setup(kernel, rays, samples, dtype, device), providers=dict(providers),
                    bytes={m: traffic_bytes(m, n, rays, esize) for m in MODES}, modes=MODES))
    return out + nerf_step_cases(device)


def describe(device) -> str:
    from .. import _dispatch
    device = torch.device(device)
    return f"cvkernels.volume_render runs the {_dispatch.choose('volume_render', device.type)!r} path on {device.type}"
