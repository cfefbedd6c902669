"""BatchNorm + (residual add) + ReLU modules with nn.BatchNorm's parameters and buffers."""
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops.batch_norm import batch_norm_relu, sync_batch_norm_relu


class BatchNormReLU(_BatchNorm):
    """``relu(BatchNorm(x) + residual)`` for (N, C) or (N, C, *spatial) input.

    Same constructor, parameters (weight, bias) and buffers (running_mean, running_var,
    num_batches_tracked) as ``nn.BatchNorm2d``, so its state_dict loads unchanged;
    ``momentum=None`` gives the cumulative average, ``track_running_stats=False`` always
    uses batch statistics, ``affine=False`` drops weight and bias.

    forward(input, residual=None): input (N, C, ...) → output of the same shape and layout.
    """

    def __init__(self, num_features, eps=1e-5, momentum: Optional[float] = 0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, backend: Optional[str] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.backend = backend

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"{type(self).__name__}: expected (N, C) or (N, C, *spatial) input, "
                             f"got {input.dim()}-D input of shape {tuple(input.shape)}")

    def _momentum_and_mode(self):
        """What nn.BatchNorm's forward computes before calling F.batch_norm."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        return factor, use_batch_stats, keep_running

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        self._check_input_dim(input)
        factor, use_batch_stats, keep_running = self._momentum_and_mode()
        return batch_norm_relu(
            input, self.running_mean if keep_running else None, self.running_var if keep_running else None,
            self.weight, self.bias, use_batch_stats, factor, self.eps, residual=residual, backend=self.backend)

    @classmethod
    def from_batch_norm(cls, bn: _BatchNorm, backend: Optional[str] = None):
        """A module that shares bn's parameters and buffers (no copy), in bn's training mode."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_features, new.eps, new.momentum = bn.num_features, bn.eps, bn.momentum
        new.affine, new.track_running_stats = bn.affine, bn.track_running_stats
        new.backend = backend
        new.weight, new.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            new.register_buffer(name, getattr(bn, name))
        new.train(bn.training)
        new._source_class = type(bn)
        return new

    def to_batch_norm(self):
        """The plain BatchNorm module this one was made from, sharing parameters and buffers."""
        cls = getattr(self, "_source_class", None) or nn.BatchNorm2d
        bn = cls.__new__(cls)
        nn.Module.__init__(bn)
        bn.num_features, bn.eps, bn.momentum = self.num_features, self.eps, self.momentum
        bn.affine, bn.track_running_stats = self.affine, self.track_running_stats
        bn.weight, bn.bias = self.weight, self.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            bn.register_buffer(name, getattr(self, name))
        if isinstance(bn, nn.SyncBatchNorm):
            bn.process_group = getattr(self, "process_group", None)
        bn.train(self.training)
        return bn


class BatchNormReLU1d(BatchNormReLU):
    """BatchNormReLU for (N, C) or (N, C, L) input (the shapes nn.BatchNorm1d takes)."""

    def _check_input_dim(self, input):
        if input.dim() not in (2, 3):
            raise ValueError(f"BatchNormReLU1d: expected 2-D or 3-D input, got {input.dim()}-D input")


class BatchNormReLU2d(BatchNormReLU):
    """BatchNormReLU for (N, C, H, W) input, state_dict-compatible with ``nn.BatchNorm2d``."""

    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise ValueError(f"BatchNormReLU2d: expected 4-D input (N, C, H, W), got {input.dim()}-D input "
                             f"of shape {tuple(input.shape)}")


class SyncBatchNormReLU(BatchNormReLU):
    """BatchNormReLU whose training-mode statistics span every rank of ``process_group``.

    Drop-in for ``nn.SyncBatchNorm`` followed by ReLU (same parameters and buffers). Outside
    training, or when torch.distributed is not initialized or has one rank, it is a BatchNormReLU.
    """

    def __init__(self, num_features, eps=1e-5, momentum: Optional[float] = 0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None,
                 backend: Optional[str] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, backend)
        self.process_group = process_group

    @classmethod
    def from_batch_norm(cls, bn, backend=None):
        new = super().from_batch_norm(bn, backend)
        new.process_group = getattr(bn, "process_group", None)
        return new

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        import torch.distributed as dist
        self._check_input_dim(input)
        synced = (self.training and dist.is_available() and dist.is_initialized()
                  and dist.get_world_size(self.process_group) > 1)
        if not synced:
            return super().forward(input, residual)
        factor, _, keep_running = self._momentum_and_mode()
        return sync_batch_norm_relu(
            input, self.running_mean if keep_running else None, self.running_var if keep_running else None,
            self.weight, self.bias, factor, self.eps, residual=residual, process_group=self.process_group,
            backend=self.backend)
