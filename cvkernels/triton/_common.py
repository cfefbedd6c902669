"""Small helpers shared by the Triton launchers of every family."""
import functools

import torch
import triton
import triton.language as tl


def next_pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


def acc_dtype(dtype):
    """Triton accumulator type for tensors of torch `dtype`: fp64 for fp64, fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@functools.lru_cache(maxsize=None)
def _num_sms(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@triton.jit
def dot(a, b, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with `ACC` accumulation; UPCAST: bf16 tl.dot is wrong in the CPU interpreter
    (triton 3.9), so there the operands go to fp32 first (products of bf16 values are exact)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=ACC)


def upcast_dot(t):
    """The UPCAST argument of `dot` for operands of tensor `t`'s dtype and device."""
    return t.dtype == torch.bfloat16 and interpreted(t.device)


def interpreted(device):
    """Whether kernels for tensors on `device` run in the CPU interpreter. Launch parameters are
    chosen for the interpreter (few, big programs) or for a GPU; "meta" tensors get the GPU's
    (scripts/triton_compile_report.py compiles the GPU launches on a machine without one)."""
    return device.type == "cpu"


H100_SMS = 132


def target_programs(device):
    """About how many programs fill the device: 4 per SM on a GPU; few on the CPU interpreter,
    which runs programs one after another (there, fewer and bigger tiles are faster)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return 4 * _num_sms(index)
    return 4 if interpreted(device) else 4 * H100_SMS


def splits_for(device, num_tiles, other_programs):
    """(num_splits, tiles_per_split) for a reduction over `num_tiles` tiles split across
    programs, when `other_programs` programs already run in parallel beside it."""
    want = triton.cdiv(target_programs(device), max(other_programs, 1))
    num_splits = max(1, min(num_tiles, want))
    per_split = triton.cdiv(max(num_tiles, 1), num_splits)
    return triton.cdiv(max(num_tiles, 1), per_split), per_split
