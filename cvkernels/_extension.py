"""Loads the compiled library cvkernels/_C.so (C++ CPU kernels, CUDA kernels when built).

A missing or broken build never breaks ``import cvkernels``: the Triton and torch paths keep
working and :func:`has_ops` returns False. :func:`load_error` says why it did not load.
"""
import glob
import os

import torch

_loaded = False
_error = None
_path = None


def _load():
    global _loaded, _error, _path
    if os.environ.get("CVK_DISABLE_EXTENSION", "0") == "1":
        _error = "disabled by CVK_DISABLE_EXTENSION=1"
        return
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))
    if not candidates:
        _error = "cvkernels/_C was not built (pip install --no-build-isolation -e .)"
        return
    try:
        torch.ops.load_library(candidates[0])
    except (OSError, RuntimeError) as exc:  # ABI mismatch, missing symbols, ...
        _error = f"failed to load {candidates[0]}: {exc}"
        return
    _loaded, _path = True, candidates[0]


_load()


def has_ops() -> bool:
    """True when the compiled library (C++ CPU kernels, CUDA kernels if built) is loaded."""
    return _loaded


def has_op(name) -> bool:
    """True when the loaded library defines the schema cvkernels::<name>."""
    if not _loaded:
        return False
    try:
        torch._C._dispatch_find_schema_or_throw(f"cvkernels::{name}", "")
    except RuntimeError:
        return False
    return True


# one CUDA C++ op per family that has CUDA kernels
CUDA_OPS = ("depthwise_conv2d_forward", "roi_align_forward", "nms_padded", "volume_render_forward")


def has_cuda_ops(op=None) -> bool:
    """True when the compiled library was built with its CUDA kernels (``op``: a given one,
    e.g. "depthwise_conv2d_forward")."""
    if not _loaded:
        return False
    for name in ([op] if op else CUDA_OPS):
        try:
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"cvkernels::{name}", "CUDA"):
                return True
        except RuntimeError:  # schema not defined by this build
            continue
    return False


def load_error():
    """Why the compiled library is not loaded (None when it is)."""
    return _error


def library_path():
    return _path
