"""Assertions over the one tolerance table (cvkernels/testing.py, also used by `cvkernels check`).

Elementwise results: assert_close with TOL[dtype]. Reductions and attention: the
flash-attention rule, assert_close_2x: error against the float64 oracle at most FACTOR times
the error of the plain torch op in the same precision, plus a floor.
"""
import torch

from cvkernels.testing import FACTOR, FLOOR, TOL, bound_2x, max_err

__all__ = ["TOL", "FACTOR", "FLOOR", "max_err", "tol", "assert_close", "assert_close_2x"]


def tol(dtype):
    return TOL[dtype]


def assert_close(actual, expected, dtype=None, **override):
    """torch.testing.assert_close with the table's tolerance for `dtype` (default: actual's)."""
    kw = dict(TOL[dtype or actual.dtype])
    kw.update(override)
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), **kw)


def assert_close_2x(actual, reference, torch_result, name="output", floor=None):
    """err(actual vs float64 reference) <= FACTOR * err(torch_result vs reference) + floor
    (floor relative to max(1, |reference|); default FLOOR[dtype])."""
    err, bound = max_err(actual, reference), bound_2x(reference, torch_result, actual.dtype, floor)
    assert err <= bound, (f"{name}: max error {err:.3e} vs the float64 oracle exceeds {FACTOR}x torch's "
                          f"own error {max_err(torch_result, reference):.3e} + floor (bound {bound:.3e})")
