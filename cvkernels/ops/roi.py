"""RoI Align / RoI Pool: registered C++/CUDA ops (cvkernels::roi_align_* / roi_pool_*), autograd,
fakes, and the functional API with torchvision's signatures.

    roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
              *, pool_mode="avg", backend=None)
    roi_pool(input, boxes, output_size, spatial_scale=1.0, *, backend=None)
    roi_align_multilevel(features, boxes, levels, output_size, spatial_scales, sampling_ratio=-1,
                         aligned=False, *, pool_mode="avg", backend=None)

boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L, 4] (one per image).
roi_align_multilevel pools RoI r from features[levels[r]] at spatial_scales[levels[r]] (FPN levels,
MultiScaleRoIAlign) in one kernel launch for every level: cvkernels::roi_align_multilevel_*.
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
_MAX_LEVELS = 8  # levels one roi_align_multilevel launch takes (csrc/cuda/roi_align.cu's table)
# whether this build has the multi-level kernels, per device type (read once: torch.compile traces
# the functions below, and the dispatcher queries are not traceable)
_MULTILEVEL_KERNELS = {"cpu": _extension.has_op("roi_align_multilevel_forward"),
                       "cuda": _extension.has_cuda_ops("roi_align_multilevel_forward")}


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

    if _extension.has_op("roi_align_multilevel_forward"):
        @torch.library.register_fake("cvkernels::roi_align_multilevel_forward")
        def _fake_align_multilevel_fwd(features, rois, levels, spatial_scales, pooled_height, pooled_width,
                                       sampling_ratio, aligned, mode):
            return _fake_align_fwd(features[0], rois, spatial_scales[0], pooled_height, pooled_width, sampling_ratio,
                                   aligned, mode)

        @torch.library.register_fake("cvkernels::roi_align_multilevel_backward")
        def _fake_align_multilevel_bwd(grad, rois, levels, argmax, spatial_scales, pooled_height, pooled_width,
                                       batch_size, channels, heights, widths, sampling_ratio, aligned, mode,
                                       channels_last, deterministic):
            return [_fake_align_bwd(grad, rois, argmax, scale, pooled_height, pooled_width, batch_size, channels, h, w,
                                    sampling_ratio, aligned, mode, cl, deterministic)
                    for scale, h, w, cl in zip(spatial_scales, heights, widths, channels_last)]

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


class _RoIAlignMultiLevelFunction(torch.autograd.Function):
    """RoI Align over feature levels; the features come last (any number of them)."""

    @staticmethod
    def forward(ctx, rois, levels, spatial_scales, PH, PW, sampling_ratio, aligned, mode, *features):
        out, argmax = torch.ops.cvkernels.roi_align_multilevel_forward(
            list(features), rois, levels, list(spatial_scales), PH, PW, sampling_ratio, aligned, mode)
        ctx.save_for_backward(rois, levels, argmax)
        N, C = features[0].shape[:2]
        ctx.args = (list(spatial_scales), PH, PW, N, C, [f.shape[2] for f in features], [f.shape[3] for f in features],
                    sampling_ratio, aligned, mode, [_is_channels_last(f) for f in features])
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        rois, levels, argmax = ctx.saved_tensors
        scales, PH, PW, N, C, heights, widths, sr, aligned, mode, cl = ctx.args
        grads = torch.ops.cvkernels.roi_align_multilevel_backward(
            grad, rois, levels, argmax, scales, PH, PW, N, C, heights, widths, sr, aligned, mode, cl,
            torch.are_deterministic_algorithms_enabled())
        return (None,) * 8 + tuple(grads)


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


def _check_levels(fn, levels, rois):
    if not isinstance(levels, Tensor):
        raise TypeError(f"{fn}: levels must be a Tensor[K] of level indices, got {type(levels).__name__}")
    if levels.shape != (rois.shape[0],):
        raise ValueError(f"{fn}: levels must have shape ({rois.shape[0]},) (one level per RoI), got "
                         f"{tuple(levels.shape)}")
    if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        raise TypeError(f"{fn}: levels must be an integer tensor, got {levels.dtype}")
    if levels.device != rois.device:
        raise ValueError(f"{fn}: levels is on {levels.device} but the boxes are on {rois.device}")
    return levels.to(torch.int64)


def _roi_align_per_level(features, rois, levels, output_size, spatial_scales, sampling_ratio, aligned, pool_mode,
                         backend):
    """One roi_align per level (torchvision's MultiScaleRoIAlign loop): the path where the multi-level
    kernel cannot run. Reads which RoIs each level has (a host sync on CUDA)."""
    first = features[0]
    result = first.new_zeros((rois.shape[0], first.shape[1]) + tuple(output_size))
    for level, (feat, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.where(levels == level)[0]
        out = roi_align(feat, rois[idx], output_size, scale, sampling_ratio, aligned, pool_mode=pool_mode,
                        backend=backend)
        result = result.index_put((idx,), out.to(result.dtype))
    return result


def roi_align_multilevel(features: List[Tensor], boxes: Union[Tensor, List[Tensor]], levels: Tensor,
                         output_size: Union[int, Tuple[int, int]], spatial_scales: List[float],
                         sampling_ratio: int = -1, aligned: bool = False, *, pool_mode: str = "avg",
                         backend=None, check_indices: bool = True) -> Tensor:
    """RoI Align of RoI r on features[levels[r]] at spatial_scales[levels[r]], every level in one launch.

    features: 1 to 8 Tensor[N, C, H_l, W_l] of one dtype (H, W and layout may differ); boxes as
    roi_align's (K RoIs); levels: integer Tensor[K]. Returns (K, C, PH, PW) in features[0]'s dtype,
    differentiable with respect to every level. Levels are not checked on CUDA (no host sync): a RoI
    whose level is outside [0, len(features)) gives zeros there (an error on the CPU). With
    check_indices=False the batch indices are not read on CUDA either (RoIs built from per-image box
    lists, as MultiScaleRoIAlign's, are valid by construction). More than 8 levels, levels of
    different dtypes, or no multi-level kernel here: one roi_align per level (the same values)."""
    fn = "roi_align_multilevel"
    if not isinstance(features, (list, tuple)) or not features:
        raise ValueError(f"{fn}: features must be a non-empty list of Tensor[N, C, H, W]")
    if not isinstance(spatial_scales, (list, tuple)) or len(spatial_scales) != len(features):
        raise ValueError(f"{fn}: spatial_scales must have one value per level ({len(features)}), got "
                         f"{spatial_scales!r}")
    scales = [_check_input(f"{fn}: features[{i}]", f, s) for i, (f, s) in enumerate(zip(features, spatial_scales))]
    PH, PW = _pair(fn, output_size)
    if pool_mode not in _MODES:
        raise ValueError(f"{fn}: pool_mode must be 'avg' or 'max', got {pool_mode!r}")
    first = features[0]
    rois = _to_rois(fn, first, boxes, check_indices)
    levels = _check_levels(fn, levels, rois)
    one_kernel = len(features) <= _MAX_LEVELS and first.dtype in _DTYPES and all(
        f.dtype == first.dtype for f in features)
    name = _dispatch.choose("roi_align", first.device.type, backend, supported=one_kernel)
    if name == "torch" or not _MULTILEVEL_KERNELS.get(first.device.type, False):
        return _roi_align_per_level(features, rois, levels, (PH, PW), scales, int(sampling_ratio), bool(aligned),
                                    pool_mode, backend)
    return _RoIAlignMultiLevelFunction.apply(rois, levels, tuple(scales), PH, PW, int(sampling_ratio), bool(aligned),
                                             _MODES[pool_mode], *features)


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


__all__ = ["roi_align", "roi_pool", "roi_align_multilevel", "patch_torchvision"]
