"""Reference NeRF (positional encoding, the 8x256 MLP with a skip, coarse + fine hierarchical sampling).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  O l.945-958  NeRF: a scene as a continuous function F(x, d) -> (c, sigma) learned by a network,
               rendered with the volume-rendering integral between near and far bounds (the
               transmittance T(t) accumulated along the ray), trained with the squared error of
               the rendered ray colours. The seed has lost every formula.
Paper and code (for all the seed leaves out):
  Mildenhall, Srinivasan, Tancik, Barron, Ramamoorthi, Ng, "NeRF: Representing Scenes as Neural
  Radiance Fields for View Synthesis", ECCV 2020, arXiv:2003.08934: sec. 4 / eq. 3 (quadrature),
  sec. 5.1 / eq. 4 (positional encoding, L = 10 for x, L = 4 for d), sec. 5.2 / eq. 5 (hierarchical
  sampling, N_c = 64, N_f = 128), sec. 5.3 / eq. 6 (loss = coarse + fine squared error), Fig. 7
  (the MLP: 8 fully connected ReLU layers of 256, the input concatenated to the fifth layer's
  activation, sigma from a linear head, a 256 feature concatenated with gamma(d) -> 128 ReLU ->
  sigmoid RGB). Official code github.com/bmild/nerf (``run_nerf_helpers.py``: get_embedder,
  init_nerf_model, sample_pdf, get_rays; ``run_nerf.py``: raw2outputs, render_rays).

What follows the official code where the paper is silent, stated:
- positional_encoding = cat([x, sin(2^0 x), cos(2^0 x), ..., sin(2^{L-1} x), cos(2^{L-1} x)]):
  the input itself is included and the frequencies are 2^k WITHOUT the paper's pi (eq. 4 has
  sin(2^k pi p)); 3 (1 + 2L) features: 63 for x, 27 for d.
- skips=(4,) means: the output (activation) of layer index 4, the fifth layer, is concatenated
  with the encoded input, cat([gamma(x), h]), so layer index 5 takes width + 63 inputs (paper
  Fig. 7: "concatenates this input to the fifth layer's activation").
- sigma = ReLU(raw sigma) (the code applies ReLU in raw2outputs; no softplus); RGB = sigmoid.
  The feature layer has no activation; the view branch is one 128-wide ReLU layer (Fig. 7).
  ``use_viewdirs=False`` is the code's variant: one linear output of 4 (RGB, sigma) from layer 8.
- The viewing direction fed to the MLP is rays_d normalized; the intervals are measured in
  world distance (z |d|), as the code's ``dists * norm(rays_d)``; the last interval of a ray is
  1e10 long (the code's delta_N = 1e10), expressed here as t_end = t_start + 1e10. The MLP is
  evaluated at the interval starts z_i (the code's points), the interval of sample i is
  [z_i, z_{i+1}].
- Coarse samples: stratified (``stratified_samples``); fine samples: inverse-CDF on the coarse
  interval mid-points with the coarse weights w_1 .. w_{N_c-2} (``sample_pdf``), detached; the
  fine network sees the sorted union of the 64 coarse and 128 fine z (192 samples), as the code.
  In eval mode, or with ``perturb=False``, both are deterministic (grid / linspace draws).

Deviations from the official code, stated: T_i = exp(-sum_{j<i} sigma_j delta_j) instead of
the cumulative product of (1 - alpha + 1e-10); sample_pdf sets the last cdf entry to exactly 1
(the code's float cumsum may end at 1 - 1 ulp, and where the last bin is empty its deterministic
u = 1 then lands just above the second-last bin edge instead of at the last one); no raw-density
noise (raw_noise_std, 0 for the synthetic scenes in the code); no NDC rays, no chunking. ``depth`` is the renderer's
sum_i w_i (t_start_i + t_end_i) / 2 (the cvkernels contract), not the code's sum_i w_i z_i: with
the 1e10 last interval it counts w_N (t_N + 5e9), so it is a scene depth only for rays that are
opaque before their last sample.

All rendering goes through ``VolumeRenderer`` modules (``renderer_coarse``, ``renderer_fine``):
cvkernels.convert swaps them for the kernel. Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register

__all__ = ["positional_encoding", "NeRFMLP", "stratified_samples", "sample_pdf", "VolumeRenderer", "NeRF",
           "photometric_loss", "nerf", "LAST_INTERVAL"]

LAST_INTERVAL = 1e10  # length of the last interval of every ray (the official code's delta_N)


def positional_encoding(x, num_freqs):
    """x [..., D] -> [..., D (1 + 2 num_freqs)]: cat([x] + [sin(2^k x), cos(2^k x) for k < num_freqs])."""
    parts = [x]
    for k in range(num_freqs):
        scaled = x * (2.0 ** k)
        parts += [torch.sin(scaled), torch.cos(scaled)]
    return torch.cat(parts, -1)


class NeRFMLP(nn.Module):
    """F(x, d) -> (sigma, rgb): the NeRF MLP of paper Fig. 7 (module names as the code's Keras layers
    and nerf-pytorch: pts_linears, alpha_linear, feature_linear, views_linears, rgb_linear).

    depth: fully connected layers on gamma(x); width: their width; skips: indices of the layers whose
    activation is concatenated with gamma(x) before the next layer; pos_freqs / dir_freqs: L for x / d.
    """

    def __init__(self, depth=8, width=256, skips=(4,), pos_freqs=10, dir_freqs=4, use_viewdirs=True):
        super().__init__()
        if any(not 0 <= s < depth - 1 for s in skips):
            raise ValueError(f"skips must index layers 0 .. depth - 2 = {depth - 2} (a later layer consumes "
                             f"the concatenation), got {tuple(skips)}")
        self.skips, self.pos_freqs, self.dir_freqs, self.use_viewdirs = tuple(skips), pos_freqs, dir_freqs, use_viewdirs
        self.in_features = 3 * (1 + 2 * pos_freqs)
        self.view_features = 3 * (1 + 2 * dir_freqs)
        self.pts_linears = nn.ModuleList([nn.Linear(self.in_features, width)] + [
            nn.Linear(width + (self.in_features if i in self.skips else 0), width) for i in range(depth - 1)])
        if use_viewdirs:
            self.alpha_linear = nn.Linear(width, 1)
            self.feature_linear = nn.Linear(width, width)
            self.views_linears = nn.ModuleList([nn.Linear(width + self.view_features, width // 2)])
            self.rgb_linear = nn.Linear(width // 2, 3)
        else:
            self.output_linear = nn.Linear(width, 4)

    def forward(self, points, viewdirs=None):
        """points [..., 3], viewdirs [..., 3] (unit; ignored without use_viewdirs) -> sigma [...], rgb [..., 3]."""
        encoded = positional_encoding(points, self.pos_freqs)
        h = encoded
        for i, layer in enumerate(self.pts_linears):
            h = F.relu(layer(h))
            if i in self.skips:
                h = torch.cat([encoded, h], -1)
        if self.use_viewdirs:
            raw_sigma = self.alpha_linear(h)[..., 0]
            h = torch.cat([self.feature_linear(h), positional_encoding(viewdirs, self.dir_freqs)], -1)
            for layer in self.views_linears:
                h = F.relu(layer(h))
            raw_rgb = self.rgb_linear(h)
        else:
            out = self.output_linear(h)
            raw_rgb, raw_sigma = out[..., :3], out[..., 3]
        return F.relu(raw_sigma), torch.sigmoid(raw_rgb)


def stratified_samples(near, far, n_samples, perturb=True, generator=None):
    """Stratified depths along each ray (paper eq. 2, the official code's construction).

    near, far [R] -> z [R, S], S = n_samples, increasing along each ray. Grid z = near (1 - s) +
    far s, s = linspace(0, 1, S); with perturb each sample is uniform in [m_{i-1}, m_i] (m: the
    grid mid-points, closed by z_0 and z_{S-1}) with the draws u of ONE call
    ``torch.rand((R, S), generator=generator, dtype=near.dtype, device=near.device)``.
    """
    s = torch.linspace(0.0, 1.0, n_samples, dtype=near.dtype, device=near.device)
    z = near[:, None] * (1.0 - s) + far[:, None] * s
    if not perturb:
        return z
    mids = 0.5 * (z[:, 1:] + z[:, :-1])
    upper = torch.cat([mids, z[:, -1:]], -1)
    lower = torch.cat([z[:, :1], mids], -1)
    u = torch.rand(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    return lower + (upper - lower) * u


def sample_pdf(bins, weights, n_samples, deterministic=False, generator=None):
    """Inverse transform sampling of the piecewise-constant pdf of ``weights`` (paper eq. 5).

    bins [R, B+1] (edges), weights [R, B] -> samples [R, n_samples], NOT sorted (the caller sorts
    the union with the coarse samples, as the official code). pdf = (w + 1e-5) / sum, cdf =
    [0, cumsum(pdf)] with its last entry exactly 1, u = ONE call ``torch.rand((R, n_samples),
    generator=generator, dtype=bins.dtype, device=bins.device)`` (``deterministic``: u =
    linspace(0, 1, n_samples) per ray),
    ind = searchsorted(cdf, u, right=True), linear inside [bins[ind-1], bins[ind]] (clamped to the
    ends; a bin whose cdf step is < 1e-5 has denominator 1).
    """
    weights = weights.to(bins.dtype) + 1e-5
    pdf = weights / weights.sum(-1, keepdim=True)
    # cdf[B] is exactly 1: the code's cumsum can end at 1 - 1 ulp, and u = 1 then lands just above
    # bins[B-1] (the < 1e-5 denominator rule) instead of at bins[B]
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf[:, :-1], -1), torch.ones_like(pdf[:, :1])], -1)
    shape = (bins.shape[0], n_samples)
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_samples, dtype=bins.dtype, device=bins.device).expand(shape).contiguous()
    else:
        u = torch.rand(shape, generator=generator, dtype=bins.dtype, device=bins.device)
    ind = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (ind - 1).clamp_min(0)
    above = ind.clamp_max(cdf.shape[-1] - 1)
    cdf_below, cdf_above = cdf.gather(-1, below), cdf.gather(-1, above)
    bins_below, bins_above = bins.gather(-1, below), bins.gather(-1, above)
    denom = cdf_above - cdf_below
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    return bins_below + (u - cdf_below) / denom * (bins_above - bins_below)


class VolumeRenderer(nn.Module):
    """The NeRF quadrature over R rays of S samples (reference/ops/volume_render.py states it), vectorized.

    background: None (black) or a tuple of F floats composited with weight 1 - opacity (a plain
    attribute, not a buffer). No early termination. cvkernels.convert swaps this module.
    """

    def __init__(self, background=None):
        super().__init__()
        self.background = None if background is None else tuple(float(v) for v in background)

    def forward(self, sigmas, rgbs, t_starts, t_ends):
        """sigmas [R, S], rgbs [R, S, F], t_starts / t_ends [R, S] ->
        color [R, F], opacity [R], depth [R], weights [R, S]."""
        tau = sigmas * (t_ends - t_starts)
        # optical depth before each sample: exclusive cumulative sum
        before = torch.cat([torch.zeros_like(tau[:, :1]), torch.cumsum(tau[:, :-1], -1)], -1)
        weights = torch.exp(-before) * -torch.expm1(-tau)
        opacity = weights.sum(-1)
        depth = (weights * (0.5 * (t_starts + t_ends))).sum(-1)
        color = (weights[..., None] * rgbs).sum(-2)
        if self.background is not None:
            bg = torch.tensor(self.background, dtype=color.dtype, device=color.device)
            color = color + (1.0 - opacity)[:, None] * bg
        return color, opacity, depth, weights

    def extra_repr(self):
        return f"background={self.background}"


def _split_rays(rays_o, rays_d, near, far):
    if rays_d is None:  # one tensor of rays [R, 8] = (origin, direction, near, far)
        if rays_o.dim() != 2 or rays_o.shape[-1] != 8:
            raise ValueError(f"rays must be [R, 8] = (o, d, near, far) when rays_d is None, got {tuple(rays_o.shape)}")
        return rays_o[:, :3], rays_o[:, 3:6], rays_o[:, 6], rays_o[:, 7]
    if near is None or far is None:
        raise ValueError("near and far are required with rays_d")
    n = rays_o.shape[0]
    as_rays = lambda v: torch.as_tensor(v, dtype=rays_o.dtype, device=rays_o.device).expand(n)  # noqa: E731
    return rays_o, rays_d, as_rays(near), as_rays(far)


class NeRF(nn.Module):
    """Coarse + fine NeRF (paper sec. 5.2).

    forward(rays_o [R, 3], rays_d [R, 3], near, far (floats or [R]), generator=None), or forward(rays [R, 8])
    -> dict with rgb_coarse / rgb_fine [R, 3], opacity_*, depth_* [R], weights_coarse [R, N_c],
    weights_fine [R, N_c + N_f], z_coarse [R, N_c], z_fine [R, N_c + N_f] (sorted sample depths, in
    units of |rays_d|). With perturb in train mode the draws come from ``generator`` (else the global
    RNG): first the stratified draws [R, N_c], then the inverse-CDF draws [R, N_f].
    """

    def __init__(self, depth=8, width=256, skips=(4,), pos_freqs=10, dir_freqs=4, use_viewdirs=True, n_coarse=64,
                 n_fine=128, perturb=True, background=None):
        super().__init__()
        if n_coarse < 3 or n_fine < 1:
            raise ValueError(f"need n_coarse >= 3 (the pdf uses the interior coarse weights) and n_fine >= 1, "
                             f"got {n_coarse}, {n_fine}")
        self.n_coarse, self.n_fine, self.perturb = n_coarse, n_fine, perturb
        mlp = dict(depth=depth, width=width, skips=skips, pos_freqs=pos_freqs, dir_freqs=dir_freqs,
                   use_viewdirs=use_viewdirs)
        self.mlp_coarse = NeRFMLP(**mlp)
        self.mlp_fine = NeRFMLP(**mlp)
        self.renderer_coarse = VolumeRenderer(background)
        self.renderer_fine = VolumeRenderer(background)

    @staticmethod
    def _render(mlp, renderer, rays_o, rays_d, z):
        points = rays_o[:, None, :] + rays_d[:, None, :] * z[..., None]
        viewdirs = F.normalize(rays_d, dim=-1)[:, None, :].expand_as(points)
        sigmas, rgbs = mlp(points, viewdirs)
        t_starts = z * rays_d.norm(dim=-1, keepdim=True)
        t_ends = torch.cat([t_starts[:, 1:], t_starts[:, -1:] + LAST_INTERVAL], -1)
        return renderer(sigmas, rgbs, t_starts, t_ends)

    def forward(self, rays_o, rays_d=None, near=None, far=None, generator=None):
        rays_o, rays_d, near, far = _split_rays(rays_o, rays_d, near, far)
        perturb = self.perturb and self.training
        z_coarse = stratified_samples(near.detach(), far.detach(), self.n_coarse, perturb, generator)
        rgb_c, opacity_c, depth_c, weights_c = self._render(self.mlp_coarse, self.renderer_coarse, rays_o, rays_d,
                                                            z_coarse)
        mids = 0.5 * (z_coarse[:, 1:] + z_coarse[:, :-1])
        z_pdf = sample_pdf(mids, weights_c[:, 1:-1].detach(), self.n_fine, deterministic=not perturb,
                           generator=generator)
        z_fine = torch.sort(torch.cat([z_coarse, z_pdf.detach()], -1), -1).values
        rgb_f, opacity_f, depth_f, weights_f = self._render(self.mlp_fine, self.renderer_fine, rays_o, rays_d, z_fine)
        return dict(rgb_coarse=rgb_c, opacity_coarse=opacity_c, depth_coarse=depth_c, weights_coarse=weights_c,
                    z_coarse=z_coarse, rgb_fine=rgb_f, opacity_fine=opacity_f, depth_fine=depth_f,
                    weights_fine=weights_f, z_fine=z_fine)


def photometric_loss(outputs, target_rgb):
    """Paper eq. 6 as the code's img2mse: MSE(rgb_coarse, target) + MSE(rgb_fine, target); target [R, 3]."""
    return F.mse_loss(outputs["rgb_coarse"], target_rgb) + F.mse_loss(outputs["rgb_fine"], target_rgb)


def nerf(**config):
    """NeRF, Mildenhall et al. 2020: 8x256 MLPs (coarse + fine), L = 10 / 4, 64 + 128 samples."""
    return NeRF(**config)


def _rays(batch, config):
    """[batch, 8] rays (o, d, near 2, far 6) from radius-4 origins towards the origin, jittered."""
    origins = F.normalize(torch.randn(batch, 3), dim=-1) * 4.0
    directions = F.normalize(-origins / 4.0 + 0.2 * torch.randn(batch, 3), dim=-1)
    bounds = torch.tensor([2.0, 6.0]).expand(batch, 2)
    return torch.cat([origins, directions, bounds], -1)


register(
    "nerf", nerf,
    small_config=dict(depth=4, width=32, skips=(2,), pos_freqs=4, dir_freqs=2, n_coarse=8, n_fine=8, perturb=False),
    example_input=_rays,
    families=("VR",),
    figures={
        "params": Figure(1_191_688, "paper Fig. 7 (no printed count: a hand count of its layers)", 0.0,
                         note="two 595,844-parameter MLPs (coarse, fine): 63->256, 4x 256->256, 319->256, "
                              "2x 256->256, sigma 256->1, feature 256->256, 283->128, 128->3, all with bias"),
    },
)
