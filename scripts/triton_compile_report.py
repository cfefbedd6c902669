#!/usr/bin/env python3
"""Compiles every Triton kernel launch of every Triton family (conv, attention, window attention, diffusion) for a GPU target, without a GPU.

The launchers run on "meta" tensors (which get the GPU's launch parameters, see
cvkernels/triton/_common.py); each kernel launch is captured instead of run, and compiled
with Triton's own toolchain (bundled LLVM + ptxas) for sm_90. Catches what the CPU
interpreter cannot: compile errors of the GPU path, and register use / spills per kernel
(read from the cubin with the bundled cuobjdump).

    python scripts/triton_compile_report.py [--arch 90] [--json OUT]

Exit code 1 if any launch fails to compile.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # real JITFunctions, not the interpreter
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
          torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


def _capture(launches):
    """Replaces JITFunction.run: records (kernel, signature, constexprs, options), runs nothing."""
    def run(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "num_ctas") if k in kwargs}
        bound = dict(zip(self.arg_names, args))
        bound.update(kwargs)
        signature, constexprs = {}, {}
        for i, name in enumerate(self.arg_names):
            value = bound[name]
            if i in self.constexprs:
                signature[name] = "constexpr"
                constexprs[(i,)] = value
            elif isinstance(value, torch.Tensor):
                signature[name] = "*" + _TYPES[value.dtype]
            elif isinstance(value, bool):
                signature[name] = "i1"
            elif isinstance(value, int):
                signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            elif isinstance(value, float):
                signature[name] = "fp32"
            else:
                raise TypeError(f"{self.fn.__name__}: cannot type argument {name}={value!r}")
        launches.append((self, signature, constexprs, options))
    triton.runtime.jit.JITFunction.run = run


def _conv_launches():
    from cvkernels.triton import conv as C
    meta = "meta"
    for dtype in (torch.bfloat16, torch.float32):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.empty(32, 64, 28, 28, device=meta, dtype=dtype).contiguous(memory_format=fmt)
            for groups, w_shape in ((64, (64, 1, 3, 3)), (4, (64, 16, 3, 3))):
                w = torch.empty(w_shape, device=meta, dtype=dtype)
                b = torch.empty(64, device=meta, dtype=dtype)
                C.conv2d(x, w, b, (1, 1), (1, 1), (1, 1), groups, (28, 28), 1)
                dy = torch.empty(32, 64, 14, 14, device=meta, dtype=dtype).contiguous(memory_format=fmt)
                C.conv2d_transposed(dy, w, None, list(x.shape), (2, 2), (1, 1), (1, 1), groups, 0)
                C.conv2d_weight_grad(dy, x, list(w.shape), (2, 2), (1, 1), (1, 1), groups)


def _attention_launches():
    from cvkernels.triton import flash_attention as A
    meta = "meta"
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for D in (64, 128) if dtype != torch.float32 else (64,):
            q = torch.empty(4, 8, 1024, D, device=meta, dtype=dtype)
            out, lse = A.forward(q, q, q, None, None, 0.125, True, 0, 0.0)
            A.backward(out, q, q, q, out, lse, None, None, 0.125, True, 0, 0.0, False)
    q = torch.empty(4, 1024, 8, 80, device=meta, dtype=torch.bfloat16).transpose(1, 2)  # (B, N, H, D) layout
    bias = torch.empty(1, 8, 1024, 1024, device=meta, dtype=torch.bfloat16).expand(4, 8, 1024, 1024)
    keep = torch.empty(4, 1, 1, 1024, device=meta, dtype=torch.bool).expand(4, 8, 1024, 1024)
    seed = torch.empty(1, device=meta, dtype=torch.int64)
    for mask, dropout in ((bias, 0.0), (keep, 0.1)):
        out, lse = A.forward(q, q, q, mask, seed, 0.11, False, 0, dropout)
        A.backward(out, q, q, q, out, lse, mask, seed, 0.11, False, 0, dropout, mask is bias)
    q = torch.empty(2, 4, 512, 256, device=meta, dtype=torch.bfloat16)
    out, lse = A.forward(q, q, q, None, None, 0.06, False, 0, 0.0)
    A.backward(out, q, q, q, out, lse, None, None, 0.06, False, 0, 0.0, False)


def _window_attention_launches():
    from cvkernels.triton import window_attention as K
    for dtype, window, heads, d, H, masked in ((torch.bfloat16, (7, 7), 3, 32, 56, False),
                                               (torch.bfloat16, (7, 7), 2, 64, 14, True),
                                               (torch.bfloat16, (12, 12), 4, 32, 48, False),
                                               (torch.float32, (7, 7), 3, 32, 56, False)):
        n = window[0] * window[1]
        qkv = torch.empty(8, H, H, 3 * heads * d, device="meta", dtype=dtype)
        table = torch.empty((2 * window[0] - 1) * (2 * window[1] - 1), heads, device="meta")
        mask = torch.empty(4, n, n, device="meta") if masked else None
        shift = (0, 0) if masked else (window[0] // 2, window[1] // 2)
        out, lse = K.forward(qkv, table, mask, heads, window, shift, (H, H), d ** -0.5)
        K.backward(out, qkv, table, mask, out, lse, heads, window, shift, (H, H), d ** -0.5)


def _diffusion_launches():
    from cvkernels.triton import diffusion as K
    x = torch.empty(32, 4, 128, 128, device="meta", dtype=torch.float16)
    coefs = torch.empty(1, 9, device="meta").expand(32, 9)
    thr = torch.empty(32, device="meta")
    for cond, pv, hist, noise_mode, var, thresh in [(None, None, None, 0, 0, None), (x, None, None, 2, 0, None),
                                                    (None, x, x, 2, 2, thr), (None, x, None, 1, 1, None)]:
        K.step(x, x, cond, pv, hist, x if noise_mode == 1 else None, coefs, thresh, 7.5, True, 1.0, var,
               noise_mode, 2**40 + 3, 5 << 32, True, True)
    rng = torch.empty(2, device="meta", dtype=torch.int64)
    K.step(x, x, x, None, None, None, coefs, None, 7.5, False, 1.0, 0, 2, 0, 3 << 32, False, False, rng)
    K.x0_abs(x, x, x, coefs, 7.5)


_FAMILIES = {"conv": _conv_launches, "attention": _attention_launches,
             "window_attention": _window_attention_launches, "diffusion": _diffusion_launches}


def _resource_usage(cubin: bytes):
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k.lower(): int(v) for k, v in found.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--json", default=None)
    parser.add_argument("--family", action="append", choices=sorted(_FAMILIES), default=None,
                        help="only these families (default: all)")
    args = parser.parse_args(argv)
    launches = []
    _capture(launches)
    for family in args.family or sorted(_FAMILIES):
        _FAMILIES[family]()
    seen, rows, failures = set(), [], 0
    for fn, signature, constexprs, options in launches:
        key = (fn.fn.__name__, tuple(sorted(signature.items())), tuple(sorted((k, str(v)) for k, v in constexprs.items())))
        if key in seen:
            continue
        seen.add(key)
        label = f"{fn.fn.__name__} " + " ".join(f"{fn.arg_names[k[0]]}={v}" for k, v in constexprs.items()) + \
            " " + ",".join(sorted({t for t in signature.values() if t.startswith("*")}))
        try:
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                    target=GPUTarget("cuda", args.arch, 32),
                                    options={"num_warps": 4, "num_stages": 3, **options})
            usage = _resource_usage(kernel.asm["cubin"])
            usage["shared_bytes"] = kernel.metadata.shared
            rows.append({"kernel": label, "ok": True, **usage})
            print(f"ok    {label}  {usage}", flush=True)
        except Exception as exc:  # noqa: BLE001
            failures += 1
            rows.append({"kernel": label, "ok": False, "error": str(exc)[:2000]})
            print(f"FAIL  {label}\n{str(exc)[:2000]}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"{len(rows) - failures} compiled, {failures} failed (sm_{args.arch}, triton {triton.__version__})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
