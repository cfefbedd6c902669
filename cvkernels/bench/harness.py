"""Family-independent benchmark harness (DESIGN.md section 6).

A family's suite (``cvkernels/bench/<family>.py``) turns a table of real model shapes into
:class:`Case` objects. For each case and mode this module times every provider (cvkernels and
its baselines) in the same process, computes ratios ``baseline time / cvkernels time`` (> 1:
cvkernels is faster), the achieved GB/s or TFLOP/s and its fraction of the device's measured
peak, the peak memory, and writes

    <out>/<YYYY-MM-DD>-<device>.csv          one row per (case, mode, provider), written as it goes
    <out>/<YYYY-MM-DD>-<device>.json         device peaks, versions, options, failures
    <out>/<YYYY-MM-DD>-<device>-<family>.png speedup of cvkernels over each baseline

then prints a short summary table last. On CUDA it times with ``triton.testing.do_bench``
(CUDA events, L2 flushed between runs, median/p20/p80); on CPU with a ``perf_counter`` loop.

Modes:
    fwd      training forward (autograd graph recorded, running statistics updated)
    bwd      backward only: the forward runs once outside the timed region, then
             ``out.backward(grad, retain_graph=True)`` is timed
    fwd+bwd  forward then ``out.backward(grad)``
    eval     inference forward under ``torch.no_grad()`` (providers put modules in eval mode)
"""
import csv
import datetime
import gc
import importlib
import inspect
import json
import math
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

MODES = ("fwd", "bwd", "fwd+bwd", "eval")
REFERENCE_PROVIDER = "cvkernels"

CSV_COLUMNS = (
    "kernel", "family", "provider", "mode", "shape", "dtype", "layout",
    "p50_ms", "p20_ms", "p80_ms", "metric", "metric_value", "frac_of_peak",
    "ratio_vs_cvkernels", "peak_mem_mb", "device", "torch", "triton", "cuda", "git_sha", "date",
)

# family name -> module with ``FAMILY`` and ``cases(device, quick=False, dtypes=None)``
# (optionally ``describe(device) -> str``). Add new families here.
SUITES = {
    "attention": "cvkernels.bench.attention",
    "batch_norm": "cvkernels.bench.batch_norm",
    "conv": "cvkernels.bench.conv",
    "detection": "cvkernels.bench.detection",
    "diffusion": "cvkernels.bench.diffusion",
    "volume_render": "cvkernels.bench.volume_render",
}
ALIASES = {
    "bn": "batch_norm", "bn_relu": "batch_norm", "bn_add_relu": "batch_norm",
    "batch_norm_relu": "batch_norm", "batchnorm": "batch_norm",
    "conv2d": "conv", "depthwise": "conv", "conv_transpose2d": "conv", "convolution": "conv",
    "ddim": "diffusion", "ddpm": "diffusion", "scheduler": "diffusion", "sampler": "diffusion",
    "flash_attention": "attention", "sdpa": "attention", "window_attention": "attention", "swin": "attention",
    "roi": "detection", "roi_align": "detection", "nms": "detection",
    "nerf": "volume_render", "volume_rendering": "volume_render", "vr": "volume_render",
}

DTYPE_NAMES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
}
_SHORT_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                torch.float64: "fp64"}


def dtype_name(dtype: torch.dtype) -> str:
    return _SHORT_DTYPE.get(dtype, str(dtype).replace("torch.", ""))


def parse_dtypes(text) -> Optional[List[torch.dtype]]:
    """"fp16,bf16" -> [torch.float16, torch.bfloat16]; None/"" -> None (the suite's default)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, torch.dtype):
            out.append(item)
            continue
        item = item.strip().lower()
        if not item:
            continue
        if item not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {item!r}; expected one of {sorted(set(_SHORT_DTYPE.values()))}")
        out.append(DTYPE_NAMES[item])
    return out or None


def parse_modes(text) -> Optional[List[str]]:
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    out = [m.strip() for m in items if m.strip()]
    for m in out:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; expected one of {MODES}")
    return out or None


# ----------------------------------------------------------------------------- cases / results

@dataclass
class Case:
    """One shape of one kernel.

    setup():      returns the inputs, a dict name -> tensor/anything (fresh random data). Called
                  once per case; tensors that require grad get their ``.grad`` reset between runs.
                  An entry "grad_out" is used as the output gradient (else ``randn_like(out)``).
    providers:    name -> factory(inputs, mode) returning a zero-argument callable that runs the
                  forward and returns one output tensor, or (callable, tensors whose .grad to reset).
                  "cvkernels" is the reference for ratios.
    bytes, flops: mode -> minimum bytes moved / flops done, for GB/s, TFLOP/s and the peak fraction.
    modes:        the modes that apply to this case.
    """
    kernel: str
    family: str
    shape: str
    dtype: torch.dtype
    layout: str
    setup: Callable[[], Dict[str, Any]]
    providers: Dict[str, Callable]
    bytes: Dict[str, int] = field(default_factory=dict)
    flops: Dict[str, int] = field(default_factory=dict)
    modes: Tuple[str, ...] = MODES

    @property
    def label(self) -> str:
        return f"{self.kernel} {self.shape} {dtype_name(self.dtype)} {self.layout}"


@dataclass
class Result:
    kernel: str
    family: str
    provider: str
    mode: str
    shape: str
    dtype: str
    layout: str
    p50_ms: float
    p20_ms: float
    p80_ms: float
    metric: str = ""
    metric_value: float = float("nan")
    frac_of_peak: float = float("nan")
    ratio_vs_cvkernels: float = float("nan")
    peak_mem_mb: float = float("nan")

    @property
    def case_key(self):
        return (self.family, self.kernel, self.shape, self.dtype, self.layout, self.mode)


@dataclass
class Failure:
    case: str
    mode: str
    provider: str
    error: str


@dataclass
class Report:
    results: List[Result]
    failures: List[Failure]
    meta: Dict[str, Any]
    csv_path: Optional[Path] = None
    json_path: Optional[Path] = None
    plot_paths: List[Path] = field(default_factory=list)
    summary: str = ""


# ----------------------------------------------------------------------------- timing

def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_grads(tensors):
    for t in tensors or ():
        t.grad = None


def time_fn(fn: Callable[[], Any], *, grad_to_none: Optional[Sequence[torch.Tensor]] = None,
            device, warmup: float = 25, rep: float = 100) -> Tuple[float, float, float]:
    """Times ``fn`` and returns (p50, p20, p80) in milliseconds.

    CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed before each run, ``warmup`` and
    ``rep`` in milliseconds, grads of ``grad_to_none`` reset outside the timed region).
    CPU: a ``time.perf_counter`` loop, warm-up for ``warmup`` ms, then at least 5 runs and
    ``rep`` ms of runs (at most 2000).
    """
    device = torch.device(device)
    if device.type == "cuda":
        from triton.testing import do_bench
        kwargs = dict(warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                      quantiles=[0.5, 0.2, 0.8], return_mode="median")
        accepted = inspect.signature(do_bench).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        with torch.cuda.device(device):
            res = do_bench(fn, **kwargs)
        if isinstance(res, (int, float)):  # a triton that ignores quantiles
            return float(res), float(res), float(res)
        p50, p20, p80 = (float(v) for v in res)
        return p50, p20, p80
    return _time_host(fn, grad_to_none, warmup, rep)


def _time_host(fn, grad_to_none, warmup, rep, min_runs=5, max_runs=2000):
    fn()
    start = time.perf_counter()
    while True:  # warm-up: at least one run, then until `warmup` ms have passed
        _reset_grads(grad_to_none)
        fn()
        if (time.perf_counter() - start) * 1e3 >= warmup:
            break
    times = []
    total = 0.0
    while (len(times) < min_runs or total < rep) and len(times) < max_runs:
        _reset_grads(grad_to_none)
        t0 = time.perf_counter()
        fn()
        dt = (time.perf_counter() - t0) * 1e3
        times.append(dt)
        total += dt
    q = torch.tensor(times, dtype=torch.float64).quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


# ----------------------------------------------------------------------------- device peaks

_PEAKS: Dict[str, Any] = {}  # measured once per process: {"device", "dram_Bps", "matmul_flops": {dtype: flop/s}}


def measure_peaks(device, *, matmul_dtypes: Iterable[torch.dtype] = (), force: bool = False) -> Dict[str, Any]:
    """Measures, once per process and device, the DRAM bandwidth (a large device-to-device
    copy: bytes read + bytes written over the median time) and the matrix peak (a large
    matmul on random data; bf16 on CUDA, fp32 on CPU, plus any ``matmul_dtypes``)."""
    device = torch.device(device)
    if force or _PEAKS.get("device") != str(device):
        _PEAKS.clear()
        _PEAKS.update(device=str(device), dram_Bps=_measure_bandwidth(device), matmul_flops={})
    default = torch.bfloat16 if device.type == "cuda" else torch.float32
    for dt in (default, *matmul_dtypes):
        name = dtype_name(dt)
        if name not in _PEAKS["matmul_flops"]:
            _PEAKS["matmul_flops"][name] = _measure_matmul(device, dt)
    return _PEAKS


def _measure_bandwidth(device):
    n = (256 << 20) if device.type == "cuda" else (16 << 20)  # float32 elements: 1 GiB / 64 MiB
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    p50, _, _ = time_fn(lambda: dst.copy_(src), device=device, warmup=25, rep=200)
    bw = 2 * src.numel() * src.element_size() / (p50 * 1e-3)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return bw


def _measure_matmul(device, dtype):
    n = 8192 if device.type == "cuda" else 1024
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        n = 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    p50, _, _ = time_fn(lambda: torch.mm(a, b), device=device, warmup=25, rep=200)
    del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * n ** 3 / (p50 * 1e-3)


def _metric(case: Case, mode: str, p50_ms: float, peaks) -> Tuple[str, float, float]:
    """(metric, value, fraction of peak) for the bound that dominates the floor."""
    nbytes = case.bytes.get(mode)
    nflops = case.flops.get(mode)
    bw = peaks.get("dram_Bps") if peaks else None
    mm = (peaks or {}).get("matmul_flops", {})
    fl_peak = mm.get(dtype_name(case.dtype)) or (max(mm.values()) if mm else None)
    use_flops = bool(nflops) and (not nbytes or (bw and fl_peak and nflops / fl_peak > nbytes / bw))
    secs = p50_ms * 1e-3
    if not (secs > 0):
        return "", float("nan"), float("nan")
    if use_flops:
        rate = nflops / secs
        return "TFLOP/s", rate / 1e12, rate / fl_peak if fl_peak else float("nan")
    if nbytes:
        rate = nbytes / secs
        return "GB/s", rate / 1e9, rate / bw if bw else float("nan")
    return "", float("nan"), float("nan")


# ----------------------------------------------------------------------------- environment

def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def git_sha() -> str:
    try:
        root = _repo_root()
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0 or not sha.stdout.strip():
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"CPU {_cpu_name()} ({n} thread{'' if n == 1 else 's'})"


def _slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"\(r\)|\(tm\)|@.*$", "", text.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s[:limit].strip("-") or "device"


def environment(device) -> Dict[str, str]:
    device = torch.device(device)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    now = datetime.datetime.now()
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "git_sha": git_sha(),
        "date": now.isoformat(timespec="seconds"),
        "day": now.strftime("%Y-%m-%d"),
        "slug": ("" if device.type == "cuda" else "cpu-") + _slug(device_name(device).replace("CPU ", "")
                                                                  .split(" (")[0]),
    }


def default_out_dir() -> Path:
    root = _repo_root()
    if (root / "bench").is_dir():
        return root / "bench" / "results"
    return Path.cwd() / "bench" / "results"


# ----------------------------------------------------------------------------- CSV

def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_metrics_csv(rows: Sequence[Dict[str, Any]], csv_path, family: str) -> Path:
    """A suite's derived-metrics table beside the run's CSV: ``<csv stem>-<family>-metrics.csv``
    (floats as in the main CSV, NaN as empty)."""
    path = Path(csv_path).parent / f"{Path(csv_path).stem}-{family}-metrics.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: _fmt(v) if isinstance(v, float) else v for k, v in row.items()})
    return path


def result_row(r: Result, env: Dict[str, str]) -> Dict[str, str]:
    row = {k: _fmt(getattr(r, k)) for k in CSV_COLUMNS if hasattr(r, k)}
    for k in ("device", "torch", "triton", "cuda", "git_sha", "date"):
        row[k] = env.get(k, "")
    return row


class CsvWriter:
    """Writes rows as they come (flushed), so an interrupted run keeps what it measured."""

    def __init__(self, path, env: Dict[str, str], append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.env = env
        exists = append and self.path.exists() and self.path.stat().st_size > 0
        self._f = open(self.path, "a" if exists else "w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=list(CSV_COLUMNS))
        if not exists:
            self._w.writeheader()
            self._f.flush()

    def write(self, results: Iterable[Result]):
        for r in results:
            self._w.writerow(result_row(r, self.env))
        self._f.flush()

    def close(self):
        self._f.close()


def write_csv(results: Iterable[Result], path, env: Dict[str, str], append: bool = False) -> Path:
    w = CsvWriter(path, env, append=append)
    try:
        w.write(results)
    finally:
        w.close()
    return w.path


def read_csv(path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- running

def _build(factory, inputs, mode):
    made = factory(inputs, mode)
    fn, extra = (made if isinstance(made, tuple) else (made, ()))
    grads = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    grads += [t for t in extra if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode == "eval":
        def run_eval():
            with torch.no_grad():
                return fn()
        return run_eval, None
    if mode == "fwd":
        return fn, grads
    out = fn()
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"a provider must return one tensor for backward modes, got {type(out).__name__}")
    grad = inputs.get("grad_out")
    if not isinstance(grad, torch.Tensor) or grad.shape != out.shape:
        grad = torch.randn_like(out)
    if mode == "bwd":
        def run_bwd():
            out.backward(grad, retain_graph=True)
        return run_bwd, grads
    if mode == "fwd+bwd":
        del out

        def run_fwd_bwd():
            fn().backward(grad)
        return run_fwd_bwd, grads
    raise ValueError(f"unknown mode {mode!r}")


def _short_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    first = msg[0] if msg else ""
    return f"{type(exc).__name__}: {first[:300]}"


def _measure_one(factory, inputs, mode, device, warmup, rep):
    fn, grads = _build(factory, inputs, mode)
    for _ in range(2):  # warm-up: compilation, autotuning, lazy backward compilation
        _reset_grads(grads)
        fn()
    _sync(device)
    peak = float("nan")
    if device.type == "cuda":
        _reset_grads(grads)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    p50, p20, p80 = time_fn(fn, grad_to_none=grads, device=device, warmup=warmup, rep=rep)
    _reset_grads(grads)
    return p50, p20, p80, peak


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_cases(cases: Sequence[Case], *, device=None, modes: Optional[Sequence[str]] = None,
              providers: Optional[Sequence[str]] = None, out_dir=None, warmup: float = 25,
              rep: float = 100, append: bool = False, plot: bool = True, max_seconds: Optional[float] = None,
              stream=None, measure_device_peaks: bool = True, extra_meta: Optional[Dict[str, Any]] = None,
              write: bool = True) -> Report:
    """Times every (case, mode, provider), writes the CSV/JSON/PNGs and returns a :class:`Report`.

    A provider that raises (build, compile, run, out of memory) is reported as a failure and the
    run goes on. ``max_seconds`` stops starting new cases after that long (what was measured is
    kept). ``providers`` keeps only those providers; ``modes`` only those modes.
    """
    stream = sys.stderr if stream is None else stream
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    peaks = measure_peaks(device) if measure_device_peaks else {}
    if peaks:
        mm = ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in peaks["matmul_flops"].items())
        print(f"device: {env['device']}; measured DRAM bandwidth {peaks['dram_Bps'] / 1e9:.0f} GB/s; "
              f"matmul {mm}", file=stream, flush=True)

    work = []
    for case in cases:
        for mode in case.modes:
            if modes is None or mode in modes:
                work.append((case, mode))

    if any(mode == "bwd" for _, mode in work):
        _allow_retained_backward()

    out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
    stem = f"{env['day']}-{env['slug']}"
    csv_path = out_dir / f"{stem}.csv"
    writer = CsvWriter(csv_path, env, append=append) if write else None

    results: List[Result] = []
    failures: List[Failure] = []
    started = time.perf_counter()
    stopped_early = False
    current_case, inputs = None, None
    try:
        for i, (case, mode) in enumerate(work, 1):
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                stopped_early = True
                print(f"stopping: --max-seconds {max_seconds:g} reached after {i - 1}/{len(work)}",
                      file=stream, flush=True)
                break
            print(f"[{i}/{len(work)}] {case.kernel} {mode} {case.shape} {dtype_name(case.dtype)} "
                  f"{case.layout} ...", end="", file=stream, flush=True)
            if case is not current_case:
                inputs = None
                _free(device)
                try:
                    inputs = case.setup()
                    current_case = case
                except Exception as exc:  # noqa: BLE001 - a broken setup skips the case
                    current_case = None
                    failures.append(Failure(case.label, mode, "setup", _short_error(exc)))
                    print(f" setup failed: {_short_error(exc)}", file=stream, flush=True)
                    continue
            names = [p for p in case.providers if providers is None or p in providers]
            names.sort(key=lambda p: p != REFERENCE_PROVIDER)
            rows: List[Result] = []
            failed = []
            for name in names:
                gc.collect()  # the previous provider's graph must not count in this one's peak memory
                try:
                    p50, p20, p80, peak = _measure_one(case.providers[name], inputs, mode, device, warmup, rep)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    err = _short_error(exc)
                    failures.append(Failure(case.label, mode, name, err))
                    failed.append(f"{name} FAILED ({err[:100]})")
                    _free(device)
                    continue
                metric, value, frac = _metric(case, mode, p50, peaks)
                rows.append(Result(case.kernel, case.family, name, mode, case.shape, dtype_name(case.dtype),
                                   case.layout, p50, p20, p80, metric, value, frac, peak_mem_mb=peak))
            ref = next((r for r in rows if r.provider == REFERENCE_PROVIDER), None)
            parts = []
            for r in rows:
                if ref is not None and ref.p50_ms > 0:
                    r.ratio_vs_cvkernels = r.p50_ms / ref.p50_ms
                text = f"{r.provider} {r.p50_ms:.4g} ms"
                if r.provider == REFERENCE_PROVIDER and r.metric:
                    text += f" {r.metric_value:.4g} {r.metric}"
                    if not math.isnan(r.frac_of_peak):
                        text += f" ({100 * r.frac_of_peak:.0f}% of peak)"
                elif not math.isnan(r.ratio_vs_cvkernels):
                    text += f" ({r.ratio_vs_cvkernels:.2f}x)"
                parts.append(text)
            print(" " + " | ".join(parts + failed), file=stream, flush=True)
            results.extend(rows)
            if writer is not None:
                writer.write(rows)
    finally:
        if writer is not None:
            writer.close()
        inputs = None
        _free(device)

    meta = dict(env)
    meta.update(
        peaks={"dram_GBps": peaks["dram_Bps"] / 1e9,
               "matmul_TFLOPs": {k: v / 1e12 for k, v in peaks["matmul_flops"].items()}} if peaks else {},
        modes=list(modes) if modes else None, providers=list(providers) if providers else None,
        warmup_ms=warmup, rep_ms=rep, cases=len(cases), measured=len(results),
        stopped_early=stopped_early, wall_s=round(time.perf_counter() - started, 1),
        failures=[f.__dict__ for f in failures],
        python=platform.python_version(),
    )
    if extra_meta:
        meta.update(extra_meta)
    report = Report(results, failures, meta)
    if write:
        report.csv_path = csv_path
        report.json_path = out_dir / f"{stem}.json"
        if append and report.json_path.exists():
            try:
                old = json.loads(report.json_path.read_text())
                meta = {"runs": old.get("runs", [old]) + [meta]}
            except (OSError, ValueError):
                pass
        report.json_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if plot and results:
            for family in dict.fromkeys(r.family for r in results):
                path = out_dir / f"{stem}-{family}.png"
                try:
                    plot_family([r for r in results if r.family == family], family, path, env)
                    report.plot_paths.append(path)
                except Exception as exc:  # noqa: BLE001 - a plot problem must not lose the results
                    print(f"plot for {family} failed: {_short_error(exc)}", file=stream, flush=True)
    report.summary = summarize(results, failures)
    print(report.summary, file=stream, flush=True)
    if write:
        print(f"wrote {csv_path}" + "".join(f", {p}" for p in report.plot_paths), file=stream, flush=True)
    return report


# ----------------------------------------------------------------------------- summary / plot

def _geomean(values):
    values = [v for v in values if v > 0 and not math.isnan(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarize(results: Sequence[Result], failures: Sequence[Failure] = ()) -> str:
    """Geomean ratio (baseline / cvkernels) per kernel, mode and baseline; best and worst case."""
    baselines = list(dict.fromkeys(r.provider for r in results if r.provider != REFERENCE_PROVIDER))
    groups: Dict[Tuple[str, str], List[Result]] = {}
    for r in results:
        if r.provider != REFERENCE_PROVIDER and not math.isnan(r.ratio_vs_cvkernels):
            groups.setdefault((r.kernel, r.mode), []).append(r)
    lines = ["", "summary: speedup of cvkernels = baseline time / cvkernels time (geomean over cases; >1 is faster)"]
    if not groups:
        lines.append("  (no ratios: cvkernels or every baseline missing)")
    else:
        kw = max(6, max(len(k) for k, _ in groups))
        head = f"  {'kernel':<{kw}} {'mode':<8}" + "".join(f" {'vs ' + b:>18}" for b in baselines)
        lines.append(head + "   best / worst case")
        for (kernel, mode), rs in groups.items():
            cells = []
            for b in baselines:
                g = _geomean([r.ratio_vs_cvkernels for r in rs if r.provider == b])
                cells.append(f" {'-' if math.isnan(g) else f'{g:.2f}x':>18}")
            best = max(rs, key=lambda r: r.ratio_vs_cvkernels)
            worst = min(rs, key=lambda r: r.ratio_vs_cvkernels)
            bw = (f"   {best.ratio_vs_cvkernels:.2f}x vs {best.provider} @ {best.shape} {best.dtype} {best.layout}"
                  f" / {worst.ratio_vs_cvkernels:.2f}x vs {worst.provider} @ {worst.shape} {worst.dtype} "
                  f"{worst.layout}")
            lines.append(f"  {kernel:<{kw}} {mode:<8}" + "".join(cells) + bw)
    if failures:
        lines.append(f"failures ({len(failures)}):")
        for f in failures[:20]:
            lines.append(f"  {f.provider} {f.mode} {f.case}: {f.error}")
        if len(failures) > 20:
            lines.append(f"  ... {len(failures) - 20} more (see the JSON file)")
    return "\n".join(lines)


def plot_family(results: Sequence[Result], family: str, path, env: Dict[str, str]) -> Path:
    """Grouped bars of cvkernels' speedup over each baseline: one panel per (kernel, mode) row
    and (dtype, layout) column, shapes along x, log-scale y with a line at 1.0."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rs = [r for r in results if r.provider != REFERENCE_PROVIDER and not math.isnan(r.ratio_vs_cvkernels)]
    baselines = list(dict.fromkeys(r.provider for r in rs))
    rows = list(dict.fromkeys((r.kernel, r.mode) for r in results))
    cols = list(dict.fromkeys((r.dtype, r.layout) for r in results))
    shapes = list(dict.fromkeys(r.shape for r in results))
    index = {(r.kernel, r.mode, r.dtype, r.layout, r.shape, r.provider): r.ratio_vs_cvkernels for r in rs}
    panel_w = max(3.5, 0.16 * len(shapes) * max(1, len(baselines)) + 1.2)
    header_in = 1.0
    width = max(10.0, panel_w * len(cols))
    height = 3.0 * len(rows) + header_in
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    bar_w = 0.8 / max(1, len(baselines))
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    handles = {}
    for ri, (kernel, mode) in enumerate(rows):
        for ci, (dt, layout) in enumerate(cols):
            ax = fig.add_subplot(len(rows), len(cols), ri * len(cols) + ci + 1)
            values = []
            for bi, b in enumerate(baselines):
                xs, ys = [], []
                for si, s in enumerate(shapes):
                    v = index.get((kernel, mode, dt, layout, s, b))
                    if v is not None and v > 0:
                        xs.append(si - 0.4 + bar_w * (bi + 0.5))
                        ys.append(v)
                if xs:
                    values += ys
                    handles[b] = ax.bar(xs, ys, width=bar_w, color=colors[bi % len(colors)])
            ax.axhline(1.0, color="black", linewidth=0.8)
            if values:
                ax.set_yscale("log")
                lo, hi = min(values + [1.0]), max(values + [1.0])
                ax.set_ylim(lo / 1.3, hi * 1.3)
                ax.yaxis.set_major_formatter(fmt)
                ax.yaxis.set_minor_formatter(fmt if hi / lo < 12 else NullFormatter())
            else:
                ax.text(0.5, 0.5, "no baseline results", transform=ax.transAxes, ha="center", fontsize=8)
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels(shapes, rotation=60, ha="right", fontsize=6)
            ax.set_xlim(-0.6, len(shapes) - 0.4)
            ax.tick_params(axis="y", which="both", labelsize=6)
            ax.set_title(f"{kernel} {mode} {dt} {layout}", fontsize=8)
            if ci == 0:
                ax.set_ylabel("speedup (x)", fontsize=7)
    top = 1 - header_in / height
    fig.suptitle(f"{family}: speedup of cvkernels = baseline time / cvkernels time (>1: cvkernels faster)\n"
                 f"{env.get('device', '')}\ntorch {env.get('torch', '')} | triton {env.get('triton', '')} | "
                 f"CUDA {env.get('cuda', '')} | git {env.get('git_sha', '')} | {env.get('date', '')}",
                 fontsize=9, y=1 - 0.1 / height, va="top")
    if handles:
        fig.legend(list(handles.values()), [f"vs {b}" for b in handles], loc="upper center",
                   ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, top + 0.35 / height), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- suites / entry

def resolve_family(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in SUITES:
        raise ValueError(f"unknown benchmark family {name!r}; known: {', '.join(sorted(SUITES))}")
    return key


def load_suite(name: str):
    return importlib.import_module(SUITES[resolve_family(name)])


def collect_cases(families=None, *, device, quick=False, dtypes=None, filter=None) -> List[Case]:
    names = [resolve_family(f) for f in families] if families else list(SUITES)
    cases: List[Case] = []
    for name in dict.fromkeys(names):
        cases.extend(load_suite(name).cases(device=torch.device(device), quick=quick, dtypes=dtypes))
    if filter:
        pattern = re.compile(filter)
        cases = [c for c in cases if pattern.search(c.label)]
    return cases


def run(families=None, out_dir=None, quick=False, dtypes=None, modes=None, *, providers=None,
        filter=None, device=None, warmup: float = 25, rep: float = 100, append: bool = False,
        plot: bool = True, max_seconds: Optional[float] = None, threads: Optional[int] = None,
        stream=None) -> Report:
    """Runs the benchmark suites of ``families`` (all when None) and writes the results.

    dtypes: list of torch dtypes or "fp16,bf16" (None: each suite's default); modes: subset of
    MODES or "fwd,fwd+bwd"; providers: subset of provider names; filter: a regular expression
    matched against "kernel shape dtype layout"; threads: torch CPU threads for this run. On a
    machine without CUDA it says so and times the CPU paths on small CPU-sized shapes.
    """
    stream = sys.stderr if stream is None else stream
    dtypes = parse_dtypes(dtypes)
    modes = parse_modes(modes)
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(int(threads))
    if device.type != "cuda":
        why = "--device cpu" if torch.cuda.is_available() else "No CUDA GPU here: GPU timings need a GPU"
        print(f"{why}. Timing the CPU paths on small CPU-sized shapes instead (these numbers say "
              f"nothing about GPU performance; on a busy machine try --threads 1).", file=stream, flush=True)
        quick = True
    cases = collect_cases(families, device=device, quick=quick, dtypes=dtypes, filter=filter)
    notes = {}
    for name in dict.fromkeys(resolve_family(f) for f in (families or SUITES)):
        suite = load_suite(name)
        if hasattr(suite, "describe"):
            try:
                notes[name] = suite.describe(device)
                print(f"{name}: {notes[name]}", file=stream, flush=True)
            except Exception as exc:  # noqa: BLE001
                notes[name] = f"describe failed: {_short_error(exc)}"
    print(f"{len(cases)} cases; modes {', '.join(modes or MODES)}; quick={quick}", file=stream, flush=True)
    report = run_cases(cases, device=device, modes=modes, providers=providers, out_dir=out_dir, warmup=warmup,
                       rep=rep, append=append, plot=plot, max_seconds=max_seconds, stream=stream,
                       extra_meta={"families": notes, "quick": quick})
    for name in notes.keys() | {resolve_family(f) for f in (families or SUITES)}:
        suite = load_suite(name)
        if hasattr(suite, "after_run"):  # e.g. recording which of two GPU backends won per shape class
            suite.after_run(report, device, stream)
    return report


def _allow_retained_backward():
    """The bwd mode replays backward with retain_graph=True, which AOTAutograd refuses for graphs
    compiled with donated buffers: turn those off for this process (torch.compile rows only)."""
    try:
        import torch._functorch.config as functorch_config
        if hasattr(functorch_config, "donated_buffer"):
            functorch_config.donated_buffer = False
    except ImportError:
        pass


def list_cases(families=None, *, device=None, quick=False, dtypes=None, modes=None, filter=None,
               stream=None) -> List[Case]:
    stream = sys.stdout if stream is None else stream
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        quick = True
    cases = collect_cases(families, device=device, quick=quick, dtypes=parse_dtypes(dtypes), filter=filter)
    modes = parse_modes(modes)
    print(f"families: {', '.join(sorted(SUITES))}; device {device}; quick={quick}; {len(cases)} cases",
          file=stream)
    for c in cases:
        ms = [m for m in c.modes if modes is None or m in modes]
        print(f"  {c.family:<12} {c.label:<48} modes {','.join(ms):<22} providers {','.join(c.providers)}",
              file=stream)
    return cases


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m cvkernels bench [family ...] [--out DIR] [--quick] [--dtype fp16,bf16]
    [--mode fwd,fwd+bwd] [--list] ...``"""
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m cvkernels bench",
        description="Time cvkernels against its baselines on real model shapes; writes "
                    "<out>/<date>-<device>.csv, .json and a PNG plot per family.")
    parser.add_argument("families", nargs="*", help=f"families to run (default: all of {', '.join(SUITES)})")
    parser.add_argument("--out", default=None, help="output folder (default: bench/results)")
    parser.add_argument("--quick", action="store_true", help="a small subset of shapes (always on CPU)")
    parser.add_argument("--dtype", default=None, help="comma-separated dtypes: fp16,bf16,fp32 (default: the suite's)")
    parser.add_argument("--mode", default=None, help=f"comma-separated modes out of {','.join(MODES)} (default: all)")
    parser.add_argument("--provider", default=None, help="comma-separated providers (default: all available)")
    parser.add_argument("--filter", default=None, help="regular expression on 'kernel shape dtype layout'")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available)")
    parser.add_argument("--warmup", type=float, default=25, help="warm-up time per measurement, ms")
    parser.add_argument("--rep", type=float, default=100, help="timed repetitions per measurement, ms")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop starting new cases after this long")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs)")
    parser.add_argument("--append", action="store_true", help="append to today's CSV instead of overwriting it")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.list:
            list_cases(args.families or None, device=args.device, quick=args.quick, dtypes=args.dtype,
                       modes=args.mode, filter=args.filter)
            return 0
        report = run(args.families or None, out_dir=args.out, quick=args.quick, dtypes=args.dtype,
                     modes=args.mode, providers=args.provider, filter=args.filter, device=args.device,
                     warmup=args.warmup, rep=args.rep, append=args.append, plot=not args.no_plot,
                     max_seconds=args.max_seconds, threads=args.threads)
    except ValueError as exc:
        parser.error(str(exc))
        return 2
    return 0 if report.results else 1
