"""Chooses the implementation of an operator family for given inputs (DESIGN.md section 3).

Order: explicit ``backend=`` argument or the ``CVK_BACKEND`` environment variable →
on CUDA tensors the GPU kernel (Triton or CUDA C++, the faster for the shape class) →
on CPU tensors the C++ CPU kernel when the family has one and the library is loaded, the
Triton kernel when ``TRITON_INTERPRET=1``, else the pure-torch path. Cases a kernel does
not support fall back to the torch path, never to a wrong answer. Set ``CVK_DEBUG=1`` (or
the ``cvkernels`` logger to DEBUG) to log which path ran.
"""
import json
import logging
import os

from . import _extension

log = logging.getLogger("cvkernels")
if os.environ.get("CVK_DEBUG", "0") == "1":
    logging.basicConfig()
    log.setLevel(logging.DEBUG)

BACKENDS = ("triton", "cuda", "cpp", "torch")


def _debug(msg, *args):
    """Logs which path ran; silent while torch.compile traces (logging would break the graph)."""
    import torch
    if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
        log.debug(msg, *args)

# family -> backends it implements (besides "torch", which every family has)
FAMILIES = {
    "batch_norm_relu": {"gpu": ("triton",), "cpu": ("cpp", "triton")},
    "depthwise_conv2d": {"gpu": ("triton", "cuda"), "cpu": ("triton",)},
    "conv2d": {"gpu": ("triton",), "cpu": ("triton",)},
    "conv_transpose2d": {"gpu": ("triton",), "cpu": ("triton",)},
    "flash_attention": {"gpu": ("triton",), "cpu": ("triton",)},
    "window_attention": {"gpu": ("triton",), "cpu": ("triton",)},
    "roi_align": {"gpu": ("cuda",), "cpu": ("cpp",)},
    "roi_pool": {"gpu": ("cuda",), "cpu": ("cpp",)},
    "nms": {"gpu": ("cuda",), "cpu": ("cpp",)},
    "diffusion": {"gpu": ("triton",), "cpu": ("triton",)},
    "volume_render": {"gpu": ("cuda",), "cpu": ("cpp",)},
}

# the CUDA C++ op whose registration says a family's "cuda" backend was built
_CUDA_OPS = {"depthwise_conv2d": "depthwise_conv2d_forward", "roi_align": "roi_align_forward",
             "roi_pool": "roi_pool_forward", "nms": "nms_padded", "volume_render": "volume_render_forward"}

# Recorded measurements: {family: {shape class: backend}} for families with two GPU kernels,
# written by `python -m cvkernels bench --record-dispatch` on a GPU (the faster backend per
# shape class, by median fwd+bwd time). Shape classes without a record use FAMILIES' order.
_TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dispatch_table.json")


def _load_table():
    try:
        with open(_TABLE_PATH) as f:
            return json.load(f).get("choices", {})
    except (OSError, ValueError):
        return {}


RECORDED = _load_table()


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _usable(backend, device_type, family):
    if backend == "torch":
        return True
    if backend == "triton":
        return triton_available() and (device_type == "cuda" or triton_interpreting())
    if backend == "cpp":
        return device_type == "cpu" and _extension.has_ops()
    if backend == "cuda":
        return device_type == "cuda" and family in _CUDA_OPS and _extension.has_cuda_ops(_CUDA_OPS[family])
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def choose(family, device_type, backend=None, supported=True, shape_class=None):
    """Returns the backend name that will run ``family`` for tensors on ``device_type``.

    ``supported=False`` means the inputs use an option no kernel handles: the torch path runs.
    ``shape_class``: on CUDA, the backend recorded as fastest for it (RECORDED) goes first.
    An explicit backend that cannot run here raises instead of silently running another one.
    """
    impls = FAMILIES[family]
    requested = backend or os.environ.get("CVK_BACKEND") or None
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
        if requested != "torch" and requested not in impls["gpu"] + impls["cpu"]:
            if backend is None:  # environment-wide preference: families without it use their default
                requested = None
            else:
                raise ValueError(f"{family} has no {requested!r} backend (has {impls} and 'torch')")
    if requested is not None:
        if not supported and requested != "torch":
            _debug("%s: inputs not supported by %s, using torch", family, requested)
            return "torch"
        if backend is not None and not _usable(requested, device_type, family):
            raise RuntimeError(
                f"{family}: backend {requested!r} cannot run on {device_type} here "
                f"(triton interpreter={triton_interpreting()}, compiled ops={_extension.has_ops()})")
        if _usable(requested, device_type, family):
            _debug("%s on %s: %s (requested)", family, device_type, requested)
            return requested
    if not supported:
        return "torch"
    order = impls["gpu"] if device_type == "cuda" else impls["cpu"]
    recorded = RECORDED.get(family, {}).get(shape_class) if device_type == "cuda" else None
    if recorded in order:
        order = (recorded,) + tuple(b for b in order if b != recorded)
    for name in order:
        if _usable(name, device_type, family):
            _debug("%s on %s: %s", family, device_type, name)
            return name
    _debug("%s on %s: torch", family, device_type)
    return "torch"


def describe():
    """{family: {device: backend}} as dispatch would choose now, for ``cvkernels info``."""
    out = {}
    for family in FAMILIES:
        out[family] = {"cpu": choose(family, "cpu"), "cuda": choose(family, "cuda")}
    return out
