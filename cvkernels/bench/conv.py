"""Benchmark suite: depthwise, grouped, dilated and transposed convolutions at real model shapes.

Kernels (each row of SHAPES is one model layer; batch 32 on the GPU):
    depthwise   MobileNetV2 3x3 and EfficientNet-B0 5x5 stages, ConvNeXt-T 7x7, RepLKNet 31x31
    grouped     ResNeXt-50 32x4d 3x3 (groups 32)
    dilated     DeepLab ASPP 3x3 at dilation 6/12/18 (2048 -> 256, 33x33: 513 input, stride 16)
    transposed  U-Net 2x2/2 up-convolutions, DCGAN generator 4x4/2
Modes: fwd (training), bwd, fwd+bwd, eval. Layouts NCHW and channels_last (cuDNN's best is the
faster of the two eager rows).

Providers:
    cvkernels          cvkernels.conv2d / conv_transpose2d, automatic backend
    cvkernels-triton   the Triton kernel (depthwise rows with the CUDA backend built)
    cvkernels-cuda     the CUDA C++ depthwise kernel (when built)
    eager              F.conv2d / F.conv_transpose2d (cuDNN)
    torch.compile      torch.compile of the eager function (dynamic=False)

Floors: flops = 2 * N*OH*OW * C_out * (C_in/groups) * KH*KW multiply-adds for the forward and
twice that for the backward (grad-input + grad-weight). Bytes (minimum DRAM traffic, s bytes
per element, weights included): fwd reads x and w and writes y; bwd reads dy (twice: one
pass per gradient), x and w and writes dx and dw. Depthwise convolutions are bandwidth-bound
(KH*KW multiply-adds per output element); the others are compute-bound at these shapes.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .harness import MODES, Case

FAMILY = "conv"
LAYOUTS = ("NCHW", "channels_last")

# kernel, model layer, (C_in, H, W), C_out, groups, kernel, stride, padding, dilation
CONV_SHAPES = (
    ("depthwise", "mbv2-112-s1", (32, 112, 112), 32, 32, 3, 1, 1, 1),
    ("depthwise", "mbv2-112-s2", (96, 112, 112), 96, 96, 3, 2, 1, 1),
    ("depthwise", "mbv2-56", (144, 56, 56), 144, 144, 3, 1, 1, 1),
    ("depthwise", "mbv2-28", (192, 28, 28), 192, 192, 3, 1, 1, 1),
    ("depthwise", "mbv2-14", (576, 14, 14), 576, 576, 3, 1, 1, 1),
    ("depthwise", "mbv2-7", (960, 7, 7), 960, 960, 3, 1, 1, 1),
    ("depthwise", "effb0-5x5-56-s2", (144, 56, 56), 144, 144, 5, 2, 2, 1),
    ("depthwise", "effb0-5x5-14", (672, 14, 14), 672, 672, 5, 1, 2, 1),
    ("depthwise", "effb0-5x5-7", (1152, 7, 7), 1152, 1152, 5, 1, 2, 1),
    ("depthwise", "convnext-t-7x7-56", (96, 56, 56), 96, 96, 7, 1, 3, 1),
    ("depthwise", "convnext-t-7x7-28", (192, 28, 28), 192, 192, 7, 1, 3, 1),
    ("depthwise", "convnext-t-7x7-14", (384, 14, 14), 384, 384, 7, 1, 3, 1),
    ("depthwise", "replknet-31x31-56", (128, 56, 56), 128, 128, 31, 1, 15, 1),
    ("grouped", "resnext50-56", (128, 56, 56), 128, 32, 3, 1, 1, 1),
    ("grouped", "resnext50-28", (256, 28, 28), 256, 32, 3, 1, 1, 1),
    ("grouped", "resnext50-14", (512, 14, 14), 512, 32, 3, 1, 1, 1),
    ("grouped", "resnext50-7", (1024, 7, 7), 1024, 32, 3, 1, 1, 1),
    ("dilated", "aspp-d6", (2048, 33, 33), 256, 1, 3, 1, 6, 6),
    ("dilated", "aspp-d12", (2048, 33, 33), 256, 1, 3, 1, 12, 12),
    ("dilated", "aspp-d18", (2048, 33, 33), 256, 1, 3, 1, 18, 18),
)
# kernel, model layer, (C_in, H, W), C_out, groups, kernel, stride, padding, output_padding
TRANSPOSED_SHAPES = (
    ("transposed", "unet-up-1024", (1024, 28, 28), 512, 1, 2, 2, 0, 0),
    ("transposed", "unet-up-256", (256, 112, 112), 128, 1, 2, 2, 0, 0),
    ("transposed", "dcgan-512-4", (512, 4, 4), 256, 1, 4, 2, 1, 0),
    ("transposed", "dcgan-128-16", (128, 16, 16), 64, 1, 4, 2, 1, 0),
    ("transposed", "dcgan-64-32", (64, 32, 32), 3, 1, 4, 2, 1, 0),
)
GPU_BATCH = 32
GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GPU_QUICK_DTYPES = (torch.bfloat16,)
GPU_QUICK_LAYERS = ("mbv2-56", "mbv2-14", "effb0-5x5-14", "convnext-t-7x7-56", "replknet-31x31-56",
                    "resnext50-28", "aspp-d12", "unet-up-1024", "dcgan-128-16")
CPU_BATCH = 2
CPU_LAYERS = ("mbv2-28", "resnext50-7", "dcgan-128-16")
CPU_DTYPES = (torch.float32,)


def _out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def geometry(row, batch):
    """(x shape, w shape, y shape, macs) of one SHAPES row."""
    kernel, _, (C, H, W), C_out, groups, k, s, p, last = row
    if kernel == "transposed":
        OH, OW = (H - 1) * s - 2 * p + (k - 1) + last + 1, (W - 1) * s - 2 * p + (k - 1) + last + 1
        w_shape = (C, C_out // groups, k, k)
        macs = batch * H * W * C * (C_out // groups) * k * k
    else:
        OH, OW = _out(H, k, s, p, last), _out(W, k, s, p, last)
        w_shape = (C_out, C // groups, k, k)
        macs = batch * OH * OW * C_out * (C // groups) * k * k
    return (batch, C, H, W), w_shape, (batch, C_out, OH, OW), macs


def traffic_bytes(row, batch, mode, element_size):
    x, w, y, _ = geometry(row, batch)
    nx, nw, ny = (int(torch.Size(t).numel()) for t in (x, w, y))
    fwd = nx + nw + ny
    bwd = 2 * ny + nx + nw + nx + nw
    return {"fwd": fwd, "eval": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode] * element_size


def flops(row, batch, mode):
    macs = geometry(row, batch)[3]
    return {"fwd": 2 * macs, "eval": 2 * macs, "bwd": 4 * macs, "fwd+bwd": 6 * macs}[mode]


def _call_fn(row, backend):
    kernel, _, _, _, groups, k, s, p, last = row

    def run(x, w, b):
        import cvkernels
        if kernel == "transposed":
            return cvkernels.conv_transpose2d(x, w, b, s, p, last, groups, backend=backend)
        return cvkernels.conv2d(x, w, b, s, p, last, groups, backend=backend)
    return run


def _eager_fn(row):
    kernel, _, _, _, groups, k, s, p, last = row

    def run(x, w, b):
        if kernel == "transposed":
            return F.conv_transpose2d(x, w, b, s, p, last, groups)
        return F.conv2d(x, w, b, s, p, last, groups)
    return run


def _provider(make_fn):
    def factory(inputs, mode):
        fn = make_fn()
        x, w, b = inputs["x"], inputs["w"], inputs["b"]
        return (lambda: fn(x, w, b)), [w, b]
    return factory


def _providers(row, device):
    providers = {
        "cvkernels": _provider(lambda: _call_fn(row, None)),
        "eager": _provider(lambda: _eager_fn(row)),
        "torch.compile": _provider(lambda: torch.compile(_eager_fn(row), dynamic=False)),
    }
    if row[0] == "depthwise" and torch.device(device).type == "cuda":
        try:
            from .. import _extension
            has_cuda = _extension.has_cuda_ops("depthwise_conv2d_forward")
        except Exception:  # noqa: BLE001
            has_cuda = False
        if has_cuda:
            providers["cvkernels-triton"] = _provider(lambda: _call_fn(row, "triton"))
            providers["cvkernels-cuda"] = _provider(lambda: _call_fn(row, "cuda"))
    return providers


def _make_setup(row, batch, dtype, layout, device):
    x_shape, w_shape, _, _ = geometry(row, batch)

    def setup():
        try:
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001
            pass
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        fan_in = w_shape[1] * w_shape[2] * w_shape[3]
        x = torch.randn(x_shape, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)
        w = (torch.randn(w_shape, device=device) / fan_in ** 0.5).to(dtype).requires_grad_(True)
        b = torch.randn(row[3], device=device, dtype=dtype).mul_(0.1).requires_grad_(True)
        return {"x": x, "w": w, "b": b}
    return setup


def cases(device, quick: bool = False, dtypes: Optional[Sequence[torch.dtype]] = None,
          layouts: Sequence[str] = LAYOUTS) -> List[Case]:
    device = torch.device(device)
    rows = CONV_SHAPES + TRANSPOSED_SHAPES
    if device.type != "cuda":
        batch, default_dtypes = CPU_BATCH, CPU_DTYPES
        rows = tuple(r for r in rows if r[1] in CPU_LAYERS)
    elif quick:
        batch, default_dtypes = GPU_BATCH, GPU_QUICK_DTYPES
        rows = tuple(r for r in rows if r[1] in GPU_QUICK_LAYERS)
    else:
        batch, default_dtypes = GPU_BATCH, GPU_DTYPES
    out = []
    for dtype in (dtypes or default_dtypes):
        esize = torch.empty((), dtype=dtype).element_size()
        for layout in layouts:
            for row in rows:
                x_shape, w_shape, _, _ = geometry(row, batch)
                out.append(Case(
                    kernel=f"{row[0]}:{row[1]}", family=FAMILY,
                    shape="x".join(map(str, x_shape)) + f"-w{'x'.join(map(str, w_shape))}",
                    dtype=dtype, layout=layout, setup=_make_setup(row, batch, dtype, layout, device),
                    providers=_providers(row, device),
                    bytes={m: traffic_bytes(row, batch, m, esize) for m in MODES},
                    flops={m: flops(row, batch, m) for m in MODES} if row[0] != "depthwise" else {},
                    modes=MODES))
    return out


def describe(device) -> str:
    import os
    try:
        from .. import _dispatch
    except Exception as exc:  # noqa: BLE001
        return f"cvkernels not importable: {exc}"
    device = torch.device(device)
    parts = [f"{fam}: {_dispatch.choose(fam, device.type)}" for fam in ("depthwise_conv2d", "conv2d",
                                                                          "conv_transpose2d")]
    text = f"cvkernels conv paths on {device.type}: " + ", ".join(parts)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        text += "; TRITON_INTERPRET=1 is set: Triton kernels run in the interpreter (very slow, not a benchmark)"
    return text


def after_run(report, device, stream):
    """Where both depthwise GPU backends ran, records the faster per shape class (median
    fwd+bwd time, summed over the class's layers) in <out>/dispatch_table.json. Copy it to
    cvkernels/dispatch_table.json to make cvkernels._dispatch use it."""
    import json
    from collections import defaultdict
    if torch.device(device).type != "cuda" or report.csv_path is None:
        return
    rows = {r[1]: r for r in CONV_SHAPES}
    totals = defaultdict(lambda: defaultdict(float))
    for r in report.results:
        kernel, _, layer = r.kernel.partition(":")
        if kernel != "depthwise" or r.mode != "fwd+bwd" or r.provider not in ("cvkernels-triton", "cvkernels-cuda"):
            continue
        row = rows.get(layer)
        if row is None or not (r.p50_ms > 0):
            continue
        layout = "cl" if r.layout == "channels_last" else "nchw"
        cls = f"{_LONG_DTYPE.get(r.dtype, r.dtype)}-{layout}-k{row[5]}x{row[5]}-s{row[6]}"  # ops.conv's classes
        totals[cls][r.provider.split("-")[1]] += r.p50_ms
    choices = {cls: min(t, key=t.get) for cls, t in totals.items() if len(t) == 2}
    if not choices:
        return
    path = report.csv_path.parent / "dispatch_table.json"
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(device), "git_sha": report.meta.get("git_sha", ""),
                   "choices": {"depthwise_conv2d": choices},
                   "times_ms": {cls: dict(t) for cls, t in totals.items()}}, f, indent=1, sort_keys=True)
    print(f"conv: depthwise backend per shape class -> {path}", file=stream, flush=True)


_LONG_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
