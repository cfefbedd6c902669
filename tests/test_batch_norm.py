"""Fused BatchNorm(+add)+ReLU: every backend against the float64 reference in reference/ops."""
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cvkernels
from cvkernels import _dispatch
from cvkernels.ops import batch_norm as bn_ops
from helpers import gradcheck, leaf, make_input, opcheck, poisoned_outputs
from reference.ops import batch_norm as ref
from tolerances import assert_close, assert_close_2x, max_err

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _backends():
    out = ["triton"]
    if cvkernels.has_ops():
        out.append("cpp")
    return out


BACKENDS = _backends()


def _device_for(backend):
    return "cpu" if backend == "cpp" else KERNEL_DEVICE


def _params(C, dtype, device, affine=True):
    if not affine:
        return None, None
    w = (torch.rand(C, dtype=torch.float64, device=device) + 0.5).to(dtype).requires_grad_()
    b = torch.randn(C, dtype=torch.float64, device=device).to(dtype).requires_grad_()
    return w, b


def _running(C, device, dtype=torch.float32):
    return (torch.randn(C, device=device).to(dtype), (torch.rand(C, device=device) + 0.5).to(dtype))


def _run_case(backend, shape, dtype, layout, residual, affine, training, momentum=0.1, eps=1e-5,
              scale=1.0, shift=0.0):
    """Runs kernel, float64 reference and the plain torch op in `dtype`; checks outputs, grads, stats."""
    device = _device_for(backend)
    C = shape[1]
    x = make_input(shape, dtype, device, layout, requires_grad=True, scale=scale, shift=shift)
    r = make_input(shape, dtype, device, layout, requires_grad=True) if residual else None
    w, b = _params(C, dtype, device, affine)
    rm, rv = _running(C, device)
    grad = make_input(shape, dtype, device, layout)

    results = {}
    for name in ("kernel", "ref", "torch"):
        cast = torch.float64 if name == "ref" else None
        xi, ri = leaf(x, cast), (leaf(r, cast) if r is not None else None)
        wi, bi = (leaf(w, cast), leaf(b, cast)) if affine else (None, None)
        rmi, rvi = rm.clone().to(cast or rm.dtype), rv.clone().to(cast or rv.dtype)
        if name == "torch" and x.device.type == "cpu":  # CPU torch wants stats in input's dtype
            rmi, rvi = rmi.to(dtype), rvi.to(dtype)
        if name == "kernel":
            with poisoned_outputs():
                y = cvkernels.batch_norm_relu(xi, rmi, rvi, wi, bi, training, momentum, eps, residual=ri,
                                              backend=backend)
        elif name == "ref":
            y = ref.batch_norm_relu(xi, rmi, rvi, wi, bi, training, momentum, eps, residual=ri)
        else:
            y = torch.relu(F.batch_norm(xi, rmi, rvi, wi, bi, training, momentum, eps)
                           + (ri if ri is not None else 0))
        inputs = [t for t in (xi, wi, bi, ri) if t is not None]
        grads = torch.autograd.grad(y, inputs, grad.to(y.dtype))
        results[name] = dict(y=y, grads=grads, rm=rmi, rv=rvi, x=xi)

    k, o, t = results["kernel"], results["ref"], results["torch"]
    assert k["y"].dtype == dtype and k["y"].shape == x.shape
    if x.dim() == 4 and layout == "channels_last":
        assert k["y"].is_contiguous(memory_format=torch.channels_last)
    assert not torch.isnan(k["y"]).any(), "output has unwritten (poisoned) elements"
    names = ["grad_input", "grad_weight", "grad_bias", "grad_residual"][: len(k["grads"])]
    if not affine:
        names = ["grad_input"] + (["grad_residual"] if residual else [])
    if dtype == torch.float32:
        assert_close(k["y"], o["y"], dtype)
        for n, gk, go in zip(names, k["grads"], o["grads"]):
            assert_close(gk, go, dtype, atol=1e-4, rtol=1e-4), n
    else:
        assert_close_2x(k["y"], o["y"], t["y"], "output")
        for n, gk, go, gt in zip(names, k["grads"], o["grads"], t["grads"]):
            assert_close_2x(gk, go, gt, n)
    if training:
        assert_close(k["rm"], o["rm"], torch.float32)
        assert_close(k["rv"], o["rv"], torch.float32)
    else:
        assert torch.equal(k["rm"], rm) and torch.equal(k["rv"], rv), "eval must not touch running stats"
    return results


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("residual", [False, True], ids=["bn_relu", "bn_add_relu"])
def test_parity_train_and_eval(backend, dtype, layout, residual):
    shape = (3, 5, 7, 6)  # odd sizes
    affine = not (residual and layout == "noncontiguous")  # cover affine=False too
    _run_case(backend, shape, dtype, layout, residual, affine, training=True)
    _run_case(backend, shape, dtype, layout, residual, affine, training=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(13, 7), (4, 3, 11), (2, 3, 2, 3, 4), (1, 4, 1, 1), (5, 1, 3, 3)],
                         ids=str)
def test_parity_other_ranks(backend, shape):
    for layout in ("contiguous", "noncontiguous"):
        if shape == (1, 4, 1, 1) or layout == "noncontiguous" and shape[-1] < 2:
            training = False  # one value per channel: only eval is defined
        else:
            training = True
        _run_case(backend, shape, torch.float32, layout, residual=True, affine=True, training=training)
        _run_case(backend, shape, torch.float32, layout, residual=False, affine=True, training=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_layouts_residual(backend):
    """Residual in another memory format than the input (a copy path, still exact)."""
    device = _device_for(backend)
    x = make_input((2, 6, 5, 5), torch.float32, device, "channels_last")
    r = make_input((2, 6, 5, 5), torch.float32, device, "contiguous")
    rm, rv = _running(6, device)
    y = cvkernels.batch_norm_relu(x, rm.clone(), rv.clone(), None, None, True, residual=r, backend=backend)
    expected = ref.batch_norm_relu(x.double(), rm.double(), rv.double(), None, None, True, residual=r.double())
    assert_close(y, expected, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_statistics_are_sound_for_large_mean(backend):
    """|mean| >> std over many elements: sum/sum-of-squares in fp32 would lose the variance."""
    device = _device_for(backend)
    x = make_input((8, 3, 64, 64), torch.float32, device, scale=0.01, shift=1000.0)
    rm, rv = _running(3, device)
    y = cvkernels.batch_norm_relu(x, rm, rv, None, None, True, 1.0, 1e-5, backend=backend)
    xd = x.double()
    var = xd.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(rv.double(), var, rtol=1e-3, atol=0)
    expected = ref.batch_norm_relu(xd, None, None, None, None, True)
    assert max_err(y, expected) < 2e-2  # fp32 x itself only carries ~6e-5 relative to 1000


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_are_accurate_over_long_reductions(backend, layout):
    """2048 values per channel (a tile of 1024 rows), |mean| up to ~5 std: the saved mean and
    invstd within a few ulps of the exact ones, the output within a few ulps of float64.

    Regression (bench/NOTES.md, "deep-model gradient drift"): the Triton statistics were each
    tile's sum(x) / n in fp32 (a running sum down 1024 rows on the interpreter) merged in fp32,
    6-35 ulps of std off, the output up to 35 ulps; the fp32 tolerance of the other tests hid it,
    while over 30-50 layers it tripled the models' drift from float64 and flipped ReLUs.
    """
    device = _device_for(backend)
    ulp = torch.finfo(torch.float32).eps
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for shape in ((2, 4, 32, 32), (4, 8, 32, 32)):
        C = shape[1]
        x = make_input(shape, torch.float32, device, layout, scale=0.5, shift=1.5)
        x = (x + torch.linspace(-1, 1, C, device=device).view(1, C, 1, 1)).contiguous(memory_format=memory_format)
        w = (torch.rand(C, device=device) + 0.5)
        b = torch.randn(C, device=device) * 0.1
        rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
        fwd, _ = bn_ops._ops(backend)
        y, mean, invstd = fwd(x, w, b, None, rm, rv, True, 1.0, 1e-5)
        xd = x.double()
        var, mu = torch.var_mean(xd, dim=(0, 2, 3), correction=0)
        exact_invstd = torch.rsqrt(var + 1e-5)
        mean_err = ((mean.double() - mu).abs() / var.sqrt()).max().item() / ulp
        invstd_err = ((invstd.double() - exact_invstd).abs() / exact_invstd).max().item() / ulp
        assert mean_err < 4, f"{shape}: mean {mean_err:.1f} ulps of std off"
        assert invstd_err < 4, f"{shape}: invstd {invstd_err:.1f} ulps off"
        torch.testing.assert_close(rv.double(), xd.var(dim=(0, 2, 3), correction=1), rtol=4 * ulp, atol=0)
        expected = ref.batch_norm_relu(xd, None, None, w.double(), b.double(), True)
        out_err = max_err(y, expected) / ulp  # |y| < 8: 1 ulp is at most 4 * eps
        assert out_err < 12, f"{shape}: output {out_err:.1f} eps off"


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_stats_in_low_precision(backend):
    """model.half(): running stats in fp16 are read and written in their own dtype."""
    device = _device_for(backend)
    x = make_input((4, 3, 5, 5), torch.float16, device)
    rm, rv = _running(3, device, torch.float16)
    rmd, rvd = rm.double(), rv.double()
    cvkernels.batch_norm_relu(x, rm, rv, None, None, True, 0.3, backend=backend)
    ref.batch_norm_relu(x.double(), rmd, rvd, None, None, True, 0.3)
    assert rm.dtype == torch.float16
    assert_close(rm, rmd, torch.float16)
    assert_close(rv, rvd, torch.float16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    device = _device_for(backend)
    x = torch.randn(0, 4, 3, 3, device=device, requires_grad=True)
    rm, rv = _running(4, device)
    y = cvkernels.batch_norm_relu(x, rm, rv, torch.ones(4, device=device), None, False, backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cvkernels.batch_norm_relu(x, rm, rv, None, None, True, backend=backend)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cvkernels.batch_norm_relu(torch.randn(1, 4, device=device), rm, rv, None, None, True, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_bad_input_names_the_argument(backend):
    device = _device_for(backend) if backend != "torch" else "cpu"
    x = torch.randn(2, 4, 3, 3, device=device)
    rm, rv = _running(4, device)
    call = lambda *a, **k: cvkernels.batch_norm_relu(*a, backend=backend, **k)  # noqa: E731
    with pytest.raises(ValueError, match="input must have shape"):
        call(torch.randn(4, device=device), rm, rv)
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        call(x, rm, rv, torch.ones(3, device=device))
    with pytest.raises(ValueError, match="running_var must have shape"):
        call(x, rm, torch.ones(5, device=device))
    with pytest.raises(TypeError, match="input must be a floating-point"):
        call(x.to(torch.int32), rm, rv)
    with pytest.raises(ValueError, match="bias is on meta"):
        call(x, rm, rv, None, torch.zeros(4, device="meta"))
    with pytest.raises(ValueError, match="residual must have input's shape"):
        call(x, rm, rv, residual=torch.randn(2, 4, 3, 2, device=device))
    with pytest.raises(ValueError, match="required when training=False"):
        call(x, None, None, training=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_fp64(backend):
    device = _device_for(backend)
    x = torch.randn(3, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    r = torch.randn(3, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    w = (torch.rand(2, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    rm, rv = _running(2, device, torch.float64)
    for training in (True, False):
        fn = lambda x, w, b, r: cvkernels.batch_norm_relu(  # noqa: E731
            x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, residual=r, backend=backend)
        gradcheck(fn, (x, w, b, r))


def test_double_backward_is_refused():
    x = torch.randn(3, 2, 4, dtype=torch.float64, device=KERNEL_DEVICE, requires_grad=True)
    y = cvkernels.batch_norm_relu(x, None, None, None, None, True, backend="triton")
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|does not require grad"):
        torch.autograd.grad(g.sum(), x)


def _op_args(device, dtype, training, residual, layout="channels_last"):
    x = make_input((2, 3, 4, 5), dtype, device, layout, requires_grad=True)
    r = make_input((2, 3, 4, 5), dtype, device, layout) if residual else None
    w, b = _params(3, dtype, device)
    rm, rv = _running(3, device)
    return x, w, b, r, rm, rv


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_opcheck(backend, training):
    device = _device_for(backend)
    fwd, bwd = bn_ops._ops(backend)
    x, w, b, r, rm, rv = _op_args(device, torch.float32, training, residual=True)
    opcheck(fwd, (x.detach(), w.detach(), b.detach(), r, rm, rv, training, 0.1, 1e-5))
    y, mean, invstd = fwd(x.detach(), w.detach(), b.detach(), r, rm, rv, training, 0.1, 1e-5)
    g = torch.randn_like(y)
    opcheck(bwd, (g, y, x.detach(), w.detach(), mean, invstd, training, True))
    opcheck(bwd, (g, y, x.detach(), None, mean, invstd, training, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = _device_for(backend)
    torch._dynamo.reset()
    m = cvkernels.nn.BatchNormReLU2d(3, backend=backend).to(device)
    m_ref = cvkernels.nn.BatchNormReLU2d(3, backend="torch").to(device)
    m_ref.load_state_dict(m.state_dict())
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    x = make_input((2, 3, 4, 5), torch.float32, device, "channels_last", requires_grad=True)
    r = make_input((2, 3, 4, 5), torch.float32, device)
    xr = leaf(x)
    y = compiled(x, r)
    y_ref = m_ref(xr, r)
    assert_close(y, y_ref, torch.float32)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert_close(x.grad, xr.grad, torch.float32, atol=1e-4)
    assert_close(m.weight.grad, m_ref.weight.grad, torch.float32, atol=1e-4)
    assert_close(m.running_var, m_ref.running_var, torch.float32)
    compiled.eval()
    assert_close(compiled(x), m_ref.eval()(x), torch.float32)


@pytest.mark.skipif(os.environ.get("CVK_SKIP_INDUCTOR") == "1", reason="CVK_SKIP_INDUCTOR=1")
def test_torch_compile_inductor_default():
    """The default backend (inductor) around the registered op, as users call it."""
    torch._dynamo.reset()
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), cvkernels.nn.BatchNormReLU2d(4, backend="triton"))
    m = m.to(KERNEL_DEVICE)
    x = torch.randn(2, 3, 4, 4, device=KERNEL_DEVICE)
    m(x)  # one training step moves the running stats away from (0, 1)
    m.eval()
    compiled = torch.compile(m, fullgraph=True)
    assert_close(compiled(x), m(x), torch.float32)


# ----------------------------------------------------------------------------- dispatch


def test_dispatch_choices(monkeypatch):
    assert _dispatch.choose("batch_norm_relu", "cpu", "torch") == "torch"
    assert _dispatch.choose("batch_norm_relu", "cpu", "triton", supported=False) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        _dispatch.choose("batch_norm_relu", "cpu", "cudnn")
    with pytest.raises(ValueError, match="has no 'cuda' backend"):
        _dispatch.choose("batch_norm_relu", "cpu", "cuda")
    if cvkernels.has_ops():
        assert _dispatch.choose("batch_norm_relu", "cpu") == "cpp"
    monkeypatch.setenv("CVK_BACKEND", "torch")
    assert _dispatch.choose("batch_norm_relu", "cpu") == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("CVK_BACKEND")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cannot run on cpu"):
            _dispatch.choose("batch_norm_relu", "cpu", "triton")


def test_unsupported_dtype_falls_back_to_torch():
    """An input dtype no kernel takes (complex is rejected, fp64 weight with fp16 input is fine)."""
    x = torch.randn(4, 3, 2, 2, dtype=torch.float16, device=KERNEL_DEVICE)
    w = torch.rand(3, dtype=torch.float64, device=KERNEL_DEVICE) + 0.5
    rm, rv = _running(3, KERNEL_DEVICE)
    y = cvkernels.batch_norm_relu(x, rm, rv, w, None, False, backend="triton")
    expected = ref.batch_norm_relu(x.double(), rm.double(), rv.double(), w, None, False)
    assert_close(y, expected, torch.float16)


# ----------------------------------------------------------------------------- fuzzing


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(2, 4), c=st.integers(1, 9), h=st.integers(1, 6), w=st.integers(1, 6),
    layout=st.sampled_from(["contiguous", "channels_last", "noncontiguous"]),
    residual=st.booleans(), affine=st.booleans(), training=st.booleans(),
    momentum=st.floats(0.0, 1.0), eps=st.sampled_from([1e-5, 1e-3]),
)
def test_fuzz_options(n, c, h, w, layout, residual, affine, training, momentum, eps):
    if layout == "noncontiguous" and w < 2:
        w = 2
    for backend in BACKENDS:
        _run_case(backend, (n, c, h, w), torch.float32, layout, residual, affine, training, momentum, eps)
