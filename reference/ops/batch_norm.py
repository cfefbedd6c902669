"""Float64 reference of BatchNorm, BatchNorm+ReLU and BatchNorm+add+ReLU.

Written out from the definition (Ioffe & Szegedy 2015, "Batch Normalization", Alg. 1) and
the running-statistics convention of ``torch.nn.BatchNorm2d``; it never calls
``F.batch_norm`` or ``nn.BatchNorm*``. Everything is computed in float64 with plain,
differentiable tensor operations, so gradients come from autograd through this file.

For an input ``x`` of shape (N, C) or (N, C, *spatial), channel c is normalized over the
n = N * prod(spatial) values it has in the batch:

    training:  mean_c = sum(x_c) / n
               var_c  = sum((x_c - mean_c)^2) / n              (biased: used to normalize)
               running_mean <- (1 - momentum) * running_mean + momentum * mean_c
               running_var  <- (1 - momentum) * running_var  + momentum * var_c * n / (n - 1)
                                                               (unbiased: stored)
    eval:      mean_c, var_c = running_mean, running_var        (running stats untouched)

    y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c

The running statistics are updated in place, in their own dtype (they are computed in
float64 and then copied in), and only when they are given. ``momentum=None`` in
``nn.BatchNorm`` means a cumulative average: pass ``cumulative_momentum(num_batches_tracked)``
(after incrementing ``num_batches_tracked``), which is what the module does.
"""
import torch

__all__ = ["batch_norm", "batch_norm_relu", "cumulative_momentum"]


def cumulative_momentum(num_batches_tracked):
    """The momentum ``nn.BatchNorm`` uses when its ``momentum`` is None: 1 / batches seen so far."""
    n = int(num_batches_tracked)
    if n < 1:
        raise ValueError(f"num_batches_tracked must be >= 1, got {n}")
    return 1.0 / n


def _per_channel(v, ndim):
    """A (C,) vector shaped (1, C, 1, ..., 1) to broadcast against an ndim-dimensional input."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    """BatchNorm over dim 1 of ``x`` (N, C, *spatial); returns float64.

    Updates ``running_mean`` / ``running_var`` in place when ``training`` and they are given.
    """
    if x.dim() < 2:
        raise ValueError(f"x must have shape (N, C) or (N, C, *spatial), got {tuple(x.shape)}")
    if momentum is None:
        raise ValueError("momentum=None: pass cumulative_momentum(num_batches_tracked) instead")
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"{name} must have shape ({C},), got {tuple(t.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")

    xd = x.to(torch.float64)
    dims = [0] + list(range(2, x.dim()))           # every dim except the channel dim
    n = x.numel() // C if C else 0                  # values per channel

    if training:
        if n == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{tuple(x.shape)}")
        if n == 0:
            # an empty batch: nothing to normalize and no statistics to record (as torch does);
            # the output is still computed below so weight and bias stay in the autograd graph
            mean, var = xd.new_zeros(C), xd.new_ones(C)
        else:
            mean = xd.sum(dim=dims) / n
            deviation = xd - _per_channel(mean, x.dim())
            var = (deviation * deviation).sum(dim=dims) / n
        if running_mean is not None and n > 0:
            with torch.no_grad():
                new_mean = (1.0 - momentum) * running_mean.to(torch.float64) + momentum * mean.detach()
                unbiased = var.detach() * (n / (n - 1))
                new_var = (1.0 - momentum) * running_var.to(torch.float64) + momentum * unbiased
                running_mean.copy_(new_mean)
                running_var.copy_(new_var)
    else:
        if running_mean is None:
            raise ValueError("running_mean and running_var must be given in evaluation mode")
        mean = running_mean.to(torch.float64)
        var = running_var.to(torch.float64)

    y = (xd - _per_channel(mean, x.dim())) / torch.sqrt(_per_channel(var, x.dim()) + eps)
    if weight is not None:
        y = y * _per_channel(weight.to(torch.float64), x.dim())
    if bias is not None:
        y = y + _per_channel(bias.to(torch.float64), x.dim())
    return y


def batch_norm_relu(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                    eps=1e-5, residual=None):
    """relu(batch_norm(x, ...) + residual) in float64; ``residual`` (same shape as x) is optional."""
    y = batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got "
                             f"{tuple(residual.shape)}")
        y = y + residual.to(torch.float64)
    return torch.relu(y)
