"""Benchmark suite: flash attention (SDPA) and Swin shifted-window attention at real model shapes.

Kernels (``Case.kernel``):
    flash_attn            cvkernels.scaled_dot_product_attention, non-causal
    flash_attn_causal     the same with is_causal=True (long sequences only: no vision model
                          here is causal)
    window_attn           cvkernels.shifted_window_attention, shift 0 (Swin W-MSA)
    shifted_window_attn   the same with shift 3 (Swin SW-MSA)

Flash-attention shapes, (B, H, N, D):
    vit-b16       64 x 12 x   197 x  64   ViT-B/16 at 224 px (196 patches + class token)
    vit-l16-384   32 x 16 x   577 x  64   ViT-L/16 at 384 px (576 patches + class token)
    seq4k / seq16k 4 x 32 x 4096 / 16384, D = 64 and D = 128, causal and non-causal: the Triton
                  fused-attention tutorial's configuration (BATCH 4, 32 heads), 16k / 64k tokens,
                  so its published figures compare directly (bench/NOTES.md)
Layouts: "BHND" (contiguous (B, H, N, D) tensors) and, for the ViT shapes, "BNHD": q, k, v are
(B, N, H, D) leaves passed as ``.transpose(1, 2)`` views (the stride order timm's ViT passes; its
q, k, v are views of one packed qkv tensor). Modes fwd,
bwd, fwd+bwd; dtypes fp16, bf16 (``--dtype fp32`` also works: backends without fp32 are recorded
as not available).

Flash-attention providers:
    cvkernels        cvkernels.scaled_dot_product_attention (automatic backend)
    eager            F.scaled_dot_product_attention, torch's own backend choice
    sdpa-flash       F.scaled_dot_product_attention under sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    sdpa-efficient   ... EFFICIENT_ATTENTION           (GPU only)
    sdpa-cudnn       ... CUDNN_ATTENTION               (GPU only)
    sdpa-math        ... MATH, only for N <= 4096 (it materializes B*H*N*N scores)
    torch.compile    torch.compile of the eager SDPA call (dynamic=False)
A forced backend that cannot run a case is probed once when its provider is built and recorded
as a failure "BackendNotAvailable: not available: ... (torch's reasons)"; the run goes on.

Best SDPA: the harness has no derived rows, so :func:`after_run` (called by ``harness.run``
after the summary) adds them: for every (case, mode) the fastest of sdpa-flash / -efficient /
-cudnn / -math becomes a row with provider "sdpa-best" (its p50/p20/p80, metric and memory;
``ratio_vs_cvkernels`` = best SDPA p50 / cvkernels p50). The rows are appended to the CSV, the
family's PNG is redrawn with them, a summary table "speedup of cvkernels over the best SDPA
backend" is printed (geomean per kernel and mode, with which backend won how often), and
``<out>/<date>-<device>-attention-metrics.csv`` lists every attention row with both GB/s and
TFLOP/s and their fractions of the measured peaks (the main CSV carries one metric per row).

Flops (flash-attention's and the Triton tutorial's convention, :func:`sdpa_flops`):
    fwd = 4 * B * H * Nq * Nk * D  (QK^T and PV, 2 flops per multiply-add), halved if causal
    bwd = 2.5 * fwd                (dV, dP, dQ, dK and the QK^T recompute)
    fwd+bwd = 3.5 * fwd
Metric TFLOP/s (no byte floor is given, so the harness always reports TFLOP/s), fraction of the
measured bf16 matmul peak (the harness measures bf16 on CUDA once per run; fp16/fp32 rows use it
too unless a peak for their dtype was measured).

Window-attention shapes: every Swin-T stage at 224 px, batch 128, window 7, qkv (B, H, W, 3C):
    swin-t-s1  56x56, C  96,  3 heads     swin-t-s3  14x14, C 384, 12 heads
    swin-t-s2  28x28, C 192,  6 heads     swin-t-s4   7x7,  C 768, 24 heads
shift 0 and 3, except stage 4 (Swin and timm use shift 0 when the resolution equals the
window). fp16 / bf16 / fp32; modes fwd and fwd+bwd (gradients w.r.t. qkv and the bias table).

Window-attention providers:
    cvkernels      cvkernels.shifted_window_attention(qkv, table, heads, 7, shift)
    timm / eager   timm's own WindowAttention (qkv and proj Linear replaced by Identity, its eager
                   path: fused_attn=False) between this suite's roll + window partition and
                   window reverse + roll back, labelled "timm" when timm is installed; otherwise
                   :func:`window_attention_composite` (the same ops written here), "eager"
    torch.compile  torch.compile(window_attention_composite, dynamic=False)
    sdpa           :func:`window_attention_sdpa`: bias + shift mask folded into one float
                   (nW, heads, N, N) attn_mask, broadcast over the image batch (q, k, v as
                   (B, nW*heads, N, d); (B*nW, heads, N, d) and a (1, heads, N, N) bias at shift 0),
                   its last dim padded to 8 in storage so SDPA does not copy it per call
Bytes (:func:`window_bytes`, T = B*H*W tokens, s bytes per element, tb = table bytes):
    fwd = (3C + C) * T * s + tb            qkv read + output written + table
    bwd = (3C + C + 3C) * T * s + 2 tb     qkv and grad_out read, grad_qkv written, table read,
                                           grad_table written
    fwd+bwd = the sum
Flops: 4 * T * ws^2 * C forward (QK^T and PV over every window; masked entries still count),
2.5x backward (as above). At these shapes the byte floor dominates on an H100/H200, so the CSV
metric is GB/s (fraction of the measured DRAM bandwidth); TFLOP/s is in the -metrics CSV.

CPU: tiny shapes only (the harness forces --quick there): one flash case (flash_attn, BNHD) and
one window case (shifted_window_attn), fp32, fwd and fwd+bwd, no sdpa-efficient / -cudnn rows
(no CPU kernels) and no torch.compile rows (its first compile alone takes longer than the rest of
the run); ``cases(..., kernels=..)`` / ``--filter`` narrow the GPU lists. cvkernels runs its
Triton kernels through the interpreter when TRITON_INTERPRET=1 (``python -m cvkernels`` sets it
on a machine without CUDA), else its torch path. cvkernels' attention functions are looked up
when a provider is built, so the suite lists and runs (recording them as failures) before
``cvkernels/ops/attention.py`` / ``window_attention.py`` exist.
"""
import importlib
import importlib.util
import math
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .harness import Case, Result, dtype_name

FAMILY = "attention"

# ----------------------------------------------------------------------------- shapes

# name, B, H, N, D, causal variants, layouts
SDPA_SHAPES = (
    ("vit-b16", 64, 12, 197, 64, (False,), ("BHND", "BNHD")),
    ("vit-l16-384", 32, 16, 577, 64, (False,), ("BHND", "BNHD")),
    ("seq4k", 4, 32, 4096, 64, (False, True), ("BHND",)),
    ("seq4k", 4, 32, 4096, 128, (False, True), ("BHND",)),
    ("seq16k", 4, 32, 16384, 64, (False, True), ("BHND",)),
    ("seq16k", 4, 32, 16384, 128, (False, True), ("BHND",)),
)
# (name, D, causal, layout) kept by --quick on a GPU
SDPA_GPU_QUICK = (("vit-b16", 64, False, "BNHD"), ("vit-l16-384", 64, False, "BNHD"),
                  ("seq4k", 64, False, "BHND"), ("seq4k", 128, True, "BHND"),
                  ("seq16k", 128, False, "BHND"))
SDPA_CPU_SHAPES = (("tiny", 1, 2, 64, 32, (False, True), ("BNHD", "BHND")),)
SDPA_CPU_KEEP = (("tiny", 32, False, "BNHD"),)  # CPU: one case per family (the interpreter is slow)
SDPA_MODES = ("fwd", "bwd", "fwd+bwd")
CPU_MODES = ("fwd", "fwd+bwd")  # the interpreter is slow: keeps the CPU run under a minute
MATH_MAX_N = 4096

# name, B, H, W, C, heads; window 7
WINDOW_SHAPES = (
    ("swin-t-s1", 128, 56, 56, 96, 3),
    ("swin-t-s2", 128, 28, 28, 192, 6),
    ("swin-t-s3", 128, 14, 14, 384, 12),
    ("swin-t-s4", 128, 7, 7, 768, 24),
)
WINDOW_SIZE = 7
SHIFTS = (0, 3)
WINDOW_GPU_QUICK = (("swin-t-s1", 3), ("swin-t-s2", 3), ("swin-t-s3", 3), ("swin-t-s4", 0))
WINDOW_CPU_SHAPES = (("tiny", 1, 14, 14, 32, 2),)
WINDOW_CPU_SHIFTS = (3,)
WINDOW_MODES = ("fwd", "fwd+bwd")

GPU_DTYPES = (torch.float16, torch.bfloat16)
WINDOW_GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GPU_QUICK_DTYPES = (torch.bfloat16,)
CPU_DTYPES = (torch.float32,)

SDPA_BACKENDS = {  # provider -> SDPBackend member
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-math": "MATH",
}
CPU_SDPA_BACKENDS = ("sdpa-flash", "sdpa-math")  # the others have no CPU kernel
BEST_SDPA = "sdpa-best"
MASK_VALUE = -100.0  # timm's Swin shift mask


# ----------------------------------------------------------------------------- floors

def sdpa_flops(B: int, H: int, Nq: int, Nk: int, D: int, causal: bool, mode: str) -> int:
    """4*B*H*Nq*Nk*D forward (halved if causal), 2.5x that backward, 3.5x fwd+bwd."""
    f = 4 * B * H * Nq * Nk * D // (2 if causal else 1)
    return {"fwd": f, "eval": f, "bwd": int(2.5 * f), "fwd+bwd": int(3.5 * f)}[mode]


def window_flops(B: int, H: int, W: int, C: int, window: int, mode: str) -> int:
    """4 * tokens * window^2 * C forward (QK^T + PV in every window), 2.5x backward."""
    f = 4 * B * H * W * window * window * C
    return {"fwd": f, "eval": f, "bwd": int(2.5 * f), "fwd+bwd": int(3.5 * f)}[mode]


def window_bytes(B: int, H: int, W: int, C: int, heads: int, window: int, mode: str,
                 element_size: int) -> int:
    """Minimum DRAM bytes: see the module docstring."""
    t = B * H * W
    tb = (2 * window - 1) ** 2 * heads
    fwd = 4 * C * t + tb
    bwd = 7 * C * t + 2 * tb
    return {"fwd": fwd, "eval": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode] * element_size


# (kernel, shape, dtype name, layout) -> {"bytes": {...}, "flops": {...}}, for after_run's metrics
_FLOORS: Dict[Tuple[str, str, str, str], Dict[str, Dict[str, int]]] = {}


# ----------------------------------------------------------------------------- helpers

class BackendNotAvailable(RuntimeError):
    """A forced SDPA backend (or an optional peer) cannot run this case."""


def _cvkernels_fn(name: str, module: str):
    """cvkernels.<name>, else cvkernels.ops.<module>.<name>; a clear error if neither exists."""
    import cvkernels
    fn = getattr(cvkernels, name, None)
    if fn is None:
        try:
            fn = getattr(importlib.import_module(f"cvkernels.ops.{module}"), name, None)
        except Exception as exc:  # noqa: BLE001 - report it as the provider's failure
            raise BackendNotAvailable(f"cvkernels.{name} is not available (cvkernels/ops/{module}.py: "
                                      f"{type(exc).__name__}: {exc})") from None
        if fn is None:
            raise BackendNotAvailable(f"cvkernels.{name} is not available (not defined in cvkernels/ops/{module}.py)")
    return fn


def _first_line(text) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def _probe(fn, label: str):
    """Runs ``fn`` once; a RuntimeError becomes BackendNotAvailable with torch's warnings as reasons."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn()
        except RuntimeError as exc:
            reasons = [_first_line(w.message) for w in caught]
            reasons = [r for r in dict.fromkeys(reasons) if r]
            why = "; ".join(reasons) if reasons else _first_line(exc)
            raise BackendNotAvailable(f"not available: {label} cannot run this case ({why[:240]})") from None
    del out


def _has_timm() -> bool:
    try:
        return importlib.util.find_spec("timm") is not None
    except (ImportError, ValueError):
        return False


def _reset_dynamo():
    """A fresh compile cache per case (static shapes, no recompile limit); nothing to reset (and
    no slow import of torch._dynamo) before anything was compiled."""
    if "torch._dynamo" not in sys.modules:
        return
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


# ----------------------------------------------------------------------------- flash attention

def _sdpa_views(inputs, layout):
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    if layout == "BNHD":
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return q, k, v


def _sdpa_provider(kind: str, causal: bool, layout: str):
    """A factory for one flash-attention provider: kind is cvkernels / eager / torch.compile /
    one of SDPA_BACKENDS."""

    def factory(inputs, mode):
        q, k, v = _sdpa_views(inputs, layout)  # views built once, outside the timed call
        if kind == "cvkernels":
            attn = _cvkernels_fn("scaled_dot_product_attention", "attention")
            return lambda: attn(q, k, v, is_causal=causal)
        if kind == "eager":
            return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if kind == "torch.compile":
            def eager(q, k, v):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            compiled = torch.compile(eager, dynamic=False)
            return lambda: compiled(q, k, v)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend = getattr(SDPBackend, SDPA_BACKENDS[kind])

        def forced():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        _probe(forced, kind)
        return forced
    return factory


def _sdpa_setup(B, H, N, D, dtype, layout, device):
    def setup():
        _reset_dynamo()
        shape = (B, N, H, D) if layout == "BNHD" else (B, H, N, D)
        return {name: torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
                for name in ("q", "k", "v")}
    return setup


def _sdpa_cases(device, quick, dtypes, layouts=None) -> List[Case]:
    cpu = device.type != "cuda"
    table = SDPA_CPU_SHAPES if cpu else SDPA_SHAPES
    default = CPU_DTYPES if cpu else (GPU_QUICK_DTYPES if quick else GPU_DTYPES)
    backends = CPU_SDPA_BACKENDS if cpu else tuple(SDPA_BACKENDS)
    out = []
    for dtype in (dtypes or default):
        for name, B, H, N, D, causals, shape_layouts in table:
            for causal in causals:
                for layout in (layouts or shape_layouts):
                    if cpu and not layouts and (name, D, causal, layout) not in SDPA_CPU_KEEP:
                        continue
                    if quick and not cpu and (name, D, causal, layout) not in SDPA_GPU_QUICK:
                        continue
                    kernel = "flash_attn_causal" if causal else "flash_attn"
                    providers = {p: _sdpa_provider(p, causal, layout) for p in ("cvkernels", "eager")}
                    for p in backends:
                        if p == "sdpa-math" and N > MATH_MAX_N:
                            continue
                        providers[p] = _sdpa_provider(p, causal, layout)
                    if not cpu:  # CPU: its first compile alone takes longer than the rest of the run
                        providers["torch.compile"] = _sdpa_provider("torch.compile", causal, layout)
                    shape = f"{name}-{B}x{H}x{N}x{D}"
                    flops = {m: sdpa_flops(B, H, N, N, D, causal, m) for m in SDPA_MODES}
                    _FLOORS[(kernel, shape, dtype_name(dtype), layout)] = {"bytes": {}, "flops": flops}
                    out.append(Case(kernel=kernel, family=FAMILY, shape=shape, dtype=dtype, layout=layout,
                                    setup=_sdpa_setup(B, H, N, D, dtype, layout, device), providers=providers,
                                    bytes={}, flops=flops, modes=CPU_MODES if cpu else SDPA_MODES))
    return out


# ----------------------------------------------------------------------------- window attention

def relative_position_index(window: int) -> torch.Tensor:
    """timm's get_relative_position_index(window, window): (N, N) indices into the
    ((2w-1)^2, heads) bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows in row-major order (timm's)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """(B * nW, window * window, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def shift_mask(H: int, W: int, window: int, shift: int, device=None, dtype=torch.float32) -> Optional[torch.Tensor]:
    """timm's Swin attention mask for a cyclic shift: (nW, N, N), 0 within a region, -100
    across regions; None for shift 0."""
    if not shift:
        return None
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    mw = window_partition(img, window).squeeze(-1)  # nW, N
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, MASK_VALUE).masked_fill(mask == 0, 0.0)
    return mask.to(device=device, dtype=dtype)


def _bias(table: torch.Tensor, rel_index: torch.Tensor, N: int) -> torch.Tensor:
    """(heads, N, N) relative position bias gathered from the table."""
    return table[rel_index.view(-1)].view(N, N, -1).permute(2, 0, 1)


def window_attention_composite(qkv, table, rel_index, mask, num_heads: int, window: int, shift: int,
                               scale: Optional[float] = None):
    """The timm Swin block's attention as eager ops: roll, window partition, (q*scale) @ k^T,
    relative position bias, shift mask, softmax, @ v, window reverse, roll back."""
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    d = C // num_heads
    N = window * window
    scale = d ** -0.5 if scale is None else scale
    x = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2)) if shift else qkv
    x = window_partition(x, window)  # B*nW, N, 3C
    Bw = x.shape[0]
    q, k, v = x.reshape(Bw, N, 3, num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    q = q * scale
    attn = q @ k.transpose(-2, -1)
    attn = attn + _bias(table, rel_index, N).unsqueeze(0)
    if mask is not None:
        nW = mask.shape[0]
        attn = attn.view(-1, nW, num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, N, N)
    attn = attn.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(Bw, N, C)
    out = window_reverse(out, window, H, W)
    return torch.roll(out, shifts=(shift, shift), dims=(1, 2)) if shift else out


def window_attention_sdpa(qkv, table, rel_index, mask, num_heads: int, window: int, shift: int,
                          scale: Optional[float] = None):
    """The same through F.scaled_dot_product_attention with one folded float attn_mask."""
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    d = C // num_heads
    N = window * window
    nH, nWw = H // window, W // window
    nW = nH * nWw
    x = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2)) if shift else qkv
    # one copy: (B, H, W, 3, heads, d) -> (3, B, nH, nWw, heads, win, win, d)
    x = x.view(B, nH, window, nWw, window, 3, num_heads, d).permute(5, 0, 1, 3, 6, 2, 4, 7)
    q, k, v = x.reshape(3, B * nW * num_heads, N, d).unbind(0)
    bias = _bias(table, rel_index, N)  # heads, N, N
    if mask is None:
        q, k, v = (t.view(B * nW, num_heads, N, d) for t in (q, k, v))
        folded = bias.unsqueeze(0)  # 1, heads, N, N
    else:
        q, k, v = (t.view(B, nW * num_heads, N, d) for t in (q, k, v))
        folded = (bias.unsqueeze(0) + mask.unsqueeze(1)).reshape(1, nW * num_heads, N, N)
    pad = (-N) % 8  # SDPA's memory-efficient path copies a mask whose strides are not multiples of 8
    if pad:
        folded = F.pad(folded, (0, pad))[..., :N]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=folded, scale=scale)
    out = out.reshape(B, nH, nWw, num_heads, window, window, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, C)
    return torch.roll(out, shifts=(shift, shift), dims=(1, 2)) if shift else out


def _timm_window_attention(C: int, heads: int, window: int, device, dtype):
    from timm.models.swin_transformer import WindowAttention
    m = WindowAttention(dim=C, num_heads=heads, window_size=window)
    m.qkv = torch.nn.Identity()  # the op starts from qkv and ends before the output projection
    m.proj = torch.nn.Identity()
    if hasattr(m, "fused_attn"):
        m.fused_attn = False  # timm's default eager path (SDPA is its own provider here)
    m.eval()  # attention dropout is 0 anyway; nothing else depends on the mode
    return m.to(device=device, dtype=dtype)


def _window_provider(kind: str, heads: int, window: int, shift: int):
    def factory(inputs, mode):
        qkv, table, idx, mask = inputs["qkv"], inputs["table"], inputs["rel_index"], inputs["mask"]
        if kind == "cvkernels":
            swa = _cvkernels_fn("shifted_window_attention", "window_attention")
            return lambda: swa(qkv, table, heads, window, shift)
        if kind == "eager":
            return lambda: window_attention_composite(qkv, table, idx, mask, heads, window, shift)
        if kind == "torch.compile":
            compiled = torch.compile(window_attention_composite, dynamic=False)
            return lambda: compiled(qkv, table, idx, mask, heads, window, shift)
        if kind == "sdpa":
            return lambda: window_attention_sdpa(qkv, table, idx, mask, heads, window, shift)
        if kind == "timm":
            B, H, W, C3 = qkv.shape
            try:
                m = _timm_window_attention(C3 // 3, heads, window, qkv.device, qkv.dtype)
            except ImportError as exc:
                raise BackendNotAvailable(f"not available: timm ({exc})") from None
            with torch.no_grad():
                m.relative_position_bias_table.copy_(table)

            def run():
                x = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2)) if shift else qkv
                y = window_reverse(m(window_partition(x, window), mask=mask), window, H, W)
                return torch.roll(y, shifts=(shift, shift), dims=(1, 2)) if shift else y
            return run, [m.relative_position_bias_table]
        raise ValueError(kind)
    return factory


def _window_setup(B, H, W, C, heads, window, shift, dtype, device):
    def setup():
        _reset_dynamo()
        qkv = torch.randn(B, H, W, 3 * C, device=device, dtype=dtype).requires_grad_(True)
        table = (torch.randn((2 * window - 1) ** 2, heads, device=device) * 0.02).to(dtype).requires_grad_(True)
        return {"qkv": qkv, "table": table,
                "rel_index": relative_position_index(window).to(device),
                "mask": shift_mask(H, W, window, shift, device=device, dtype=dtype)}
    return setup


def _window_cases(device, quick, dtypes) -> List[Case]:
    cpu = device.type != "cuda"
    table = WINDOW_CPU_SHAPES if cpu else WINDOW_SHAPES
    default = CPU_DTYPES if cpu else (GPU_QUICK_DTYPES if quick else WINDOW_GPU_DTYPES)
    reference = "timm" if _has_timm() else "eager"
    out = []
    for dtype in (dtypes or default):
        esize = torch.empty((), dtype=dtype).element_size()
        for name, B, H, W, C, heads in table:
            for shift in (WINDOW_CPU_SHIFTS if cpu else SHIFTS):
                if shift and min(H, W) <= WINDOW_SIZE:
                    continue  # Swin / timm do not shift when one window covers the image
                if quick and not cpu and (name, shift) not in WINDOW_GPU_QUICK:
                    continue
                kernel = "shifted_window_attn" if shift else "window_attn"
                names = ("cvkernels", reference, "sdpa") if cpu else ("cvkernels", reference, "torch.compile", "sdpa")
                providers = {p: _window_provider(p, heads, WINDOW_SIZE, shift) for p in names}
                shape = f"{name}-{B}x{H}x{W}x{C}-h{heads}"
                nbytes = {m: window_bytes(B, H, W, C, heads, WINDOW_SIZE, m, esize) for m in WINDOW_MODES}
                flops = {m: window_flops(B, H, W, C, WINDOW_SIZE, m) for m in WINDOW_MODES}
                _FLOORS[(kernel, shape, dtype_name(dtype), "BHWC")] = {"bytes": nbytes, "flops": flops}
                out.append(Case(kernel=kernel, family=FAMILY, shape=shape, dtype=dtype, layout="BHWC",
                                setup=_window_setup(B, H, W, C, heads, WINDOW_SIZE, shift, dtype, device),
                                providers=providers, bytes=nbytes, flops=flops,
                                modes=CPU_MODES if cpu else WINDOW_MODES))
    return out


# ----------------------------------------------------------------------------- suite entry points

def cases(device, quick: bool = False, dtypes: Optional[Sequence[torch.dtype]] = None,
          kernels: Optional[Sequence[str]] = None) -> List[Case]:
    """Both families' cases; ``kernels`` keeps a subset of flash_attn, flash_attn_causal,
    window_attn, shifted_window_attn."""
    device = torch.device(device)
    out = _sdpa_cases(device, quick, dtypes) + _window_cases(device, quick, dtypes)
    if kernels:
        out = [c for c in out if c.kernel in kernels]
    return out


def describe(device) -> str:
    device = torch.device(device)
    parts = []
    try:
        import cvkernels
        from .. import _dispatch
        for fam, fn, module in (("flash_attention", "scaled_dot_product_attention", "attention"),
                                ("window_attention", "shifted_window_attention", "window_attention")):
            if hasattr(cvkernels, fn):
                have = "present"
            else:
                try:
                    _cvkernels_fn(fn, module)
                    have = f"present (cvkernels.ops.{module}, not exported from cvkernels)"
                except Exception:  # noqa: BLE001
                    have = "MISSING (its rows will be failures)"
            try:
                path = _dispatch.choose(fam, device.type) if fam in _dispatch.FAMILIES else "unregistered"
            except Exception as exc:  # noqa: BLE001
                path = f"? ({type(exc).__name__})"
            parts.append(f"{fn}: {have}, {fam} path {path}")
    except Exception as exc:  # noqa: BLE001
        parts.append(f"cvkernels not importable: {exc}")
    parts.append(f"window baseline: {'timm' if _has_timm() else 'eager composite (timm not installed)'}")
    text = f"cvkernels attention on {device.type}: " + "; ".join(parts)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        text += "; TRITON_INTERPRET=1 is set: Triton kernels run in the interpreter (very slow, not a benchmark)"
    return text


# ----------------------------------------------------------------------------- derived rows

def best_sdpa_rows(results: Sequence[Result]) -> List[Tuple[Result, str]]:
    """For each (case, mode) with at least one forced-backend SDPA row: a "sdpa-best" Result
    copied from the fastest of them (ratio against cvkernels' row of the same case and mode),
    with the winning provider's name."""
    groups: Dict[tuple, List[Result]] = {}
    for r in results:
        if r.family == FAMILY:
            groups.setdefault(r.case_key, []).append(r)
    out = []
    for rows in groups.values():
        backends = [r for r in rows if r.provider in SDPA_BACKENDS and r.p50_ms > 0]
        if not backends:
            continue
        best = min(backends, key=lambda r: r.p50_ms)
        ref = next((r for r in rows if r.provider == "cvkernels" and r.p50_ms > 0), None)
        ratio = best.p50_ms / ref.p50_ms if ref is not None else float("nan")
        out.append((Result(best.kernel, best.family, BEST_SDPA, best.mode, best.shape, best.dtype, best.layout,
                           best.p50_ms, best.p20_ms, best.p80_ms, best.metric, best.metric_value,
                           best.frac_of_peak, ratio, best.peak_mem_mb), best.provider))
    return out


def metrics_rows(results: Sequence[Result], peaks: Dict, winners: Optional[Dict[tuple, str]] = None) -> List[Dict]:
    """Every attention row with both GB/s and TFLOP/s (and their fractions of the measured DRAM
    bandwidth and bf16 matmul peak, as ``report.meta["peaks"]`` gives them)."""
    bw = (peaks or {}).get("dram_GBps")
    mm = (peaks or {}).get("matmul_TFLOPs") or {}
    rows = []
    for r in results:
        if r.family != FAMILY:
            continue
        floors = _FLOORS.get((r.kernel, r.shape, r.dtype, r.layout), {})
        nbytes = floors.get("bytes", {}).get(r.mode)
        nflops = floors.get("flops", {}).get(r.mode)
        secs = r.p50_ms * 1e-3
        gbs = nbytes / secs / 1e9 if nbytes and secs > 0 else float("nan")
        tfs = nflops / secs / 1e12 if nflops and secs > 0 else float("nan")
        fl_peak = mm.get("bf16") or mm.get(r.dtype) or (max(mm.values()) if mm else None)
        rows.append({
            "kernel": r.kernel, "provider": r.provider, "mode": r.mode, "shape": r.shape, "dtype": r.dtype,
            "layout": r.layout, "p50_ms": r.p50_ms, "GB/s": gbs,
            "frac_of_bandwidth": gbs / bw if bw else float("nan"), "TFLOP/s": tfs,
            "frac_of_bf16_matmul": tfs / fl_peak if fl_peak else float("nan"),
            "ratio_vs_cvkernels": r.ratio_vs_cvkernels,
            "best_sdpa_backend": (winners or {}).get(r.case_key, "") if r.provider == BEST_SDPA else "",
        })
    return rows


def after_run(report, device, stream):
    """Adds the "sdpa-best" rows (CSV, plot, report.results), prints the best-SDPA summary and
    writes the GB/s + TFLOP/s metrics CSV. Never raises: the measured results are already saved."""
    try:
        _after_run(report, torch.device(device), stream)
    except Exception as exc:  # noqa: BLE001
        print(f"attention: derived rows failed: {type(exc).__name__}: {_first_line(exc)}", file=stream, flush=True)


def _after_run(report, device, stream):
    from collections import Counter

    from . import harness
    rows = [r for r in report.results if r.family == FAMILY and r.provider != BEST_SDPA]
    if not rows:
        return
    derived = best_sdpa_rows(rows)
    winners = {r.case_key: name for r, name in derived}
    best = [r for r, _ in derived]
    env = {k: str(report.meta.get(k, "")) for k in ("device", "torch", "triton", "cuda", "git_sha", "date")}
    if best:
        report.results.extend(best)
        text = harness.summarize(best).splitlines()
        lines = ["", "attention: speedup of cvkernels over the best SDPA backend per case "
                     f"({BEST_SDPA} = min p50 over {', '.join(SDPA_BACKENDS)}; geomean; >1 is faster)"]
        lines += [ln for ln in text[2:]]
        won = Counter(name for _, name in derived)
        lines.append("  fastest SDPA backend: " + ", ".join(f"{k} {v}x" for k, v in won.most_common()))
        print("\n".join(lines), file=stream, flush=True)
        if report.csv_path is not None:
            harness.write_csv(best, report.csv_path, env, append=True)
            png = report.csv_path.parent / f"{report.csv_path.stem}-{FAMILY}.png"
            if png in report.plot_paths and device.type == "cuda":  # CPU: not worth another plot
                harness.plot_family(rows + best, FAMILY, png, env)
    if report.csv_path is not None:
        table = metrics_rows(rows + best, report.meta.get("peaks") or {}, winners)
        path = harness.write_metrics_csv(table, report.csv_path, FAMILY)
        print(f"attention: wrote {path}", file=stream, flush=True)


# ----------------------------------------------------------------------------- notes

def floor_table(bandwidth_Bps: float, matmul_flops: float, dtype=torch.bfloat16,
                modes: Sequence[str] = ("fwd", "fwd+bwd")) -> List[Dict]:
    """Byte- and flop-floor times (ms) of every GPU case at the given bandwidth and matrix rate
    (PREDICTIONS for bench/NOTES.md)."""
    esize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for name, B, H, N, D, causals, _ in SDPA_SHAPES:
        for causal in causals:
            row = {"kernel": "flash_attn_causal" if causal else "flash_attn", "shape": f"{name}-{B}x{H}x{N}x{D}"}
            for m in modes:
                f = sdpa_flops(B, H, N, N, D, causal, m)
                row[m + " GFLOP"] = f / 1e9
                row[m + " ms"] = f / matmul_flops * 1e3
            rows.append(row)
    for name, B, H, W, C, heads in WINDOW_SHAPES:
        for shift in SHIFTS:
            if shift and min(H, W) <= WINDOW_SIZE:
                continue
            row = {"kernel": "shifted_window_attn" if shift else "window_attn",
                   "shape": f"{name}-{B}x{H}x{W}x{C}-h{heads}"}
            for m in modes:
                nb = window_bytes(B, H, W, C, heads, WINDOW_SIZE, m, esize)
                f = window_flops(B, H, W, C, WINDOW_SIZE, m)
                row[m + " MB"] = nb / 1e6
                row[m + " ms bytes"] = nb / bandwidth_Bps * 1e3
                row[m + " ms flops"] = f / matmul_flops * 1e3
            rows.append(row)
    return rows
