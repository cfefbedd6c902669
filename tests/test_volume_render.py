"""Volume rendering (C++ CPU kernel natively, the CUDA kernel on a GPU, the torch composite) against
the float64 per-ray quadrature of reference/ops/volume_render.py, plus the NeRF samplers and
positional encoding against reference.models.nerf."""
import pytest
import torch

import cvkernels
from cvkernels import _extension
from cvkernels.ops.volume_render import volume_render
from helpers import gradcheck, opcheck, poisoned_outputs
from reference.models import nerf as ref_nerf
from reference.ops import volume_render as ref
from tolerances import assert_close, assert_close_2x

pytestmark = pytest.mark.skipif(not _extension.has_op("volume_render_forward"),
                                reason=f"cvkernels volume-render ops not built: {_extension.load_error()}")
HAS_CUDA = torch.cuda.is_available() and _extension.has_cuda_ops("volume_render_forward")
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
KERNEL = {"cpu": "cpp", "cuda": "cuda"}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
OUTPUTS = ("color", "opacity", "depth", "expected_depth", "weights")


def make_packed(counts, F=3, dtype=torch.float64, device="cpu", sigma_scale=2.0, last_interval=None):
    """Packed samples of rays with the given sample counts: increasing intervals per ray (gaps and
    overlap-free), densities in [0, sigma_scale), features in [0, 1)."""
    counts = torch.as_tensor(counts, dtype=torch.int64)
    n = int(counts.sum())
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    sig = torch.rand(n, dtype=torch.float64) * sigma_scale
    feat = torch.rand(n, F, dtype=torch.float64)
    widths = torch.rand(n, dtype=torch.float64) * 0.5 + 0.05
    gaps = torch.rand(n, dtype=torch.float64) * 0.1
    ts, te = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    for r in range(len(counts)):
        b, e = int(offsets[r]), int(offsets[r + 1])
        t = 2.0
        for i in range(b, e):
            t += gaps[i]
            ts[i], te[i] = t, t + widths[i]
            t = te[i].item()
        if last_interval is not None and e > b:
            te[e - 1] = ts[e - 1] + last_interval
    to = dict(device=device)
    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32   # the kernels' t dtype
    return (sig.to(dtype=dtype, **to), feat.to(dtype=dtype, **to), ts.to(dtype=t_dtype, **to),
            te.to(dtype=t_dtype, **to), offsets.to(**to))


def oracle(sig, feat, ts, te, offsets, background=None, threshold=0.0):
    return ref.volume_render_packed(sig, feat, ts, te, offsets.cpu(), background=background,
                                    transmittance_threshold=threshold)


def _compare(out, expect, dtype, names=OUTPUTS):
    for name in names:
        assert_close(getattr(out, name).cpu(), expect[name], dtype=dtype)


# ----------------------------------------------------------------------------- forward vs the oracle

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.0, 0.25])
@pytest.mark.parametrize("bg", ["none", "shared", "per_ray"])
def test_packed_matches_oracle_float64(device, threshold, bg):
    counts = [0, 1, 7, 3, 0, 40, 2, 65]       # empty, single-sample, and rays longer than one warp
    sig, feat, ts, te, offsets = make_packed(counts, device=device)
    R, F = len(counts), feat.shape[1]
    background = {"none": None, "shared": torch.rand(F, dtype=torch.float64),
                  "per_ray": torch.rand(R, F, dtype=torch.float64)}[bg]
    expect = oracle(sig, feat, ts, te, offsets, background, threshold)
    bgd = None if background is None else background.to(device)
    for backend in (KERNEL[device], "torch"):
        with poisoned_outputs():
            out = volume_render(sig, feat, ts, te, offsets=offsets, background=bgd, transmittance_threshold=threshold,
                                backend=backend)
        _compare(out, expect, torch.float64)
        if threshold == 0:
            assert out.num_kept.tolist() == counts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dense_reduced_precision_within_2x_of_torch(device, dtype):
    R, S, F = 33, 48, 3
    sig, feat, ts, te, offsets = make_packed([S] * R, F=F, device=device, dtype=torch.float32)
    expect = oracle(sig, feat, ts, te, offsets)
    args = (sig.view(R, S).to(dtype), feat.view(R, S, F).to(dtype), ts.view(R, S), te.view(R, S))
    out = volume_render(*args, backend=KERNEL[device])
    # torch's own error: the same quadrature written with torch ops in the low precision throughout
    s, c = args[0], args[1]
    tau = s * (args[3] - args[2]).to(dtype)
    trans = torch.exp(-torch.cat([tau.new_zeros(R, 1), tau.cumsum(-1)[:, :-1]], -1))
    w = trans * (1 - torch.exp(-tau))
    plain = {"color": (w[..., None] * c).sum(-2), "opacity": w.sum(-1), "weights": w,
             "depth": (w * (0.5 * (args[2] + args[3])).to(dtype)).sum(-1)}
    for name, torch_result in plain.items():
        e = expect[name].view(R, S) if name == "weights" else expect[name]
        assert_close_2x(getattr(out, name).cpu(), e, torch_result.cpu(), name)
    assert out.color.dtype == dtype and out.num_kept.dtype == torch.int64


@pytest.mark.parametrize("device", DEVICES)
def test_hand_cases(device):
    kw = dict(device=device, dtype=torch.float64)
    # sigma = 0: nothing is opaque, the background shows through
    bg = torch.tensor([0.25, 0.5, 1.0], **kw)
    out = volume_render(torch.zeros(2, 4, **kw), torch.rand(2, 4, 3, **kw), torch.zeros(2, 4, **kw),
                        torch.ones(2, 4, **kw), background=bg)
    assert out.opacity.abs().max() == 0 and out.expected_depth.abs().max() == 0
    torch.testing.assert_close(out.color, bg.expand(2, 3))
    # a huge density on the first sample: its colour and depth, nothing behind it
    sig = torch.tensor([[1e6, 3.0, 2.0]], **kw)
    col = torch.rand(1, 3, 3, **kw)
    ts, te = torch.tensor([[1.0, 2.0, 3.0]], **kw), torch.tensor([[2.0, 3.0, 4.0]], **kw)
    out = volume_render(sig, col, ts, te, background=bg)
    torch.testing.assert_close(out.color[0], col[0, 0])
    torch.testing.assert_close(out.expected_depth[0], torch.tensor(1.5, **kw))
    # two samples by hand
    sig = torch.tensor([[0.5, 2.0]], **kw)
    ts, te = torch.tensor([[0.0, 1.0]], **kw), torch.tensor([[1.0, 1.5]], **kw)
    a0, a1 = 1 - torch.exp(torch.tensor(-0.5)), 1 - torch.exp(torch.tensor(-1.0))
    w0, w1 = a0, torch.exp(torch.tensor(-0.5)) * a1
    out = volume_render(sig, torch.ones(1, 2, 1, **kw), ts, te)
    torch.testing.assert_close(out.weights[0].cpu(), torch.stack([w0, w1]).double())
    torch.testing.assert_close(out.depth[0].cpu(), (w0 * 0.5 + w1 * 1.25).double())
    # the NeRF last interval (1e10): opaque unless sigma = 0 there, finite gradients
    sig = torch.tensor([[1.0, 2.0, 0.5]], **kw).requires_grad_()
    ts, te = torch.tensor([[0.0, 1.0, 2.0]], **kw), torch.tensor([[1.0, 2.0, 1e10]], **kw)
    out = volume_render(sig, torch.rand(1, 3, 3, **kw), ts, te)
    torch.testing.assert_close(out.opacity, torch.ones(1, **kw))
    out.color.sum().backward()
    assert torch.isfinite(sig.grad).all() and sig.grad[0, 2] == 0


@pytest.mark.parametrize("device", DEVICES)
def test_packed_equals_dense_and_index_forms(device):
    R, S, F = 9, 37, 4
    sig, feat, ts, te, offsets = make_packed([S] * R, F=F, device=device, dtype=torch.float32)
    dense = volume_render(sig.view(R, S), feat.view(R, S, F), ts.view(R, S), te.view(R, S))
    counts = offsets[1:] - offsets[:-1]
    ray_indices = torch.repeat_interleave(torch.arange(R, device=device), counts)
    for kw in (dict(offsets=offsets), dict(counts=counts), dict(ray_indices=ray_indices, num_rays=R)):
        packed = volume_render(sig, feat, ts, te, **kw)
        for name in OUTPUTS:
            torch.testing.assert_close(getattr(packed, name), getattr(dense, name).reshape(getattr(packed, name).shape),
                                       rtol=0, atol=0)
    # leading ray dims are kept
    out = volume_render(sig.view(3, 3, S), feat.view(3, 3, S, F), ts.view(3, 3, S), te.view(3, 3, S))
    assert out.color.shape == (3, 3, F) and out.weights.shape == (3, 3, S)
    torch.testing.assert_close(out.color.reshape(R, F), dense.color, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous_and_mixed_dtypes(device):
    R, S, F = 5, 11, 3
    sig, feat, ts, te, _ = make_packed([S] * R, F=F, device=device, dtype=torch.float32)
    big = torch.rand(R, S, 2 * F, device=device)
    big[..., ::2] = feat.view(R, S, F)
    expect = volume_render(sig.view(R, S), feat.view(R, S, F), ts.view(R, S), te.view(R, S))
    out = volume_render(sig.view(R, S).t().contiguous().t(), big[..., ::2], ts.view(R, S).half().float(),
                        te.view(R, S))
    torch.testing.assert_close(out.color, expect.color, rtol=1e-3, atol=1e-3)
    mixed = volume_render(sig.view(R, S), feat.view(R, S, F).half(), ts.view(R, S).double(), te.view(R, S).double())
    assert mixed.color.dtype == torch.float32     # float32 sigmas and float16 features promote to float32


def test_empty_inputs():
    e = torch.empty(0, dtype=torch.float32)
    out = volume_render(e, torch.empty(0, 3), e, e, offsets=torch.zeros(1, dtype=torch.int64))
    assert out.color.shape == (0, 3) and out.weights.shape == (0,)
    out = volume_render(e, torch.empty(0, 3), e, e, offsets=torch.zeros(4, dtype=torch.int64),
                        background=torch.ones(3))
    torch.testing.assert_close(out.color, torch.ones(3, 3))
    out = volume_render(torch.empty(0, 8), torch.empty(0, 8, 3), torch.empty(0, 8), torch.empty(0, 8))
    assert out.color.shape == (0, 3)
    out = volume_render(torch.empty(4, 0), torch.empty(4, 0, 3), torch.empty(4, 0), torch.empty(4, 0))
    assert out.opacity.tolist() == [0.0] * 4


def test_millions_of_samples_cpu():
    R, S = 8192, 128                  # 2^20 samples, F = 3
    sig = torch.rand(R, S) * 0.3
    feat = torch.rand(R, S, 3)
    t = torch.linspace(2.0, 6.0, S + 1).expand(R, S + 1)
    out = volume_render(sig, feat, t[:, :-1], t[:, 1:])
    ref_out = volume_render(sig.double(), feat.double(), t[:, :-1].double(), t[:, 1:].double(), backend="torch")
    torch.testing.assert_close(out.color.double(), ref_out.color, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_gradcheck_packed(device, threshold):
    sig, feat, ts, te, offsets = make_packed([0, 1, 5, 34, 2], F=2, device=device)
    R = offsets.numel() - 1
    bg = torch.rand(R, 2, dtype=torch.float64, device=device, requires_grad=True)
    inputs = [t.clone().requires_grad_() for t in (sig, feat, ts, te)] + [bg]

    def fn(s, c, t0, t1, b):
        out = volume_render(s, c, t0, t1, offsets=offsets, background=b, transmittance_threshold=threshold)
        return out.color, out.opacity, out.depth, out.expected_depth, out.weights

    gradcheck(fn, inputs, fast_mode=False)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_dense_last_interval(device):
    sig, feat, ts, te, _ = make_packed([6] * 3, F=3, device=device, last_interval=1e10)
    inputs = [sig.view(3, 6).clone().requires_grad_(), feat.view(3, 6, 3).clone().requires_grad_()]
    bg = torch.rand(3, dtype=torch.float64, device=device, requires_grad=True)

    def fn(s, c, b):
        out = volume_render(s, c, ts.view(3, 6), te.view(3, 6), background=b)
        return out.color, out.opacity, out.weights

    gradcheck(fn, inputs + [bg], fast_mode=False)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_torch_composite(device):
    """float32 kernel gradients vs the autograd of the torch composite, with early termination and
    a weight loss (distortion-style) besides the colour loss."""
    sig, feat, ts, te, offsets = make_packed([3, 0, 50, 17, 64, 1], F=3, device=device, dtype=torch.float32)
    results = {}
    for backend in (KERNEL[device], "torch"):
        leaves = [t.clone().requires_grad_() for t in (sig, feat, ts, te)]
        out = volume_render(*leaves, offsets=offsets, transmittance_threshold=1e-2, backend=backend)
        loss = (out.color ** 2).sum() + out.expected_depth.sum() + (out.weights ** 2).sum() + out.opacity.sum()
        loss.backward()
        results[backend] = [t.grad for t in leaves]
    for a, b in zip(*results.values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dropped_samples_get_zero_gradient():
    sig = torch.tensor([[5.0, 5.0, 5.0, 5.0]], requires_grad=True)
    t = torch.arange(5.0)
    out = volume_render(sig, torch.rand(1, 4, 3), t[None, :-1], t[None, 1:], transmittance_threshold=1e-3)
    assert out.num_kept.tolist() == [[2]] or out.num_kept.tolist() == [2]
    out.color.sum().backward()
    assert (sig.grad[0, 2:] == 0).all() and (sig.grad[0, :2] != 0).all()


def test_double_backward_refused():
    s = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    out = volume_render(s, torch.rand(2, 3, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64),
                        torch.ones(2, 3, dtype=torch.float64))
    (g,) = torch.autograd.grad(out.color.sum(), s, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


# ----------------------------------------------------------------------------- errors

def test_bad_inputs_raise_clear_errors():
    sig, feat, ts, te, offsets = make_packed([2, 3, 1], dtype=torch.float32)
    with pytest.raises(ValueError, match="non-decreasing"):
        volume_render(sig, feat, ts, te, offsets=torch.tensor([0, 4, 2, 6]))
    with pytest.raises(ValueError, match="start at 0 and end"):
        volume_render(sig, feat, ts, te, offsets=torch.tensor([0, 2, 5, 7]))
    with pytest.raises(ValueError, match="counts sum to 5"):
        volume_render(sig, feat, ts, te, counts=torch.tensor([2, 3, 0]))
    with pytest.raises(ValueError, match="sorted"):
        volume_render(sig, feat, ts, te, ray_indices=torch.tensor([0, 1, 0, 1, 2, 2]), num_rays=3)
    with pytest.raises(ValueError, match="exactly one of"):
        volume_render(sig, feat, ts, te)
    with pytest.raises(ValueError, match="features"):
        volume_render(sig, feat[:-1], ts, te, offsets=offsets)
    with pytest.raises(ValueError, match="t_ends"):
        volume_render(sig, feat, ts, te[:-1], offsets=offsets)
    with pytest.raises(ValueError, match="background"):
        volume_render(sig, feat, ts, te, offsets=offsets, background=torch.ones(2))
    with pytest.raises(ValueError, match="transmittance_threshold"):
        volume_render(sig, feat, ts, te, offsets=offsets, transmittance_threshold=1.5)
    with pytest.raises(TypeError, match="floating point"):
        volume_render(sig.long(), feat, ts, te, offsets=offsets)
    with pytest.raises(TypeError, match="integer"):
        volume_render(sig, feat, ts, te, offsets=offsets.float())
    with pytest.raises(ValueError, match="dense features"):
        volume_render(sig.view(2, 3), feat.view(3, 2, 3), ts.view(2, 3), te.view(2, 3))
    # the op itself refuses malformed shapes and clamps malformed offsets (never reads out of bounds)
    with pytest.raises(ValueError, match="offsets must have shape"):
        torch.ops.cvkernels.volume_render_forward(sig, feat, ts, te, offsets[:-1], 3, None, 0.0, True)
    out = torch.ops.cvkernels.volume_render_forward(sig, feat, ts, te, torch.tensor([0, 100, -5, 6]), 3, None,
                                                    0.0, True)
    assert torch.isfinite(out[0]).all() and out[5].tolist() == [6, 0, 6]   # each range clamped into [0, N]


# ----------------------------------------------------------------------------- op registration, compile

def test_opcheck():
    sig, feat, ts, te, offsets = make_packed([3, 0, 5], F=2, dtype=torch.float32)
    bg = torch.rand(2)
    opcheck(torch.ops.cvkernels.volume_render_forward.default, (sig, feat, ts, te, offsets, 3, bg, 0.1, True))
    out = torch.ops.cvkernels.volume_render_forward(sig, feat, ts, te, offsets, 3, bg, 0.1, True)
    grads = (torch.rand(3, 2), torch.rand(3), torch.rand(3), torch.rand(3), torch.rand(8))
    opcheck(torch.ops.cvkernels.volume_render_backward.default,
            grads + (sig, feat, ts, te, offsets, 3, bg, out[1], out[2], out[5], True))
    opcheck(torch.ops.cvkernels.volume_render_forward.default,
            (sig[:6], feat[:6], ts[:6], te[:6], None, 2, None, 0.0, False))


def test_torch_compile_fullgraph():
    R, S = 4, 9
    sig, feat, ts, te, _ = make_packed([S] * R, F=3, dtype=torch.float32)

    def render(s, c, t0, t1, bg):
        out = volume_render(s, c, t0, t1, background=bg)
        return out.color.square().sum() + out.depth.sum()

    args = [sig.view(R, S), feat.view(R, S, 3), ts.view(R, S), te.view(R, S), torch.rand(3)]
    leaves_a = [a.clone().requires_grad_() for a in args]
    leaves_b = [a.clone().requires_grad_() for a in args]
    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    ya, yb = compiled(*leaves_a), render(*leaves_b)
    ya.backward()
    yb.backward()
    torch.testing.assert_close(ya, yb)
    for a, b in zip(leaves_a, leaves_b):
        torch.testing.assert_close(a.grad, b.grad)


# ----------------------------------------------------------------------------- samplers, encoding, module

def test_samplers_match_reference_draws():
    near, far = torch.full((6,), 2.0, dtype=torch.float64), torch.linspace(4.0, 6.0, 6, dtype=torch.float64)
    for perturb in (False, True):
        a = cvkernels.stratified_samples(near, far, 13, perturb, torch.Generator().manual_seed(1))
        b = ref_nerf.stratified_samples(near, far, 13, perturb, torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b)
        u = torch.rand(6, 13, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        torch.testing.assert_close(a, ref.stratified_samples_reference(near, far, 13, u if perturb else None))
    assert (a[:, 1:] >= a[:, :-1]).all()
    bins = torch.sort(torch.rand(6, 10, dtype=torch.float64) * 4 + 2, -1).values
    w = torch.rand(6, 9, dtype=torch.float64)
    w[:, 3] = 50.0                                  # most mass in bin 3
    for det in (False, True):
        a = cvkernels.sample_pdf(bins, w, 64, det, torch.Generator().manual_seed(2))
        b = ref_nerf.sample_pdf(bins, w, 64, det, torch.Generator().manual_seed(2))
        torch.testing.assert_close(a, b)
    u = torch.rand(6, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(cvkernels.sample_pdf(bins, w, 64, False, torch.Generator().manual_seed(2)),
                               ref.sample_pdf_reference(bins, w, u))
    inside = ((a >= bins[:, 3:4]) & (a <= bins[:, 4:5])).double().mean()
    assert inside > 0.8


def test_positional_encoding():
    x = torch.randn(5, 7, 3)
    y = cvkernels.positional_encoding(x, 10)
    assert y.shape == (5, 7, 63)
    torch.testing.assert_close(y, ref_nerf.positional_encoding(x, 10))
    torch.testing.assert_close(cvkernels.positional_encoding(x, 0), x)


def test_volume_renderer_module_matches_reference():
    R, S = 7, 12
    sig, feat, ts, te, _ = make_packed([S] * R, F=3, dtype=torch.float32)
    args = (sig.view(R, S), feat.view(R, S, 3), ts.view(R, S), te.view(R, S))
    for bg in (None, (1.0, 1.0, 1.0)):
        mine = cvkernels.nn.VolumeRenderer(background=bg)(*args)
        theirs = ref_nerf.VolumeRenderer(background=bg)(*args)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
