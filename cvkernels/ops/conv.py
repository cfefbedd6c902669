"""2-D convolution (depthwise, grouped, dilated) and transposed convolution: registered ops,
autograd, and the functional API with torch's signatures.

Registered ops (one schema per direction of a convolution, see cvkernels/triton/conv.py):
  cvkernels::triton_conv2d              y  = act(conv(x, w) + b)        Triton, custom_op
  cvkernels::triton_conv2d_transposed   dx = act(conv^T(dy, w) + b)     (conv2d's grad-input and
                                                                          conv_transpose2d's forward)
  cvkernels::triton_conv2d_weight_grad  dw = sum over pixels of dy * x
  cvkernels::depthwise_conv2d_forward / _backward_input / _backward_weight
                                        the CUDA C++ depthwise kernels (csrc/cuda/depthwise_conv2d.cu)

Routing (the cases where a hand-written kernel beats cuDNN): depthwise (groups == C_in > 1),
grouped (groups > 1) and dilated (dilation > 1) convolutions and every transposed convolution
run a cvkernels kernel; a dense conv2d (groups == 1, dilation == 1) runs F.conv2d unless a
backend is named explicitly. See cvkernels._dispatch for the backend order.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _dispatch, _extension

FAMILY_CONV = "conv2d"
FAMILY_DEPTHWISE = "depthwise_conv2d"
FAMILY_TRANSPOSED = "conv_transpose2d"

ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "relu6": 2, "silu": 3}
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------- registered ops

def _memory_format_of(t):
    from ..triton.conv import memory_format_of
    return memory_format_of(t)


def _empty_like_format(shape, like):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=_memory_format_of(like))


@torch.library.custom_op("cvkernels::triton_conv2d", mutates_args=())
def _triton_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                   dilation: List[int], groups: int, output_size: List[int], activation: int) -> Tensor:
    from ..triton import conv as kernels
    return kernels.conv2d(input, weight, bias, stride, padding, dilation, groups, output_size, activation)


@torch.library.custom_op("cvkernels::triton_conv2d_transposed", mutates_args=())
def _triton_conv2d_transposed(grad_output: Tensor, weight: Tensor, bias: Optional[Tensor], input_size: List[int],
                              stride: List[int], padding: List[int], dilation: List[int], groups: int,
                              activation: int) -> Tensor:
    from ..triton import conv as kernels
    return kernels.conv2d_transposed(grad_output, weight, bias, input_size, stride, padding, dilation, groups,
                                     activation)


@torch.library.custom_op("cvkernels::triton_conv2d_weight_grad", mutates_args=())
def _triton_conv2d_weight_grad(grad_output: Tensor, input: Tensor, weight_size: List[int], stride: List[int],
                               padding: List[int], dilation: List[int], groups: int) -> Tensor:
    from ..triton import conv as kernels
    return kernels.conv2d_weight_grad(grad_output, input, weight_size, stride, padding, dilation, groups)


@torch.library.register_fake("cvkernels::triton_conv2d")
def _fake_conv2d(input, weight, bias, stride, padding, dilation, groups, output_size, activation):
    return _empty_like_format((input.shape[0], weight.shape[0], *output_size), input)


@torch.library.register_fake("cvkernels::triton_conv2d_transposed")
def _fake_conv2d_transposed(grad_output, weight, bias, input_size, stride, padding, dilation, groups, activation):
    return _empty_like_format(tuple(input_size), grad_output)


@torch.library.register_fake("cvkernels::triton_conv2d_weight_grad")
def _fake_conv2d_weight_grad(grad_output, input, weight_size, stride, padding, dilation, groups):
    return input.new_empty(tuple(weight_size))


if _extension.has_op("depthwise_conv2d_forward"):
    @torch.library.register_fake("cvkernels::depthwise_conv2d_forward")
    def _fake_dw_forward(input, weight, bias, stride, padding, dilation, activation):
        H, W = input.shape[2], input.shape[3]
        KH, KW = weight.shape[2], weight.shape[3]
        OH = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
        OW = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
        return _empty_like_format((input.shape[0], weight.shape[0], OH, OW), input)

    @torch.library.register_fake("cvkernels::depthwise_conv2d_backward_input")
    def _fake_dw_backward_input(grad_output, weight, input_size, stride, padding, dilation):
        return _empty_like_format(tuple(input_size), grad_output)

    @torch.library.register_fake("cvkernels::depthwise_conv2d_backward_weight")
    def _fake_dw_backward_weight(grad_output, input, weight_size, stride, padding, dilation):
        return input.new_empty(tuple(weight_size))


class _Ops:
    """The three directions of one backend, with one calling convention:
    conv(x, w, b, stride, padding(top, left), dilation, groups, output_size, act)
    transposed(dy, w, b, input_size, stride, padding, dilation, groups, act)
    weight_grad(dy, x, weight_size, stride, padding, dilation, groups)"""

    def __init__(self, conv, transposed, weight_grad):
        self.conv, self.transposed, self.weight_grad = conv, transposed, weight_grad


def _cuda_conv(x, w, b, stride, padding, dilation, groups, output_size, act):
    return torch.ops.cvkernels.depthwise_conv2d_forward(x, w, b, stride, padding, dilation, act)


def _cuda_transposed(dy, w, b, input_size, stride, padding, dilation, groups, act):
    assert b is None and act == 0, "the CUDA depthwise backend serves conv2d only"
    return torch.ops.cvkernels.depthwise_conv2d_backward_input(dy, w, input_size, stride, padding, dilation)


def _cuda_weight_grad(dy, x, weight_size, stride, padding, dilation, groups):
    return torch.ops.cvkernels.depthwise_conv2d_backward_weight(dy, x, weight_size, stride, padding, dilation)


def _ops(backend):
    if backend == "cuda":
        return _Ops(_cuda_conv, _cuda_transposed, _cuda_weight_grad)
    return _Ops(torch.ops.cvkernels.triton_conv2d, torch.ops.cvkernels.triton_conv2d_transposed,
                torch.ops.cvkernels.triton_conv2d_weight_grad)


# ----------------------------------------------------------------------------- autograd

def _activation_grad(grad, out, activation):
    """grad through ReLU / ReLU6 from the activation's output (their derivative is a mask of it)."""
    if activation == 1:
        return torch.where(out > 0, grad, torch.zeros_like(grad))
    if activation == 2:
        return torch.where((out > 0) & (out < 6), grad, torch.zeros_like(grad))
    return grad


def _bias_grad(grad):
    return grad.sum((0, 2, 3), dtype=torch.float64 if grad.dtype == torch.float64 else torch.float32).to(grad.dtype)


class _Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups, output_size, activation, backend):
        out = _ops(backend).conv(input, weight, bias, stride, padding, dilation, groups, output_size, activation)
        ctx.save_for_backward(input, weight, out if activation in (1, 2) else None)
        ctx.args = (stride, padding, dilation, groups)
        ctx.activation, ctx.backend, ctx.has_bias = activation, backend, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        input, weight, out = ctx.saved_tensors
        grad = _activation_grad(grad, out, ctx.activation)
        ops = _ops(ctx.backend)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = ops.transposed(grad, weight, None, list(input.shape), *ctx.args, 0)
        if ctx.needs_input_grad[1]:
            grad_weight = ops.weight_grad(grad, input, list(weight.shape), *ctx.args)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = _bias_grad(grad)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None


class _ConvTranspose2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups, output_size, activation, backend):
        # conv_transpose2d(x, w) is conv2d's grad-input with x in the place of the conv's output
        out = _ops(backend).transposed(input, weight, bias, output_size, stride, padding, dilation, groups,
                                       activation)
        ctx.save_for_backward(input, weight, out if activation in (1, 2) else None)
        ctx.args = (stride, padding, dilation, groups)
        ctx.activation, ctx.backend, ctx.has_bias = activation, backend, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        input, weight, out = ctx.saved_tensors
        grad = _activation_grad(grad, out, ctx.activation)
        ops = _ops(ctx.backend)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = ops.conv(grad, weight, None, *ctx.args, [input.shape[2], input.shape[3]], 0)
        if ctx.needs_input_grad[1]:
            grad_weight = ops.weight_grad(input, grad, list(weight.shape), *ctx.args)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = _bias_grad(grad)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------- arguments

IntPair = Union[int, Sequence[int]]


def _pair(value, name, fn, minimum):
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        pair = (value[0], value[-1])
    else:
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value!r}")
    return pair


def _check_tensors(fn, input, weight, bias, groups):
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a Tensor, got {type(t).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(f"{fn}: input must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"{fn}: weight must be 4-D, got shape {tuple(weight.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"{fn}: input must be a floating-point tensor, got {input.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"{fn}: weight dtype {weight.dtype} differs from input's {input.dtype}")
    if weight.device != input.device:
        raise ValueError(f"{fn}: weight is on {weight.device} but input is on {input.device}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"{fn}: bias must be a Tensor or None, got {type(bias).__name__}")
        if bias.dtype != input.dtype:
            raise TypeError(f"{fn}: bias dtype {bias.dtype} differs from input's {input.dtype}")
        if bias.device != input.device:
            raise ValueError(f"{fn}: bias is on {bias.device} but input is on {input.device}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{fn}: groups must be a positive int, got {groups!r}")


def _output_size(fn, size, k, stride, pad_total, dilation, which):
    out = (size + pad_total - dilation * (k - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(f"{fn}: the {which} of input ({size}) plus padding ({pad_total}) is smaller than the "
                         f"dilated kernel ({dilation * (k - 1) + 1}): the output would be empty")
    return out


def _kernel_dtype_ok(t):
    return t.dtype in _KERNEL_DTYPES or (t.dtype == torch.float64 and t.device.type == "cpu")


def _activation_code(fn, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be one of None, 'relu', 'relu6', 'silu', got {activation!r}")
    return ACTIVATIONS[activation]


def apply_activation(out, code):
    """The torch equivalent of the fused epilogue activation `code`."""
    if code == 1:
        return F.relu(out)
    if code == 2:
        return F.relu6(out)
    if code == 3:
        return F.silu(out)
    return out


def _split_activation(code, tensors):
    """SiLU's derivative needs its input, which the fused kernel does not keep: when a gradient
    will flow, run the convolution without it and apply F.silu after (ReLU/ReLU6 stay fused)."""
    if code == 3 and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return 0, 3
    return code, 0


# ----------------------------------------------------------------------------- public API

def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
           padding: Union[str, IntPair] = 0, dilation: IntPair = 1, groups: int = 1, *,
           activation: Optional[str] = None, backend: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.conv2d`` on cvkernels kernels where they win, with an optional fused activation.

    Args:
        input: (N, C_in, H, W) or unbatched (C_in, H, W); float16/bfloat16/float32 (float64 on CPU);
            NCHW, channels_last or any strides (the output keeps channels_last).
        weight: (C_out, C_in / groups, KH, KW), input's dtype and device.
        bias: (C_out,) or None.
        stride, dilation: int or (h, w), >= 1.
        padding: int or (h, w) >= 0 (zero padding), or 'valid' / 'same' (stride 1; an odd total
            padding puts the extra row/column at the bottom/right, as torch does).
        groups: >= 1, dividing C_in and C_out. groups == C_in is depthwise (C_out = k * C_in).
        activation: None | 'relu' | 'relu6' | 'silu', applied after the bias in the same pass.
        backend: None (automatic) | 'triton' | 'cuda' (depthwise only) | 'torch'.

    Returns:
        (N, C_out, OH, OW) with OH = (H + pad_h_total - dilation_h*(KH-1) - 1) // stride_h + 1.
    """
    fn = "conv2d"
    _check_tensors(fn, input, weight, bias, groups)
    act = _activation_code(fn, activation)
    if input.dim() == 3:
        return conv2d(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups,
                      activation=activation, backend=backend).squeeze(0)
    N, C_in, H, W = input.shape
    C_out, C_in_g, KH, KW = weight.shape
    stride = _pair(stride, "stride", fn, 1)
    dilation = _pair(dilation, "dilation", fn, 1)
    if C_in % groups != 0:
        raise ValueError(f"{fn}: groups={groups} does not divide the {C_in} input channels")
    if C_out % groups != 0:
        raise ValueError(f"{fn}: groups={groups} does not divide the {C_out} output channels of weight")
    if C_in_g * groups != C_in:
        raise ValueError(f"{fn}: weight of shape {tuple(weight.shape)} expects {C_in_g * groups} input channels "
                         f"with groups={groups}, but input has {C_in}")
    if bias is not None and tuple(bias.shape) != (C_out,):
        raise ValueError(f"{fn}: bias must have shape ({C_out},), got {tuple(bias.shape)}")
    if isinstance(padding, str):
        if padding == "valid":
            totals = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{fn}: padding='same' is not supported for strided convolutions")
            totals = (dilation[0] * (KH - 1), dilation[1] * (KW - 1))
        else:
            raise ValueError(f"{fn}: padding must be an int, a pair or 'valid'/'same', got {padding!r}")
        top_left = (totals[0] // 2, totals[1] // 2)
    else:
        top_left = _pair(padding, "padding", fn, 0)
        totals = (2 * top_left[0], 2 * top_left[1])
    OH = _output_size(fn, H, KH, stride[0], totals[0], dilation[0], "height")
    OW = _output_size(fn, W, KW, stride[1], totals[1], dilation[1], "width")

    depthwise = C_in_g == 1 and groups > 1
    wins = depthwise or groups > 1 or dilation != (1, 1)
    family = FAMILY_DEPTHWISE if depthwise else FAMILY_CONV
    supported = _kernel_dtype_ok(input) and (wins or backend not in (None, "torch"))
    name = _dispatch.choose(family, input.device.type, backend, supported=supported,
                            shape_class=_depthwise_class(input, weight, stride) if depthwise else None)
    if name == "cuda" and totals != (2 * top_left[0], 2 * top_left[1]):
        name = "triton"  # asymmetric 'same' padding: the CUDA kernel takes symmetric padding only
    if name == "torch":
        out = F.conv2d(input, weight, bias, stride, padding if isinstance(padding, str) else top_left,
                       dilation, groups)
        return apply_activation(out, act)
    fused, after = _split_activation(act, (input, weight, bias))
    out = _Conv2dFunction.apply(input, weight, bias, list(stride), list(top_left), list(dilation), groups,
                                [OH, OW], fused, name)
    return apply_activation(out, after)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
                     padding: IntPair = 0, output_padding: IntPair = 0, groups: int = 1, dilation: IntPair = 1, *,
                     activation: Optional[str] = None, backend: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.conv_transpose2d`` on the cvkernels transposed-direction kernel
    (gathered, no zero-insertion buffer), with an optional fused activation.

    Args:
        input: (N, C_in, H, W) or unbatched (C_in, H, W); float16/bfloat16/float32 (float64 on CPU).
        weight: (C_in, C_out / groups, KH, KW).
        bias: (C_out,) or None.
        stride, dilation: int or (h, w), >= 1; padding: int or (h, w), >= 0;
        output_padding: int or (h, w), >= 0 and smaller than stride or dilation.
        activation, backend: as in :func:`conv2d` (backend 'triton' or 'torch').

    Returns:
        (N, C_out, OH, OW), OH = (H-1)*stride_h - 2*pad_h + dilation_h*(KH-1) + output_padding_h + 1.
    """
    fn = "conv_transpose2d"
    _check_tensors(fn, input, weight, bias, groups)
    act = _activation_code(fn, activation)
    if input.dim() == 3:
        return conv_transpose2d(input.unsqueeze(0), weight, bias, stride, padding, output_padding, groups, dilation,
                                activation=activation, backend=backend).squeeze(0)
    N, C_in, H, W = input.shape
    stride = _pair(stride, "stride", fn, 1)
    dilation = _pair(dilation, "dilation", fn, 1)
    padding = _pair(padding, "padding", fn, 0)
    output_padding = _pair(output_padding, "output_padding", fn, 0)
    if weight.shape[0] != C_in:
        raise ValueError(f"{fn}: weight of shape {tuple(weight.shape)} expects {weight.shape[0]} input channels "
                         f"(weight is (C_in, C_out/groups, KH, KW)), but input has {C_in}")
    if C_in % groups != 0:
        raise ValueError(f"{fn}: groups={groups} does not divide the {C_in} input channels")
    C_out = weight.shape[1] * groups
    KH, KW = weight.shape[2], weight.shape[3]
    for i, which in enumerate(("height", "width")):
        if output_padding[i] >= max(stride[i], dilation[i]):
            raise ValueError(f"{fn}: output_padding ({output_padding[i]}) must be smaller than stride or dilation "
                             f"({stride[i]}, {dilation[i]}) in {which}")
    if bias is not None and tuple(bias.shape) != (C_out,):
        raise ValueError(f"{fn}: bias must have shape ({C_out},), got {tuple(bias.shape)}")
    OH = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (KH - 1) + output_padding[0] + 1
    OW = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (KW - 1) + output_padding[1] + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"{fn}: padding {padding} is too large for input of size {(H, W)}: output size {(OH, OW)}")
    name = _dispatch.choose(FAMILY_TRANSPOSED, input.device.type, backend, supported=_kernel_dtype_ok(input))
    if name == "torch":
        out = F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
        return apply_activation(out, act)
    fused, after = _split_activation(act, (input, weight, bias))
    out = _ConvTranspose2dFunction.apply(input, weight, bias, list(stride), list(padding), list(dilation), groups,
                                         [N, C_out, OH, OW], fused, name)
    return apply_activation(out, after)


def _depthwise_class(input, weight, stride):
    """The shape class the dispatch table records the faster depthwise backend for."""
    layout = "cl" if _memory_format_of(input) == torch.channels_last else "nchw"
    dtype = str(input.dtype).replace("torch.", "")
    return f"{dtype}-{layout}-k{weight.shape[2]}x{weight.shape[3]}-s{stride[0]}"
