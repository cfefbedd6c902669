"""The benchmark harness (cvkernels.bench) with cheap stand-in providers: CSV columns, ratios,
plots, failure handling. Never times the real kernels."""
import csv
import io
import math
import time

import pytest
import torch

from cvkernels.bench import harness
from cvkernels.bench.harness import CSV_COLUMNS, Case, run_cases

FAST = dict(warmup=1, rep=2, measure_device_peaks=False, device="cpu")


def _toy_case(providers, modes=("fwd", "fwd+bwd"), kernel="toy", shape="8x16"):
    def setup():
        return {"x": torch.randn(8, 16, requires_grad=True)}

    nbytes = 8 * 16 * 4
    return Case(kernel=kernel, family="toy", shape=shape, dtype=torch.float32, layout="contiguous",
                setup=setup, providers=providers,
                bytes={"fwd": 2 * nbytes, "bwd": 2 * nbytes, "fwd+bwd": 4 * nbytes, "eval": 2 * nbytes},
                modes=modes)


def _fast(inputs, mode):
    x = inputs["x"]
    return lambda: x * 2.0


def _slow(inputs, mode):
    x = inputs["x"]

    def fn():
        time.sleep(0.002)
        return x * 2.0
    return fn


def _broken_factory(inputs, mode):
    raise RuntimeError("stand-in provider cannot be built")


def _broken_at_run(inputs, mode):
    def fn():
        raise ValueError("stand-in provider fails when called")
    return fn


def _run(tmp_path, cases, **kw):
    stream = io.StringIO()
    args = dict(FAST)
    args.update(kw)
    report = run_cases(cases, out_dir=tmp_path, stream=stream, **args)
    return report, stream.getvalue()


def test_csv_has_the_columns_and_one_row_per_case_mode_provider(tmp_path):
    cases = [_toy_case({"cvkernels": _fast, "eager": _fast}),
             _toy_case({"cvkernels": _fast, "eager": _fast}, shape="4x16")]
    report, _ = _run(tmp_path, cases, plot=False)
    assert report.csv_path is not None and report.csv_path.exists()
    with open(report.csv_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == list(CSV_COLUMNS)
    assert len(rows) == 2 * 2 * 2  # cases x modes x providers
    by_name = [dict(zip(header, r)) for r in rows]
    for row in by_name:
        assert row["family"] == "toy" and row["dtype"] == "fp32" and row["layout"] == "contiguous"
        assert float(row["p20_ms"]) <= float(row["p50_ms"]) <= float(row["p80_ms"])
        assert row["metric"] == "GB/s" and float(row["metric_value"]) > 0
        assert row["torch"] == torch.__version__ and row["git_sha"] and row["date"]
    assert {r["mode"] for r in by_name} == {"fwd", "fwd+bwd"}
    assert report.json_path.exists()


def test_ratio_is_baseline_time_over_cvkernels_time(tmp_path):
    cases = [_toy_case({"cvkernels": _fast, "eager": _slow, "other": _fast})]
    report, log = _run(tmp_path, cases, plot=False)
    rows = harness.read_csv(report.csv_path)
    for mode in ("fwd", "fwd+bwd"):
        got = {r["provider"]: r for r in rows if r["mode"] == mode}
        ref = float(got["cvkernels"]["p50_ms"])
        assert float(got["cvkernels"]["ratio_vs_cvkernels"]) == 1.0
        for name in ("eager", "other"):
            assert float(got[name]["ratio_vs_cvkernels"]) == pytest.approx(float(got[name]["p50_ms"]) / ref,
                                                                           rel=1e-4)
        # the baseline sleeps 2 ms per call: cvkernels (a multiply) is faster, ratio > 1
        assert float(got["eager"]["ratio_vs_cvkernels"]) > 1.5
        assert float(got["eager"]["p50_ms"]) >= 2.0
    assert "summary" in log and "vs eager" in log


def test_plot_file_is_written(tmp_path):
    cases = [_toy_case({"cvkernels": _fast, "eager": _slow}),
             _toy_case({"cvkernels": _fast, "eager": _slow}, kernel="toy2")]
    report, _ = _run(tmp_path, cases, plot=True)
    assert len(report.plot_paths) == 1
    png = report.plot_paths[0]
    assert png.exists() and png.parent == tmp_path and png.name.endswith("-toy.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000


def test_a_failing_provider_is_reported_and_the_run_goes_on(tmp_path):
    providers = {"cvkernels": _fast, "eager": _fast, "broken": _broken_factory, "flaky": _broken_at_run}
    cases = [_toy_case(providers), _toy_case({"cvkernels": _fast, "eager": _fast}, shape="4x16")]
    report, log = _run(tmp_path, cases, plot=True)
    failed = {(f.provider, f.mode) for f in report.failures}
    assert failed == {("broken", "fwd"), ("broken", "fwd+bwd"), ("flaky", "fwd"), ("flaky", "fwd+bwd")}
    assert any("cannot be built" in f.error for f in report.failures)
    assert any("fails when called" in f.error for f in report.failures)
    # every working provider of both cases was still measured and written
    rows = harness.read_csv(report.csv_path)
    assert {(r["shape"], r["provider"]) for r in rows} == {
        ("8x16", "cvkernels"), ("8x16", "eager"), ("4x16", "cvkernels"), ("4x16", "eager")}
    assert "broken FAILED" in log and "failures (4)" in log
    assert report.plot_paths and report.plot_paths[0].exists()


def test_missing_cvkernels_leaves_ratio_empty(tmp_path):
    cases = [_toy_case({"cvkernels": _broken_factory, "eager": _fast})]
    report, _ = _run(tmp_path, cases, plot=False)
    rows = harness.read_csv(report.csv_path)
    assert rows and all(r["provider"] == "eager" and r["ratio_vs_cvkernels"] == "" for r in rows)


def test_backward_modes_reset_gradients_and_run(tmp_path):
    calls = {"n": 0}

    def counting(inputs, mode):
        x = inputs["x"]

        def fn():
            calls["n"] += 1
            return (x * 3.0).relu()
        return fn

    cases = [_toy_case({"cvkernels": counting}, modes=("bwd", "fwd+bwd", "eval"))]
    report, _ = _run(tmp_path, cases, plot=False)
    assert not report.failures
    assert [r.mode for r in report.results] == ["bwd", "fwd+bwd", "eval"]
    assert calls["n"] > 3


def test_time_fn_cpu_quantiles_are_ordered():
    x = torch.randn(64, 64)
    p50, p20, p80 = harness.time_fn(lambda: x @ x, device="cpu", warmup=1, rep=5)
    assert 0 < p20 <= p50 <= p80


def test_metric_and_fraction_of_peak():
    case = _toy_case({}, modes=("fwd",))
    case.flops = {"fwd": 10 ** 12}
    peaks = {"dram_Bps": 1e9, "matmul_flops": {"fp32": 1e13}}
    metric, value, frac = harness._metric(case, "fwd", 1000.0, peaks)  # flops floor 0.1 s >> bytes floor
    assert metric == "TFLOP/s" and value == pytest.approx(1.0) and frac == pytest.approx(0.1)
    case.flops = {}
    metric, value, frac = harness._metric(case, "fwd", 1.0, peaks)
    assert metric == "GB/s" and value == pytest.approx(2 * 8 * 16 * 4 / 1e-3 / 1e9)
    assert frac == pytest.approx(value * 1e9 / 1e9)
    assert math.isnan(harness._metric(case, "eval", 0.0, peaks)[1])


def test_parse_options():
    assert harness.parse_dtypes("fp16,bf16") == [torch.float16, torch.bfloat16]
    assert harness.parse_dtypes(None) is None
    assert harness.parse_modes("fwd,fwd+bwd") == ["fwd", "fwd+bwd"]
    with pytest.raises(ValueError):
        harness.parse_dtypes("fp8")
    with pytest.raises(ValueError):
        harness.parse_modes("forward")
    with pytest.raises(ValueError):
        harness.resolve_family("no_such_family")
    assert harness.resolve_family("bn") == "batch_norm"


def test_batch_norm_suite_lists_without_running_and_counts_bytes():
    from cvkernels.bench import batch_norm as suite
    cases = suite.cases(torch.device("cuda"), quick=False, dtypes=None)
    assert len(cases) == 2 * 9 * 3 * 2 * 2  # batches x shapes x dtypes x layouts x kernels
    c = next(c for c in cases if c.kernel == "bn_add_relu" and c.shape == "256x64x56x56"
             and c.dtype == torch.float16)
    numel = 256 * 64 * 56 * 56
    assert c.bytes["fwd"] == 4 * numel * 2 and c.bytes["eval"] == 3 * numel * 2
    assert c.bytes["fwd+bwd"] == 12 * numel * 2 and c.bytes["bwd"] == 8 * numel * 2
    assert set(c.providers) == {"cvkernels", "eager", "torch.compile"}
    cpu = suite.cases(torch.device("cpu"))
    assert {c.shape for c in cpu} == {"4x64x16x16", "4x256x8x8"}


def test_cli_list_runs_without_timing(capsys):
    assert harness.main(["batch_norm", "--list", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bn_relu 4x64x16x16 fp32 NCHW" in out and "bn_add_relu" in out
