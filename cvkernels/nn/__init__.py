"""Drop-in nn.Modules, state_dict-compatible with the torch modules they replace."""
from .batch_norm import BatchNormReLU, BatchNormReLU1d, BatchNormReLU2d, SyncBatchNormReLU
from .conv import Conv2d, ConvTranspose2d
from .attention import MultiheadAttention
from .roi import MultiScaleRoIAlign, RoIAlign, RoIPool
from .volume_render import VolumeRenderer
from .window_attention import WindowAttention, fuse_swin_block, fused_swin_attn, unfuse_swin_block

__all__ = ["BatchNormReLU", "BatchNormReLU1d", "BatchNormReLU2d", "SyncBatchNormReLU", "Conv2d", "ConvTranspose2d",
           "MultiheadAttention", "WindowAttention", "fuse_swin_block", "fused_swin_attn", "unfuse_swin_block",
           "RoIAlign", "RoIPool", "MultiScaleRoIAlign", "VolumeRenderer"]
