"""Reference RoI Align / RoI Pool: torchvision's semantics written out per sample point, in float64.

Slow and plain on purpose: one Python loop iteration per (RoI, bin, sample), every channel at once.
Differentiable through autograd (the gradient oracle). Boxes: Tensor[K, 5] (batch index, x1, y1,
x2, y2) or a list of Tensor[L, 4], one per image.
"""
import math

import torch


def _rois(boxes):
    if isinstance(boxes, (list, tuple)):
        parts = [torch.cat([torch.full((b.shape[0], 1), float(i), dtype=torch.float64), b.double().cpu()], 1)
                 for i, b in enumerate(boxes)]
        return torch.cat(parts, 0) if parts else torch.zeros(0, 5, dtype=torch.float64)
    return boxes.detach().double().cpu()


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _axis(v, size):
    """(low, high, w_low, w_high) of a bilinear coordinate, or None outside [-1, size]."""
    if v < -1.0 or v > size:
        return None
    v = max(v, 0.0)
    lo = int(v)
    if lo >= size - 1:
        lo = hi = size - 1
        v = float(lo)
    else:
        hi = lo + 1
    l = v - lo
    return lo, hi, 1.0 - l, l


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, pool_mode="avg"):
    """(K, C, PH, PW) float64. pool_mode 'max' is mmcv's (max over samples; out-of-image samples are 0;
    a bin without samples is 0)."""
    x = input.double()
    rois = _rois(boxes)
    PH, PW = _pair(output_size)
    K, C = rois.shape[0], x.shape[1]
    H, W = x.shape[2], x.shape[3]
    outs = []
    for r in range(K):
        n = int(rois[r, 0])
        off = 0.5 if aligned else 0.0
        sw, sh, ew, eh = (float(v) * spatial_scale - off for v in rois[r, 1:])
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / PH, rw / PW
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / PH))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / PW))
        count = max(gh * gw, 1)
        bins = []
        for ph in range(PH):
            for pw in range(PW):
                vals = []
                for iy in range(max(gh, 0)):
                    y = sh + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(max(gw, 0)):
                        xx = sw + pw * bw + (ix + 0.5) * bw / gw
                        ty, tx = _axis(y, H), _axis(xx, W)
                        if ty is None or tx is None:
                            vals.append(x.new_zeros(C))
                            continue
                        yl, yh, wyl, wyh = ty
                        xl, xh, wxl, wxh = tx
                        vals.append(wyl * wxl * x[n, :, yl, xl] + wyl * wxh * x[n, :, yl, xh]
                                    + wyh * wxl * x[n, :, yh, xl] + wyh * wxh * x[n, :, yh, xh])
                if not vals:
                    bins.append(x.new_zeros(C))
                elif pool_mode == "avg":
                    bins.append(torch.stack(vals).sum(0) / count)
                else:
                    bins.append(torch.stack(vals).max(0).values)
        outs.append(torch.stack(bins, 1).view(C, PH, PW))
    if not outs:
        return x.new_zeros(0, C, PH, PW)
    return torch.stack(outs)


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Fast R-CNN RoI max pooling (torchvision.ops.roi_pool), (K, C, PH, PW) float64."""
    x = input.double()
    rois = _rois(boxes)
    PH, PW = _pair(output_size)
    K, C, H, W = rois.shape[0], x.shape[1], x.shape[2], x.shape[3]
    outs = []

    def rnd(v):  # C round(): half away from zero
        return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

    for r in range(K):
        n = int(rois[r, 0])
        sw, sh, ew, eh = (rnd(float(v) * spatial_scale) for v in rois[r, 1:])
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bins = []
        for ph in range(PH):
            hs = min(max(int(math.floor(ph * rh / PH)) + sh, 0), H)
            he = min(max(int(math.ceil((ph + 1) * rh / PH)) + sh, 0), H)
            for pw in range(PW):
                ws = min(max(int(math.floor(pw * rw / PW)) + sw, 0), W)
                we = min(max(int(math.ceil((pw + 1) * rw / PW)) + sw, 0), W)
                if he <= hs or we <= ws:
                    bins.append(x.new_zeros(C))
                else:
                    bins.append(x[n, :, hs:he, ws:we].reshape(C, -1).max(1).values)
        outs.append(torch.stack(bins, 1).view(C, PH, PW))
    if not outs:
        return x.new_zeros(0, C, PH, PW)
    return torch.stack(outs)
