"""Benchmark suite: fused BatchNorm(+residual add)+ReLU at ResNet-50 training shapes.

Kernels: "bn_relu" = relu(BN(x)), "bn_add_relu" = relu(BN(x) + residual), both (N, C, H, W),
NCHW and channels_last, fp16 / bf16 / fp32. Modes: fwd (training), bwd, fwd+bwd, eval (fwd).

Providers, all with module dtype = input dtype (what ``model.half()`` / ``model.bfloat16()``
gives, so BN's weight, bias and running statistics are in the input's dtype):
    cvkernels      cvkernels.nn.BatchNormReLU2d(C)(x[, residual])
    eager          nn.BatchNorm2d(C) -> (+ residual) -> torch.relu
    torch.compile  torch.compile(the eager module, dynamic=False), warmed up before timing
The suite imports cvkernels only inside the providers, so the cases can be listed without it.

Minimum DRAM traffic (the GB/s metric), E = N*C*H*W elements of s bytes, r = 1 with a residual
else 0; per-channel vectors (weight, bias, statistics: O(C)) are left out:

    fwd (training):  read x twice (statistics pass, normalize pass), read residual, write y
                     = (3 + r) * E * s
    bwd:             reduce pass reads grad_out, y (ReLU mask), x; the dx pass reads them again;
                     write dx (and grad_residual, the masked grad_out)
                     = (6 + 1 + r) * E * s
    fwd+bwd:         the sum = (10 + 2r) * E * s
    eval (fwd):      read x (and residual), write y = (2 + r) * E * s

For comparison (used by bench/NOTES.md), the eager module moves: training fwd BN 3E + (add 3E)
+ relu 2E; bwd relu-backward 3E + BN backward 5E (the add's gradient is passed through, no
traffic); eval BN 2E + (add 3E) + relu 2E. See :func:`eager_passes`.
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .harness import MODES, Case

FAMILY = "batch_norm"
KERNELS = ("bn_relu", "bn_add_relu")
LAYOUTS = ("NCHW", "channels_last")

# (C, H, W) of every BatchNorm in ResNet-50 (training resolution 224x224)
RESNET50_CHW = ((64, 112, 112), (64, 56, 56), (256, 56, 56), (128, 28, 28), (512, 28, 28),
                (256, 14, 14), (1024, 14, 14), (512, 7, 7), (2048, 7, 7))
BATCHES = (256, 32)
GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

GPU_QUICK_BATCHES = (256,)
GPU_QUICK_CHW = ((64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7))
GPU_QUICK_DTYPES = (torch.bfloat16,)

CPU_BATCHES = (4,)
CPU_CHW = ((64, 16, 16), (256, 8, 8))
CPU_DTYPES = (torch.float32,)


def passes(kernel: str, mode: str) -> int:
    """Minimum full-tensor passes over DRAM (reads + writes) of the fused kernels; see the module doc."""
    r = 1 if kernel == "bn_add_relu" else 0
    fwd, bwd, ev = 3 + r, 7 + r, 2 + r
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd, "eval": ev}[mode]


def eager_passes(kernel: str, mode: str) -> int:
    """Full-tensor passes the unfused eager module makes (BN, add, relu as separate kernels)."""
    r = 1 if kernel == "bn_add_relu" else 0
    fwd = 3 + 3 * r + 2
    bwd = 3 + 5
    ev = 2 + 3 * r + 2
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd, "eval": ev}[mode]


def traffic_bytes(kernel: str, mode: str, numel: int, element_size: int) -> int:
    return passes(kernel, mode) * numel * element_size


class EagerBNReLU(nn.Module):
    """The unfused baseline: BatchNorm2d, optional residual add, ReLU."""

    def __init__(self, num_features, device=None, dtype=None):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, device=device, dtype=dtype)

    def forward(self, x, residual=None):
        y = self.bn(x)
        if residual is not None:
            y = y + residual
        return torch.relu(y)


def _load_state(bn, params, mode):
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(params[name])
    bn.train(mode != "eval")


def _call(module, inputs):
    x, residual = inputs["x"], inputs.get("residual")
    if residual is None:
        return lambda: module(x)
    return lambda: module(x, residual)


def _cvkernels_factory(inputs, mode):
    import cvkernels.nn  # lazily: the suite lists without cvkernels' kernels
    x = inputs["x"]
    m = cvkernels.nn.BatchNormReLU2d(x.shape[1], device=x.device, dtype=x.dtype)
    _load_state(m, inputs["params"], mode)
    return _call(m, inputs), list(m.parameters())


def _eager_factory(inputs, mode):
    x = inputs["x"]
    m = EagerBNReLU(x.shape[1], device=x.device, dtype=x.dtype)
    _load_state(m.bn, inputs["params"], mode)
    return _call(m, inputs), list(m.parameters())


def _compile_factory(inputs, mode):
    x = inputs["x"]
    m = EagerBNReLU(x.shape[1], device=x.device, dtype=x.dtype)
    _load_state(m.bn, inputs["params"], mode)
    compiled = torch.compile(m, dynamic=False)
    return _call(compiled, inputs), list(m.parameters())


PROVIDERS = {"cvkernels": _cvkernels_factory, "eager": _eager_factory, "torch.compile": _compile_factory}


def _make_setup(kernel, shape, dtype, layout, device):
    N, C, H, W = shape

    def setup():
        try:  # a fresh compile cache per case: static shapes, no recompile limit, no dynamic promotion
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001
            pass
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

        def act():
            t = torch.randn(N, C, H, W, device=device, dtype=dtype).mul_(1.5).add_(0.25)
            return t.contiguous(memory_format=fmt).requires_grad_(True)

        inputs = {"x": act()}
        if kernel == "bn_add_relu":
            inputs["residual"] = act()
        inputs["params"] = {
            "weight": torch.rand(C, device=device).add_(0.5).to(dtype),
            "bias": torch.randn(C, device=device).mul_(0.1).to(dtype),
            "running_mean": torch.randn(C, device=device).mul_(0.1).to(dtype),
            "running_var": torch.rand(C, device=device).add_(0.5).to(dtype),
        }
        return inputs

    return setup


def cases(device, quick: bool = False, dtypes: Optional[Sequence[torch.dtype]] = None,
          kernels: Sequence[str] = KERNELS, layouts: Sequence[str] = LAYOUTS) -> List[Case]:
    device = torch.device(device)
    if device.type != "cuda":
        batches, chws, default_dtypes = CPU_BATCHES, CPU_CHW, CPU_DTYPES
    elif quick:
        batches, chws, default_dtypes = GPU_QUICK_BATCHES, GPU_QUICK_CHW, GPU_QUICK_DTYPES
    else:
        batches, chws, default_dtypes = BATCHES, RESNET50_CHW, GPU_DTYPES
    out = []
    for dtype in (dtypes or default_dtypes):
        esize = torch.empty((), dtype=dtype).element_size()
        for layout in layouts:
            for kernel in kernels:
                for n in batches:
                    for c, h, w in chws:
                        shape = (n, c, h, w)
                        numel = n * c * h * w
                        out.append(Case(
                            kernel=kernel, family=FAMILY, shape="x".join(map(str, shape)), dtype=dtype,
                            layout=layout, setup=_make_setup(kernel, shape, dtype, layout, device),
                            providers=dict(PROVIDERS),
                            bytes={m: traffic_bytes(kernel, m, numel, esize) for m in MODES},
                            flops={}, modes=MODES))
    return out


def describe(device) -> str:
    """Which cvkernels path the BN-ReLU provider runs on ``device``."""
    import os
    try:
        from .. import _dispatch, _extension
    except Exception as exc:  # noqa: BLE001
        return f"cvkernels not importable: {exc}"
    device = torch.device(device)
    backend = _dispatch.choose("batch_norm_relu", device.type)
    text = f"cvkernels BatchNormReLU2d runs the {backend!r} path on {device.type}"
    if backend == "torch" and device.type == "cpu" and not _extension.has_ops():
        text += f" (compiled ops not loaded: {_extension.load_error()})"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        text += "; TRITON_INTERPRET=1 is set: Triton kernels run in the interpreter (very slow, not a benchmark)"
    return text


def floor_table(bandwidth_Bps: float, batches=BATCHES, chws=RESNET50_CHW, element_size: int = 2,
                kernels: Sequence[str] = KERNELS, modes: Sequence[str] = ("fwd", "fwd+bwd", "eval")) -> List[Dict]:
    """Bandwidth-floor predictions (ms) at a given bandwidth, for bench/NOTES.md."""
    rows = []
    for n in batches:
        for c, h, w in chws:
            numel = n * c * h * w
            for kernel in kernels:
                row = {"shape": f"{n}x{c}x{h}x{w}", "kernel": kernel, "MB": numel * element_size / 1e6}
                for m in modes:
                    row[m] = traffic_bytes(kernel, m, numel, element_size) / bandwidth_Bps * 1e3
                    row[m + " eager"] = eager_passes(kernel, m) * numel * element_size / bandwidth_Bps * 1e3
                rows.append(row)
    return rows
