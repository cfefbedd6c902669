"""The detection benchmark suite (cvkernels/bench/detection.py) on CPU: the GPU and CPU case lists
(no GPU case is run), the RoI Align byte floor against hand computations, the deterministic
provider's autograd hooks, and a tiny CPU run (torchvision rows recorded as failures where it is
missing, the boxes/s metrics CSV)."""
import functools
import importlib.util
import io

import pytest
import torch

from cvkernels.bench import detection as D
from cvkernels.bench import harness

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
FAST = dict(warmup=1, rep=2, measure_device_peaks=False, device="cpu", plot=False)
HAS_TV = importlib.util.find_spec("torchvision") is not None


@pytest.fixture
def one_thread():
    """The tiny CPU kernels are faster on one thread than on a busy machine's several."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.lru_cache(maxsize=None)
def _gpu_cases(quick=False):
    return tuple(D.cases(CUDA, quick=quick))


def _by_label(cases):
    return {c.label: c for c in cases}


# ----------------------------------------------------------------------------- case lists

def test_gpu_case_list(one_thread):
    cases = _gpu_cases()
    roi = [c for c in cases if c.kernel == "roi_align"]
    nms = [c for c in cases if c.kernel in ("nms", "batched_nms")]
    # 2 RoI counts x 2 output sizes x 4 FPN levels x fp32/fp16/bf16; 4 box counts x nms/batched_nms
    assert len(roi) == 2 * 2 * 4 * 3 == 48 and len(nms) == 4 * 2 == 8 and len(cases) == 56 + 1  # + maskrcnn_inference
    assert {c.shape for c in roi} == {f"{lvl}-1x256x{h}x{w}-k{k}-{p}x{p}"
                                      for lvl, h, w in (("p2", 200, 304), ("p3", 100, 152), ("p4", 50, 76),
                                                        ("p5", 25, 38))
                                      for k in (512, 1000) for p in (7, 14)}
    assert {c.dtype for c in roi} == {torch.float32, torch.float16, torch.bfloat16}
    assert all(c.modes == ("fwd", "bwd", "fwd+bwd") and c.layout == "NCHW" for c in roi)
    assert all(list(c.providers) == ["cvkernels", "cvkernels-deterministic", "torchvision", "torch.compile"]
               for c in roi)
    labels = _by_label(cases)
    assert "nms n50000-iou0.7 fp32 xyxy" in labels and "batched_nms n1000-c80-iou0.5 fp32 xyxy" in labels
    assert {c.shape for c in nms} == {f"n{n}-iou0.7" for n in (1000, 5000, 20000, 50000)} | \
        {f"n{n}-c80-iou0.5" for n in (1000, 5000, 20000, 50000)}
    assert all(c.modes == ("fwd",) and c.dtype == torch.float32 and c.bytes == {} for c in nms)
    assert all(list(c.providers) == ["cvkernels", "torchvision", "torch.compile"] for c in nms)
    # --dtype fp32: 16 RoI Align cases + the 8 NMS cases
    assert len(D.cases(CUDA, dtypes=[torch.float32])) == 16 + 8 + 1  # + maskrcnn_inference
    assert {c.kernel for c in D.cases(CUDA, kernels=["nms"])} == {"nms"}


def test_gpu_quick_and_cpu_lists_and_harness_registration():
    quick = _gpu_cases(quick=True)
    assert len(quick) == 4 + 4 + 1  # + maskrcnn_inference
    assert {c.dtype for c in quick if c.kernel == "roi_align"} == {torch.bfloat16}
    assert {c.shape for c in quick if c.kernel == "nms"} == {"n5000-iou0.7", "n50000-iou0.7"}
    cpu = D.cases(CPU, quick=True)
    assert [c.label for c in cpu] == ["roi_align p3-1x16x20x32-k64-7x7 fp32 NCHW", "nms n1000-iou0.7 fp32 xyxy",
                                      "batched_nms n1000-c80-iou0.5 fp32 xyxy"]
    assert list(cpu[0].providers) == ["cvkernels", "cvkernels-deterministic", "torchvision"]
    assert all("torch.compile" not in c.providers for c in cpu)
    for alias in ("detection", "roi", "roi_align", "nms", "ROI-Align"):
        assert harness.resolve_family(alias) == "detection"
    assert len(harness.collect_cases(["roi"], device=CPU)) == 3


# ----------------------------------------------------------------------------- byte floor by hand

def _rois(*boxes):
    return torch.tensor([[0.0, *b] for b in boxes], dtype=torch.float64)


def test_axis_samples_by_hand():
    def axis(start, length, bins, grid, size):
        return D._axis_members([start], [length], bins, [grid], size).nonzero()[1].tolist()
    # 4 samples at 1.0, 2.0, 3.0, 4.0: neighbours lo and lo + 1 (read even when the weight is 0)
    assert axis(0.5, 4.0, 2, 2, 10) == [1, 2, 3, 4, 5]
    # a long RoI: samples 5, 15, 25, 35; the pixels between them are never read
    assert axis(0.0, 40.0, 2, 2, 50) == [5, 6, 15, 16, 25, 26, 35, 36]
    # far edge: 7.5 -> 7, 8; 8.5 -> 8, 9; 9.5 -> 9 alone (lo >= size - 1); 10.5 > size is dropped
    assert axis(7.0, 4.0, 2, 2, 10) == [7, 8, 9]
    # near edge: -5, -3 dropped (< -1); -1 is clamped to 0 -> 0, 1; 1 -> 1, 2
    assert axis(-6.0, 8.0, 2, 2, 10) == [0, 1, 2]
    assert axis(0.5, 4.0, 2, 0, 10) == []  # no samples (an adaptive grid of 0)


def test_sampled_pixels_and_bytes_by_hand():
    # aligned, scale 1, 2x2 bins, 2 samples: x from 1 - 0.5 = 0.5, width 4 -> columns 1..5 (5);
    # y from 0.5, height 2 -> samples 0.75, 1.25, 1.75, 2.25 -> rows 0..3 (4): 20 pixels
    one = _rois((1.0, 1.0, 5.0, 3.0))
    assert D.sampled_pixels(one, (1, 3, 10, 10), 2, 1.0, 2, True) == 20
    # the same box twice counts once; a second, disjoint box adds its own pixels
    assert D.sampled_pixels(_rois((1.0, 1.0, 5.0, 3.0), (1.0, 1.0, 5.0, 3.0)), (1, 3, 10, 10), 2, 1.0, 2, True) == 20
    # box 2 at (6, 6)-(8, 8): x from 5.5, width 2 -> samples 5.75, 6.25, 6.75, 7.25 -> columns 5..8;
    # rows the same: 16 more
    assert D.sampled_pixels(_rois((1.0, 1.0, 5.0, 3.0), (6.0, 6.0, 8.0, 8.0)), (1, 3, 10, 10), 2, 1.0, 2, True) == 36
    # overlap: box 3 = box 1 shifted right by 2 columns -> columns 3..7, rows 0..3; union 7 x 4 = 28
    assert D.sampled_pixels(_rois((1.0, 1.0, 5.0, 3.0), (3.0, 1.0, 7.0, 3.0)), (1, 3, 10, 10), 2, 1.0, 2, True) == 28
    # different images never share pixels
    two = torch.tensor([[0.0, 1, 1, 5, 3], [1.0, 1, 1, 5, 3]], dtype=torch.float64)
    assert D.sampled_pixels(two, (2, 3, 10, 10), 2, 1.0, 2, True) == 40
    # spatial scale 1/4: (4, 4)-(20, 12) -> x from 0.5 width 4, y from 0.5 height 2: as `one`
    assert D.sampled_pixels(_rois((4.0, 4.0, 20.0, 12.0)), (1, 3, 10, 10), 2, 0.25, 2, True) == 20
    # unaligned: the RoI is at least 1 x 1; (2, 2)-(2, 2) at 2x2 bins, 2 samples: 2.25 .. 2.75 -> 2, 3
    assert D.sampled_pixels(_rois((2.0, 2.0, 2.0, 2.0)), (1, 3, 10, 10), 2, 1.0, 2, False) == 4
    # adaptive grid (sampling_ratio -1): width 40 / 2 bins -> 20 samples per bin, every 1 px: 0..40
    assert D.sampled_pixels(_rois((0.0, 0.0, 40.0, 1.0)), (1, 3, 4, 50), 2, 1.0, -1, False) == 41 * 2
    # bytes: fwd = C * pixels * s + K*C*P*P * s; bwd = K*C*P*P * s + N*C*H*W * s
    nb = D.roi_align_bytes(one, (1, 3, 10, 10), 2, 1.0, 2, True, 2)
    assert nb["fwd"] == (3 * 20 + 1 * 3 * 2 * 2) * 2 == 144
    assert nb["bwd"] == (1 * 3 * 2 * 2 + 1 * 3 * 10 * 10) * 2 == 624
    assert nb["fwd+bwd"] == 144 + 624 and nb["eval"] == nb["fwd"]


def test_gpu_case_bytes():
    labels = _by_label(_gpu_cases())
    p2 = labels["roi_align p2-1x256x200x304-k512-7x7 fp32 NCHW"]
    out, fmap = 512 * 256 * 49, 256 * 200 * 304
    assert p2.bytes["bwd"] == (out + fmap) * 4 == 87_949_312
    assert out * 4 < p2.bytes["fwd"] < (out + fmap) * 4  # 512 small RoIs do not cover the p2 map
    assert p2.bytes["fwd+bwd"] == p2.bytes["fwd"] + p2.bytes["bwd"]
    # 1000 RoIs on the p5 map (25 x 38) read all of it
    p5 = labels["roi_align p5-1x256x25x38-k1000-14x14 bf16 NCHW"]
    assert p5.bytes["fwd"] == (1000 * 256 * 196 + 256 * 25 * 38) * 2
    # the GB/s metric with an H200-like bandwidth
    metric, value, frac = harness._metric(p2, "bwd", 0.05, {"dram_Bps": 4.0e12, "matmul_flops": {}})
    assert metric == "GB/s" and value == pytest.approx(87_949_312 / 0.05e-3 / 1e9)
    assert frac == pytest.approx(value * 1e9 / 4.0e12)


def test_sampled_pixels_cover_the_gradient():
    """Every pixel with a non-zero RoI Align gradient is in the counted region (the region also holds
    neighbours whose bilinear weight is 0)."""
    import cvkernels
    gen = torch.Generator().manual_seed(0)
    boxes = D.roi_boxes(40, (160, 256), (16.0, 96.0), seed=3)
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=gen).double(), boxes], 1)
    for sr, aligned in ((2, True), (-1, False)):
        x = torch.randn(2, 1, 20, 32, dtype=torch.float64, requires_grad=True)
        cvkernels.roi_align(x, rois, 7, 1 / 8, sr, aligned).sum().backward()
        nonzero = int((x.grad != 0).sum())
        counted = D.sampled_pixels(rois, (2, 1, 20, 32), 7, 1 / 8, sr, aligned)
        assert 0 < nonzero <= counted
        # the union of the per-RoI counts is at most the map
        assert counted <= 2 * 20 * 32


def test_boxes_are_realistic():
    b = D.roi_boxes(500, (800, 1216), (112.0, 224.0), seed=1)
    side = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sqrt()
    assert bool((b[:, 0] >= 0).all() and (b[:, 2] <= 1216).all() and (b[:, 3] <= 800).all())
    assert 0.8 < float(side.median()) / 160 < 1.2  # clipping shrinks a few
    import cvkernels
    boxes, scores, idxs = D.nms_boxes(5000, seed=5000)
    assert boxes.shape == (5000, 4) and idxs.max() < 80 and bool((boxes[:, 2] >= boxes[:, 0]).all())
    kept = cvkernels.nms(boxes.float(), scores.float(), D.NMS_IOU).numel()
    assert 0.1 * 5000 < kept < 0.9 * 5000  # many boxes overlap, many survive


# ----------------------------------------------------------------------------- providers / run

def test_deterministic_provider_switches_the_flag_around_the_backward(monkeypatch, one_thread):
    case = D.cases(CPU, quick=True)[0]
    inputs = case.setup()
    seen = []
    real = torch.are_deterministic_algorithms_enabled

    def spy():
        seen.append(real())
        return seen[-1]
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", spy)
    assert not real()
    fn = case.providers["cvkernels-deterministic"](inputs, "fwd+bwd")
    out = fn()
    assert not real()  # the forward leaves it alone
    out.backward(inputs["grad_out"])
    assert True in seen and not real()  # on for the RoI Align backward, off afterwards
    expected = inputs["x"].grad.clone()
    inputs["x"].grad = None
    case.providers["cvkernels"](inputs, "fwd+bwd")().backward(inputs["grad_out"])
    torch.testing.assert_close(inputs["x"].grad, expected, rtol=0, atol=0)


def test_cpu_run_records_missing_torchvision_and_writes_metrics(tmp_path, one_thread):
    cases = D.cases(CPU, quick=True)
    stream = io.StringIO()
    report = harness.run_cases(cases, out_dir=tmp_path, stream=stream, **FAST)
    got = {(r.kernel, r.provider, r.mode) for r in report.results}
    assert {("roi_align", p, m) for p in ("cvkernels", "cvkernels-deterministic")
            for m in ("fwd", "bwd", "fwd+bwd")} <= got
    assert {("nms", "cvkernels", "fwd"), ("batched_nms", "cvkernels", "fwd")} <= got
    roi = [r for r in report.results if r.kernel == "roi_align"]
    assert all(r.metric == "GB/s" and r.metric_value > 0 for r in roi)
    if not HAS_TV:
        assert sorted((f.provider, f.mode) for f in report.failures) == \
            sorted([("torchvision", m) for m in ("fwd", "bwd", "fwd+bwd")] + [("torchvision", "fwd")] * 2)
        assert all("torchvision is not installed" in f.error for f in report.failures)
    D.after_run(report, CPU, stream)
    metrics = harness.read_csv(tmp_path / f"{report.csv_path.stem}-detection-metrics.csv")
    assert len(metrics) == len(report.results)
    nms_rows = [m for m in metrics if m["kernel"] in ("nms", "batched_nms")]
    assert nms_rows and all(float(m["boxes_per_s"]) > 0 for m in nms_rows)
    assert all(float(m["GB/s"]) > 0 for m in metrics if m["kernel"] == "roi_align")
    assert "Mboxes/s" in stream.getvalue()
