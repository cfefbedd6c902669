"""Benchmark suite: RoI Align and NMS at Mask R-CNN shapes (issue 5 item 6).

Kernels (``Case.kernel``):
    roi_align     cvkernels.roi_align(x, rois, P, 1/stride, sampling_ratio=2, aligned=True)
    nms           cvkernels.nms(boxes, scores, 0.7)                 (the RPN's threshold)
    batched_nms   cvkernels.batched_nms(boxes, scores, idxs, 0.5)   80 classes (the box head's)

RoI Align shapes: one 800x1216 image, 256-channel FPN feature maps at stride 4/8/16/32
(p2 200x304, p3 100x152, p4 50x76, p5 25x38), 512 RoIs (training: sampled RoIs per image) and
1000 RoIs (inference: proposals per image), output 7x7 (box head) and 14x14 (mask head),
sampling_ratio 2, aligned=True, NCHW; fp32 / fp16 / bf16 (the RoIs in the input's dtype, as
torchvision's kernels want). Each case puts its RoIs on one level, with image-space sizes in that
level's FPN range (Mask R-CNN's level mapper: sqrt(area) < 112 -> p2, 112-224 -> p3, 224-448 ->
p4, >= 448 -> p5), aspect ratios 1:2 .. 2:1, clipped to the image; fixed seeds, so the byte floor
below is computed from the very boxes that run. Modes fwd, bwd, fwd+bwd.

RoI Align providers:
    cvkernels                 cvkernels.roi_align (automatic backend; on CUDA the atomic backward)
    cvkernels-deterministic   the same with torch.use_deterministic_algorithms(True) switched on
                              around the RoI Align backward node only (autograd node pre/post
                              hooks, setting torch's C++ flag directly), so cvkernels runs its
                              gather backward without atomics (and torch fills uninitialized
                              memory with NaN, as it does for any user in that mode). Its fwd
                              rows time the same forward.
    torchvision               torchvision.ops.roi_align (eager)
    torch.compile             torch.compile of the torchvision call (dynamic=False)
torchvision / torch.compile are recorded as failures ("not available: torchvision is not
installed") where torchvision is missing, and so is any dtype torchvision's kernel refuses.

RoI Align bytes (:func:`roi_align_bytes`; s bytes per element, K RoIs, C channels, P x P output):
    fwd     = C * s * |union over RoIs of the pixels their bilinear samples read|  +  K*C*P*P * s
    bwd     = K*C*P*P * s (grad_out read)  +  N*C*H*W * s (grad_input written, zeros included)
    fwd+bwd = fwd + bwd
The pixels a RoI reads (:func:`sampled_pixels`) follow torchvision's sampling exactly: the
sample coordinates of each axis (P bins x sampling_ratio samples), dropped outside [-1, size],
clamped at 0, and both bilinear neighbours (lo, lo + 1, or size - 1 at the far edge); a RoI's
pixels are rows x columns of its samples. Gaps between samples of large RoIs are not read, and
pixels shared by several RoIs count once: the floor is what DRAM must deliver at least. Metric
GB/s, fraction of the measured DRAM bandwidth.

NMS shapes: 1k / 5k / 20k / 50k boxes in an 800x1216 image, fp32, "realistic overlap"
(:func:`nms_boxes`): N/20 objects (sizes 16..400 px, aspect 1:2 .. 2:1), 80% of the boxes
jittered copies of an object's box (centre noise 10% of its size, log-size noise 0.1), 20%
uniform background boxes; scores uniform; classes: the object's class with probability 0.8,
else uniform over 80. Mode fwd (no autograd). Providers cvkernels, torchvision, torch.compile
(of the torchvision call, automatic dynamic shapes: NMS outputs are data-dependent; graph breaks
run eager; recorded as a failure where it does not compile). There is no byte
floor: the CSV has the time (ms); :func:`after_run` prints boxes/s per row and writes
``<out>/<date>-<device>-detection-metrics.csv`` (boxes/s and GB/s for every detection row).

CPU: the harness forces --quick there: one tiny RoI Align case (64 RoIs x 16 channels on a
20x32 map at stride 8, 7x7, fp32) and nms / batched_nms on 1000 boxes, fp32; no torch.compile
rows (its first compile alone takes longer than the rest of the run). It does not need
torchvision (its rows are recorded failures without it). ``--quick`` on a GPU: bf16 RoI Align
at four (RoIs, output, level) points and NMS at 5k and 50k boxes.

End to end (GPU only): ``maskrcnn_inference``, torchvision's Mask R-CNN on two 800x1216 images,
eager vs inside patch_torchvision() (:func:`maskrcnn_cases`), mode eval.

GPU run (one call, an H100/H200 with torchvision): 57 cases, 48 RoI Align (x 3 modes x 4
providers) and 8 NMS; estimated 6-8 minutes, mostly torch.compile's per-case compiles
(``--provider cvkernels,cvkernels-deterministic,torchvision`` skips them). ``--max-seconds``
stops starting new cases and keeps what was measured:
    python bench/bench_detection.py --max-seconds 480
"""
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .harness import Case, dtype_name

FAMILY = "detection"

# ----------------------------------------------------------------------------- shapes

IMAGE = (800, 1216)  # H, W of the (padded) input image
CHANNELS = 256
# level, stride, FPN range of sqrt(box area) in image pixels
LEVELS = (("p2", 4, 32.0, 112.0), ("p3", 8, 112.0, 224.0), ("p4", 16, 224.0, 448.0), ("p5", 32, 448.0, 800.0))
ROI_COUNTS = (512, 1000)
OUTPUT_SIZES = (7, 14)
SAMPLING_RATIO = 2
ALIGNED = True
ROI_MODES = ("fwd", "bwd", "fwd+bwd")
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GPU_QUICK_DTYPES = (torch.bfloat16,)
GPU_QUICK_ROI = ((512, 7, "p2"), (512, 7, "p4"), (1000, 14, "p2"), (1000, 14, "p3"))

NMS_SIZES = (1000, 5000, 20000, 50000)
GPU_QUICK_NMS = (5000, 50000)
NMS_CLASSES = 80
NMS_IOU = 0.7
BATCHED_NMS_IOU = 0.5
NMS_MODES = ("fwd",)
NMS_DTYPES = (torch.float32,)

# CPU: (image H, W), channels, level row, RoIs, output
CPU_ROI = ((160, 256), 16, ("p3", 8, 16.0, 96.0), 64, 7)
CPU_NMS_SIZES = (1000,)
CPU_DTYPES = (torch.float32,)

ROI_PROVIDERS = ("cvkernels", "cvkernels-deterministic", "torchvision", "torch.compile")
NMS_PROVIDERS = ("cvkernels", "torchvision", "torch.compile")

# (kernel, shape) -> number of boxes, for after_run's boxes/s
_NMS_BOXES: Dict[Tuple[str, str], int] = {}
# (kernel, shape, dtype name, layout) -> bytes per mode, for the metrics CSV
_FLOORS: Dict[Tuple[str, str, str, str], Dict[str, int]] = {}


class BackendNotAvailable(RuntimeError):
    """A baseline (torchvision) is not installed or cannot run this case."""


# ----------------------------------------------------------------------------- boxes

def roi_boxes(K: int, image: Tuple[int, int], size_range: Tuple[float, float], seed: int) -> torch.Tensor:
    """K boxes (x1, y1, x2, y2), float64, image coordinates: sqrt(area) log-uniform in size_range,
    aspect ratio (h / w) log-uniform in [1/2, 2], centres uniform, clipped to the image."""
    gen = torch.Generator().manual_seed(seed)
    H, W = image
    lo, hi = size_range
    side = torch.exp(torch.empty(K, dtype=torch.float64).uniform_(math.log(lo), math.log(hi), generator=gen))
    aspect = torch.exp(torch.empty(K, dtype=torch.float64).uniform_(-math.log(2), math.log(2), generator=gen))
    w, h = side / aspect.sqrt(), side * aspect.sqrt()
    cx = torch.rand(K, generator=gen, dtype=torch.float64) * W
    cy = torch.rand(K, generator=gen, dtype=torch.float64) * H
    x1, x2 = (cx - w / 2).clamp(0, W), (cx + w / 2).clamp(0, W)
    y1, y2 = (cy - h / 2).clamp(0, H), (cy + h / 2).clamp(0, H)
    return torch.stack([x1, y1, x2, y2], 1)


def nms_boxes(N: int, seed: int, image: Tuple[int, int] = IMAGE, classes: int = NMS_CLASSES):
    """(boxes (N, 4) float64, scores (N,) float64, idxs (N,) int64): detections clustered around
    N/20 objects (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    H, W = image
    M = max(1, N // 20)
    side = torch.exp(torch.empty(M, dtype=torch.float64).uniform_(math.log(16), math.log(400), generator=gen))
    aspect = torch.exp(torch.empty(M, dtype=torch.float64).uniform_(-math.log(2), math.log(2), generator=gen))
    ow, oh = side / aspect.sqrt(), side * aspect.sqrt()
    ocx = torch.rand(M, generator=gen, dtype=torch.float64) * W
    ocy = torch.rand(M, generator=gen, dtype=torch.float64) * H
    ocls = torch.randint(0, classes, (M,), generator=gen)
    pick = torch.randint(0, M, (N,), generator=gen)
    noise = torch.randn(N, 4, generator=gen, dtype=torch.float64)
    w = ow[pick] * torch.exp(0.1 * noise[:, 2])
    h = oh[pick] * torch.exp(0.1 * noise[:, 3])
    cx = ocx[pick] + 0.1 * ow[pick] * noise[:, 0]
    cy = ocy[pick] + 0.1 * oh[pick] * noise[:, 1]
    background = torch.rand(N, generator=gen) < 0.2
    bside = torch.exp(torch.empty(N, dtype=torch.float64).uniform_(math.log(16), math.log(400), generator=gen))
    bcx = torch.rand(N, generator=gen, dtype=torch.float64) * W
    bcy = torch.rand(N, generator=gen, dtype=torch.float64) * H
    w, h = torch.where(background, bside, w), torch.where(background, bside, h)
    cx, cy = torch.where(background, bcx, cx), torch.where(background, bcy, cy)
    boxes = torch.stack([(cx - w / 2).clamp(0, W), (cy - h / 2).clamp(0, H),
                         (cx + w / 2).clamp(0, W), (cy + h / 2).clamp(0, H)], 1)
    scores = torch.rand(N, generator=gen, dtype=torch.float64)
    own = torch.rand(N, generator=gen) < 0.8
    idxs = torch.where(own & ~background, ocls[pick], torch.randint(0, classes, (N,), generator=gen))
    return boxes, scores, idxs


# ----------------------------------------------------------------------------- byte floor

def _axis_members(start, length, bins: int, grid, size: int) -> np.ndarray:
    """(K, size) bool: the indices one axis of each RoI's bilinear samples read (torchvision's
    sampling: sample j of bins*grid at start + (j + 0.5) * length / (bins*grid), dropped outside
    [-1, size], clamped at 0; both neighbours lo and lo + 1, or size - 1 alone at the far edge).
    NumPy (single-threaded, no per-op overhead: building the case list stays fast on a busy CPU)."""
    start, length = np.asarray(start, dtype=np.float64), np.asarray(length, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.int64)
    K = start.shape[0]
    members = np.zeros((K, size + 1), dtype=bool)  # the last column collects dropped samples
    G = int(grid.max()) if K else 0
    if G <= 0 or bins <= 0:
        return members[:, :size]
    count = bins * grid
    j = np.arange(bins * G, dtype=np.float64)
    v = start[:, None] + (length / np.maximum(count, 1))[:, None] * (j[None, :] + 0.5)
    valid = (j[None, :] < count[:, None]) & (v >= -1.0) & (v <= size)
    lo = np.floor(np.maximum(v, 0.0)).astype(np.int64)
    edge = lo >= size - 1
    lo = np.where(edge, size - 1, lo)
    hi = np.where(edge, lo, lo + 1)
    k = np.broadcast_to(np.arange(K)[:, None], lo.shape)
    members[k, np.where(valid, lo, size)] = True
    members[k, np.where(valid, hi, size)] = True
    return members[:, :size]


def sampled_pixels(rois, feature_shape: Sequence[int], output_size, spatial_scale: float,
                   sampling_ratio: int, aligned: bool) -> int:
    """Number of distinct (image, y, x) feature pixels the RoIs' bilinear samples read: per RoI the
    rows x columns its samples touch, united over the RoIs of each image.

    rois: (K, 5) (batch index, x1, y1, x2, y2) in image coordinates; feature_shape: (N, C, H, W)."""
    N, _, H, W = (int(v) for v in feature_shape)
    PH, PW = (output_size, output_size) if isinstance(output_size, int) else output_size
    if isinstance(rois, torch.Tensor):
        rois = rois.detach().cpu().double().numpy()
    r = np.asarray(rois, dtype=np.float64).reshape(-1, 5)
    off = 0.5 if aligned else 0.0
    sw, sh = r[:, 1] * spatial_scale - off, r[:, 2] * spatial_scale - off
    rw, rh = r[:, 3] * spatial_scale - off - sw, r[:, 4] * spatial_scale - off - sh
    if not aligned:
        rw, rh = np.maximum(rw, 1.0), np.maximum(rh, 1.0)
    if sampling_ratio > 0:
        gh = gw = np.full(r.shape[0], int(sampling_ratio), dtype=np.int64)
    else:
        gh = np.maximum(np.ceil(rh / PH), 0).astype(np.int64)
        gw = np.maximum(np.ceil(rw / PW), 0).astype(np.int64)
    rows = _axis_members(sh, rh, PH, gh, H).astype(np.float32)
    cols = _axis_members(sw, rw, PW, gw, W).astype(np.float32)
    index = r[:, 0].astype(np.int64)
    total = 0
    for n in range(N):
        sel = index == n
        if sel.any():
            total += int(np.count_nonzero(rows[sel].T @ cols[sel]))
    return total


def roi_align_bytes(rois: torch.Tensor, feature_shape: Sequence[int], output_size, spatial_scale: float,
                    sampling_ratio: int, aligned: bool, element_size: int) -> Dict[str, int]:
    """Minimum DRAM bytes per mode (see the module docstring)."""
    N, C, H, W = (int(v) for v in feature_shape)
    PH, PW = (output_size, output_size) if isinstance(output_size, int) else output_size
    out = rois.shape[0] * C * PH * PW
    reads = C * sampled_pixels(rois, feature_shape, output_size, spatial_scale, sampling_ratio, aligned)
    fwd = (reads + out) * element_size
    bwd = (out + N * C * H * W) * element_size
    return {"fwd": fwd, "eval": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


# ----------------------------------------------------------------------------- providers

def _reset_dynamo():
    if "torch._dynamo" not in sys.modules:
        return
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


def _torchvision_ops():
    try:
        import torchvision.ops as ops
    except ImportError as exc:
        raise BackendNotAvailable(f"not available: torchvision is not installed ({exc})") from None
    return ops


def _set_deterministic(mode: bool, warn_only: bool):
    """torch.use_deterministic_algorithms without its Python side effects (the public function also
    imports torch._inductor to set its config on every call: seconds the first time, then
    overhead inside the timed backward); the flag the kernels read is the same C++ one."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


def deterministic_backward(out: torch.Tensor) -> torch.Tensor:
    """Hooks ``out``'s autograd node so that torch.use_deterministic_algorithms(True) is on while
    that node's backward runs (and restored right after it); returns ``out``."""
    node = out.grad_fn
    if node is None:
        return out
    saved = []

    def pre(grad_outputs):
        saved.append((torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled()))
        _set_deterministic(True, False)

    def post(grad_inputs, grad_outputs):
        enabled, warn_only = saved.pop() if saved else (False, False)
        _set_deterministic(enabled, warn_only)

    node.register_prehook(pre)
    node.register_hook(post)
    return out


def _roi_provider(kind: str, P: int, scale: float):
    def factory(inputs, mode):
        x, rois = inputs["x"], inputs["rois"]
        if kind in ("cvkernels", "cvkernels-deterministic"):
            import cvkernels
            if kind == "cvkernels":
                return lambda: cvkernels.roi_align(x, rois, P, scale, SAMPLING_RATIO, ALIGNED)
            return lambda: deterministic_backward(cvkernels.roi_align(x, rois, P, scale, SAMPLING_RATIO, ALIGNED))
        ops = _torchvision_ops()

        def tv(x, rois):
            return ops.roi_align(x, rois, (P, P), scale, SAMPLING_RATIO, ALIGNED)
        if kind == "torchvision":
            return lambda: tv(x, rois)
        if kind == "torch.compile":
            compiled = torch.compile(tv, dynamic=False)
            return lambda: compiled(x, rois)
        raise ValueError(kind)
    return factory


def _roi_setup(N, C, H, W, P, rois64, dtype, layout, device, seed):
    def setup():
        _reset_dynamo()
        gen = torch.Generator().manual_seed(seed)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(N, C, H, W, generator=gen).to(device=device, dtype=dtype)
        x = x.contiguous(memory_format=fmt).requires_grad_(True)
        grad = torch.randn(rois64.shape[0], C, P, P, generator=gen).to(device=device, dtype=dtype)
        return {"x": x, "rois": rois64.to(device=device, dtype=dtype), "grad_out": grad}
    return setup


def _nms_provider(kind: str, batched: bool, iou: float):
    def factory(inputs, mode):
        boxes, scores, idxs = inputs["boxes"], inputs["scores"], inputs["idxs"]
        if kind == "cvkernels":
            import cvkernels
            if batched:
                return lambda: cvkernels.batched_nms(boxes, scores, idxs, iou)
            return lambda: cvkernels.nms(boxes, scores, iou)
        ops = _torchvision_ops()
        if batched:
            def tv(boxes, scores, idxs):
                return ops.batched_nms(boxes, scores, idxs, iou)
        else:
            def tv(boxes, scores, idxs):
                return ops.nms(boxes, scores, iou)
        if kind == "torchvision":
            return lambda: tv(boxes, scores, idxs)
        if kind == "torch.compile":
            # dynamic=None (automatic): the kept counts and per-class subsets are data-dependent
            # shapes; static shapes would recompile per class up to the recompile limit
            compiled = torch.compile(tv)
            return lambda: compiled(boxes, scores, idxs)
        raise ValueError(kind)
    return factory


def _nms_setup(boxes64, scores64, idxs, dtype, device):
    def setup():
        _reset_dynamo()
        return {"boxes": boxes64.to(device=device, dtype=dtype), "scores": scores64.to(device=device, dtype=dtype),
                "idxs": idxs.to(device)}
    return setup


# ----------------------------------------------------------------------------- cases

def _roi_rows(device, quick):
    """(image, C, level row, K, P) per RoI Align shape."""
    if device.type != "cuda":
        return [CPU_ROI]
    rows = []
    for K in ROI_COUNTS:
        for P in OUTPUT_SIZES:
            for level in LEVELS:
                if quick and (K, P, level[0]) not in GPU_QUICK_ROI:
                    continue
                rows.append((IMAGE, CHANNELS, level, K, P))
    return rows


def roi_align_cases(device, quick: bool = False, dtypes: Optional[Sequence[torch.dtype]] = None,
                    layouts: Sequence[str] = ("NCHW",)) -> List[Case]:
    device = torch.device(device)
    cpu = device.type != "cuda"
    default = CPU_DTYPES if cpu else (GPU_QUICK_DTYPES if quick else GPU_DTYPES)
    providers = [p for p in ROI_PROVIDERS if not (cpu and p == "torch.compile")]
    out = []
    geometry = {}
    for dtype in (dtypes or default):
        esize = torch.empty((), dtype=dtype).element_size()
        for image, C, (level, stride, lo, hi), K, P in _roi_rows(device, quick):
            H, W = image[0] // stride, image[1] // stride
            seed = 1000 * stride + K
            key = (image, level, K)
            if key not in geometry:
                geometry[key] = roi_boxes(K, image, (lo, hi), seed)
            boxes = geometry[key]
            rois64 = torch.cat([torch.zeros(K, 1, dtype=torch.float64), boxes], 1)
            rois64 = rois64.to(dtype).double()  # the boxes the kernels see: rounded to the input's dtype
            shape = f"{level}-1x{C}x{H}x{W}-k{K}-{P}x{P}"
            nbytes = roi_align_bytes(rois64, (1, C, H, W), P, 1.0 / stride, SAMPLING_RATIO, ALIGNED, esize)
            nbytes = {m: nbytes[m] for m in ROI_MODES}
            for layout in layouts:  # the floor does not depend on the layout
                _FLOORS[("roi_align", shape, dtype_name(dtype), layout)] = nbytes
                out.append(Case(kernel="roi_align", family=FAMILY, shape=shape, dtype=dtype, layout=layout,
                                setup=_roi_setup(1, C, H, W, P, rois64, dtype, layout, device, seed),
                                providers={p: _roi_provider(p, P, 1.0 / stride) for p in providers},
                                bytes=nbytes, modes=ROI_MODES))
    return out


def nms_cases(device, quick: bool = False, dtypes: Optional[Sequence[torch.dtype]] = None) -> List[Case]:
    device = torch.device(device)
    cpu = device.type != "cuda"
    sizes = CPU_NMS_SIZES if cpu else (GPU_QUICK_NMS if quick else NMS_SIZES)
    providers = [p for p in NMS_PROVIDERS if not (cpu and p == "torch.compile")]
    # fp32 by default; --dtype picks the NMS dtypes too (fp64 is not a benchmark dtype here)
    chosen = [d for d in (dtypes or NMS_DTYPES) if d in GPU_DTYPES] or list(NMS_DTYPES)
    out = []
    for dtype in chosen:
        for N in sizes:
            boxes, scores, idxs = nms_boxes(N, seed=N)
            for kernel, batched, iou in (("nms", False, NMS_IOU), ("batched_nms", True, BATCHED_NMS_IOU)):
                shape = f"n{N}-c{NMS_CLASSES}-iou{iou:g}" if batched else f"n{N}-iou{iou:g}"
                _NMS_BOXES[(kernel, shape)] = N
                out.append(Case(kernel=kernel, family=FAMILY, shape=shape, dtype=dtype, layout="xyxy",
                                setup=_nms_setup(boxes, scores, idxs, dtype, device),
                                providers={p: _nms_provider(p, batched, iou) for p in providers},
                                modes=NMS_MODES))
    return out


# ----------------------------------------------------------------------------- end to end

MASKRCNN_IMAGES = (2, 3, 800, 1216)


def _maskrcnn_setup(device):
    def setup():
        import torchvision  # ImportError: the rows are recorded failures
        torch.manual_seed(0)
        model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                   box_score_thresh=0.0)
        model = model.eval().to(device)
        images = list(torch.rand(MASKRCNN_IMAGES, device=device))
        return {"model": model, "images": images}
    return setup


def _maskrcnn_provider(patched):
    def factory(inputs, mode):
        from ..ops.roi import patch_torchvision
        model, images = inputs["model"], inputs["images"]

        def run():
            with torch.no_grad():
                if not patched:
                    return model(images)[0]["boxes"]
                with patch_torchvision():
                    return model(images)[0]["boxes"]
        return run
    return factory


def maskrcnn_cases(device) -> List[Case]:
    """torchvision's Mask R-CNN (ResNet-50 FPN, random weights, score threshold 0 so the box and mask
    heads see their full 100 detections), inference on two 800x1216 images: eager torchvision vs the
    same model inside cvkernels.patch_torchvision() (RoI Align, MultiScaleRoIAlign, NMS on cvkernels)."""
    return [Case(kernel="maskrcnn_inference", family=FAMILY, shape="x".join(map(str, MASKRCNN_IMAGES)),
                 dtype=torch.float32, layout="NCHW", setup=_maskrcnn_setup(device),
                 providers={"cvkernels": _maskrcnn_provider(True), "torchvision": _maskrcnn_provider(False)},
                 modes=("eval",))]


def cases(device, quick: bool = False, dtypes: Optional[Sequence[torch.dtype]] = None,
          kernels: Optional[Sequence[str]] = None) -> List[Case]:
    """RoI Align and NMS cases and (on a GPU) end-to-end Mask R-CNN inference; ``kernels`` keeps a
    subset of roi_align, nms, batched_nms, maskrcnn_inference."""
    out = [] if kernels and "roi_align" not in kernels else roi_align_cases(device, quick, dtypes)
    if not kernels or {"nms", "batched_nms"} & set(kernels):
        out += nms_cases(device, quick, dtypes)
    if torch.device(device).type == "cuda" and (not kernels or "maskrcnn_inference" in kernels):
        out += maskrcnn_cases(device)
    if kernels:
        out = [c for c in out if c.kernel in kernels]
    return out


def describe(device) -> str:
    import importlib.util
    device = torch.device(device)
    try:
        from .. import _dispatch
        paths = ", ".join(f"{fam}: {_dispatch.choose(fam, device.type)}" for fam in ("roi_align", "nms"))
    except Exception as exc:  # noqa: BLE001
        paths = f"cvkernels not importable ({type(exc).__name__}: {exc})"
    try:
        has_tv = importlib.util.find_spec("torchvision") is not None
    except (ImportError, ValueError):
        has_tv = False
    text = (f"cvkernels detection paths on {device.type}: {paths}; baselines: "
            + ("torchvision" if has_tv else "torchvision NOT installed (its rows are recorded failures)"))
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        text += "; TRITON_INTERPRET=1 is set"
    return text


# ----------------------------------------------------------------------------- derived metrics

def metrics_rows(results) -> List[Dict]:
    """Every detection row with boxes/s (NMS) and GB/s (RoI Align)."""
    rows = []
    for r in results:
        if r.family != FAMILY:
            continue
        secs = r.p50_ms * 1e-3
        boxes = _NMS_BOXES.get((r.kernel, r.shape))
        nbytes = _FLOORS.get((r.kernel, r.shape, r.dtype, r.layout), {}).get(r.mode)
        rows.append({"kernel": r.kernel, "provider": r.provider, "mode": r.mode, "shape": r.shape,
                     "dtype": r.dtype, "layout": r.layout, "p50_ms": r.p50_ms,
                     "boxes_per_s": boxes / secs if boxes and secs > 0 else float("nan"),
                     "GB/s": nbytes / secs / 1e9 if nbytes and secs > 0 else float("nan"),
                     "ratio_vs_cvkernels": r.ratio_vs_cvkernels})
    return rows


def after_run(report, device, stream):
    """Prints NMS throughput (Mboxes/s) and writes the detection metrics CSV. Never raises."""
    try:
        from . import harness
        rows = metrics_rows(report.results)
        if not rows:
            return
        nms_rows = [r for r in rows if not math.isnan(r["boxes_per_s"])]
        if nms_rows:
            lines = ["", "detection: NMS throughput (boxes / p50 time)"]
            for r in nms_rows:
                lines.append(f"  {r['kernel']:<12} {r['shape']:<22} {r['provider']:<14} {r['p50_ms']:9.4g} ms "
                             f"{r['boxes_per_s'] / 1e6:9.4g} Mboxes/s")
            print("\n".join(lines), file=stream, flush=True)
        if report.csv_path is not None:
            path = harness.write_metrics_csv(rows, report.csv_path, FAMILY)
            print(f"detection: wrote {path}", file=stream, flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"detection: derived metrics failed: {type(exc).__name__}: {exc}", file=stream, flush=True)
