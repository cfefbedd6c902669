"""RoI modules with torchvision's constructors and forward signatures (torchvision.ops.RoIAlign,
RoIPool, MultiScaleRoIAlign), running on cvkernels' RoI kernels."""
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..ops.nms import box_area
from ..ops.roi import roi_align, roi_align_multilevel, roi_pool


class RoIAlign(nn.Module):
    """torchvision.ops.RoIAlign (plus pool_mode='max', mmcv's)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False, *,
                 pool_mode: str = "avg"):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.pool_mode = pool_mode

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned,
                         pool_mode=self.pool_mode)

    def extra_repr(self):
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, pool_mode={self.pool_mode!r}")


class RoIPool(nn.Module):
    """torchvision.ops.RoIPool."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class LevelMapper:
    """FPN level of each box (Feature Pyramid Networks, eq. 1), torchvision's mapping:
    level = clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), k_min, k_max) - k_min."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4,
                 eps: float = 1e-6):
        self.k_min, self.k_max = k_min, k_max
        self.s0, self.lvl0, self.eps = canonical_scale, canonical_level, eps

    def __call__(self, boxlists: List[Tensor]) -> Tensor:
        s = torch.sqrt(torch.cat([box_area(b) for b in boxlists]))
        lvl = torch.floor(self.lvl0 + torch.log2(s / self.s0) + torch.tensor(self.eps, dtype=s.dtype))
        lvl = torch.clamp(lvl, min=self.k_min, max=self.k_max)
        return (lvl.to(torch.int64) - self.k_min).to(torch.int64)


def _infer_scale(feature: Tensor, original_size) -> float:
    scales = []
    for s1, s2 in zip(feature.shape[-2:], original_size):
        approx = float(s1) / float(s2)
        scales.append(2 ** float(torch.tensor(approx).log2().round()))
    return scales[0]


class MultiScaleRoIAlign(nn.Module):
    """torchvision.ops.MultiScaleRoIAlign: RoI Align over FPN levels, each box pooled from the level
    LevelMapper assigns it (canonical_scale 224, canonical_level 4), aligned=False as torchvision.
    Every level in one kernel launch (roi_align_multilevel), with no host synchronization."""

    def __init__(self, featmap_names: List[str], output_size: Union[int, Tuple[int], List[int]],
                 sampling_ratio: int, *, canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales: Optional[List[float]] = None
        self.map_levels: Optional[LevelMapper] = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def _setup_scales(self, features: List[Tensor], image_shapes: List[Tuple[int, int]]):
        if not image_shapes:
            raise ValueError("MultiScaleRoIAlign: image_shapes must not be empty")
        max_x = max(s[0] for s in image_shapes)
        max_y = max(s[1] for s in image_shapes)
        scales = [_infer_scale(f, (max_x, max_y)) for f in features]
        lvl_min = -math.log2(scales[0])
        lvl_max = -math.log2(scales[-1])
        self.scales = scales
        self.map_levels = LevelMapper(int(lvl_min), int(lvl_max), self.canonical_scale, self.canonical_level)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        feats = [v for k, v in x.items() if k in self.featmap_names]
        if not feats:
            raise ValueError(f"MultiScaleRoIAlign: none of {self.featmap_names} in the feature dict {list(x)}")
        if self.scales is None or self.map_levels is None:
            self._setup_scales(feats, image_shapes)
        concat = torch.cat(boxes, 0)
        ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], 0)
        rois = torch.cat([ids, concat], 1)
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        # the RoIs come from per-image box lists: their batch indices are valid by construction
        return roi_align_multilevel(feats, rois, levels, self.output_size, self.scales, self.sampling_ratio,
                                    check_indices=False)

    def extra_repr(self):
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")


__all__ = ["RoIAlign", "RoIPool", "MultiScaleRoIAlign", "LevelMapper"]
