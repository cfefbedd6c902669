"""RoI Align / RoI Pool: registered C++/CUDA ops (cvkernels::roi_align_* / roi_pool_*), autograd,
fakes, and the functional API with torchvision's signatures.

    roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
              *, pool_mode="avg", backend=None)
    roi_pool(input, boxes, output_size, spatial_scale=1.0, *, backend=None)

boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L, 4] (one per image).
Backends: "cuda" (CUDA C++ kernels), "cpp" (C++ CPU kernels), "torch" (torchvision's ops when
torchvision is installed; max mode has no torch path). The backward is deterministic on the CPU;
on CUDA it is the atomic scatter unless torch.use_deterministic_algorithms(True) is on, in which
case a gather kernel without atomics runs. Double backward is refused.
"""
import contextlib
import logging
import sys
from typing import List, Tuple, Union

import torch
from torch import Tensor

from .. import _dispatch, _extension

_MODES = {"avg": 0, "max": 1}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------- fakes

if _extension.has_op("roi_align_forward"):
    @torch.library.register_fake("cvkernels::roi_align_forward")
    def _fake_align_fwd(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode):
        K, C = rois.shape[0], input.shape[1]
        out = input.new_empty((K, C, pooled_height, pooled_width))
        arg = input.new_empty((K, C, pooled_height, pooled_width) if mode == 1 else (0,), dtype=torch.int32)
        return out, arg

    @torch.library.register_fake("cvkernels::roi_align_backward")
    def _fake_align_bwd(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                        height, width, sampling_ratio, aligned, mode, channels_last, deterministic):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return grad.new_empty((batch_size, channels, height, width)).contiguous(memory_format=fmt)

    @torch.library.register_fake("cvkernels::roi_pool_forward")
    def _fake_pool_fwd(input, rois, spatial_scale, pooled_height, pooled_width):
        K, C = rois.shape[0], input.shape[1]
        return (input.new_empty((K, C, pooled_height, pooled_width)),
                input.new_empty((K, C, pooled_height, pooled_width), dtype=torch.int32))

    @torch.library.register_fake("cvkernels::roi_pool_backward")
    def _fake_pool_bwd(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                       height, width, channels_last, deterministic):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return grad.new_empty((batch_size, channels, height, width)).contiguous(memory_format=fmt)


# ----------------------------------------------------------------------------- autograd

def _is_channels_last(x):
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()


class _RoIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, spatial_scale, PH, PW, sampling_ratio, aligned, mode):
        out, argmax = torch.ops.cvkernels.roi_align_forward(input, rois, spatial_scale, PH, PW, sampling_ratio,
                                                            aligned, mode)
        ctx.save_for_backward(rois, argmax)
        ctx.args = (spatial_scale, PH, PW, tuple(input.shape), sampling_ratio, aligned, mode,
                    _is_channels_last(input))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        rois, argmax = ctx.saved_tensors
        scale, PH, PW, shape, sr, aligned, mode, cl = ctx.args
        gin = torch.ops.cvkernels.roi_align_backward(
            grad, rois, argmax, scale, PH, PW, shape[0], shape[1], shape[2], shape[3], sr, aligned, mode, cl,
            torch.are_deterministic_algorithms_enabled())
        return gin, None, None, None, None, None, None, None


class _RoIPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, spatial_scale, PH, PW):
        out, argmax = torch.ops.cvkernels.roi_pool_forward(input, rois, spatial_scale, PH, PW)
        ctx.save_for_backward(rois, argmax)
        ctx.args = (spatial_scale, PH, PW, tuple(input.shape), _is_channels_last(input))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        rois, argmax = ctx.saved_tensors
        scale, PH, PW, shape, cl = ctx.args
        gin = torch.ops.cvkernels.roi_pool_backward(grad, rois, argmax, scale, PH, PW, shape[0], shape[1],
                                                    shape[2], shape[3], cl,
                                                    torch.are_deterministic_algorithms_enabled())
        return gin, None, None, None, None


# ----------------------------------------------------------------------------- validation

def _pair(fn, output_size):
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        size = (output_size, output_size)
    elif isinstance(output_size, (list, tuple)) and len(output_size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in output_size):
        size = (int(output_size[0]), int(output_size[1]))
    elif isinstance(output_size, torch.Size) and len(output_size) == 2:
        size = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"{fn}: output_size must be an int or a pair of ints, got {output_size!r}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"{fn}: output_size must be positive, got {size}")
    return size


def _to_rois(fn, input, boxes, check_indices=True):
    """Tensor[K, 5] rois in input's dtype on input's device."""
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor):
                raise TypeError(f"{fn}: boxes[{i}] must be a Tensor[L, 4], got {type(b).__name__}")
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"{fn}: boxes[{i}] must have shape (L, 4), got {tuple(b.shape)}")
            if b.device != input.device:
                raise ValueError(f"{fn}: boxes[{i}] is on {b.device} but input is on {input.device}")
        if len(boxes) > input.shape[0]:
            raise ValueError(f"{fn}: got {len(boxes)} box tensors for an input of batch size {input.shape[0]}")
        if not boxes:
            return input.new_zeros((0, 5))
        cat = torch.cat([b.to(input.dtype) for b in boxes], 0)
        idx = torch.cat([torch.full((b.shape[0], 1), i, dtype=input.dtype, device=input.device)
                         for i, b in enumerate(boxes)], 0)
        return torch.cat([idx, cat], 1)
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{fn}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"{fn}: boxes must be a Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of "
                         f"Tensor[L, 4], got shape {tuple(boxes.shape)}")
    if boxes.device != input.device:
        raise ValueError(f"{fn}: boxes is on {boxes.device} but input is on {input.device}")
    if not boxes.is_floating_point():
        raise TypeError(f"{fn}: boxes must be floating point, got {boxes.dtype}")
    if check_indices and boxes.shape[0] and input.device.type != "cpu" and not torch.compiler.is_compiling():
        # the CPU kernels check in C++; on CUDA this reads two scalars (the kernels never read out of
        # bounds: a RoI with a bad index gives zeros)
        lo, hi = boxes[:, 0].min(), boxes[:, 0].max()
        if bool(lo < 0) or bool(hi >= input.shape[0]):
            raise ValueError(f"{fn}: boxes[:, 0] (batch index) must be in [0, {input.shape[0]}), got values in "
                             f"[{float(lo)}, {float(hi)}]")
    return boxes.to(input.dtype)


def _check_input(fn, input, spatial_scale):
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"{fn}: input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"{fn}: input must be floating point, got {input.dtype}")
    spatial_scale = float(spatial_scale)
    if not spatial_scale >= 0 or spatial_scale == float("inf"):
        raise ValueError(f"{fn}: spatial_scale must be finite and non-negative, got {spatial_scale}")
    return spatial_scale


def _backend(family, input, backend, supported=True):
    name = _dispatch.choose(family, input.device.type, backend, supported=supported)
    if name == "torch":
        try:
            import torchvision  # noqa: F401
        except ImportError:
            raise RuntimeError(f"{family}: no cvkernels kernel for {input.device.type} tensors of dtype "
                               f"{input.dtype} (compiled ops loaded: {_extension.has_ops()}: "
                               f"{_extension.load_error()}) and torchvision, the torch path, is not installed")
    return name


# ----------------------------------------------------------------------------- public API

def roi_align(input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: Union[int, Tuple[int, int]],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False, *,
              pool_mode: str = "avg", backend=None) -> Tensor:
    """torchvision.ops.roi_align (plus mmcv's pool_mode='max'). Returns (K, C, PH, PW)."""
    fn = "roi_align"
    spatial_scale = _check_input(fn, input, spatial_scale)
    PH, PW = _pair(fn, output_size)
    if pool_mode not in _MODES:
        raise ValueError(f"{fn}: pool_mode must be 'avg' or 'max', got {pool_mode!r}")
    rois = _to_rois(fn, input, boxes)
    name = _backend("roi_align", input, backend, supported=input.dtype in _DTYPES)
    if name == "torch":
        if pool_mode != "avg":
            raise RuntimeError(f"{fn}: pool_mode='max' needs the cvkernels kernels (not loaded here)")
        return original("roi_align")(input, rois, (PH, PW), spatial_scale, int(sampling_ratio), bool(aligned))
    return _RoIAlignFunction.apply(input, rois, spatial_scale, PH, PW, int(sampling_ratio), bool(aligned),
                                   _MODES[pool_mode])


def roi_pool(input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: Union[int, Tuple[int, int]],
             spatial_scale: float = 1.0, *, backend=None) -> Tensor:
    """torchvision.ops.roi_pool. Returns (K, C, PH, PW)."""
    fn = "roi_pool"
    spatial_scale = _check_input(fn, input, spatial_scale)
    PH, PW = _pair(fn, output_size)
    rois = _to_rois(fn, input, boxes)
    name = _backend("roi_pool", input, backend, supported=input.dtype in _DTYPES)
    if name == "torch":
        return original("roi_pool")(input, rois, (PH, PW), spatial_scale)
    return _RoIPoolFunction.apply(input, rois, spatial_scale, PH, PW)



# ----------------------------------------------------------------------------- torchvision patch

# torchvision's own functions while patch_torchvision() is active (the "torch" paths call these)
_ORIGINALS = {}

_PATCH_TARGETS = (
    # (module name, attribute, cvkernels function name)
    ("torchvision.ops", "roi_align", "roi_align"),
    ("torchvision.ops", "roi_pool", "roi_pool"),
    ("torchvision.ops", "nms", "nms"),
    ("torchvision.ops", "batched_nms", "batched_nms"),
    ("torchvision.ops.roi_align", "roi_align", "roi_align"),   # RoIAlign.forward's global
    ("torchvision.ops.roi_pool", "roi_pool", "roi_pool"),      # RoIPool.forward's global
    ("torchvision.ops.poolers", "roi_align", "roi_align"),     # MultiScaleRoIAlign's global
    ("torchvision.ops.boxes", "nms", "nms"),                   # batched_nms and detection models
    ("torchvision.ops.boxes", "batched_nms", "batched_nms"),   # box_ops.batched_nms in detection heads
)


def original(name):
    """torchvision's function `name` (roi_align, roi_pool, nms, batched_nms), unpatched."""
    if name in _ORIGINALS:
        return _ORIGINALS[name]
    import torchvision
    return getattr(torchvision.ops, name)


def _tv_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    return roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def _tv_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    return roi_pool(input, boxes, output_size, spatial_scale)


def _tv_nms(boxes, scores, iou_threshold):
    from .nms import nms
    return nms(boxes, scores, iou_threshold)


def _tv_batched_nms(boxes, scores, idxs, iou_threshold):
    from .nms import batched_nms
    return batched_nms(boxes, scores, idxs, iou_threshold)


_REPLACEMENTS = {"roi_align": _tv_roi_align, "roi_pool": _tv_roi_pool, "nms": _tv_nms,
                 "batched_nms": _tv_batched_nms}


@contextlib.contextmanager
def patch_torchvision():
    """Routes torchvision.ops.roi_align / roi_pool / nms / batched_nms (and the module globals that
    torchvision's RoIAlign, RoIPool, MultiScaleRoIAlign and detection models call) to cvkernels while
    active; restores torchvision's functions on exit. Without torchvision it does nothing and says so
    (a warning on the 'cvkernels' logger)."""
    try:
        import torchvision  # noqa: F401
        import torchvision.ops  # noqa: F401
    except ImportError:
        logging.getLogger("cvkernels").warning(
            "cvkernels.patch_torchvision(): torchvision is not installed, nothing to patch")
        yield False
        return
    if _ORIGINALS:  # nested: the outer context owns the patch
        yield True
        return
    saved = []
    for mod_name, attr, name in _PATCH_TARGETS:
        mod = sys.modules.get(mod_name)
        if mod is None or not hasattr(mod, attr) or not callable(getattr(mod, attr)):
            continue
        _ORIGINALS.setdefault(name, getattr(mod, attr))
        saved.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, _REPLACEMENTS[name])
    try:
        yield True
    finally:
        for mod, attr, fn in reversed(saved):
            setattr(mod, attr, fn)
        _ORIGINALS.clear()


__all__ = ["roi_align", "roi_pool", "patch_torchvision"]
