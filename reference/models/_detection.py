"""Shared pieces of the reference detectors: box utilities, anchors, box coder, matcher, sampler, losses,
and the detection-op modules (RoI Align / RoI Pool / multi-scale RoI Align / batched NMS) the models call.

Semantics are torchvision's (torchvision.models.detection._utils, anchor_utils, ops.boxes, ops.poolers,
ops.roi_align / roi_pool / batched_nms), rewritten in plain vectorized torch:

  RoIAlign(output_size, spatial_scale, sampling_ratio, aligned=False)   forward(input, rois) -> (K, C, PH, PW)
  RoIPool(output_size, spatial_scale)                                  forward(input, rois) -> (K, C, PH, PW)
  MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio, *, canonical_scale=224, canonical_level=4)
      forward(x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> (K, C, PH, PW)
  BatchedNMS(iou_threshold)   forward(boxes (K, 4), scores (K,), idxs (K,)) -> kept indices (int64), by
      decreasing score; boxes of different idxs never suppress each other

``rois`` are Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L, 4], one per image. The models
call RoI and NMS operators only through instances of these modules (attributes of the model), so that
``cvkernels.convert`` can route them; the class names and attribute names are torchvision's (and those of
cvkernels.nn.roi), which is what convert matches. RoI Align samples bilinearly by gathering the four corner
values of every sample point (no Python loop over RoIs); reference/ops/roi.py, the float64 per-sample oracle,
is far too slow to run inside a model (one Python iteration per RoI, bin and sample) and is used by the tests
to check these modules instead. Nothing here imports cvkernels, torchvision or timm.
"""
import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["box_area", "box_iou", "clip_boxes_to_image", "remove_small_boxes", "BoxCoder", "Matcher",
           "BalancedPositiveNegativeSampler", "AnchorGenerator", "sigmoid_focal_loss", "roi_align", "roi_pool",
           "pixel_bins", "to_rois", "RoIAlign", "RoIPool", "LevelMapper", "MultiScaleRoIAlign", "BatchedNMS",
           "random_targets", "images_and_sizes", "detector_input", "nms_detections", "prepare_rois", "NOT_REPRODUCIBLE"]


# ----------------------------------------------------------------------------- boxes

def box_area(boxes: Tensor) -> Tensor:
    """(N,) areas of (N, 4) (x1, y1, x2, y2) boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(N, M) IoU of (N, 4) and (M, 4) boxes (torchvision.ops.box_iou)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def clip_boxes_to_image(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """Boxes (..., 4) clipped to an image of size (height, width)."""
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the (N, 4) boxes whose sides are both at least min_size."""
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


class BoxCoder:
    """Faster R-CNN box parametrization (Girshick et al. 2014, Appendix C; torchvision's BoxCoder):
    dx = wx (x* - x_a) / w_a, dy likewise, dw = ww log(w* / w_a), dh likewise, centres at x1 + w / 2;
    decoding clamps dw, dh at log(1000 / 16)."""

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=math.log(1000.0 / 16)):
        self.weights, self.bbox_xform_clip = tuple(weights), bbox_xform_clip

    def encode(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """(N, 4) regression targets taking the proposals (N, 4) to the reference (target) boxes (N, 4)."""
        wx, wy, ww, wh = self.weights
        pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
        px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
        gw, gh = reference_boxes[:, 2] - reference_boxes[:, 0], reference_boxes[:, 3] - reference_boxes[:, 1]
        gx, gy = reference_boxes[:, 0] + 0.5 * gw, reference_boxes[:, 1] + 0.5 * gh
        return torch.stack((wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw),
                            wh * torch.log(gh / ph)), dim=1)

    def decode(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Boxes (N, 4) moved by rel_codes (N, 4k): (N, k, 4) (one box per class for k classes)."""
        boxes = boxes.to(rel_codes.dtype)
        wx, wy, ww, wh = self.weights
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
        dx, dy = rel_codes[:, 0::4] / wx, rel_codes[:, 1::4] / wy
        dw = (rel_codes[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (rel_codes[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        cx, cy = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
        half_w, half_h = 0.5 * torch.exp(dw) * widths[:, None], 0.5 * torch.exp(dh) * heights[:, None]
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)


class Matcher:
    """Assigns each prediction (column of the (G, P) quality matrix) its best ground truth (row) when the
    quality is >= high, -1 below ``low`` and -2 in between; with allow_low_quality_matches, each ground truth's
    best predictions (all ties) are matched to it whatever their quality (torchvision's Matcher)."""
    BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS = -1, -2

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        if low_threshold > high_threshold:
            raise ValueError("Matcher: low_threshold must not exceed high_threshold")
        self.high, self.low, self.allow_low = high_threshold, low_threshold, allow_low_quality_matches

    def __call__(self, quality: Tensor) -> Tensor:
        values, matches = quality.max(dim=0)
        all_matches = matches.clone()
        matches[values < self.low] = self.BELOW_LOW_THRESHOLD
        matches[(values >= self.low) & (values < self.high)] = self.BETWEEN_THRESHOLDS
        if self.allow_low:
            best_per_gt = quality.max(dim=1).values
            preds = torch.where(quality == best_per_gt[:, None])[1]
            matches[preds] = all_matches[preds]
        return matches


class BalancedPositiveNegativeSampler:
    """Samples batch_size_per_image labels per image (label >= 1 positive, 0 negative, -1 ignored), at most
    positive_fraction of them positive, uniformly by torch.randperm; returns (positive masks, negative masks)."""

    def __init__(self, batch_size_per_image, positive_fraction):
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def __call__(self, labels: List[Tensor]):
        pos_masks, neg_masks = [], []
        for lab in labels:
            positive, negative = torch.where(lab >= 1)[0], torch.where(lab == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos = positive[torch.randperm(positive.numel(), device=lab.device)[:num_pos]]
            neg = negative[torch.randperm(negative.numel(), device=lab.device)[:num_neg]]
            pos_mask, neg_mask = torch.zeros_like(lab, dtype=torch.bool), torch.zeros_like(lab, dtype=torch.bool)
            pos_mask[pos], neg_mask[neg] = True, True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks


class AnchorGenerator(nn.Module):
    """torchvision's AnchorGenerator: for feature level i, len(sizes[i]) x len(aspect_ratios[i]) anchors per
    location, zero-centred (w, h) = (size / sqrt(r), size * sqrt(r)) rounded, shifted by the level's stride
    (image size // feature size); ordered location-major (row, column), anchor-minor."""

    def __init__(self, sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)):
        super().__init__()
        if len(aspect_ratios) == 1 and len(sizes) > 1:
            aspect_ratios = tuple(aspect_ratios) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError("AnchorGenerator: sizes and aspect_ratios must have one entry per feature level")
        self.sizes, self.aspect_ratios = tuple(map(tuple, sizes)), tuple(map(tuple, aspect_ratios))

    def num_anchors_per_location(self) -> List[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    @staticmethod
    def cell_anchors(sizes, aspect_ratios, dtype=torch.float32, device=None) -> Tensor:
        scales = torch.as_tensor(sizes, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def forward(self, image_size: Tuple[int, int], feature_maps: List[Tensor]) -> Tensor:
        """(sum_i H_i W_i A_i, 4) anchors in image coordinates for an image of size (height, width)."""
        if len(feature_maps) != len(self.sizes):
            raise ValueError(f"AnchorGenerator: {len(feature_maps)} feature maps for {len(self.sizes)} levels")
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        anchors = []
        for fmap, sizes, ratios in zip(feature_maps, self.sizes, self.aspect_ratios):
            gh, gw = fmap.shape[-2:]
            sh, sw = image_size[0] // gh, image_size[1] // gw
            shift_y, shift_x = torch.meshgrid(torch.arange(gh, device=device, dtype=torch.int32).to(dtype) * sh,
                                              torch.arange(gw, device=device, dtype=torch.int32).to(dtype) * sw,
                                              indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            base = self.cell_anchors(sizes, ratios, dtype, device)
            anchors.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        return torch.cat(anchors)


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> Tensor:
    """Focal loss (Lin et al. 2017, eq. 5): -alpha_t (1 - p_t)^gamma log(p_t) on logits ``inputs`` with binary
    ``targets`` of the same shape; alpha_t = alpha for positives, 1 - alpha for negatives (alpha < 0: none)."""
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


# ----------------------------------------------------------------------------- RoI operators

def to_rois(rois, like: Tensor) -> Tensor:
    if isinstance(rois, (list, tuple)):
        if not rois:
            return like.new_zeros((0, 5))
        ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(rois)])
        return torch.cat([ids, torch.cat(list(rois))], 1).to(like.dtype)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be a Tensor[K, 5] or a list of Tensor[L, 4], got shape {tuple(rois.shape)}")
    return rois.to(like.dtype)


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def prepare_rois(input: Tensor, rois, output_size):
    """(rois (K, 5) in input's dtype, (PH, PW), the (0, C, PH, PW) output when there are no RoIs else None)."""
    rois, size = to_rois(rois, input), _pair(output_size)
    empty = input.new_zeros((0, input.shape[1]) + size) if rois.shape[0] == 0 else None
    return rois, size, empty


def _bilinear_axis(coord: Tensor, size: int):
    """For sample coordinates along one axis: (low index, high index, low weight, high weight, valid) as
    torchvision's bilinear_interpolate (samples outside [-1, size] are invalid; the rest clamp to the edge)."""
    valid = (coord >= -1.0) & (coord <= size)
    c = coord.clamp(min=0)
    low = c.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    c = torch.where(at_edge, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    return low, high, 1 - frac, frac, valid


def roi_align(input: Tensor, rois, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """torchvision.ops.roi_align: (K, C, PH, PW), the average over a grid of bilinear samples per bin (the grid
    is sampling_ratio^2, or ceil(roi size / bin count) per axis and RoI when sampling_ratio <= 0)."""
    rois, (PH, PW), empty = prepare_rois(input, rois, output_size)
    if empty is not None:
        return empty
    rois = rois.detach()  # as torchvision's op: no gradient with respect to the box coordinates
    N, C, H, W = input.shape
    K = rois.shape[0]
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / PH, roi_w / PW
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.long, device=input.device)
        grid_w = grid_h
    else:
        grid_h, grid_w = torch.ceil(roi_h / PH).long(), torch.ceil(roi_w / PW).long()
    GH, GW = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)

    def axis(start, bin_size, grid, bins, samples, size):
        # (K, bins, samples, 2) corner indices and weights (0 for padding samples beyond the RoI's own grid)
        i = torch.arange(samples, device=input.device)
        p = torch.arange(bins, device=input.device, dtype=input.dtype)
        g = grid.clamp(min=1).to(input.dtype)[:, None, None]
        coord = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
                 + (i.to(input.dtype)[None, None, :] + 0.5) * bin_size[:, None, None] / g)
        low, high, w_low, w_high, valid = _bilinear_axis(coord, size)
        used = (valid & (i[None, None, :] < grid[:, None, None])).to(input.dtype)
        return torch.stack((low, high), -1), torch.stack((w_low * used, w_high * used), -1)

    yi, yw = axis(y1, bin_h, grid_h, PH, GH, H)      # (K, PH, GH, 2)
    xi, xw = axis(x1, bin_w, grid_w, PW, GW, W)      # (K, PW, GW, 2)
    batch = rois[:, 0].long()
    # flat index into (N*H*W) and weight of every (roi, ph, pw, iy, ix, y corner, x corner)
    index = (batch.view(K, 1, 1, 1, 1, 1, 1) * (H * W) + yi.view(K, PH, 1, GH, 1, 2, 1) * W
             + xi.view(K, 1, PW, 1, GW, 1, 2))
    weight = yw.view(K, PH, 1, GH, 1, 2, 1) * xw.view(K, 1, PW, 1, GW, 1, 2)
    flat = input.permute(1, 0, 2, 3).reshape(C, N * H * W)
    values = flat[:, index.reshape(-1)].view(C, K, PH, PW, -1)
    out = (values * weight.reshape(1, K, PH, PW, -1)).sum(-1) / count.view(1, K, 1, 1)
    return out.permute(1, 0, 2, 3).contiguous()


def _round_half_away(v: Tensor) -> Tensor:
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def pixel_bins(rois: Tensor, spatial_scale: float, output_size: Tuple[int, int], size: Tuple[int, int], dtype):
    """Fast R-CNN's integer bins of each RoI (rounded, half away from zero, end inclusive): boolean memberships
    (K, PH, H) of the rows and (K, PW, W) of the columns, bin p spanning [floor(p L / P), ceil((p + 1) L / P))
    pixels from the RoI's start, clipped to the map."""
    x1, y1, x2, y2 = (_round_half_away(rois[:, i] * spatial_scale).long() for i in range(1, 5))

    def bins(start, end, count, length):
        p = torch.arange(count, device=rois.device, dtype=dtype)
        bin_size = (end - start + 1).clamp(min=1).to(dtype)[:, None] / count
        lo = (torch.floor(p * bin_size).long() + start[:, None]).clamp(0, length)
        hi = (torch.ceil((p + 1) * bin_size).long() + start[:, None]).clamp(0, length)
        pix = torch.arange(length, device=rois.device)
        return (pix >= lo[..., None]) & (pix < hi[..., None])

    return bins(y1, y2, output_size[0], size[0]), bins(x1, x2, output_size[1], size[1])


def roi_pool(input: Tensor, rois, output_size, spatial_scale: float = 1.0) -> Tensor:
    """torchvision.ops.roi_pool (Fast R-CNN RoI max pooling): (K, C, PH, PW); bins are integer pixel ranges of
    the rounded RoI, empty bins give 0."""
    rois, (PH, PW), empty = prepare_rois(input, rois, output_size)
    if empty is not None:
        return empty
    N, C, H, W = input.shape
    in_h, in_w = pixel_bins(rois, spatial_scale, (PH, PW), (H, W), input.dtype)
    feats = input[rois[:, 0].long()]                                        # (K, C, H, W)
    neg = torch.finfo(input.dtype).min
    # max over the columns of each bin, then over its rows (exact: a max of maxima)
    cols = feats[:, :, :, None, :].masked_fill(~in_w[:, None, None], neg).amax(-1)       # (K, C, H, PW)
    out = cols[:, :, None].masked_fill(~in_h[:, None, :, :, None], neg).amax(3)          # (K, C, PH, PW)
    empty = ~(in_h.any(-1)[:, :, None] & in_w.any(-1)[:, None, :])
    return out.masked_fill(empty[:, None], 0)


class RoIAlign(nn.Module):
    """torchvision.ops.RoIAlign: forward(input (N, C, H, W), rois) -> (K, C, PH, PW)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self):
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class RoIPool(nn.Module):
    """torchvision.ops.RoIPool: forward(input (N, C, H, W), rois) -> (K, C, PH, PW)."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class LevelMapper:
    """FPN level of each box (Lin et al. 2017, eq. 1): floor(canonical_level + log2(sqrt(area) / canonical_scale)
    + 1e-6) clamped to [k_min, k_max], minus k_min (torchvision's LevelMapper)."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4, eps=1e-6):
        self.k_min, self.k_max, self.s0, self.lvl0, self.eps = k_min, k_max, canonical_scale, canonical_level, eps

    def __call__(self, boxlists: List[Tensor]) -> Tensor:
        s = torch.sqrt(torch.cat([box_area(b) for b in boxlists]))
        lvl = torch.floor(self.lvl0 + torch.log2(s / self.s0) + torch.tensor(self.eps, dtype=s.dtype))
        return (lvl.clamp(min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min).to(torch.int64)


class MultiScaleRoIAlign(nn.Module):
    """torchvision.ops.MultiScaleRoIAlign: each box is pooled (RoI Align, aligned=False) from the FPN level the
    LevelMapper assigns it; the levels' scales are powers of two inferred from the feature and image sizes."""

    def __init__(self, featmap_names: List[str], output_size, sampling_ratio: int, *, canonical_scale: int = 224,
                 canonical_level: int = 4):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names, self.sampling_ratio, self.output_size = featmap_names, sampling_ratio, tuple(output_size)
        self.scales, self.map_levels = None, None
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def _setup_scales(self, features: List[Tensor], image_shapes: List[Tuple[int, int]]):
        max_x, max_y = max(s[0] for s in image_shapes), max(s[1] for s in image_shapes)
        self.scales = [2 ** round(math.log2(float(f.shape[-2]) / float(max_x))) for f in features]
        lvl_min, lvl_max = -math.log2(self.scales[0]), -math.log2(self.scales[-1])
        self.map_levels = LevelMapper(int(lvl_min), int(lvl_max), self.canonical_scale, self.canonical_level)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        feats = [v for k, v in x.items() if k in self.featmap_names]
        self._setup_scales(feats, image_shapes)
        rois = to_rois(boxes, feats[0])
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = feats[0].new_zeros((rois.shape[0], feats[0].shape[1]) + self.output_size)
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            result = result.index_put((idx,), roi_align(feat, rois[idx], self.output_size, scale,
                                                        self.sampling_ratio))
        return result

    def extra_repr(self):
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")


class BatchedNMS(nn.Module):
    """torchvision.ops.batched_nms as a module: greedy NMS (suppress a box whose IoU with a kept,
    higher-scoring box of the same idxs exceeds iou_threshold); returns the kept indices (int64) sorted by
    decreasing score (a stable sort: ties keep the lower index first)."""

    def __init__(self, iou_threshold: float):
        super().__init__()
        self.iou_threshold = iou_threshold

    def forward(self, boxes: Tensor, scores: Tensor, idxs: Tensor) -> Tensor:
        if boxes.shape[0] == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        order = torch.sort(scores, descending=True, stable=True).indices
        b, cls = boxes[order], idxs[order]
        suppresses = (box_iou(b, b) > self.iou_threshold) & (cls[:, None] == cls[None, :])
        suppresses = suppresses.triu(1)       # row i (higher score) may suppress column j > i
        # keep[j] = no kept i < j suppresses j: the fixed point, reached from all-kept after at most K rounds
        # (each round settles at least the next box in score order)
        keep = torch.ones(b.shape[0], dtype=torch.bool, device=boxes.device)
        while True:
            new = ~(suppresses & keep[:, None]).any(0)
            if torch.equal(new, keep):
                break
            keep = new
        return order[keep]

    def extra_repr(self):
        return f"iou_threshold={self.iou_threshold}"


# ----------------------------------------------------------------------------- inputs, outputs, figures

# the note of a documented figure (AP, FPS) that a reference model cannot be checked against
NOT_REPRODUCIBLE = "not reproducible by a reference model: needs trained weights (COCO / VOC) or a timed GPU run"

def images_and_sizes(images):
    """Detector input: a (B, 3, H, W) tensor or a list of equally sized (3, H, W) tensors -> (batch, sizes)."""
    if isinstance(images, (list, tuple)):
        images = torch.stack(list(images))
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W) or a list of (C, H, W), got shape {tuple(images.shape)}")
    return images, [tuple(images.shape[-2:])] * images.shape[0]


def detector_input(model: nn.Module, images, targets):
    """The prologue of a detector's forward: (images (B, C, H, W), [(H, W)] * B); targets required in training."""
    if model.training and targets is None:
        raise ValueError(f"{type(model).__name__}: targets are required in training mode")
    return images_and_sizes(images)


def nms_detections(nms: nn.Module, boxes: Tensor, scores: Tensor, labels: Tensor, limit: int) -> Dict[str, Tensor]:
    """{boxes, scores, labels} of the candidates the (per-label) ``nms`` module keeps, the ``limit`` best."""
    keep = nms(boxes, scores, labels)[:limit]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def random_targets(batch, image_size, num_classes, max_objects=3, masks=False, min_size=8, generator=None):
    """Random training targets as torchvision's detectors take them: a list of dicts with boxes (L, 4) float,
    labels (L,) int64 in [1, num_classes) and, with masks, masks (L, H, W) uint8 (filled ellipses in the boxes).
    Every image has 1..max_objects objects with sides of at least min_size pixels."""
    height, width = image_size
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, max_objects + 1, (1,), generator=generator))
        wh = torch.rand(n, 2, generator=generator) * torch.tensor([width - min_size, height - min_size]) / 2 + min_size
        xy = torch.rand(n, 2, generator=generator) * (torch.tensor([width, height]) - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        target = {"boxes": boxes, "labels": torch.randint(1, num_classes, (n,), generator=generator)}
        if masks:
            ys = torch.arange(height, dtype=torch.float32)[None, :, None] + 0.5
            xs = torch.arange(width, dtype=torch.float32)[None, None, :] + 0.5
            c, r = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
            inside = (((xs - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2
                      + ((ys - c[:, 1, None, None]) / r[:, 1, None, None]) ** 2) <= 1
            target["masks"] = inside.to(torch.uint8)
        targets.append(target)
    return targets
