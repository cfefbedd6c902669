"""Fused BatchNorm(+residual add)+ReLU: registered ops, autograd, and the functional API.

Two registered op pairs share one schema (see csrc/cvkernels.cpp):
  cvkernels::triton_bn_relu_forward / _backward   Triton kernels (CUDA, or CPU through the
                                                  interpreter), defined here with custom_op
  cvkernels::bn_relu_forward / bn_relu_backward   C++ CPU kernels of the compiled library
The autograd.Function below calls one pair, chosen by cvkernels._dispatch; the pure-torch
path (F.batch_norm + add + relu) serves whatever no kernel supports.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _dispatch, _extension

FAMILY = "batch_norm_relu"
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- Triton ops

@torch.library.custom_op("cvkernels::triton_bn_relu_forward", mutates_args=("running_mean", "running_var"))
def _triton_forward(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                    residual: Optional[Tensor], running_mean: Optional[Tensor],
                    running_var: Optional[Tensor], training: bool, momentum: float,
                    eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    from ..triton import batch_norm as kernels
    return kernels.bn_relu_forward(input, weight, bias, residual, running_mean, running_var,
                                   training, momentum, eps)


@torch.library.custom_op("cvkernels::triton_bn_relu_backward", mutates_args=())
def _triton_backward(grad_output: Tensor, output: Tensor, input: Tensor, weight: Optional[Tensor],
                     save_mean: Tensor, save_invstd: Tensor, training: bool,
                     has_residual: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    from ..triton import batch_norm as kernels
    return kernels.bn_relu_backward(grad_output, output, input, weight, save_mean, save_invstd,
                                    training, has_residual)


def _fake_forward(input, weight, bias, residual, running_mean, running_var, training, momentum, eps):
    C = input.shape[1]
    sdt = _stat_dtype(input.dtype)
    return (torch.empty_like(input), input.new_empty(C, dtype=sdt), input.new_empty(C, dtype=sdt))


def _fake_backward(grad_output, output, input, weight, save_mean, save_invstd, training, has_residual):
    C = input.shape[1]
    wdt = weight.dtype if weight is not None else _stat_dtype(input.dtype)
    dres = torch.empty_like(input) if has_residual else input.new_empty(0)
    return (torch.empty_like(input), input.new_empty(C, dtype=wdt), input.new_empty(C, dtype=wdt), dres)


torch.library.register_fake("cvkernels::triton_bn_relu_forward")(_fake_forward)
torch.library.register_fake("cvkernels::triton_bn_relu_backward")(_fake_backward)
if _extension.has_ops():
    torch.library.register_fake("cvkernels::bn_relu_forward")(_fake_forward)
    torch.library.register_fake("cvkernels::bn_relu_backward")(_fake_backward)


def _ops(backend):
    if backend == "torch":
        return _torch_forward, _torch_backward
    if backend == "triton":
        return torch.ops.cvkernels.triton_bn_relu_forward, torch.ops.cvkernels.triton_bn_relu_backward
    return torch.ops.cvkernels.bn_relu_forward, torch.ops.cvkernels.bn_relu_backward


# ----------------------------------------------------------------------------- autograd

class _BatchNormReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                backend):
        fwd, _ = _ops(backend)
        output, save_mean, save_invstd = fwd(input, weight, bias, residual, running_mean, running_var,
                                             training, momentum, eps)
        ctx.save_for_backward(input, output, weight, save_mean, save_invstd)
        ctx.training, ctx.backend = training, backend
        ctx.has_residual = residual is not None
        ctx.has_bias = bias is not None
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        input, output, weight, save_mean, save_invstd = ctx.saved_tensors
        _, bwd = _ops(ctx.backend)
        grad_input, grad_weight, grad_bias, grad_residual = bwd(
            grad_output, output, input, weight, save_mean, save_invstd, ctx.training, ctx.has_residual)
        return (grad_input,
                grad_weight if weight is not None else None,
                grad_bias if ctx.has_bias else None,
                grad_residual if ctx.has_residual else None,
                None, None, None, None, None, None)


# ----------------------------------------------------------------------------- validation

def _check_inputs(input, running_mean, running_var, weight, bias, residual, training, local_count=True):
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm_relu: input must be a Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"batch_norm_relu: input must have shape (N, C) or (N, C, *spatial), "
                         f"got a {input.dim()}-D tensor of shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"batch_norm_relu: input must be a floating-point tensor, got {input.dtype}")
    C = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"batch_norm_relu: {name} must be a Tensor or None, got {type(t).__name__}")
        if t.dim() != 1 or t.shape[0] != C:
            raise ValueError(f"batch_norm_relu: {name} must have shape ({C},) (one value per channel of "
                             f"input, whose shape is {tuple(input.shape)}), got {tuple(t.shape)}")
        if t.device != input.device:
            raise ValueError(f"batch_norm_relu: {name} is on {t.device} but input is on {input.device}")
        if not t.is_floating_point():
            raise TypeError(f"batch_norm_relu: {name} must be floating point, got {t.dtype}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_relu: running_mean and running_var must be given together")
    if not training and running_mean is None:
        raise ValueError("batch_norm_relu: running_mean and running_var are required when training=False")
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"batch_norm_relu: residual must be a Tensor or None, got {type(residual).__name__}")
        if residual.shape != input.shape:
            raise ValueError(f"batch_norm_relu: residual must have input's shape {tuple(input.shape)}, "
                             f"got {tuple(residual.shape)}")
        if residual.device != input.device:
            raise ValueError(f"batch_norm_relu: residual is on {residual.device} but input is on {input.device}")
        if residual.dtype != input.dtype:
            raise TypeError(f"batch_norm_relu: residual dtype {residual.dtype} differs from input's {input.dtype}")
    if training and local_count:
        count = input.numel() // max(C, 1) if C else 0
        if count <= 1 and C > 0:
            raise ValueError(f"batch_norm_relu: expected more than 1 value per channel when training, "
                             f"got input of shape {tuple(input.shape)}")


def _supported(input, weight, bias):
    if input.dtype not in _KERNEL_DTYPES:
        return False
    for t in (weight, bias):
        if t is not None and t.dtype not in _KERNEL_DTYPES:
            return False
    return True


def _torch_path(input, running_mean, running_var, weight, bias, training, momentum, eps, residual):
    dtypes = {t.dtype for t in (running_mean, running_var, weight, bias) if t is not None}
    if input.device.type == "cpu" and dtypes - {input.dtype}:
        # torch's CPU batch_norm wants one dtype; compute in the widest and cast back
        wide = torch.promote_types(input.dtype, max(dtypes, key=lambda d: torch.finfo(d).bits))
        out = F.batch_norm(input.to(wide), running_mean, running_var,
                           None if weight is None else weight.to(wide), None if bias is None else bias.to(wide),
                           training, momentum, eps).to(input.dtype)
        if residual is not None:
            out = out + residual
        return torch.relu(out)
    out = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        out = out + residual
    return torch.relu(out)


# ----------------------------------------------------------------------------- public API

def batch_norm_relu(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                    weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                    training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                    residual: Optional[Tensor] = None, *, backend: Optional[str] = None) -> Tensor:
    """``relu(batch_norm(input, ...) + residual)`` in one fused kernel per pass.

    Takes ``torch.nn.functional.batch_norm``'s arguments plus an optional ``residual``
    added after the normalization and before the ReLU (the ResNet block tail).

    Args:
        input: (N, C) or (N, C, *spatial), float16/bfloat16/float32/float64, any strides
            (NCHW and channels_last run without copies; the output keeps input's layout).
        running_mean, running_var: (C,) or None. Updated in place when ``training`` as
            ``nn.BatchNorm2d`` does (``momentum`` weight, unbiased batch variance). Required
            when not training.
        weight, bias: (C,) affine parameters or None (no affine).
        training: use batch statistics (True) or the running ones (False).
        momentum: running-statistics factor (a float; pass ``1 / num_batches_tracked`` for
            the cumulative average that ``momentum=None`` selects in ``nn.BatchNorm2d``).
        eps: added to the variance.
        residual: None or a tensor of input's shape, dtype and device.
        backend: "triton" | "cpp" | "torch" | None (automatic, see cvkernels._dispatch).

    Returns:
        Tensor of input's shape, dtype and memory format.
    """
    _check_inputs(input, running_mean, running_var, weight, bias, residual, training)
    name = _dispatch.choose(FAMILY, input.device.type, backend, supported=_supported(input, weight, bias))
    if name == "torch":
        return _torch_path(input, running_mean, running_var, weight, bias, training, momentum, eps, residual)
    if not training:
        running_mean, running_var = running_mean.detach(), running_var.detach()
    return _BatchNormReLUFunction.apply(input, weight, bias, residual, running_mean, running_var,
                                        bool(training), float(momentum), float(eps), name)


def batch_norm_add_relu(input: Tensor, residual: Tensor, running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], weight: Optional[Tensor] = None,
                        bias: Optional[Tensor] = None, training: bool = False, momentum: float = 0.1,
                        eps: float = 1e-5, *, backend: Optional[str] = None) -> Tensor:
    """``relu(batch_norm(input, ...) + residual)``; see :func:`batch_norm_relu`."""
    return batch_norm_relu(input, running_mean, running_var, weight, bias, training, momentum, eps,
                           residual=residual, backend=backend)


# ----------------------------------------------------------------------------- distributed

def _reduce_dims(x):
    return [0] + list(range(2, x.dim()))


def _channel_view(t, x):
    return t.view(1, -1, *([1] * (x.dim() - 2)))


class _SyncBatchNormReLUFunction(torch.autograd.Function):
    """Training-mode BN+ReLU with statistics over every rank of ``process_group``.

    Forward: local (count, mean, M2) per channel, all_gather, Chan merge (numerically sound),
    running-stat update, then the fused apply kernel with the global statistics. Backward:
    the fused kernel gives the local per-channel sums Σg and Σg·x̂ (as grad_bias/grad_weight)
    and g·scale; the sums are all-reduced and the mean terms subtracted. grad_weight and
    grad_bias stay local, as in nn.SyncBatchNorm (DDP averages parameter gradients).
    """

    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, momentum, eps,
                process_group, world_size, backend):
        import torch.distributed as dist
        sdt = _stat_dtype(input.dtype)
        dims = _reduce_dims(input)
        count = input.numel() // input.shape[1]
        var_l, mean_l = torch.var_mean(input.to(sdt), dim=dims, correction=0)
        local = torch.stack([torch.full_like(mean_l, float(count)), mean_l, var_l * count])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=process_group)
        stats = torch.stack(gathered)  # (world, 3, C)
        counts, means, m2s = stats[:, 0], stats[:, 1], stats[:, 2]
        total = counts.sum(0)
        mean = (counts * means).sum(0) / total
        m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
        var = m2 / total
        if bool((total <= 1).any()):
            raise ValueError("SyncBatchNormReLU: expected more than 1 value per channel across ranks")
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_((m2 / (total - 1)).to(running_var.dtype), alpha=momentum)
        fwd, _ = _ops(backend)
        output, save_mean, save_invstd = fwd(input, weight, bias, residual, mean, var, False, 0.0, eps)
        ctx.save_for_backward(input, output, weight, save_mean, save_invstd, total)
        ctx.has_residual, ctx.has_bias = residual is not None, bias is not None
        ctx.process_group, ctx.backend = process_group, backend
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        import torch.distributed as dist
        input, output, weight, mean, invstd, total = ctx.saved_tensors
        _, bwd = _ops(ctx.backend)
        g_scaled, sum_g_xhat, sum_g, grad_residual = bwd(
            grad_output, output, input, weight, mean, invstd, False, ctx.has_residual)
        grad_weight, grad_bias = sum_g_xhat.clone(), sum_g.clone()
        sums = torch.stack([sum_g.to(mean.dtype), sum_g_xhat.to(mean.dtype)])
        dist.all_reduce(sums, group=ctx.process_group)
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        xhat = (input.to(mean.dtype) - _channel_view(mean, input)) * _channel_view(invstd, input)
        correction = _channel_view(scale * sums[0] / total, input) + xhat * _channel_view(scale * sums[1] / total, input)
        grad_input = (g_scaled.to(mean.dtype) - correction).to(input.dtype)
        return (grad_input, grad_weight if weight is not None else None, grad_bias if ctx.has_bias else None,
                grad_residual if ctx.has_residual else None, None, None, None, None, None, None, None)


def _torch_forward(input, weight, bias, residual, running_mean, running_var, training, momentum, eps):
    """The kernels' eval-mode forward contract on torch ops (the sync path's last resort)."""
    assert not training
    sdt = _stat_dtype(input.dtype)
    mean, invstd = running_mean.to(sdt, copy=True), torch.rsqrt(running_var.to(sdt) + eps)
    out = (input.to(sdt) - _channel_view(mean, input)) * _channel_view(invstd, input)
    if weight is not None:
        out = out * _channel_view(weight.to(sdt), input)
    if bias is not None:
        out = out + _channel_view(bias.to(sdt), input)
    if residual is not None:
        out = out + residual.to(sdt)
    return torch.relu(out).to(input.dtype), mean, invstd


def _torch_backward(grad_output, output, input, weight, save_mean, save_invstd, training, has_residual):
    """The kernels' eval-mode backward contract on torch ops (the sync path's last resort)."""
    assert not training
    sdt = save_mean.dtype
    g = torch.where(output > 0, grad_output, torch.zeros_like(grad_output)).to(sdt)
    xhat = (input.to(sdt) - _channel_view(save_mean, input)) * _channel_view(save_invstd, input)
    dims = _reduce_dims(input)
    scale = save_invstd if weight is None else save_invstd * weight.to(sdt)
    wdt = weight.dtype if weight is not None else sdt
    dres = g.to(input.dtype) if has_residual else input.new_empty(0)
    return ((g * _channel_view(scale, input)).to(input.dtype), (g * xhat).sum(dims).to(wdt),
            g.sum(dims).to(wdt), dres)


def sync_batch_norm_relu(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                         weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                         momentum: float = 0.1, eps: float = 1e-5, residual: Optional[Tensor] = None,
                         process_group=None, *, backend: Optional[str] = None) -> Tensor:
    """Training-mode :func:`batch_norm_relu` with the batch statistics of every rank of
    ``process_group`` (torch.distributed must be initialized). Shapes as batch_norm_relu;
    each rank passes its own slice of the global batch."""
    import torch.distributed as dist
    _check_inputs(input, running_mean, running_var, weight, bias, residual, training=True, local_count=False)
    world_size = dist.get_world_size(process_group)
    name = _dispatch.choose(FAMILY, input.device.type, backend, supported=_supported(input, weight, bias))
    return _SyncBatchNormReLUFunction.apply(input, weight, bias, residual, running_mean, running_var,
                                            float(momentum), float(eps), process_group, world_size, name)
