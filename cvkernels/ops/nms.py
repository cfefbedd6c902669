"""Non-maximum suppression: the registered op cvkernels::nms_padded (C++ CPU, CUDA bitmask kernel with
the keep list reduced on the device) and torchvision's functional API.

    nms(boxes, scores, iou_threshold, *, score_threshold=None, max_output=None, backend=None)
    batched_nms(boxes, scores, idxs, iou_threshold, *, score_threshold=None, max_output=None, backend=None)
    nms_padded(boxes, scores, iou_threshold, idxs=None, *, score_threshold=None, max_output=None)
        -> (keep (N,) int64 padded with -1, num_kept 0-d int64): no host synchronization at all
    box_iou(boxes1, boxes2)

nms/batched_nms return a tensor whose length is the kept count, so they read that one 8-byte count
back from the device (the bitmask itself never leaves the device); nms_padded does not.
Results are torchvision's index for index: stable sort by descending score, torchvision's IoU
arithmetic (see csrc/cpu/nms.cpp). batched_nms uses torchvision's own strategy per size (offset
coordinates below torchvision's size limit, exact per-category IoU above it).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _dispatch, _extension

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

if _extension.has_op("nms_padded"):
    @torch.library.register_fake("cvkernels::nms_padded")
    def _fake_nms(boxes, scores, idxs, iou_threshold, score_threshold, max_output):
        return boxes.new_empty((boxes.shape[0],), dtype=torch.int64), boxes.new_empty((), dtype=torch.int64)


def _check(fn, boxes, scores, idxs=None):
    if not isinstance(boxes, Tensor) or not isinstance(scores, Tensor):
        raise TypeError(f"{fn}: boxes and scores must be Tensors")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{fn}: boxes must have shape (N, 4) (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{fn}: scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if scores.device != boxes.device:
        raise ValueError(f"{fn}: scores is on {scores.device} but boxes is on {boxes.device}")
    if not boxes.is_floating_point():
        raise TypeError(f"{fn}: boxes must be floating point, got {boxes.dtype}")
    if scores.dtype != boxes.dtype:
        raise TypeError(f"{fn}: scores must have boxes' dtype {boxes.dtype}, got {scores.dtype}")
    if idxs is not None:
        if not isinstance(idxs, Tensor) or idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
            raise ValueError(f"{fn}: idxs must be a Tensor of shape ({boxes.shape[0]},)")
        if idxs.device != boxes.device:
            raise ValueError(f"{fn}: idxs is on {idxs.device} but boxes is on {boxes.device}")
        if idxs.is_floating_point() or idxs.dtype == torch.bool:
            raise TypeError(f"{fn}: idxs must be an integer tensor, got {idxs.dtype}")


def _max_out(fn, max_output):
    if max_output is None:
        return -1
    if int(max_output) < 0:
        raise ValueError(f"{fn}: max_output must be >= 0, got {max_output}")
    return int(max_output)


def _torch_path(fn):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise RuntimeError(f"{fn}: the cvkernels kernels are not loaded ({_extension.load_error()}) and "
                           "torchvision, the torch path, is not installed") from None


def nms_padded(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Optional[Tensor] = None, *,
               score_threshold: Optional[float] = None, max_output: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Sync-free NMS: (keep (N,) int64 with the kept indices first and -1 after, num_kept 0-d int64)."""
    _check("nms_padded", boxes, scores, idxs)
    return torch.ops.cvkernels.nms_padded(boxes, scores, idxs, float(iou_threshold),
                                          None if score_threshold is None else float(score_threshold),
                                          _max_out("nms_padded", max_output))


def _run(fn, boxes, scores, idxs, iou_threshold, score_threshold, max_output, backend):
    name = _dispatch.choose("nms", boxes.device.type, backend, supported=boxes.dtype in _DTYPES)
    if name == "torch":
        _torch_path(fn)
        from .roi import original
        keep_mask = torch.ones_like(scores, dtype=torch.bool)
        if score_threshold is not None:
            keep_mask = scores > score_threshold
        sel = torch.where(keep_mask)[0]
        keep = sel[original("nms")(boxes[sel], scores[sel], iou_threshold) if idxs is None
                   else original("batched_nms")(boxes[sel], scores[sel], idxs[sel], iou_threshold)]
        return keep if max_output is None else keep[:max_output]
    keep, num = torch.ops.cvkernels.nms_padded(boxes, scores, idxs, float(iou_threshold),
                                               None if score_threshold is None else float(score_threshold),
                                               _max_out(fn, max_output))
    return keep[:int(num)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, score_threshold: Optional[float] = None,
        max_output: Optional[int] = None, backend=None) -> Tensor:
    """torchvision.ops.nms: int64 indices of the kept boxes in descending score order."""
    _check("nms", boxes, scores)
    return _run("nms", boxes, scores, None, iou_threshold, score_threshold, max_output, backend)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *,
                score_threshold: Optional[float] = None, max_output: Optional[int] = None,
                backend=None) -> Tensor:
    """torchvision.ops.batched_nms: NMS per category idxs; kept indices in descending score order."""
    _check("batched_nms", boxes, scores, idxs)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.numel() <= (4000 if boxes.device.type == "cpu" else 20000):
        # torchvision's coordinate trick (its choice at this size): same float arithmetic, same result
        max_coordinate = boxes.max()
        offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
        return _run("batched_nms", boxes + offsets[:, None], scores, None, iou_threshold, score_threshold,
                    max_output, backend)
    return _run("batched_nms", boxes, scores, idxs, iou_threshold, score_threshold, max_output, backend)


def _upcast(t):
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """torchvision.ops.box_iou: (N, M) IoU of (x1, y1, x2, y2) boxes (torchvision's arithmetic)."""
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"box_iou: {name} must have shape (N, 4), got "
                             f"{tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__}")
    if boxes1.device != boxes2.device:
        raise ValueError(f"box_iou: boxes2 is on {boxes2.device} but boxes1 is on {boxes1.device}")
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = _upcast(rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    return inter / union


__all__ = ["nms", "batched_nms", "nms_padded", "box_iou", "box_area"]
