"""The attention benchmark suite (cvkernels/bench/attention.py) on CPU: case lists for the GPU
and the CPU (no GPU case is run), the flop/byte formulas against hand computations, the
baselines against each other, unavailable backends and missing kernels as recorded failures,
and the derived "sdpa-best" rows. Never times a GPU case."""
import io
import math

import pytest
import torch

from cvkernels.bench import attention as A
from cvkernels.bench import harness

FAST = dict(warmup=1, rep=2, measure_device_peaks=False, device="cpu", plot=False)
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _by_label(cases):
    return {c.label: c for c in cases}


def test_gpu_case_list_shapes_providers_and_modes():
    cases = A.cases(CUDA)
    flash = [c for c in cases if c.kernel.startswith("flash_attn")]
    window = [c for c in cases if "window_attn" in c.kernel]
    # ViT-B/16 and ViT-L/16-384 in two layouts + 4 long shapes x causal/non-causal, fp16 and bf16
    assert len(flash) == (2 * 2 + 4 * 2) * 2 == 24
    # 4 Swin-T stages x shift 0/3 (stage 4 unshifted only), fp16/bf16/fp32
    assert len(window) == 7 * 3 == 21 and len(cases) == 45
    labels = _by_label(cases)
    vit = labels["flash_attn vit-b16-64x12x197x64 bf16 BNHD"]
    assert vit.modes == ("fwd", "bwd", "fwd+bwd") and vit.bytes == {}
    assert list(vit.providers) == ["cvkernels", "eager", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math",
                                   "torch.compile"]
    assert "flash_attn vit-l16-384-32x16x577x64 fp16 BHND" in labels
    long_ = labels["flash_attn_causal seq16k-4x32x16384x128 fp16 BHND"]
    assert "sdpa-math" not in long_.providers and "sdpa-flash" in long_.providers  # math only for N <= 4096
    assert "sdpa-math" in labels["flash_attn_causal seq4k-4x32x4096x128 fp16 BHND"].providers
    assert not any(c.kernel == "flash_attn_causal" and c.shape.startswith("vit") for c in cases)
    s1 = labels["shifted_window_attn swin-t-s1-128x56x56x96-h3 fp32 BHWC"]
    assert s1.modes == ("fwd", "fwd+bwd")
    assert set(s1.providers) == {"cvkernels", "timm" if A._has_timm() else "eager", "torch.compile", "sdpa"}
    shapes = {c.shape for c in window}
    assert shapes == {"swin-t-s1-128x56x56x96-h3", "swin-t-s2-128x28x28x192-h6", "swin-t-s3-128x14x14x384-h12",
                      "swin-t-s4-128x7x7x768-h24"}
    assert "shifted_window_attn swin-t-s4-128x7x7x768-h24 bf16 BHWC" not in labels  # Swin: no shift at 7x7
    assert {c.dtype for c in window} == {torch.float16, torch.bfloat16, torch.float32}


def test_gpu_quick_and_cpu_lists():
    quick = A.cases(CUDA, quick=True)
    assert len(quick) == 9 and {c.dtype for c in quick} == {torch.bfloat16}
    assert sum(c.kernel.startswith("flash") for c in quick) == 5
    cpu = A.cases(CPU, quick=True)
    assert [c.label for c in cpu] == ["flash_attn tiny-1x2x64x32 fp32 BNHD",
                                      "shifted_window_attn tiny-1x14x14x32-h2 fp32 BHWC"]
    assert list(cpu[0].providers) == ["cvkernels", "eager", "sdpa-flash", "sdpa-math"]
    assert "torch.compile" not in cpu[1].providers and all(c.modes == ("fwd", "fwd+bwd") for c in cpu)
    assert len(A.cases(CUDA, dtypes=[torch.float32])) == 12 + 7
    assert {c.kernel for c in A.cases(CUDA, kernels=["window_attn"])} == {"window_attn"}
    # the harness sees the family and lists it without running anything
    assert harness.resolve_family("attention") == "attention"
    assert len(harness.collect_cases(["attention"], device=CUDA)) == 45


def test_flops_and_bytes_against_hand_computation():
    # ViT-B/16: 4 * 64 * 12 * 197 * 197 * 64 = 7,630,159,872 forward
    vit = _by_label(A.cases(CUDA))["flash_attn vit-b16-64x12x197x64 fp16 BHND"]
    assert vit.flops == {"fwd": 7_630_159_872, "bwd": 19_075_399_680, "fwd+bwd": 26_705_559_552}
    # causal halves it: 4 * 4 * 32 * 4096^2 * 64 / 2
    causal = _by_label(A.cases(CUDA))["flash_attn_causal seq4k-4x32x4096x64 bf16 BHND"]
    assert causal.flops["fwd"] == 274_877_906_944 and causal.flops["bwd"] == 687_194_767_360
    assert A.sdpa_flops(1, 1, 3, 5, 7, False, "fwd") == 4 * 3 * 5 * 7
    # Swin-T stage 1, bf16: tokens 128*56*56 = 401,408; qkv 3*96 + out 96 channels, table 169 x 3
    s1 = _by_label(A.cases(CUDA))["shifted_window_attn swin-t-s1-128x56x56x96-h3 bf16 BHWC"]
    assert s1.bytes["fwd"] == (401_408 * 4 * 96 + 169 * 3) * 2 == 308_282_358
    assert s1.bytes["fwd+bwd"] == (401_408 * 11 * 96 + 3 * 169 * 3) * 2
    assert s1.flops["fwd"] == 4 * 401_408 * 49 * 96 == 7_552_892_928
    assert s1.flops["fwd+bwd"] == int(3.5 * 7_552_892_928)
    fp32 = _by_label(A.cases(CUDA))["window_attn swin-t-s4-128x7x7x768-h24 fp32 BHWC"]
    assert fp32.bytes["fwd"] == (128 * 49 * 4 * 768 + 169 * 24) * 4


def test_metric_is_tflops_for_flash_and_gbs_for_windows():
    peaks = {"dram_Bps": 3.0e12, "matmul_flops": {"bf16": 700e12}}  # H100-like measured peaks
    labels = _by_label(A.cases(CUDA))
    vit = labels["flash_attn vit-b16-64x12x197x64 fp16 BNHD"]
    metric, value, frac = harness._metric(vit, "fwd", 0.02, peaks)
    assert metric == "TFLOP/s" and value == pytest.approx(7.630159872 / 0.02 * 1e-3 * 1e3, rel=1e-9)
    assert frac == pytest.approx(value * 1e12 / 700e12)  # fp16 rows: fraction of the bf16 peak
    s2 = labels["shifted_window_attn swin-t-s2-128x28x28x192-h6 bf16 BHWC"]
    metric, value, frac = harness._metric(s2, "fwd", 0.1, peaks)
    assert metric == "GB/s" and value == pytest.approx(s2.bytes["fwd"] / 1e-4 / 1e9)


def _window_inputs(shift, dtype=torch.float64, B=1, H=14, W=14, C=32, heads=2):
    return A._window_setup(B, H, W, C, heads, 7, shift, dtype, "cpu")()


@pytest.mark.parametrize("shift", [0, 3])
def test_window_baselines_agree(shift):
    inputs = _window_inputs(shift)
    outs = {}
    for kind in ("eager", "sdpa"):
        made = A._window_provider(kind, 2, 7, shift)(inputs, "fwd")
        outs[kind] = (made[0] if isinstance(made, tuple) else made)()
    torch.testing.assert_close(outs["sdpa"], outs["eager"], rtol=1e-12, atol=1e-12)
    try:  # the op under test computes the same function (its torch path: no interpreter)
        swa = A._cvkernels_fn("shifted_window_attention", "window_attention")
    except A.BackendNotAvailable:
        return
    got = swa(inputs["qkv"], inputs["table"], 2, 7, shift, backend="torch")
    torch.testing.assert_close(got, outs["eager"], rtol=1e-10, atol=1e-10)


def test_forced_backend_that_cannot_run_is_not_available():
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    inputs = {"q": q, "k": torch.randn_like(q), "v": torch.randn_like(q)}
    with pytest.raises(A.BackendNotAvailable, match="not available: sdpa-efficient"):
        A._sdpa_provider("sdpa-efficient", False, "BHND")(inputs, "fwd")  # no CPU kernel
    fn = A._sdpa_provider("sdpa-math", True, "BHND")(inputs, "fwd")
    torch.testing.assert_close(fn(), torch.nn.functional.scaled_dot_product_attention(
        inputs["q"], inputs["k"], inputs["v"], is_causal=True))
    with pytest.raises(A.BackendNotAvailable, match="no_such_op"):
        A._cvkernels_fn("no_such_op", "no_such_module")


def test_missing_kernel_is_a_recorded_failure_and_derived_rows_are_written(tmp_path, monkeypatch):
    real = A._cvkernels_fn

    def missing(name, module):
        return real(name + "_missing", module)
    monkeypatch.setattr(A, "_cvkernels_fn", missing)
    flash = A.cases(CPU, quick=True)[0]
    stream = io.StringIO()
    report = harness.run_cases([flash], out_dir=tmp_path, stream=stream, modes=["fwd+bwd"],
                               providers=["cvkernels", "sdpa-flash", "sdpa-math"], **FAST)
    assert [(f.provider, f.mode) for f in report.failures] == [("cvkernels", "fwd+bwd")]
    assert "not available" in report.failures[0].error
    assert {r.provider for r in report.results} == {"sdpa-flash", "sdpa-math"}
    A.after_run(report, CPU, stream)
    best = [r for r in report.results if r.provider == A.BEST_SDPA]
    assert len(best) == 1 and all(math.isnan(r.ratio_vs_cvkernels) for r in best)
    for r in best:
        same = [x for x in report.results if x.case_key == r.case_key and x.provider in A.SDPA_BACKENDS]
        assert r.p50_ms == min(x.p50_ms for x in same)
    rows = harness.read_csv(report.csv_path)
    assert sum(row["provider"] == A.BEST_SDPA for row in rows) == 1
    metrics = harness.read_csv(tmp_path / f"{report.csv_path.stem}-attention-metrics.csv")
    assert len(metrics) == len(report.results) and all(float(m["TFLOP/s"]) > 0 for m in metrics)
    assert all(m["best_sdpa_backend"] in A.SDPA_BACKENDS for m in metrics if m["provider"] == A.BEST_SDPA)
    assert "best SDPA backend" in stream.getvalue()


def test_best_sdpa_ratio_against_cvkernels():
    def res(provider, p50):
        return harness.Result("flash_attn", A.FAMILY, provider, "fwd", "s", "bf16", "BHND", p50, p50, p50)
    rows = [res("cvkernels", 2.0), res("sdpa-flash", 3.0), res("sdpa-cudnn", 2.5), res("eager", 1.0),
            res("torch.compile", 0.5)]
    (best, winner), = A.best_sdpa_rows(rows)
    assert winner == "sdpa-cudnn" and best.provider == A.BEST_SDPA and best.ratio_vs_cvkernels == 1.25
