"""NeRF volume rendering: the registered C++/CUDA ops (cvkernels::volume_render_forward /
_backward), their fakes and autograd, the functional API for packed and dense samples, and the
pure-torch composite (the fallback and the eager baseline).

    volume_render(sigmas, features, t_starts, t_ends, *, offsets=None, counts=None,
                  ray_indices=None, num_rays=None, background=None, transmittance_threshold=0.0,
                  return_weights=True, validate=True, backend=None) -> VolumeRenderOutput

The quadrature (Mildenhall et al. 2020, eq. 3), per ray over its samples i in order:
delta_i = t_end_i - t_start_i, alpha_i = 1 - exp(-sigma_i delta_i), T_i = exp(-sum_{j<i} sigma_j delta_j),
w_i = T_i alpha_i, t_i = (t_start_i + t_end_i) / 2; color = sum w_i c_i + (1 - opacity) background,
opacity = sum w_i, depth = sum w_i t_i, expected_depth = depth / opacity (0 where opacity = 0).
Backends: "cpp" (CPU), "cuda" (one warp per ray), "torch" (the composite below).
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import _dispatch, _extension

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CUDA_MAX_FEATURES = 128


class VolumeRenderOutput(NamedTuple):
    """Per-ray outputs (leading shape ``rays``: (R,) packed, the samples' leading dims dense) and
    per-sample weights (the samples' shape; empty when not requested) and kept-sample counts.
    color, opacity and weights have the samples' dtype; the depths float32 (float64 for float64
    samples), the dtype of the intervals (a half-precision depth would overflow at NeRF's 1e10 last
    interval)."""
    color: Tensor           # (*rays, F)
    opacity: Tensor         # (*rays,)
    depth: Tensor           # (*rays,)   sum of w_i t_i (not normalized)
    expected_depth: Tensor  # (*rays,)   depth / opacity, 0 where opacity is 0
    weights: Tensor         # (N,) packed, (*rays, S) dense
    num_kept: Tensor        # (*rays,) int64: samples kept before early termination


# ----------------------------------------------------------------------------- fakes

if _extension.has_op("volume_render_forward"):
    @torch.library.register_fake("cvkernels::volume_render_forward")
    def _fake_forward(sigmas, features, t_starts, t_ends, offsets, num_rays, background, transmittance_threshold,
                      return_weights):
        R, F = num_rays, features.shape[1]
        return (sigmas.new_empty((R, F)), sigmas.new_empty((R,)), t_starts.new_empty((R,)), t_starts.new_empty((R,)),
                sigmas.new_empty((sigmas.shape[0] if return_weights else 0,)),
                sigmas.new_empty((R,), dtype=torch.int64))

    @torch.library.register_fake("cvkernels::volume_render_backward")
    def _fake_backward(grad_color, grad_opacity, grad_depth, grad_expected_depth, grad_weights, sigmas, features,
                       t_starts, t_ends, offsets, num_rays, background, opacity, depth, num_kept, t_grad):
        n = sigmas.shape[0] if t_grad else 0
        return (torch.empty_like(sigmas), torch.empty_like(features), t_starts.new_empty((n,)),
                t_ends.new_empty((n,)))


# ----------------------------------------------------------------------------- autograd

class _VolumeRenderFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigmas, features, t_starts, t_ends, offsets, num_rays, background, threshold, return_weights):
        color, opacity, depth, expected, weights, kept = torch.ops.cvkernels.volume_render_forward(
            sigmas, features, t_starts, t_ends, offsets, num_rays, background, threshold, return_weights)
        ctx.save_for_backward(sigmas, features, t_starts, t_ends, offsets, background, opacity, depth, kept)
        ctx.num_rays = num_rays
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(kept)
        if not return_weights:
            ctx.mark_non_differentiable(weights)
        return color, opacity, depth, expected, weights, kept

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_color, g_opacity, g_depth, g_expected, g_weights, _g_kept):
        sigmas, features, t_starts, t_ends, offsets, background, opacity, depth, kept = ctx.saved_tensors
        R, F = ctx.num_rays, features.shape[1]

        def per_ray(g, like):
            return like.new_zeros(like.shape) if g is None else g.to(like.dtype).contiguous()

        g_color = per_ray(g_color, sigmas.new_empty((R, F)))
        t_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        g_sig, g_feat, g_ts, g_te = torch.ops.cvkernels.volume_render_backward(
            g_color, per_ray(g_opacity, opacity), per_ray(g_depth, depth), per_ray(g_expected, depth),
            None if g_weights is None else g_weights.to(sigmas.dtype).contiguous(), sigmas, features, t_starts,
            t_ends, offsets, R, background, opacity, depth, kept, t_grad)
        g_bg = None
        if background is not None and ctx.needs_input_grad[6]:
            g_bg = g_color * (1 - opacity).unsqueeze(-1)
            if background.dim() == 1:
                g_bg = g_bg.sum(0)
        return (g_sig, g_feat, g_ts if t_grad else None, g_te if t_grad else None, None, None, g_bg, None, None)


# ----------------------------------------------------------------------------- torch composite

def _render_dense_torch(sigmas, features, t_starts, t_ends, background, threshold):
    """The quadrature on (R, S) samples with torch ops (autograd through every step)."""
    acc = torch.float64 if sigmas.dtype == torch.float64 else torch.float32
    s, c = sigmas.to(acc), features.to(acc)
    ts, te = t_starts.to(acc), t_ends.to(acc)
    tau = s * (te - ts)
    # exclusive prefix as a shifted inclusive cumsum (cumsum - tau would cancel against a 1e10 interval)
    excl = torch.cat([tau.new_zeros(tau.shape[:-1] + (1,)), torch.cumsum(tau, -1)[..., :-1]], -1)
    trans = torch.exp(-excl)
    weights = trans * -torch.expm1(-tau)
    if threshold > 0:
        kept = torch.cumprod((trans >= threshold).to(acc), -1)  # a prefix, also for negative sigma
        weights = weights * kept
        num_kept = kept.sum(-1).to(torch.int64)
    else:
        num_kept = torch.full(tau.shape[:-1], tau.shape[-1], dtype=torch.int64, device=tau.device)
    opacity = weights.sum(-1)
    depth = (weights * (0.5 * (ts + te))).sum(-1)
    color = (weights.unsqueeze(-1) * c).sum(-2)
    if background is not None:
        color = color + (1 - opacity).unsqueeze(-1) * background.to(acc)
    expected = torch.where(opacity > 0, depth / torch.where(opacity > 0, opacity, 1), 0)
    out = sigmas.dtype
    return VolumeRenderOutput(color.to(out), opacity.to(out), depth, expected, weights.to(out), num_kept)


def _render_packed_torch(sigmas, features, t_starts, t_ends, offsets, num_rays, background, threshold):
    """Packed samples through the dense composite: scattered into (R, max count) with sigma = 0 padding."""
    counts = offsets[1:] - offsets[:-1]
    n, F = sigmas.shape[0], features.shape[1]
    width = int(counts.max()) if num_rays > 0 and n > 0 else 0
    ray = torch.repeat_interleave(torch.arange(num_rays, device=sigmas.device), counts, output_size=n)
    slot = torch.arange(n, device=sigmas.device) - offsets[:-1][ray]

    def dense(values, fill=0.0):
        out = values.new_full((num_rays, width) + values.shape[1:], fill)
        return out.index_put((ray, slot), values)

    if background is not None and background.dim() == 1:
        background = background.expand(num_rays, F)
    r = _render_dense_torch(dense(sigmas), dense(features), dense(t_starts), dense(t_ends), background, threshold)
    return r._replace(weights=r.weights[ray, slot], num_kept=torch.minimum(r.num_kept, counts))


# ----------------------------------------------------------------------------- public API

def _as_offsets(fn, n, offsets, counts, ray_indices, num_rays, device, validate):
    given = [name for name, v in (("offsets", offsets), ("counts", counts), ("ray_indices", ray_indices))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"{fn}: packed samples (1-D sigmas) need exactly one of offsets, counts or ray_indices; "
                         f"got {given or 'none'}")
    name = given[0]
    value = {"offsets": offsets, "counts": counts, "ray_indices": ray_indices}[name]
    if not isinstance(value, Tensor) or value.dim() != 1 or value.is_floating_point() or value.is_complex():
        raise TypeError(f"{fn}: {name} must be a 1-D integer tensor, got "
                        f"{value.dtype if isinstance(value, Tensor) else type(value).__name__}"
                        f"{tuple(value.shape) if isinstance(value, Tensor) else ''}")
    if value.device != device:
        raise ValueError(f"{fn}: {name} is on {value.device} but sigmas is on {device}")
    value = value.to(torch.int64)
    check = validate and not torch.compiler.is_compiling()
    if name == "offsets":
        if value.numel() < 1:
            raise ValueError(f"{fn}: offsets must have num_rays + 1 >= 1 entries")
        if num_rays is not None and value.numel() != num_rays + 1:
            raise ValueError(f"{fn}: offsets has {value.numel()} entries, expected num_rays + 1 = {num_rays + 1}")
        if check:
            if int(value[0]) != 0 or int(value[-1]) != n:
                raise ValueError(f"{fn}: offsets must start at 0 and end at the sample count {n}, got "
                                 f"{int(value[0])} .. {int(value[-1])}")
            if value.numel() > 1 and bool((value[1:] < value[:-1]).any()):
                raise ValueError(f"{fn}: offsets must be non-decreasing (ray r owns offsets[r]:offsets[r+1])")
        return value, value.numel() - 1
    if name == "counts":
        if num_rays is not None and value.numel() != num_rays:
            raise ValueError(f"{fn}: counts has {value.numel()} entries, expected num_rays = {num_rays}")
        if check:
            if value.numel() and bool((value < 0).any()):
                raise ValueError(f"{fn}: counts must be non-negative")
            if int(value.sum()) != n:
                raise ValueError(f"{fn}: counts sum to {int(value.sum())}, expected the sample count {n}")
        return torch.cat([value.new_zeros(1), torch.cumsum(value, 0)]), value.numel()
    if value.numel() != n:
        raise ValueError(f"{fn}: ray_indices has {value.numel()} entries, expected one per sample ({n})")
    if num_rays is None:
        raise ValueError(f"{fn}: ray_indices needs num_rays")
    if check and n:
        if bool((value[1:] < value[:-1]).any()):
            raise ValueError(f"{fn}: ray_indices must be sorted (the samples of each ray contiguous)")
        if int(value[0]) < 0 or int(value[-1]) >= num_rays:
            raise ValueError(f"{fn}: ray_indices must lie in [0, num_rays = {num_rays})")
    bounds = torch.arange(num_rays + 1, device=device, dtype=torch.int64)
    return torch.searchsorted(value, bounds), num_rays


def _float_tensor(fn, name, t):
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be floating point, got {t.dtype}")
    return t


def volume_render(sigmas: Tensor, features: Tensor, t_starts: Tensor, t_ends: Tensor, *,
                  offsets: Optional[Tensor] = None, counts: Optional[Tensor] = None,
                  ray_indices: Optional[Tensor] = None, num_rays: Optional[int] = None,
                  background: Optional[Tensor] = None, transmittance_threshold: float = 0.0,
                  return_weights: bool = True, validate: bool = True, backend=None) -> VolumeRenderOutput:
    """Renders rays from per-sample densities and features (colours, or any feature width F).

    Dense layout (every ray has S samples; any leading ray dims ``*rays``):
        sigmas (*rays, S), features (*rays, S, F), t_starts / t_ends (*rays, S)
        -> color (*rays, F), opacity / depth / expected_depth (*rays,), weights (*rays, S)
    Packed layout (N samples of R rays, each ray's samples contiguous and in order along the ray):
        sigmas (N,), features (N, F), t_starts / t_ends (N,), and one of
        offsets (R + 1,) (ray r owns samples offsets[r]:offsets[r+1]), counts (R,), or
        ray_indices (N,) sorted, with num_rays = R
        -> color (R, F), opacity / depth / expected_depth (R,), weights (N,)

    Args:
        background: (F,) or (*rays, F) colour seen through the remaining transmittance
            (color += (1 - opacity) background); differentiable.
        transmittance_threshold: early ray termination: samples are kept while the transmittance
            before them is >= the threshold; later samples contribute nothing and get zero
            gradients (the gradients are exact for what was kept). 0 keeps every sample.
        return_weights: also return the per-sample weights w_i (differentiable; needed by
            hierarchical sampling and weight-based losses).
        validate: check packed offsets / counts / ray_indices (a device-to-host read on CUDA;
            skipped under torch.compile). The kernels never read out of bounds either way.
        backend: "cpp", "cuda" or "torch" (None: automatic).

    sigmas and features are promoted to one dtype (float32/float64/float16/bfloat16, accumulation
    in float32, float64 for float64); t_starts / t_ends are used in float32 (float64). Gradients
    flow to sigmas, features, t_starts, t_ends and background. Double backward is refused.
    """
    fn = "volume_render"
    for name, t in (("sigmas", sigmas), ("features", features), ("t_starts", t_starts), ("t_ends", t_ends)):
        _float_tensor(fn, name, t)
    device = sigmas.device
    for name, t in (("features", features), ("t_starts", t_starts), ("t_ends", t_ends), ("background", background)):
        if t is not None and t.device != device:
            raise ValueError(f"{fn}: {name} is on {t.device} but sigmas is on {device}")
    threshold = float(transmittance_threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{fn}: transmittance_threshold must be in [0, 1], got {transmittance_threshold}")
    dtype = torch.promote_types(sigmas.dtype, features.dtype)
    if dtype not in _DTYPES:
        raise TypeError(f"{fn}: sigmas / features must be float16, bfloat16, float32 or float64, got {dtype}")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    packed = sigmas.dim() == 1
    if packed:
        n = sigmas.shape[0]
        if features.dim() != 2 or features.shape[0] != n:
            raise ValueError(f"{fn}: packed features must be (N, F) with N = {n} samples, got {tuple(features.shape)}")
        offs, R = _as_offsets(fn, n, offsets, counts, ray_indices, num_rays, device, validate)
        lead, S = (R,), None
    else:
        if offsets is not None or counts is not None or ray_indices is not None:
            raise ValueError(f"{fn}: offsets / counts / ray_indices are for packed (1-D) sigmas; "
                             f"dense sigmas {tuple(sigmas.shape)} give S samples per ray in the last dim")
        if features.dim() != sigmas.dim() + 1 or features.shape[:-1] != sigmas.shape:
            raise ValueError(f"{fn}: dense features must be sigmas' shape {tuple(sigmas.shape)} + (F,), got "
                             f"{tuple(features.shape)}")
        lead, S = tuple(sigmas.shape[:-1]), sigmas.shape[-1]
        R = 1
        for d in lead:
            R *= d
        n, offs = R * S, None
    for name, t in (("t_starts", t_starts), ("t_ends", t_ends)):
        if t.shape != sigmas.shape:
            raise ValueError(f"{fn}: {name} must have sigmas' shape {tuple(sigmas.shape)}, got {tuple(t.shape)}")
    F = features.shape[-1]
    if background is not None:
        _float_tensor(fn, "background", background)
        if background.shape not in ((F,), lead + (F,)):
            raise ValueError(f"{fn}: background must have shape ({F},) or {lead + (F,)}, got "
                             f"{tuple(background.shape)}")
        background = background.to(dtype)
        background = background.contiguous() if background.dim() == 1 else background.reshape(R, F).contiguous()

    s = sigmas.to(dtype).reshape(n).contiguous()
    c = features.to(dtype).reshape(n, F).contiguous()
    ts = t_starts.to(acc).reshape(n).contiguous()
    te = t_ends.to(acc).reshape(n).contiguous()
    supported = device.type != "cuda" or F <= _CUDA_MAX_FEATURES
    name = _dispatch.choose("volume_render", device.type, backend, supported=supported)
    if name == "torch":
        if packed:
            out = _render_packed_torch(s, c, ts, te, offs, R, background, threshold)
        else:
            out = _render_dense_torch(s.view(R, S), c.view(R, S, F), ts.view(R, S), te.view(R, S), background,
                                      threshold)
        if not return_weights:
            out = out._replace(weights=s.new_empty((0,)))
    else:
        out = VolumeRenderOutput(*_VolumeRenderFunction.apply(s, c, ts, te, offs, R, background, threshold,
                                                              bool(return_weights)))
    if packed:
        return out
    weights = out.weights.reshape(lead + (S,)) if return_weights else out.weights
    return VolumeRenderOutput(out.color.reshape(lead + (F,)), out.opacity.reshape(lead), out.depth.reshape(lead),
                              out.expected_depth.reshape(lead), weights, out.num_kept.reshape(lead))


# ----------------------------------------------------------------------------- sampling helpers

def positional_encoding(x: Tensor, num_freqs: int) -> Tensor:
    """NeRF's gamma (the official code's embedder): x (..., D) -> (..., D (1 + 2 num_freqs)) =
    cat([x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)]) (input included, no pi)."""
    if num_freqs < 0:
        raise ValueError(f"positional_encoding: num_freqs must be >= 0, got {num_freqs}")
    freqs = 2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)
    scaled = x.unsqueeze(-2) * freqs.unsqueeze(-1)                     # (..., L, D)
    waves = torch.stack([torch.sin(scaled), torch.cos(scaled)], -2)    # (..., L, 2, D)
    return torch.cat([x, waves.flatten(-3)], -1)


def stratified_samples(near: Tensor, far: Tensor, n_samples: int, perturb: bool = True,
                       generator: Optional[torch.Generator] = None) -> Tensor:
    """Stratified depths (NeRF eq. 2): near, far (R,) -> z (R, n_samples), increasing per ray.

    The grid z_i = lerp(near, far, i / (S - 1)); with ``perturb`` each z_i is redrawn uniformly
    between the neighbouring grid mid-points (the ray's ends close the first and last intervals)
    from one ``torch.rand((R, S), generator=generator)`` call: the same draws as
    reference.models.nerf.stratified_samples under the same generator state.
    """
    if n_samples < 1:
        raise ValueError(f"stratified_samples: n_samples must be >= 1, got {n_samples}")
    s = torch.linspace(0.0, 1.0, n_samples, dtype=near.dtype, device=near.device)
    z = torch.lerp(near.unsqueeze(-1), far.unsqueeze(-1), s)
    if not perturb:
        return z
    edges = torch.cat([z[:, :1], 0.5 * (z[:, 1:] + z[:, :-1]), z[:, -1:]], -1)  # (R, S + 1)
    u = torch.rand(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    return edges[:, :-1] + (edges[:, 1:] - edges[:, :-1]) * u


def sample_pdf(bins: Tensor, weights: Tensor, n_samples: int, deterministic: bool = False,
               generator: Optional[torch.Generator] = None) -> Tensor:
    """Hierarchical (inverse-CDF) sampling of NeRF's fine pass (eq. 5).

    bins (R, B + 1) interval edges, weights (R, B) (detached coarse weights) -> (R, n_samples)
    depths, unsorted, drawn from the piecewise-constant pdf (weights + 1e-5) / sum: u from one
    ``torch.rand((R, n_samples), generator=generator)`` call (``deterministic``: evenly spaced
    u in [0, 1]), mapped through the piecewise-linear inverse CDF (an interval whose CDF step is
    below 1e-5 maps u to its lower edge plus the fraction u - cdf_below). Same draws and results as
    reference.models.nerf.sample_pdf.
    """
    if bins.dim() != 2 or weights.dim() != 2 or bins.shape[0] != weights.shape[0] \
            or bins.shape[1] != weights.shape[1] + 1:
        raise ValueError(f"sample_pdf: bins must be (R, B + 1) and weights (R, B), got {tuple(bins.shape)} and "
                         f"{tuple(weights.shape)}")
    pdf = weights.detach().to(bins.dtype) + 1e-5
    pdf = pdf / pdf.sum(-1, keepdim=True)
    # (R, B + 1): 0, the partial sums, and exactly 1 last (a rounded sum may end just below 1,
    # which would send u = 1 past an empty last interval)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf[:, :-1], -1), torch.ones_like(pdf[:, :1])], -1)
    shape = (bins.shape[0], n_samples)
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_samples, dtype=bins.dtype, device=bins.device).expand(shape).contiguous()
    else:
        u = torch.rand(shape, generator=generator, dtype=bins.dtype, device=bins.device)
    upper = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)
    lower = (upper - 1).clamp(min=0)
    c0, c1 = cdf.gather(-1, lower), cdf.gather(-1, upper)
    b0, b1 = bins.gather(-1, lower), bins.gather(-1, upper)
    step = c1 - c0
    frac = (u - c0) / torch.where(step < 1e-5, torch.ones_like(step), step)
    return b0 + frac * (b1 - b0)
