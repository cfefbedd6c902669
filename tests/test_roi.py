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
from cvkernels.ops.roi import _roi_align_per_level, patch_torchvision, roi_align, roi_align_multilevel, roi_pool
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


# ----------------------------------------------------------------------------- multi-level (FPN) RoI Align

ML_SIZES = ((2, 3, 17, 21), (2, 3, 9, 11), (2, 3, 5, 6), (2, 3, 3, 3))  # level 2 gets no RoI
ML_SCALES = (SCALE, SCALE / 2, SCALE / 4, SCALE / 8)
ML_LEVELS = (0, 1, 0, 3, 1, 0, 3, 1)  # every used level has RoIs of both images
ML_OUT = (3, 2)


def _ml_layout(dtype, layout, level):
    """A level's empty feature: contiguous, channels_last, or mixed (channels_last on odd levels)."""
    cl = layout == "channels_last" or (layout == "mixed" and level % 2 == 1)
    return _layout(ML_SIZES[level], dtype, "channels_last" if cl else "contiguous")


@functools.lru_cache(maxsize=None)
def _ml_case(mode):
    """bf16-exact levels and RoIs (partly outside, one tiny, one with x2 < x1), and the
    float64 oracle's output and per-level gradients (each level's RoIs pooled from that level)."""
    gen = torch.Generator().manual_seed(77 + len(mode))
    feats = [_bf16_exact(torch.randn(s, dtype=torch.float64, generator=gen)) for s in ML_SIZES]
    K = len(ML_LEVELS)
    xy = torch.randint(-40, 320, (K, 2), generator=gen) / 8
    wh = torch.randint(2, 280, (K, 2), generator=gen) / 8
    boxes = torch.cat([xy, xy + wh], 1).double()
    boxes[1] = torch.tensor([5.0, 6.0, 5.125, 6.25])
    boxes[2] = torch.tensor([24.0, 20.0, 14.0, 8.0])
    idx = torch.tensor([0.0, 1, 1, 0, 0, 0, 1, 1])
    rois = torch.cat([idx[:, None], boxes], 1).to(torch.bfloat16).double()  # exact in every dtype
    levels = torch.tensor(ML_LEVELS)
    g = _bf16_exact(torch.randn(K, 3, *ML_OUT, dtype=torch.float64, generator=gen))
    out = torch.zeros(K, 3, *ML_OUT, dtype=torch.float64)
    grads = []
    for level, (f, s) in enumerate(zip(feats, ML_SCALES)):
        sel = (levels == level).nonzero().flatten()
        o, gx = _grad(lambda t: ref.roi_align(t, rois[sel], ML_OUT, s, 2, True, mode), f, g[sel])
        out[sel] = o
        grads.append(gx)
    return feats, rois, levels, g, out, grads


def _ml_run(feats, rois, levels, g, mode, fn=roi_align_multilevel):
    """Output and per-level gradients of fn (roi_align_multilevel or the per-level loop)."""
    leaves = [f.detach().clone().requires_grad_(True) for f in feats]
    if fn is roi_align_multilevel:
        out = fn(leaves, rois, levels, ML_OUT, list(ML_SCALES), 2, True, pool_mode=mode)
    else:
        out = fn(leaves, rois, levels, ML_OUT, list(ML_SCALES), 2, True, mode, None)
    return out.detach(), torch.autograd.grad(out, leaves, g, allow_unused=True)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multilevel_matches_per_level_and_reference(dtype, layout, mode):
    feats64, rois64, levels, g64, expected, egrads = _ml_case(mode)
    feats = [_ml_layout(dtype, layout, l).copy_(f) for l, f in enumerate(feats64)]
    rois, g = rois64.to(dtype), g64.to(dtype)
    out, grads = _ml_run(feats, rois, levels, g, mode)
    loop_out, loop_grads = _ml_run(feats, rois, levels, g, mode, fn=_roi_align_per_level)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, dtype)
    # the per-level loop runs the same arithmetic on each level's RoIs: bit for bit the same
    assert torch.equal(out, loop_out)
    for f, gx, lgx, egx in zip(feats, grads, loop_grads, egrads):
        assert gx.dtype == dtype and gx.shape == f.shape
        assert gx.is_contiguous(memory_format=torch.channels_last) == _is_cl(f)
        assert_close(gx, egx, dtype)
        assert torch.equal(gx, lgx)
    assert not grads[2].any()  # level 2 has no RoI


def _is_cl(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_multilevel_no_rois():
    feats = [torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 4, 4, requires_grad=True)]
    for mode in ("avg", "max"):
        for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)]):
            out = roi_align_multilevel(feats, boxes, torch.zeros(0, dtype=torch.int64), 2, [0.5, 0.25],
                                       pool_mode=mode)
            assert out.shape == (0, 3, 2, 2)
            grads = torch.autograd.grad(out.sum(), feats)
            assert all(torch.equal(gx, torch.zeros_like(f)) for gx, f in zip(grads, feats))


def test_multilevel_poisoned_outputs_fully_written():
    feats = [torch.randn(2, 3, 9, 8), torch.randn(2, 3, 5, 4).contiguous(memory_format=torch.channels_last),
             torch.randn(2, 3, 3, 2)]
    rois = make_rois(2, 18, 16, 6)
    levels = torch.tensor([0, 1, 0, 1, 1, 0])  # level 2: no RoI
    with poisoned_outputs():
        for mode in ("avg", "max"):
            leaves = [f.clone().requires_grad_(True) for f in feats]
            out = roi_align_multilevel(leaves, rois, levels, 3, [0.5, 0.25, 0.125], -1, True, pool_mode=mode)
            grads = torch.autograd.grad(out, leaves, torch.randn(6, 3, 3, 3))
            assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_multilevel_gradcheck(mode):
    feats = [torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True),
             torch.randn(2, 2, 4, 3, dtype=torch.float64, requires_grad=True).contiguous(
                 memory_format=torch.channels_last)]
    rois = make_rois(2, 7 / 0.5, 6 / 0.5, 4, dtype=torch.float64)
    levels = torch.tensor([0, 1, 1, 0])
    assert torch.autograd.gradcheck(
        lambda a, b: roi_align_multilevel([a, b], rois, levels, 2, [0.5, 0.25], 2, True, pool_mode=mode),
        tuple(feats), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_multilevel_deterministic_bitwise(mode):
    feats = [torch.randn(2, 8, 24, 24), torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last),
             torch.randn(2, 8, 6, 6)]
    rois = make_rois(2, 48, 48, 60, dtype=torch.float32)
    levels = torch.arange(60) % 3
    g = torch.randn(60, 8, 4, 4)

    def grads():
        leaves = [f.clone().requires_grad_(True) for f in feats]
        out = roi_align_multilevel(leaves, rois, levels, 4, [0.5, 0.25, 0.125], -1, True, pool_mode=mode)
        return torch.autograd.grad(out, leaves, g)

    prev = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    try:
        torch.use_deterministic_algorithms(True)
        a, b = grads(), grads()
        torch.set_num_threads(1)
        c = grads()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(prev)
    assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))


def test_multilevel_opcheck():
    feats = [torch.randn(2, 3, 6, 7), torch.randn(2, 3, 3, 4).contiguous(memory_format=torch.channels_last)]
    rois = make_rois(2, 12, 14, 5, dtype=torch.float32)
    levels = torch.tensor([1, 0, 1, 1, 0])
    for mode in (0, 1):
        args = (feats, rois, levels, [0.5, 0.25], 2, 3, -1, True, mode)
        out, arg = torch.ops.cvkernels.roi_align_multilevel_forward(*args)
        opcheck(torch.ops.cvkernels.roi_align_multilevel_forward, args)
        opcheck(torch.ops.cvkernels.roi_align_multilevel_backward,
                (torch.randn_like(out), rois, levels, arg, [0.5, 0.25], 2, 3, 2, 3, [6, 3], [7, 4], -1, True, mode,
                 [False, True], True))


def test_multilevel_torch_compile_fullgraph():
    feats = {"0": torch.randn(2, 3, 16, 16, requires_grad=True), "1": torch.randn(2, 3, 8, 8, requires_grad=True),
             "2": torch.randn(2, 3, 4, 4, requires_grad=True)}
    boxes = [torch.tensor([[1.0, 2, 10, 12], [0, 0, 60, 50], [5, 5, 30, 20]]),
             torch.tensor([[3.0, 4, 30, 50], [10, 20, 12, 22]])]
    shapes = [(64, 64), (64, 60)]
    m = MultiScaleRoIAlign(["0", "1", "2"], 3, 2)
    m(feats, boxes, shapes)  # sets up the scales (a host read, as torchvision's)

    def f(x, b):
        return m(x, b, shapes).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(feats, boxes)
    g1 = torch.autograd.grad(loss, list(feats.values()))
    loss_e = f(feats, boxes)
    g2 = torch.autograd.grad(loss_e, list(feats.values()))
    torch.testing.assert_close(loss, loss_e)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_multiscale_one_launch_no_sync():
    """MultiScaleRoIAlign runs one multi-level forward and one backward op, and no op that reads
    device values on the host (nonzero, item) - what the per-level loop needed."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    feats = {"0": torch.randn(2, 4, 32, 32, requires_grad=True), "1": torch.randn(2, 4, 16, 16, requires_grad=True),
             "2": torch.randn(2, 4, 8, 8, requires_grad=True)}
    boxes = [torch.tensor([[1.0, 2, 10, 12], [0, 0, 100, 90]]), torch.tensor([[3.0, 4, 30, 50], [10, 20, 12, 22]])]
    m = MultiScaleRoIAlign(["0", "1", "2"], 7, 2)
    m(feats, boxes, [(128, 128), (128, 120)])
    rec = Record()
    with rec:
        out = m(feats, boxes, [(128, 128), (128, 120)])
        torch.autograd.grad(out.sum(), list(feats.values()))
    cvk = [o for o in rec.ops if o.startswith("cvkernels.")]
    assert cvk == ["cvkernels.roi_align_multilevel_forward", "cvkernels.roi_align_multilevel_backward"], cvk
    assert not [o for o in rec.ops if o.split(".")[-1] in ("nonzero", "item", "_local_scalar_dense")], rec.ops


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_multiscale_low_precision_channels_last(dtype):
    feats = {k: torch.randn(2, 4, s, s, dtype=torch.float64).to(dtype).contiguous(memory_format=torch.channels_last)
             for k, s in (("0", 32), ("1", 16), ("2", 8))}
    boxes = []
    for _ in range(2):
        xy = torch.rand(6, 2, dtype=torch.float64) * 60
        wh = torch.tensor([4.0, 20.0, 70.0, 120.0, 8.0, 500.0], dtype=torch.float64)[:, None].expand(6, 2)
        boxes.append(torch.cat([xy, xy + wh], 1).to(dtype))
    m = MultiScaleRoIAlign(["0", "1", "2"], 3, 2)
    out = m(feats, boxes, [(128, 128), (120, 128)])
    levels = m.map_levels(boxes)
    assert set(levels.tolist()) == {0, 1, 2}
    rois = torch.cat([torch.cat([torch.full((6, 1), float(i), dtype=dtype), b], 1) for i, b in enumerate(boxes)])
    loop = _roi_align_per_level(list(feats.values()), rois, levels, (3, 3), m.scales, 2, False, "avg", None)
    assert out.dtype == dtype and torch.equal(out, loop)
    for k in range(rois.shape[0]):
        level = int(levels[k])
        exp = ref.roi_align(feats[str(level)].double(), rois[k:k + 1].double(), 3, m.scales[level], 2, False)
        assert_close(out[k:k + 1], exp, dtype)


def test_multilevel_fallbacks():
    """More levels than one launch takes, and levels of different dtypes: one roi_align per level."""
    feats = [torch.randn(1, 2, 2 + i, 3 + i, dtype=torch.float64) for i in range(10)]
    rois = make_rois(1, 4, 4, 10, dtype=torch.float64)
    levels = torch.arange(10)
    scales = [0.5] * 10
    out = roi_align_multilevel(feats, rois, levels, 2, scales, 2)
    torch.testing.assert_close(out, _roi_align_per_level(feats, rois, levels, (2, 2), scales, 2, False, "avg", None),
                               rtol=0, atol=0)
    mixed = [feats[0], feats[1].float()]
    out = roi_align_multilevel(mixed, rois[:4], levels[:4] % 2, 2, scales[:2], 2)
    assert out.dtype == torch.float64
    torch.testing.assert_close(
        out, _roi_align_per_level(mixed, rois[:4], levels[:4] % 2, (2, 2), scales[:2], 2, False, "avg", None),
        rtol=0, atol=0)


def test_multilevel_errors():
    feats = [torch.randn(2, 3, 6, 6), torch.randn(2, 3, 3, 3)]
    rois = torch.tensor([[0, 0.0, 0.0, 2.0, 2.0], [1, 1.0, 1.0, 4.0, 3.0]])
    lv = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="levels must have shape"):
        roi_align_multilevel(feats, rois, lv[:1], 2, [1.0, 0.5])
    with pytest.raises(TypeError, match="levels must be an integer"):
        roi_align_multilevel(feats, rois, lv.float(), 2, [1.0, 0.5])
    with pytest.raises(ValueError, match="spatial_scales"):
        roi_align_multilevel(feats, rois, lv, 2, [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        roi_align_multilevel([], rois, lv, 2, [])
    with pytest.raises(ValueError, match="features\\[1\\].*4-D"):
        roi_align_multilevel([feats[0], feats[1][0]], rois, lv, 2, [1.0, 0.5])
    with pytest.raises(ValueError, match="levels must be in \\[0, 2\\)"):
        roi_align_multilevel(feats, rois, torch.tensor([0, 2]), 2, [1.0, 0.5])
    with pytest.raises(ValueError, match="batch index"):
        roi_align_multilevel(feats, rois + torch.tensor([2.0, 0, 0, 0, 0]), lv, 2, [1.0, 0.5])
    # the registered op checks too
    op = torch.ops.cvkernels.roi_align_multilevel_forward
    with pytest.raises(ValueError, match="batch size and channels"):
        op([feats[0], torch.randn(2, 4, 3, 3)], rois, lv, [1.0, 0.5], 2, 2, -1, False, 0)
    with pytest.raises(TypeError, match="features\\[1\\] must have features\\[0\\]'s dtype"):
        op([feats[0], feats[1].double()], rois, lv, [1.0, 0.5], 2, 2, -1, False, 0)
    with pytest.raises(ValueError, match="1 to 8 levels"):
        op([feats[1]] * 9, rois, lv, [1.0] * 9, 2, 2, -1, False, 0)
    with pytest.raises(TypeError, match="levels must be int64"):
        op(feats, rois, lv.int(), [1.0, 0.5], 2, 2, -1, False, 0)
    with pytest.raises(ValueError, match="one value per level"):
        torch.ops.cvkernels.roi_align_multilevel_backward(torch.zeros(2, 3, 2, 2), rois, lv, torch.zeros(0), [1.0, 0.5],
                                                          2, 2, 2, 3, [6], [6, 3], -1, False, 0, [False, False], False)


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


@pytest.mark.skipif(not HAS_CUDA or not _extension.has_cuda_ops("roi_align_multilevel_forward"),
                    reason="needs CUDA and the cvkernels CUDA build")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "mixed"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_cuda_multilevel_matches_cpu(dtype, layout, mode):
    sizes = ((2, 19, 40, 33), (2, 19, 20, 17), (2, 19, 10, 9), (2, 19, 5, 5))
    feats = [make_input(s, dtype, "cpu", "channels_last" if layout == "mixed" and l % 2 else "contiguous")
             for l, s in enumerate(sizes)]
    rois = make_rois(2, 40 / 0.5, 33 / 0.5, 80, dtype=dtype)
    levels = torch.randint(0, 3, (80,))  # level 3 gets no RoI
    scales = [0.5, 0.25, 0.125, 0.0625]
    g = torch.randn(80, 19, 5, 4, dtype=torch.float64).to(dtype)

    def run(fs, r, lv, gg):
        leaves = [f.detach().clone().requires_grad_(True) for f in fs]
        out = roi_align_multilevel(leaves, r, lv, (5, 4), scales, -1, True, pool_mode=mode)
        return out.detach(), torch.autograd.grad(out, leaves, gg)

    cpu_out, cpu_g = run(feats, rois, levels, g)
    fc, rc, lc, gc = [f.cuda() for f in feats], rois.cuda(), levels.cuda(), g.cuda()
    out, g_atomic = run(fc, rc, lc, gc)
    prev = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        _, g_det1 = run(fc, rc, lc, gc)
        _, g_det2 = run(fc, rc, lc, gc)
    finally:
        torch.use_deterministic_algorithms(prev)
    loop_out = _roi_align_per_level(fc, rc, lc, (5, 4), scales, -1, True, mode, None)
    assert_close(out.cpu(), cpu_out.double(), dtype)
    assert torch.equal(out, loop_out)
    t = 4 * assert_tol(dtype)
    for f, a, d1, d2, c in zip(fc, g_atomic, g_det1, g_det2, cpu_g):
        assert a.is_contiguous(memory_format=torch.channels_last) == _is_cl(f)
        assert_close(a.cpu(), c.double(), dtype, atol=t, rtol=t)
        assert_close(d1.cpu(), c.double(), dtype, atol=t, rtol=t)
        assert torch.equal(d1, d2)
    # a level outside the table reads nothing (no host check on CUDA)
    bad = roi_align_multilevel(fc, rc[:2], torch.tensor([0, 9], device="cuda"), (5, 4), scales, -1, True)
    assert torch.equal(bad[1], torch.zeros_like(bad[1]))
