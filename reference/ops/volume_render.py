"""Float64 oracle of NeRF volume rendering and of NeRF's two ray samplers, written plainly per ray.

Sources: O l.945-958 (NeRF: a density and colour field rendered by the volume-rendering integral
along camera rays; the seed has lost the formulas). Mildenhall, Srinivasan, Tancik, Barron,
Ramamoorthi, Ng, "NeRF: Representing Scenes as Neural Radiance Fields for View Synthesis",
ECCV 2020, arXiv:2003.08934: eq. 1 (the integral), eq. 2 (stratified sampling), eq. 3 (the
quadrature below, after Max 1995), eq. 5 (piecewise-constant pdf of the coarse weights, inverse
transform sampling); the official code (github.com/bmild/nerf, ``run_nerf.py`` raw2outputs /
render_rays and ``run_nerf_helpers.py`` sample_pdf) for the details the paper leaves out.

Quadrature (per ray, samples i = 0 .. n-1 in order along it):
    delta_i = t_end_i - t_start_i,   t_i = (t_start_i + t_end_i) / 2,
    alpha_i = 1 - exp(-sigma_i delta_i),
    T_i = exp(-sum_{j<i} sigma_j delta_j)      (transmittance BEFORE sample i, T_0 = 1),
    w_i = T_i alpha_i,
    opacity = sum w_i,  depth = sum w_i t_i,  color = sum w_i c_i + (1 - opacity) background,
    expected_depth = depth / opacity where opacity > 0, else 0.
Early termination: sample i contributes only while T_i >= transmittance_threshold; from the first
sample whose T_i is below it the rest of the ray is dropped (weights 0). Threshold 0 keeps all.
The returned transmittance is T_i of every sample (dropped ones included: it is a property of the
sample, the drop only removes its contribution).

Deviation from the official code, stated: it forms T_i as the exclusive cumulative product of
(1 - alpha_j + 1e-10); here T_i = exp(-sum_{j<i} sigma_j delta_j) exactly (no 1e-10).

Everything here runs Python loops over rays and samples on Python floats (IEEE float64) after
casting the inputs to float64: slow, obviously correct, independent of any vectorized code.
Nothing here imports cvkernels.
"""
import math

import torch

__all__ = ["volume_render_packed", "volume_render_dense", "stratified_samples_reference", "sample_pdf_reference"]


def _f64_list(x):
    return x.detach().to(device="cpu", dtype=torch.float64).tolist()


def volume_render_packed(sigmas, features, t_starts, t_ends, offsets, background=None, transmittance_threshold=0.0):
    """Renders R packed rays; ray r owns samples offsets[r] .. offsets[r+1] - 1 (a ray may own none).

    sigmas [N], features [N, F], t_starts [N], t_ends [N], offsets [R+1] int64 (non-decreasing,
    offsets[0] = 0, offsets[R] = N), background None, [F] or [R, F].
    Returns a dict of float64 CPU tensors: color [R, F], opacity [R], depth [R], expected_depth [R],
    weights [N], transmittance [N].
    """
    sig, ts, te = _f64_list(sigmas), _f64_list(t_starts), _f64_list(t_ends)
    feat = _f64_list(features)
    off = [int(v) for v in offsets.tolist()]
    n, n_rays, n_feat = len(sig), len(off) - 1, features.shape[-1]
    if features.dim() != 2 or features.shape[0] != n or len(ts) != n or len(te) != n:
        raise ValueError(f"features must be [N, F] and t_starts / t_ends [N] with N = {n}")
    if off[0] != 0 or off[-1] != n or any(b > e for b, e in zip(off[:-1], off[1:])):
        raise ValueError(f"offsets must be non-decreasing from 0 to N = {n}, got {off}")
    if background is None:
        bg = [[0.0] * n_feat] * n_rays
    else:
        b = _f64_list(background)
        bg = [b] * n_rays if background.dim() == 1 else b
    thr = float(transmittance_threshold)

    weights, trans = [0.0] * n, [0.0] * n
    color, opacity, depth, expected = [], [], [], []
    for r in range(n_rays):
        acc, o, d = [0.0] * n_feat, 0.0, 0.0
        optical_depth, dropped = 0.0, False            # sum_{j<i} sigma_j delta_j
        for i in range(off[r], off[r + 1]):
            t_before = math.exp(-optical_depth)
            trans[i] = t_before
            tau = sig[i] * (te[i] - ts[i])
            optical_depth += tau
            dropped = dropped or t_before < thr
            if dropped:
                continue
            w = t_before * (1.0 - math.exp(-tau))
            weights[i] = w
            o += w
            d += w * 0.5 * (ts[i] + te[i])
            for f in range(n_feat):
                acc[f] += w * feat[i][f]
        color.append([acc[f] + (1.0 - o) * bg[r][f] for f in range(n_feat)])
        opacity.append(o)
        depth.append(d)
        expected.append(d / o if o > 0 else 0.0)
    f64 = torch.float64
    return dict(color=torch.tensor(color, dtype=f64).reshape(n_rays, n_feat), opacity=torch.tensor(opacity, dtype=f64),
                depth=torch.tensor(depth, dtype=f64), expected_depth=torch.tensor(expected, dtype=f64),
                weights=torch.tensor(weights, dtype=f64), transmittance=torch.tensor(trans, dtype=f64))


def volume_render_dense(sigmas, features, t_starts, t_ends, background=None, transmittance_threshold=0.0):
    """R rays of S samples each: sigmas [R, S], features [R, S, F], t_starts / t_ends [R, S].

    The same dict as ``volume_render_packed``, with weights and transmittance [R, S].
    """
    n_rays, n_samples = sigmas.shape
    offsets = torch.arange(n_rays + 1, dtype=torch.int64) * n_samples
    out = volume_render_packed(sigmas.reshape(-1), features.reshape(n_rays * n_samples, -1), t_starts.reshape(-1),
                               t_ends.reshape(-1), offsets, background, transmittance_threshold)
    out["weights"] = out["weights"].reshape(n_rays, n_samples)
    out["transmittance"] = out["transmittance"].reshape(n_rays, n_samples)
    return out


def stratified_samples_reference(near, far, n_samples, u=None):
    """NeRF's stratified sampling (paper eq. 2 as the official code does it) -> z [R, S] float64.

    near, far [R]; u [R, S] uniform draws in [0, 1), or None for the unperturbed grid.
    Grid z_i = near (1 - i/(S-1)) + far i/(S-1) (z_0 = near for S = 1); with u, sample i is drawn
    uniformly in its stratum [m_{i-1}, m_i], m_i = (z_i + z_{i+1}) / 2, m_{-1} = z_0, m_{S-1} = z_{S-1}.
    """
    nears, fars = _f64_list(near), _f64_list(far)
    draws = None if u is None else _f64_list(u)
    out = []
    for r, (a, b) in enumerate(zip(nears, fars)):
        grid = [a * (1.0 - s) + b * s for s in
                ([i / (n_samples - 1) for i in range(n_samples)] if n_samples > 1 else [0.0])]
        if draws is None:
            out.append(grid)
            continue
        row = []
        for i in range(n_samples):
            lower = grid[i] if i == 0 else 0.5 * (grid[i - 1] + grid[i])
            upper = grid[i] if i == n_samples - 1 else 0.5 * (grid[i] + grid[i + 1])
            row.append(lower + (upper - lower) * draws[r][i])
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).reshape(len(nears), n_samples)


def sample_pdf_reference(bins, weights, u):
    """Inverse-transform sampling of the piecewise-constant pdf given by ``weights`` on ``bins``.

    bins [R, B+1] (bin edges, increasing), weights [R, B] (>= 0), u [R, n] in [0, 1] -> samples [R, n]
    float64. As the official code: pdf = (w + 1e-5) / sum(w + 1e-5), cdf = [0, cumsum(pdf)] (its last
    entry set to exactly 1, where the code's float sum may leave 1 - 1 ulp);
    ind = number of cdf entries <= u (found by bisection), below = max(ind - 1, 0), above = min(ind, B);
    the sample is bins[below] + (u - cdf[below]) / denom * (bins[above] - bins[below]) with
    denom = cdf[above] - cdf[below], replaced by 1 where it is < 1e-5.
    """
    all_bins, all_w, all_u = _f64_list(bins), _f64_list(weights), _f64_list(u)
    out = []
    for edges, w, draws in zip(all_bins, all_w, all_u):
        n_bins = len(w)
        padded = [x + 1e-5 for x in w]
        total = sum(padded)
        cdf, running = [0.0], 0.0
        for x in padded[:-1]:
            running += x / total
            cdf.append(running)
        cdf.append(1.0)                                 # the last entry exactly 1 (see the model's sample_pdf)
        row = []
        for v in draws:
            lo, hi = 0, n_bins + 1                      # smallest index with cdf[index] > v
            while lo < hi:
                mid = (lo + hi) // 2
                if cdf[mid] <= v:
                    lo = mid + 1
                else:
                    hi = mid
            below, above = max(lo - 1, 0), min(lo, n_bins)
            denom = cdf[above] - cdf[below]
            if denom < 1e-5:
                denom = 1.0
            row.append(edges[below] + (v - cdf[below]) / denom * (edges[above] - edges[below]))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).reshape(u.shape)
