"""The tolerance table shared by the test suite (tests/tolerances.py) and `cvkernels check`.

Elementwise results are compared with TOL[dtype]. Reductions (normalization statistics,
attention, anything whose error grows with the reduction length) use the rule of
flash-attention's tests: the kernel's error against the float64 oracle may be at most
FACTOR times the error of the plain torch op run in the same low precision, plus a floor.
"""
import torch

TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}
FACTOR = 2.0
# error floor of the 2x rule, relative to max(1, |reference|): a few ulps of the dtype
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_err(actual, expected):
    """Largest absolute difference, in float64 (0 for empty tensors)."""
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().double() - expected.detach().double()).abs().max().item()


def bound_2x(reference, torch_result, dtype, floor=None):
    """The largest error the 2x rule allows a kernel of `dtype` against the float64 `reference`.

    floor: relative floor (default FLOOR[dtype]), scaled by max(1, |reference|)."""
    scale = max(1.0, reference.detach().abs().max().item()) if reference.numel() else 1.0
    return FACTOR * max_err(torch_result, reference) + (FLOOR[dtype] if floor is None else floor) * scale
