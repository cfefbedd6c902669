"""Drop-in nn.Modules, state_dict-compatible with the torch modules they replace."""
from .batch_norm import BatchNormReLU, BatchNormReLU1d, BatchNormReLU2d, SyncBatchNormReLU
from .conv import Conv2d, ConvTranspose2d
from .attention import MultiheadAttention

__all__ = ["BatchNormReLU", "BatchNormReLU1d", "BatchNormReLU2d", "SyncBatchNormReLU", "Conv2d", "ConvTranspose2d",
           "MultiheadAttention"]
