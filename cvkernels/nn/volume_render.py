"""VolumeRenderer: NeRF's compositing of (rays x samples) densities and colours on cvkernels'
volume-rendering kernel; the module cvkernels.convert puts in place of a reference NeRF's."""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..ops.volume_render import volume_render


class VolumeRenderer(nn.Module):
    """Renders dense rays: forward(sigmas (R, S), rgbs (R, S, F), t_starts (R, S), t_ends (R, S))
    -> (color (R, F), opacity (R,), depth (R,), weights (R, S)).

    background: None (black) or F floats composited with weight 1 - opacity (a plain attribute,
    not a buffer); transmittance_threshold: early ray termination (0: none; see
    cvkernels.volume_render).
    """

    def __init__(self, background: Optional[Sequence[float]] = None, transmittance_threshold: float = 0.0, *,
                 backend=None):
        super().__init__()
        self.background = None if background is None else tuple(float(v) for v in background)
        self.transmittance_threshold = float(transmittance_threshold)
        self.backend = backend

    def forward(self, sigmas: Tensor, rgbs: Tensor, t_starts: Tensor, t_ends: Tensor
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        bg = None if self.background is None else torch.tensor(self.background, dtype=rgbs.dtype, device=rgbs.device)
        out = volume_render(sigmas, rgbs, t_starts, t_ends, background=bg,
                            transmittance_threshold=self.transmittance_threshold, backend=self.backend)
        return out.color, out.opacity, out.depth, out.weights

    def extra_repr(self):
        return f"background={self.background}, transmittance_threshold={self.transmittance_threshold}"
