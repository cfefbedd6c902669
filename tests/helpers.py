"""Input factories and checks shared by the operator tests."""
import contextlib

import torch

LAYOUTS = ("contiguous", "channels_last", "noncontiguous")


def make_input(shape, dtype, device, layout="contiguous", requires_grad=False, scale=1.0, shift=0.0):
    """Random tensor of `shape` in one of LAYOUTS.

    channels_last: 4-D only (other ranks get channels-innermost strides via movedim);
    noncontiguous: a strided slice of a larger buffer (every other element of the last dim).
    """
    if layout == "contiguous":
        t = torch.randn(shape, dtype=torch.float64, device=device)
    elif layout == "channels_last":
        t = torch.randn((shape[0], *shape[2:], shape[1]), dtype=torch.float64, device=device).movedim(-1, 1)
    elif layout == "noncontiguous":
        t = torch.randn((*shape[:-1], 2 * shape[-1]), dtype=torch.float64, device=device)[..., ::2]
    else:
        raise ValueError(layout)
    t = (t * scale + shift).to(dtype)
    if layout == "channels_last" and t.dim() == 4:
        assert t.is_contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def leaf(t, dtype=None):
    """A detached leaf copy (optionally cast) that requires grad, keeping t's strides."""
    out = t.detach().clone() if dtype is None else t.detach().to(dtype)
    return out.requires_grad_(True)


@contextlib.contextmanager
def poisoned_outputs():
    """Fills every torch.empty* allocation with NaN while active, so an output element a kernel
    forgets to write shows up as NaN instead of plausible stale memory."""
    import torch.utils.deterministic as det
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = prev_fill
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def opcheck(op, args, kwargs=None, **kw):
    """torch.library.opcheck with every test utility; raises on the first failure."""
    result = torch.library.opcheck(op, args, kwargs or {}, **kw)
    bad = {k: v for k, v in result.items() if v != "SUCCESS"}
    assert not bad, bad


def gradcheck(fn, inputs, **kw):
    kw.setdefault("eps", 1e-6)
    kw.setdefault("atol", 1e-5)
    kw.setdefault("rtol", 1e-4)
    kw.setdefault("fast_mode", True)  # random projections: few evaluations under the interpreter
    assert torch.autograd.gradcheck(fn, inputs, **kw)
