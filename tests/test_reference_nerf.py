"""The NeRF reference: the float64 volume-rendering oracle (reference/ops/volume_render.py) on hand
cases, the vectorized VolumeRenderer and samplers of reference/models/nerf.py against the oracle,
the MLP's structure and parameter count by hand, the synthetic scene (reference/nerf_scene.py),
and a short training run of the small NeRF on it.
"""
import math

import pytest
import torch

from reference import models
from reference import nerf_scene
from reference.models import nerf
from reference.models.flops import count_params
from reference.ops import volume_render as vr

f64 = torch.float64


def _close(a, b, **kw):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), **({"rtol": 1e-12, "atol": 1e-12} | kw))


def _dense_rays(n_rays, n_samples, n_feat=3, last_interval=nerf.LAST_INTERVAL):
    """Random rays: increasing t, intervals end at the next start, the last one ``last_interval`` long."""
    t = torch.sort(torch.rand(n_rays, n_samples, dtype=f64) * 4 + 2, -1).values
    t_ends = torch.cat([t[:, 1:], t[:, -1:] + last_interval], -1)
    sigmas = torch.rand(n_rays, n_samples, dtype=f64) * 3
    sigmas[torch.rand(n_rays, n_samples) < 0.2] = 0.0
    return sigmas, torch.rand(n_rays, n_samples, n_feat, dtype=f64), t, t_ends


# ----------------------------------------------------------------------------- oracle, hand cases

def test_oracle_empty_space_shows_the_background():
    sig = torch.zeros(5, dtype=f64)
    feat = torch.rand(5, 3, dtype=f64)
    ts = torch.arange(5, dtype=f64)
    bg = torch.tensor([0.2, 0.5, 0.7], dtype=f64)
    out = vr.volume_render_packed(sig, feat, ts, ts + 1, torch.tensor([0, 5]), background=bg)
    _close(out["opacity"], [0.0])
    _close(out["color"], [[0.2, 0.5, 0.7]])
    _close(out["depth"], [0.0])
    _close(out["expected_depth"], [0.0])
    _close(out["weights"], torch.zeros(5))
    _close(out["transmittance"], torch.ones(5))


def test_oracle_opaque_first_sample():
    sig = torch.tensor([1e6, 3.0, 2.0], dtype=f64)
    feat = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.9, 0.9], [0.5, 0.5, 0.5]], dtype=f64)
    ts, te = torch.tensor([1.0, 2.0, 3.0], dtype=f64), torch.tensor([2.0, 3.0, 4.0], dtype=f64)
    out = vr.volume_render_packed(sig, feat, ts, te, torch.tensor([0, 3]), background=torch.ones(3))
    _close(out["color"], [[0.1, 0.2, 0.3]])
    _close(out["opacity"], [1.0])
    _close(out["depth"], [1.5])                  # the first interval's mid-point
    _close(out["expected_depth"], [1.5])
    _close(out["weights"], [1.0, 0.0, 0.0])
    _close(out["transmittance"], [1.0, 0.0, 0.0])


def test_oracle_two_samples_by_hand():
    # sigma (1, 2) on [0, 0.5] and [0.5, 0.75]: tau = 0.5 each
    sig = torch.tensor([1.0, 2.0], dtype=f64)
    feat = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=f64)
    out = vr.volume_render_packed(sig, feat, torch.tensor([0.0, 0.5]), torch.tensor([0.5, 0.75]),
                                  torch.tensor([0, 2]), background=torch.tensor([[0.4, 0.8]], dtype=f64))
    a = 1 - math.exp(-0.5)
    w0, w1 = a, math.exp(-0.5) * a
    o = w0 + w1
    _close(out["weights"], [w0, w1])
    _close(out["transmittance"], [1.0, math.exp(-0.5)])
    _close(out["opacity"], [o])
    _close(out["color"], [[w0 + (1 - o) * 0.4, w1 + (1 - o) * 0.8]])
    _close(out["depth"], [w0 * 0.25 + w1 * 0.625])
    _close(out["expected_depth"], [(w0 * 0.25 + w1 * 0.625) / o])
    _close(out["opacity"], [1 - math.exp(-1.0)])  # = 1 - T after the ray


def test_oracle_rays_without_samples():
    sig, feat = torch.rand(3, dtype=f64), torch.rand(3, 2, dtype=f64)
    ts = torch.tensor([0.0, 1.0, 2.0], dtype=f64)
    bg = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], dtype=f64)
    offsets = torch.tensor([0, 0, 3, 3, 3])                   # rays 0, 2, 3 own no sample
    out = vr.volume_render_packed(sig, feat, ts, ts + 1, offsets, background=bg)
    alone = vr.volume_render_packed(sig, feat, ts, ts + 1, torch.tensor([0, 3]), background=bg[1])
    for r in (0, 2, 3):
        _close(out["color"][r], bg[r])
        _close(out["opacity"][r], 0.0)
        _close(out["expected_depth"][r], 0.0)
    _close(out["color"][1], alone["color"][0])
    _close(out["weights"], alone["weights"])
    empty = vr.volume_render_packed(torch.zeros(0), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0),
                                    torch.tensor([0, 0]))
    assert empty["color"].shape == (1, 3) and empty["weights"].shape == (0,)
    with pytest.raises(ValueError, match="offsets"):
        vr.volume_render_packed(sig, feat, ts, ts + 1, torch.tensor([0, 2]))


def test_oracle_early_termination():
    # tau = 1 per sample: T = 1, e^-1 (0.37), e^-2 (0.14), e^-3; threshold 0.2 keeps samples 0 and 1 only
    n = 4
    sig, feat = torch.ones(n, dtype=f64), torch.rand(n, 3, dtype=f64)
    ts = torch.arange(n, dtype=f64)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=f64)
    full = vr.volume_render_packed(sig, feat, ts, ts + 1, torch.tensor([0, n]), background=bg)
    cut = vr.volume_render_packed(sig, feat, ts, ts + 1, torch.tensor([0, n]), background=bg,
                                  transmittance_threshold=0.2)
    w = full["weights"]
    _close(w, [math.exp(-i) * (1 - math.exp(-1)) for i in range(n)])
    _close(cut["weights"], torch.cat([w[:2], torch.zeros(2, dtype=f64)]))
    o = w[:2].sum()
    _close(cut["opacity"], [o])
    _close(cut["color"][0], (w[:2, None] * feat[:2]).sum(0) + (1 - o) * bg)
    _close(cut["depth"], [(w[:2] * (ts[:2] + 0.5)).sum()])
    _close(cut["transmittance"], full["transmittance"])   # T itself is reported for dropped samples too
    # a threshold exactly at a sample's T keeps it; threshold 0 keeps everything
    keep2 = vr.volume_render_packed(sig, feat, ts, ts + 1, torch.tensor([0, n]), transmittance_threshold=math.exp(-2))
    assert (keep2["weights"][:3] > 0).all() and keep2["weights"][3] == 0
    _close(vr.volume_render_packed(sig, feat, ts, ts + 1, torch.tensor([0, n]), background=bg,
                                   transmittance_threshold=0.0)["color"], full["color"])


def test_oracle_dense_is_the_packed_one():
    sig, feat, ts, te = _dense_rays(3, 5, n_feat=2)
    bg = torch.rand(3, 2, dtype=f64)
    dense = vr.volume_render_dense(sig, feat, ts, te, background=bg, transmittance_threshold=0.3)
    for r in range(3):
        one = vr.volume_render_packed(sig[r], feat[r], ts[r], te[r], torch.tensor([0, 5]), background=bg[r],
                                      transmittance_threshold=0.3)
        for key in ("color", "opacity", "depth", "expected_depth"):
            _close(dense[key][r], one[key][0])
        _close(dense["weights"][r], one["weights"])
        _close(dense["transmittance"][r], one["transmittance"])
    assert dense["weights"].shape == (3, 5)


# ----------------------------------------------------------------------------- VolumeRenderer vs the oracle

@pytest.mark.parametrize("background", [None, (0.25, 0.5, 1.0)])
def test_volume_renderer_matches_the_oracle(background):
    sig, feat, ts, te = _dense_rays(13, 7)
    te[:6, -1] = ts[:6, -1] + 0.3                       # finite last intervals on some rays
    sig[0] = 0.0                                        # an empty ray
    renderer = nerf.VolumeRenderer(background)
    assert renderer.background == background and not list(renderer.buffers())
    color, opacity, depth, weights = renderer(sig, feat, ts, te)
    ref = vr.volume_render_dense(sig, feat, ts, te, None if background is None else torch.tensor(background))
    _close(color, ref["color"])
    _close(opacity, ref["opacity"])
    _close(depth, ref["depth"], rtol=1e-11)
    _close(weights, ref["weights"])
    empty = renderer(sig[:, :0], feat[:, :0], ts[:, :0], te[:, :0])
    _close(empty[1], torch.zeros(13))
    _close(empty[0], torch.zeros(13, 3) + (0.0 if background is None else torch.tensor(background)))


def test_volume_renderer_gradcheck():
    sig, feat, ts, te = _dense_rays(2, 4, n_feat=2, last_interval=0.7)
    inputs = [x.clone().requires_grad_() for x in (sig + 0.1, feat, ts, te)]
    renderer = nerf.VolumeRenderer((0.3, 0.6))
    assert torch.autograd.gradcheck(lambda *a: renderer(*a), inputs)


# ----------------------------------------------------------------------------- samplers vs their oracles

def test_stratified_samples_match_the_oracle():
    n_rays, n = 9, 11
    near = torch.rand(n_rays, dtype=f64) + 1
    far = near + torch.rand(n_rays, dtype=f64) * 3 + 0.5
    grid = nerf.stratified_samples(near, far, n, perturb=False)
    _close(grid, vr.stratified_samples_reference(near, far, n))
    _close(grid[:, 0], near)
    _close(grid[:, -1], far)
    z = nerf.stratified_samples(near, far, n, generator=torch.Generator().manual_seed(3))
    u = torch.rand((n_rays, n), generator=torch.Generator().manual_seed(3), dtype=f64)   # the documented draw
    _close(z, vr.stratified_samples_reference(near, far, n, u))
    mids = 0.5 * (grid[:, 1:] + grid[:, :-1])
    assert (z[:, 1:] >= mids - 1e-12).all() and (z[:, :-1] <= mids + 1e-12).all()
    assert (z.diff(dim=-1) >= 0).all() and (z != grid).any()
    assert vr.stratified_samples_reference(near[:2], far[:2], 1).tolist() == [[near[0].item()], [near[1].item()]]


def test_sample_pdf_matches_the_oracle():
    n_rays, n_bins, n = 7, 9, 33
    bins = torch.sort(torch.rand(n_rays, n_bins + 1, dtype=f64) * 4 + 2, -1).values
    weights = torch.rand(n_rays, n_bins, dtype=f64)
    weights[weights < 0.3] = 0.0                                  # empty bins (denominator rule)
    weights[0] = 0.0                                              # an all-empty ray: the 1e-5 floor
    s = nerf.sample_pdf(bins, weights, n, generator=torch.Generator().manual_seed(5))
    u = torch.rand((n_rays, n), generator=torch.Generator().manual_seed(5), dtype=f64)
    _close(s, vr.sample_pdf_reference(bins, weights, u))
    det = nerf.sample_pdf(bins, weights, n, deterministic=True)
    _close(det, vr.sample_pdf_reference(bins, weights, torch.linspace(0, 1, n, dtype=f64).expand(n_rays, n)))
    assert (det >= bins[:, :1]).all() and (det <= bins[:, -1:]).all() and (det.diff(dim=-1) >= 0).all()
    # float32 weights with float64 bins: the weights are cast to the bins' dtype
    _close(nerf.sample_pdf(bins, weights.float(), n, deterministic=True),
           vr.sample_pdf_reference(bins, weights.float(), torch.linspace(0, 1, n, dtype=f64).expand(n_rays, n)))


def test_sample_pdf_concentrates_where_the_weights_are():
    n_bins, n = 8, 400
    bins = torch.linspace(0, 8, n_bins + 1, dtype=f64).expand(2, -1)
    weights = torch.zeros(2, n_bins, dtype=f64)
    weights[0, 5] = 1.0                                           # all mass in [5, 6]
    weights[1] = torch.tensor([0, 1, 0, 3, 0, 0, 4, 0], dtype=f64)
    s = nerf.sample_pdf(bins, weights, n)
    assert ((s[0] >= 5) & (s[0] <= 6)).float().mean() > 0.99
    # the inverse CDF of a piecewise-constant pdf: the fraction of samples per bin follows the weights
    counts = torch.histc(nerf.sample_pdf(bins, weights, n, deterministic=True)[1], bins=n_bins, min=0, max=8)
    expected = (weights[1] + 1e-5) / (weights[1] + 1e-5).sum() * n
    assert (counts - expected).abs().max() <= 2
    inside = s[1][(s[1] >= 6) & (s[1] < 7)]
    assert inside.numel() > 0.4 * n and inside.std() > 0.2       # spread over the bin, not at one point


# ----------------------------------------------------------------------------- encoding, MLP

def test_positional_encoding():
    x = torch.tensor([[0.3, -1.2, 2.0]], dtype=f64)
    enc = nerf.positional_encoding(x, 2)
    assert enc.shape == (1, 15)
    _close(enc[0], [0.3, -1.2, 2.0] + [math.sin(v) for v in (0.3, -1.2, 2.0)] + [math.cos(v) for v in (0.3, -1.2, 2.0)]
           + [math.sin(2 * v) for v in (0.3, -1.2, 2.0)] + [math.cos(2 * v) for v in (0.3, -1.2, 2.0)])
    assert nerf.positional_encoding(torch.rand(4, 5, 3), 10).shape == (4, 5, 63)
    assert nerf.positional_encoding(torch.rand(2, 3), 4).shape == (2, 27)
    _close(nerf.positional_encoding(x, 0), x)
    # frequency 2^9 at L = 10, without pi
    _close(nerf.positional_encoding(x, 10)[0, -3:], [math.cos(512 * v) for v in (0.3, -1.2, 2.0)])


def _mlp_count(depth, width, skips, pos_freqs, dir_freqs):
    """Paper Fig. 7 / the official code's layers, every Linear with bias."""
    cin, cview = 3 * (1 + 2 * pos_freqs), 3 * (1 + 2 * dir_freqs)
    lin = lambda a, b: a * b + b  # noqa: E731
    trunk = lin(cin, width) + sum(lin(width + (cin if i in skips else 0), width) for i in range(depth - 1))
    return trunk + lin(width, 1) + lin(width, width) + lin(width + cview, width // 2) + lin(width // 2, 3)


def test_mlp_structure_and_parameter_count():
    with torch.device("meta"):
        mlp = nerf.NeRFMLP()
        full = models.create("nerf")
    # 63 -> 256, 4x 256 -> 256, 319 -> 256, 2x 256 -> 256; sigma 256 -> 1, feature 256 -> 256, 283 -> 128 -> 3
    assert [(m.in_features, m.out_features) for m in mlp.pts_linears] == \
        [(63, 256)] + [(256, 256)] * 4 + [(319, 256)] + [(256, 256)] * 2
    assert (mlp.views_linears[0].in_features, mlp.views_linears[0].out_features) == (283, 128)
    assert count_params(mlp) == _mlp_count(8, 256, (4,), 10, 4) == 595_844
    hand = 2 * _mlp_count(8, 256, (4,), 10, 4)
    assert count_params(full) == hand == models.get("nerf").figures["params"].value
    small = models.get("nerf").small_config
    with torch.device("meta"):
        assert count_params(models.create("nerf", **small)) == 2 * _mlp_count(
            small["depth"], small["width"], small["skips"], small["pos_freqs"], small["dir_freqs"])
    no_views = nerf.NeRFMLP(depth=3, width=16, skips=(1,), pos_freqs=2, use_viewdirs=False)
    sigma, rgb = no_views(torch.rand(5, 3))
    assert sigma.shape == (5,) and rgb.shape == (5, 3) and not hasattr(no_views, "rgb_linear")
    with pytest.raises(ValueError, match="skips"):
        nerf.NeRFMLP(depth=4, skips=(3,))


def test_mlp_skip_feeds_the_encoded_input_to_the_layer_after_it():
    mlp = nerf.NeRFMLP(depth=5, width=16, skips=(2,), pos_freqs=3, dir_freqs=1).double()
    seen = {}
    mlp.pts_linears[3].register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    points = torch.randn(4, 6, 3, dtype=f64)
    dirs = torch.nn.functional.normalize(torch.randn(4, 6, 3, dtype=f64), dim=-1)
    sigma, rgb = mlp(points, dirs)
    _close(seen["x"][..., :21], nerf.positional_encoding(points, 3))        # cat([gamma(x), h])
    assert (seen["x"][..., 21:] >= 0).all()                                 # the ReLU activation of layer 2
    assert sigma.shape == (4, 6) and (sigma >= 0).all() and ((rgb > 0) & (rgb < 1)).all()
    assert rgb.shape == (4, 6, 3)


# ----------------------------------------------------------------------------- the NeRF model

def test_registry_entry_and_small_config_forward_backward():
    spec = models.get("nerf")
    assert "nerf" in models.list_models("VR") and spec.families == ("VR",)
    model, rays = models.create_small("nerf", batch=5)
    assert rays.shape == (5, 8)
    model.train()
    out = model(rays)
    n_c, n_f = spec.small_config["n_coarse"], spec.small_config["n_fine"]
    shapes = {"rgb_coarse": (5, 3), "rgb_fine": (5, 3), "opacity_fine": (5,), "depth_fine": (5,),
              "weights_coarse": (5, n_c), "weights_fine": (5, n_c + n_f), "z_fine": (5, n_c + n_f)}
    assert all(tuple(out[k].shape) == s for k, s in shapes.items())
    assert all(torch.isfinite(v).all() for v in out.values())
    assert (out["z_fine"].diff(dim=-1) >= 0).all()
    assert (out["z_fine"] >= 2).all() and (out["z_fine"] <= 6).all()
    nerf.photometric_loss(out, torch.rand(5, 3)).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():                                  # perturb off in the small config: deterministic
        torch.testing.assert_close(model(rays)["rgb_fine"], out["rgb_fine"].detach(), rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        same = model(rays[:, :3], rays[:, 3:6], 2.0, 6.0)  # the separate-argument form
    torch.testing.assert_close(same["rgb_fine"], out["rgb_fine"].detach(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="R, 8"):
        model(rays[:, :6])


def test_all_rendering_goes_through_the_renderer_modules():
    model, rays = models.create_small("nerf", batch=4)
    calls = []
    for name in ("renderer_coarse", "renderer_fine"):
        getattr(model, name).register_forward_hook(lambda m, a, out, name=name: calls.append((name, out)))
    out = model(rays)
    assert [c[0] for c in calls] == ["renderer_coarse", "renderer_fine"]
    assert out["rgb_coarse"] is calls[0][1][0] and out["rgb_fine"] is calls[1][1][0]
    assert out["weights_fine"] is calls[1][1][3] and out["depth_fine"] is calls[1][1][2]

    class Black(nerf.VolumeRenderer):
        def forward(self, sigmas, rgbs, t_starts, t_ends):
            color, opacity, depth, weights = super().forward(sigmas, rgbs, t_starts, t_ends)
            assert torch.allclose(t_ends[:, -1] - t_starts[:, -1], torch.tensor(1e10))
            return torch.zeros_like(color), opacity, depth, weights

    model.renderer_fine = Black()
    assert (model(rays)["rgb_fine"] == 0).all()


def test_perturbed_sampling_follows_the_generator():
    model, rays = models.create_small("nerf", batch=6, perturb=True)
    model.train()
    with torch.no_grad():
        a = model(rays, generator=torch.Generator().manual_seed(7))
        b = model(rays, generator=torch.Generator().manual_seed(7))
        c = model(rays, generator=torch.Generator().manual_seed(8))
        model.eval()
        d = model(rays)
    torch.testing.assert_close(a["z_fine"], b["z_fine"], rtol=0, atol=0)
    assert not torch.equal(a["z_coarse"], c["z_coarse"])
    # the stratified draws are the first [R, N_c] uniforms of the generator
    near, far = rays[:, 6], rays[:, 7]
    torch.testing.assert_close(a["z_coarse"], nerf.stratified_samples(near, far, 8, generator=torch.Generator()
                                                                      .manual_seed(7)))
    # eval mode: no perturbation (the grid)
    torch.testing.assert_close(d["z_coarse"], nerf.stratified_samples(near, far, 8, perturb=False))


# ----------------------------------------------------------------------------- synthetic scene, training

def test_scene_ground_truth():
    scene = nerf_scene.SphereScene()
    o = torch.tensor([[0.0, -4.0, 0.0], [0.0, -4.0, 3.0]], dtype=f64)     # through the red sphere / above all
    d = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=f64)
    gt = nerf_scene.render_ground_truth(scene, o, d, 2.0, 6.0, background=(1.0, 1.0, 1.0))
    _close(gt["color"][0], scene.colors[0], atol=5e-3, rtol=0)           # the blue sphere's soft tail mixes in
    _close(gt["opacity"], [1.0, 0.0], atol=1e-6, rtol=0)
    _close(gt["color"][1], [1.0, 1.0, 1.0], atol=1e-6, rtol=0)
    _close(gt["depth"][0], 4.0 - 0.7, atol=0.1, rtol=0)                  # the (soft) surface
    # the dense quadrature is the oracle's (midpoint samples of the field)
    coarse = nerf_scene.render_ground_truth(scene, o * 2, d * 2, 1.0, 3.0, n_samples=48)
    edges = torch.linspace(1.0, 3.0, 49, dtype=f64).expand(2, -1)
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
    sigma, rgb = scene.field(2 * o[:, None] + 2 * d[:, None] * mids[..., None])
    ref = vr.volume_render_dense(sigma, rgb, 2 * edges[:, :-1], 2 * edges[:, 1:])
    _close(coarse["color"], ref["color"])
    _close(coarse["depth"], ref["depth"])


def test_camera_rays_and_dataset_are_deterministic():
    c2w = nerf_scene.look_at((0.0, -4.0, 0.0))
    o, d = nerf_scene.camera_rays(4, 6, 5.0, c2w)
    assert o.shape == d.shape == (24, 3)
    centre = d.reshape(4, 6, 3)[1:3, 2:4].mean((0, 1))                     # the four central pixels
    _close(torch.nn.functional.normalize(centre, dim=0), [0.0, 1.0, 0.0], atol=1e-12, rtol=0)
    assert d.reshape(4, 6, 3)[0, 0, 2] > 0 and d.reshape(4, 6, 3)[0, 0, 0] < 0  # top-left pixel: up, left
    a = nerf_scene.make_dataset(2, 6, 5, seed=3, n_samples=64)
    b = nerf_scene.make_dataset(2, 6, 5, seed=3, n_samples=64)
    c = nerf_scene.make_dataset(2, 6, 5, seed=4, n_samples=64)
    assert a["rays_o"].shape == a["target_rgb"].shape == (60, 3)
    for key in ("rays_o", "rays_d", "target_rgb", "c2w"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["rays_o"], c["rays_o"])
    assert ((a["target_rgb"] >= 0) & (a["target_rgb"] <= 1)).all() and a["target_rgb"].max() > 0.3


def test_small_nerf_learns_the_synthetic_scene():
    data = nerf_scene.make_dataset(4, 16, 16, seed=0)
    torch.manual_seed(0)
    model = models.create("nerf", **{**models.get("nerf").small_config, "perturb": True})
    losses = nerf_scene.train(model, data)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)
