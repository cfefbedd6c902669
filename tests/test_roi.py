"""RoI Align / RoI Pool (C++ CPU kernels natively, CUDA kernels on a GPU) against the float64
reference (reference/ops/roi.py) and, where installed, torchvision."""
import functools
import importlib.util
import logging

import pytest
import torch
from hypothesis import given, settings, strategies as st

import cvkernels  # noqa: F401  (loads the extension)
from cvkernels import _extension
from cvkernels.nn.roi import MultiScaleRoIAlign, RoIAlign, RoIPool
from cvkernels.ops.roi import patch_torchvision, roi_align, roi_pool
from helpers import make_input, opcheck, poisoned_outputs
from reference.ops import roi as ref
from tolerances import assert_close

pytestmark = pytest.mark.skipif(not _extension.has_op("roi_align_forward"),
                                reason=f"cvkernels RoI ops not built: {_extension.load_error()}")
HAS_TV = importlib.util.find_spec("torchvision") is not None
HAS_CUDA = torch.cuda.is_available() and _extension.has_cuda_ops("roi_align_forward")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def make_rois(N, H, W, K, scale=1.0, dtype=torch.float64, outside=True):
    """K boxes in image coordinates (feature map H x W at `scale`), every image used, some boxes
    partly outside the image, one tiny and one degenerate (x2 < x1) box."""
    IH, IW = H / scale, W / scale
    x1 = torch.rand(K, dtype=torch.float64) * IW * (1.2 if outside else 0.8) - (0.15 * IW if outside else 0)
    y1 = torch.rand(K, dtype=torch.float64) * IH * (1.2 if outside else 0.8) - (0.15 * IH if outside else 0)
    bw = torch.rand(K, dtype=torch.float64) * IW * 0.6 + 0.2
    bh = torch.rand(K, dtype=torch.float64) * IH * 0.6 + 0.2
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], 1)
    if K >= 3:
        boxes[1] = torch.tensor([0.3 * IW, 0.4 * IH, 0.3 * IW + 0.2, 0.4 * IH + 0.1])  # tiny
        boxes[2] = torch.tensor([0.6 * IW, 0.5 * IH, 0.4 * IW, 0.3 * IH])  # x2 < x1, y2 < y1
    idx = (torch.arange(K) % N).to(torch.float64)[torch.randperm(K)]
    return torch.cat([idx[:, None], boxes], 1).to(dtype)


def _grad(fn, x, g):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    if not out.requires_grad:  # the reference builds no graph when no sample reads the input
        return out.detach(), torch.zeros_like(x)
    (gx,) = torch.autograd.grad(out, x, g)
    return out.detach(), gx


def _layout(shape, dtype, layout):
    """An uninitialized tensor of `shape` in `layout` (noncontiguous: every other element of W)."""
    if layout == "channels_last":
        return torch.empty(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":
        return torch.empty((*shape[:-1], 2 * shape[-1]), dtype=dtype)[..., ::2]
    return torch.empty(shape, dtype=dtype)


# ----------------------------------------------------------------------------- option grid

def _bf16_exact(t):
    """Values exactly representable in bfloat16 and float16 (so every dtype sees the same numbers)."""
    t = t.to(torch.bfloat16).double()
    return torch.where(t.abs() < 1e-2, torch.full_like(t, 0.25), t)


# not a round number: box edges and samples do not land exactly on pixel borders, where float32 and
# float64 coordinates could disagree on whether a sample is inside the image
SCALE = 0.4771


@functools.lru_cache(maxsize=None)
def _grid_case(aligned, sampling_ratio, mode):
    """Inputs exact in every dtype and the float64 oracle's output and gradient, once per option set."""
    gen = torch.Generator().manual_seed(1000 * int(aligned) + 10 * sampling_ratio + len(mode))
    N, C, H, W = 2, 3, 9, 11
    x = _bf16_exact(torch.randn(N, C, H, W, dtype=torch.float64, generator=gen))
    # boxes on a 1/8 grid (exact in bfloat16), partly outside the image, every image used,
    # one tiny box and one with x2 < x1, y2 < y1
    K = 6
    x1 = torch.randint(-40, 170, (K,), generator=gen) / 8
    y1 = torch.randint(-40, 140, (K,), generator=gen) / 8
    bw = torch.randint(2, 100, (K,), generator=gen) / 8
    bh = torch.randint(2, 90, (K,), generator=gen) / 8
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], 1).double()
    boxes[1] = torch.tensor([5.0, 6.0, 5.125, 6.25])
    boxes[2] = torch.tensor([12.0, 10.0, 7.0, 4.0])
    idx = torch.tensor([0.0, 1, 0, 1, 1, 0])
    rois = torch.cat([idx[:, None], boxes], 1)
    g = _bf16_exact(torch.randn(K, C, 3, 2, dtype=torch.float64, generator=gen))
    expected, egx = _grad(lambda t: ref.roi_align(t, rois, (3, 2), SCALE, sampling_ratio, aligned, mode), x, g)
    return x, rois, g, expected, egx


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_grid(aligned, sampling_ratio, dtype, layout, mode):
    x64, rois64, g64, expected, egx = _grid_case(aligned, sampling_ratio, mode)
    x = _layout(tuple(x64.shape), dtype, layout)
    x.copy_(x64)  # exact in every dtype; keeps the layout
    assert layout != "noncontiguous" or not x.is_contiguous()
    rois, g = rois64.to(dtype), g64.to(dtype)
    out, gx = _grad(lambda t: roi_align(t, rois, (3, 2), SCALE, sampling_ratio, aligned, pool_mode=mode), x, g)
    assert out.dtype == dtype and out.shape == expected.shape
    assert gx.dtype == dtype and gx.shape == x.shape
    assert_close(out, expected, dtype)
    assert_close(gx, egx, dtype)
    if layout == "channels_last":
        assert gx.is_contiguous(memory_format=torch.channels_last)


def assert_tol(dtype):
    from tolerances import tol
    return tol(dtype)["atol"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_roi_pool(dtype, layout):
    N, C, H, W = 2, 4, 10, 8
    x = make_input((N, C, H, W), dtype, "cpu", layout)
    rois = make_rois(N, H, W, 6, 0.25, dtype=dtype)
    g = torch.randn(6, C, 3, 3, dtype=torch.float64).to(dtype)
    out, gx = _grad(lambda t: roi_pool(t, rois, 3, 0.25), x, g)
    expected, egx = _grad(lambda t: ref.roi_pool(t, rois, 3, 0.25), x.double(), g.double())
    assert_close(out, expected, dtype)
    assert_close(gx, egx, dtype)


def test_list_boxes_match_tensor_boxes():
    N, C, H, W = 3, 2, 8, 8
    x = torch.randn(N, C, H, W)
    boxes = [torch.rand(k, 2) * 4 for k in (2, 0, 3)]
    boxes = [torch.cat([b, b + 1 + torch.rand_like(b) * 3], 1) for b in boxes]
    rois = torch.cat([torch.cat([torch.full((b.shape[0], 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    torch.testing.assert_close(roi_align(x, boxes, 2, 1.0, 2), roi_align(x, rois, 2, 1.0, 2), rtol=0, atol=0)
    torch.testing.assert_close(roi_pool(x, boxes, 2), roi_pool(x, rois, 2), rtol=0, atol=0)


@pytest.mark.parametrize("fn", ["align", "align_max", "pool"])
def test_empty_boxes(fn):
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    call = {"align": lambda b: roi_align(x, b, 2), "align_max": lambda b: roi_align(x, b, 2, pool_mode="max"),
            "pool": lambda b: roi_pool(x, b, 2)}[fn]
    for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)], []):
        out = call(boxes)
        assert out.shape == (0, 3, 2, 2)
        (gx,) = torch.autograd.grad(out.sum(), x)
        assert torch.equal(gx, torch.zeros_like(x))


def test_poisoned_outputs_fully_written():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float32)
    rois = make_rois(2, 7, 6, 5)
    with poisoned_outputs():
        for mode in ("avg", "max"):
            out, gx = _grad(lambda t: roi_align(t, rois, 3, 1.0, -1, True, pool_mode=mode), x,
                            torch.randn(5, 3, 3, 3))
            assert torch.isfinite(out).all() and torch.isfinite(gx).all()
        out, gx = _grad(lambda t: roi_pool(t, rois, 3), x, torch.randn(5, 3, 3, 3))
        assert torch.isfinite(out).all() and torch.isfinite(gx).all()


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 4), H=st.integers(1, 9), W=st.integers(1, 9),
       PH=st.integers(1, 4), PW=st.integers(1, 4), K=st.integers(0, 5), sr=st.integers(-1, 3),
       aligned=st.booleans(), mode=st.sampled_from(["avg", "max", "pool"]),
       scale=st.sampled_from([1.0, 0.5, 0.3337]), seed=st.integers(0, 2**16))
def test_fuzz_options(N, C, H, W, PH, PW, K, sr, aligned, mode, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, dtype=torch.float64, generator=gen)
    xy = torch.rand(K, 2, dtype=torch.float64, generator=gen) * torch.tensor([W, H]) / scale * 1.4 - 2
    wh = torch.rand(K, 2, dtype=torch.float64, generator=gen) * torch.tensor([W, H]) / scale
    idx = torch.randint(0, N, (K, 1), generator=gen).double()
    rois = torch.cat([idx, xy, xy + wh], 1)
    g = torch.randn(K, C, PH, PW, dtype=torch.float64, generator=gen)
    if mode == "pool":
        ours = _grad(lambda t: roi_pool(t, rois, (PH, PW), scale), x, g)
        exp = _grad(lambda t: ref.roi_pool(t, rois, (PH, PW), scale), x, g)
    else:
        ours = _grad(lambda t: roi_align(t, rois, (PH, PW), scale, sr, aligned, pool_mode=mode), x, g)
        exp = _grad(lambda t: ref.roi_align(t, rois, (PH, PW), scale, sr, aligned, mode), x, g)
    assert_close(ours[0], exp[0])
    assert_close(ours[1], exp[1])


# ----------------------------------------------------------------------------- autograd

@pytest.mark.parametrize("case", ["avg", "avg_aligned", "max", "pool"])
def test_gradcheck(case):
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = make_rois(2, 6, 7, 4, dtype=torch.float64)
    fn = {"avg": lambda t: roi_align(t, rois, (2, 3), 1.0, -1, False),
          "avg_aligned": lambda t: roi_align(t, rois, 3, 1.0, 2, True),
          "max": lambda t: roi_align(t, rois, 2, 1.0, 2, True, pool_mode="max"),
          "pool": lambda t: roi_pool(t, rois, 2)}[case]
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_double_backward_refused():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 0.5, 3.5, 4.0]], dtype=torch.float64)
    out = roi_align(x, rois, 2)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="twice|once_differentiable|does not require grad"):
        torch.autograd.grad(gx.sum(), x)


@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_deterministic_bitwise(mode):
    x = torch.randn(2, 8, 12, 12)
    rois = make_rois(2, 12, 12, 40, dtype=torch.float32)
    g = torch.randn(40, 8, 4, 4)
    run = (lambda t: roi_pool(t, rois, 4)) if mode == "pool" else \
        (lambda t: roi_align(t, rois, 4, 1.0, -1, True, pool_mode=mode))
    prev = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    try:
        torch.use_deterministic_algorithms(True)
        a = _grad(run, x, g)[1]
        b = _grad(run, x, g)[1]
        torch.set_num_threads(1)
        c = _grad(run, x, g)[1]
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(a, b) and torch.equal(a, c)


# ----------------------------------------------------------------------------- registration

def test_opcheck():
    x = torch.randn(2, 3, 6, 7)
    rois = make_rois(2, 6, 7, 4, dtype=torch.float32)
    for mode in (0, 1):
        out, arg = torch.ops.cvkernels.roi_align_forward(x, rois, 1.0, 2, 3, -1, True, mode)
        opcheck(torch.ops.cvkernels.roi_align_forward, (x, rois, 1.0, 2, 3, -1, True, mode))
        opcheck(torch.ops.cvkernels.roi_align_backward,
                (torch.randn_like(out), rois, arg, 1.0, 2, 3, 2, 3, 6, 7, -1, True, mode, False, True))
    out, arg = torch.ops.cvkernels.roi_pool_forward(x, rois, 0.5, 2, 2)
    opcheck(torch.ops.cvkernels.roi_pool_forward, (x, rois, 0.5, 2, 2))
    opcheck(torch.ops.cvkernels.roi_pool_backward,
            (torch.randn_like(out), rois, arg, 0.5, 2, 2, 2, 3, 6, 7, True, False))


def test_torch_compile_fullgraph():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    rois = make_rois(2, 8, 8, 5, dtype=torch.float32)

    def f(t, r):
        return roi_align(t, r, 3, 0.5, 2, True).square().sum() + roi_pool(t, r, 2, 0.5).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(x, rois)
    (g1,) = torch.autograd.grad(loss, x)
    loss_e = f(x, rois)
    (g2,) = torch.autograd.grad(loss_e, x)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(g1, g2)


# ----------------------------------------------------------------------------- errors

def test_errors():
    x = torch.randn(2, 3, 5, 5)
    good = torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]])
    with pytest.raises(ValueError, match="boxes"):
        roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="boxes\\[0\\]"):
        roi_align(x, [torch.zeros(3, 5)], 2)
    with pytest.raises(ValueError, match="batch index"):
        roi_align(x, torch.tensor([[2, 0.0, 0.0, 2.0, 2.0]]), 2)
    with pytest.raises(ValueError, match="batch index"):
        roi_pool(x, torch.tensor([[-1, 0.0, 0.0, 2.0, 2.0]]), 2)
    with pytest.raises(ValueError, match="batch size"):
        roi_align(x, [torch.zeros(1, 4)] * 3, 2)
    with pytest.raises(ValueError, match="spatial_scale"):
        roi_align(x, good, 2, -0.5)
    with pytest.raises(ValueError, match="spatial_scale"):
        roi_pool(x, good, 2, float("nan"))
    with pytest.raises(ValueError, match="output_size"):
        roi_align(x, good, (0, 2))
    with pytest.raises(TypeError, match="output_size"):
        roi_align(x, good, "7")
    with pytest.raises(ValueError, match="pool_mode"):
        roi_align(x, good, 2, pool_mode="min")
    with pytest.raises(ValueError, match="4-D"):
        roi_align(x[0], good, 2)
    with pytest.raises(TypeError, match="floating"):
        roi_align(x.to(torch.int32), good, 2)
    with pytest.raises(TypeError, match="floating"):
        roi_align(x, good.long(), 2)
    with pytest.raises(ValueError, match="device|is on"):
        roi_align(x, good.to("meta"), 2)
    # the registered op checks too
    with pytest.raises(ValueError, match="rois must have shape"):
        torch.ops.cvkernels.roi_align_forward(x, torch.zeros(2, 4), 1.0, 2, 2, -1, False, 0)
    with pytest.raises(ValueError, match="batch index"):
        torch.ops.cvkernels.roi_align_forward(x, torch.tensor([[5.0, 0, 0, 1, 1]]), 1.0, 2, 2, -1, False, 0)
    with pytest.raises(ValueError, match="spatial_scale"):
        torch.ops.cvkernels.roi_pool_forward(x, good, -1.0, 2, 2)


# ----------------------------------------------------------------------------- modules

def test_modules():
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    rois = make_rois(2, 10, 10, 4, 0.5)
    m = RoIAlign((2, 2), 0.5, 2, aligned=True)
    assert_close(m(x, rois), ref.roi_align(x, rois, 2, 0.5, 2, True))
    assert "aligned=True" in repr(m)
    assert_close(RoIPool(3, 0.5)(x, rois), ref.roi_pool(x, rois, 3, 0.5))


def test_multiscale_roi_align():
    feats = {"0": torch.randn(2, 4, 32, 32, dtype=torch.float64), "1": torch.randn(2, 4, 16, 16, dtype=torch.float64),
             "2": torch.randn(2, 4, 8, 8, dtype=torch.float64), "pool": torch.randn(2, 4, 4, 4, dtype=torch.float64)}
    boxes = []
    for _ in range(2):
        xy = torch.rand(6, 2, dtype=torch.float64) * 60
        wh = torch.tensor([4.0, 20.0, 70.0, 120.0, 8.0, 500.0], dtype=torch.float64)[:, None].expand(6, 2)
        boxes.append(torch.cat([xy, xy + wh], 1))
    m = MultiScaleRoIAlign(["0", "1", "2"], 3, 2)
    out = m(feats, boxes, [(128, 128), (120, 128)])
    assert m.scales == [0.25, 0.125, 0.0625]
    # canonical mapping: level = clamp(floor(4 + log2(sqrt(area) / 224) + 1e-6), 2, 4) - 2
    allb = torch.cat(boxes)
    s = ((allb[:, 2] - allb[:, 0]) * (allb[:, 3] - allb[:, 1])).sqrt()
    lvl = torch.clamp(torch.floor(4 + torch.log2(s / 224) + 1e-6), 2, 4).long() - 2
    rois = torch.cat([torch.cat([torch.full((6, 1), float(i), dtype=torch.float64), b], 1)
                      for i, b in enumerate(boxes)])
    names = ["0", "1", "2"]
    for k in range(rois.shape[0]):
        level = int(lvl[k])
        exp = ref.roi_align(feats[names[level]], rois[k:k + 1], 3, m.scales[level], 2, False)
        assert_close(out[k:k + 1], exp)
    assert set(lvl.tolist()) == {0, 1, 2}


def test_patch_torchvision_without_torchvision(caplog):
    if HAS_TV:
        pytest.skip("torchvision is installed")
    with caplog.at_level(logging.WARNING, logger="cvkernels"):
        with patch_torchvision() as active:
            assert active is False
    assert "torchvision is not installed" in caplog.text


# ----------------------------------------------------------------------------- torchvision

@pytest.mark.skipif(not HAS_TV, reason="torchvision not installed")
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_matches_torchvision(aligned, sampling_ratio):
    import torchvision
    x = torch.randn(2, 5, 13, 11)
    rois = make_rois(2, 13, 11, 12, 0.5, dtype=torch.float32)
    g = torch.randn(12, 5, 7, 7)
    ours = _grad(lambda t: roi_align(t, rois, 7, 0.5, sampling_ratio, aligned), x, g)
    theirs = _grad(lambda t: torchvision.ops.roi_align(t, rois, 7, 0.5, sampling_ratio, aligned), x, g)
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1])
    ours = _grad(lambda t: roi_pool(t, rois, 5, 0.5), x, g[:, :, :5, :5])
    theirs = _grad(lambda t: torchvision.ops.roi_pool(t, rois, 5, 0.5), x, g[:, :, :5, :5])
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1])


@pytest.mark.skipif(not HAS_TV, reason="torchvision not installed")
def test_multiscale_matches_torchvision():
    import torchvision
    feats = {"0": torch.randn(2, 4, 32, 32), "1": torch.randn(2, 4, 16, 16), "2": torch.randn(2, 4, 8, 8)}
    boxes = [torch.tensor([[1.0, 2, 10, 12], [0, 0, 100, 90], [5, 5, 60, 40]]),
             torch.tensor([[3.0, 4, 30, 50], [10, 20, 12, 22]])]
    shapes = [(128, 128), (128, 120)]
    ours = MultiScaleRoIAlign(["0", "1", "2"], 7, 2)(feats, boxes, shapes)
    theirs = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2"], 7, 2)(feats, boxes, shapes)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.skipif(not HAS_TV, reason="torchvision not installed")
def test_patch_torchvision_routes():
    import torchvision
    from cvkernels.ops import roi as roi_mod
    calls = []
    orig = roi_mod.roi_align

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0, 1.0, 1, 6, 6]])
    tv_fn = torchvision.ops.roi_align
    with patch_torchvision() as active:
        assert active
        roi_mod.roi_align = spy
        try:
            out = torchvision.ops.roi_align(x, rois, 2)
            torchvision.ops.RoIAlign(2, 1.0, -1)(x, rois)
        finally:
            roi_mod.roi_align = orig
    assert torchvision.ops.roi_align is tv_fn
    assert len(calls) == 2
    torch.testing.assert_close(out, tv_fn(x, rois, 2))


# ----------------------------------------------------------------------------- CUDA

@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and the cvkernels CUDA build")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_cuda_matches_cpu(dtype, layout, mode):
    N, C, H, W = 2, 19, 23, 17
    x = make_input((N, C, H, W), dtype, "cpu", layout)
    rois = make_rois(N, H, W, 50, 0.5, dtype=dtype)
    g = torch.randn(50, C, 5, 4, dtype=torch.float64).to(dtype)
    if mode == "pool":
        run = lambda t, r: roi_pool(t, r, (5, 4), 0.5)  # noqa: E731
    else:
        run = lambda t, r: roi_align(t, r, (5, 4), 0.5, -1, True, pool_mode=mode)  # noqa: E731
    cpu_out, cpu_g = _grad(lambda t: run(t, rois), x, g)
    xc, rc, gc = x.cuda(), rois.cuda(), g.cuda()
    out, g_atomic = _grad(lambda t: run(t, rc), xc, gc)
    prev = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        _, g_det1 = _grad(lambda t: run(t, rc), xc, gc)
        _, g_det2 = _grad(lambda t: run(t, rc), xc, gc)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert_close(out.cpu(), cpu_out.double(), dtype)
    assert_close(g_atomic.cpu(), cpu_g.double(), dtype, atol=4 * assert_tol(dtype), rtol=4 * assert_tol(dtype))
    assert_close(g_det1.cpu(), cpu_g.double(), dtype, atol=4 * assert_tol(dtype), rtol=4 * assert_tol(dtype))
    assert torch.equal(g_det1, g_det2)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and the cvkernels CUDA build")
def test_cuda_bad_batch_index_errors():
    x = torch.randn(2, 3, 5, 5, device="cuda")
    with pytest.raises(ValueError, match="batch index"):
        roi_align(x, torch.tensor([[2, 0.0, 0, 2, 2]], device="cuda"), 2)
