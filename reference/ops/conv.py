"""Float64 reference of 2-D convolution and transposed convolution (the conv family).

Written out from the definitions, independently of ``F.conv2d`` / ``F.conv_transpose2d`` /
``nn.Unfold``: the input is zero-padded, every kernel tap (i, j) reads a strided view of the
padded input, and the taps are contracted with the weight by ``einsum``. The transposed
convolution is the adjoint written as a scatter: every input pixel adds ``x * w[:, :, i, j]``
to the output pixel ``(y * stride + i * dilation - padding, x * stride + j * dilation - padding)``.
Everything is plain differentiable tensor algebra, so gradients come from autograd through
this file. Inputs are cast to float64 and the result is float64 (as reference.ops.batch_norm).

Semantics are torch's (``torch.nn.Conv2d`` / ``torch.nn.ConvTranspose2d``):

    conv2d:   x (N, C_in, H, W) or (C_in, H, W), weight (C_out, C_in / groups, kH, kW)
              out[n, o, y, x] = bias[o] + sum_{c in group(o), i, j}
                  xpad[n, c, y * sH + i * dH, x * sW + j * dW] * weight[o, c - c0(o), i, j]
              H_out = floor((H + 2 pH - dH (kH - 1) - 1) / sH) + 1
              padding: int, (pH, pW), 'valid' (= 0) or 'same' (stride 1 only; total padding
              dH (kH - 1), the odd extra row/column goes to the bottom/right, as torch).

    conv_transpose2d: x (N, C_in, H, W) or (C_in, H, W), weight (C_in, C_out / groups, kH, kW)
              out[n, o, y * sH + i * dH - pH, x * sW + j * dW - pW] += x[n, c, y, x] * weight[c, o - o0(c), i, j]
              H_out = (H - 1) sH - 2 pH + dH (kH - 1) + output_padding_H + 1
              output_padding < max(stride, dilation) per dimension (torch's rule); it adds
              rows/columns at the bottom/right that only the bias reaches (or taps landing there).

Groups split the input channels and the output channels into ``groups`` equal consecutive
blocks; block g of the output sees only block g of the input (depthwise: groups == C_in, with a
channel multiplier C_out / C_in).
"""
import torch
import torch.nn.functional as F

__all__ = ["conv2d", "conv_transpose2d", "conv_output_size", "conv_transpose_output_size"]


def _pair(value, name):
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return (value[0], value[0])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _elementwise(fn, *args):
    """Applies a scalar size formula to ints, or elementwise to pairs (returning a tuple)."""
    if all(isinstance(a, int) for a in args):
        return fn(*args)
    pairs = [_pair(a, "size argument") for a in args]
    return tuple(fn(*vals) for vals in zip(*pairs))


def conv_output_size(in_size, kernel_size, stride=1, padding=0, dilation=1):
    """Output size of a convolution: floor((in + 2 p - d (k - 1) - 1) / s) + 1 (ints or pairs).

    May be <= 0 (the input is too small for the kernel); conv2d refuses such shapes.
    """
    return _elementwise(lambda n, k, s, p, d: (n + 2 * p - d * (k - 1) - 1) // s + 1,
                        in_size, kernel_size, stride, padding, dilation)


def conv_transpose_output_size(in_size, kernel_size, stride=1, padding=0, output_padding=0, dilation=1):
    """Output size of a transposed convolution: (in - 1) s - 2 p + d (k - 1) + output_padding + 1."""
    return _elementwise(lambda n, k, s, p, op, d: (n - 1) * s - 2 * p + d * (k - 1) + op + 1,
                        in_size, kernel_size, stride, padding, output_padding, dilation)


def _check_common(input, weight, bias, groups, stride, dilation, fn):
    if not isinstance(input, torch.Tensor) or input.dim() not in (3, 4):
        raise ValueError(f"{fn}: input must be a 3-D (C, H, W) or 4-D (N, C, H, W) tensor, got "
                         f"{getattr(input, 'shape', type(input))}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"{fn}: weight must be a 4-D tensor, got {getattr(weight, 'shape', type(weight))}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{fn}: groups must be a positive int, got {groups!r}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride) < 1:
        raise ValueError(f"{fn}: stride must be >= 1, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"{fn}: dilation must be >= 1, got {dilation}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dim() != 1):
        raise ValueError(f"{fn}: bias must be a 1-D tensor or None")
    return stride, dilation


def _tap(x, i, j, dilation, stride, out_hw):
    """The strided view of ``x`` (..., H, W) that kernel tap (i, j) reads (or writes): rows
    i*dH, i*dH + sH, ..., out_h of them; columns likewise."""
    (dh, dw), (sh, sw), (oh, ow) = dilation, stride, out_hw
    return x[..., i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation with torch's ``F.conv2d`` semantics, computed in float64."""
    stride, dilation = _check_common(input, weight, bias, groups, stride, dilation, "conv2d")
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    x, w = x.to(torch.float64), weight.to(torch.float64)
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    if C != Cg * groups:
        raise ValueError(f"conv2d: input has {C} channels, weight {tuple(w.shape)} with groups={groups} "
                         f"expects {Cg * groups}")
    if O % groups:
        raise ValueError(f"conv2d: out_channels ({O}) must be divisible by groups ({groups})")
    if bias is not None and bias.shape[0] != O:
        raise ValueError(f"conv2d: bias must have shape ({O},), got {tuple(bias.shape)}")
    (dh, dw), (sh, sw) = dilation, stride
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError("conv2d: padding='same' is not supported for strided convolutions")
            th, tw = dh * (kh - 1), dw * (kw - 1)          # total padding; odd extra to bottom/right
            pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        else:
            raise ValueError(f"conv2d: padding must be 'valid', 'same', an int or a pair, got {padding!r}")
    else:
        ph, pw = _pair(padding, "padding")
        if min(ph, pw) < 0:
            raise ValueError(f"conv2d: padding must be >= 0, got {(ph, pw)}")
        pads = (pw, pw, ph, ph)
    xp = F.pad(x, pads)                                        # zero padding (left, right, top, bottom)
    Hp, Wp = xp.shape[-2:]
    oh, ow = conv_output_size(Hp, kh, sh, 0, dh), conv_output_size(Wp, kw, sw, 0, dw)
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d: output size ({oh}, {ow}) is too small: padded input ({Hp}, {Wp}), "
                         f"kernel ({kh}, {kw}), dilation {dilation}")
    # patches[n, c, i, j, y, x] = xp[n, c, y*sH + i*dH, x*sW + j*dW]
    patches = torch.stack([torch.stack([_tap(xp, i, j, dilation, stride, (oh, ow)) for j in range(kw)], dim=2)
                           for i in range(kh)], dim=2)
    patches = patches.reshape(N, groups, Cg, kh, kw, oh, ow)
    wg = w.reshape(groups, O // groups, Cg, kh, kw)
    out = torch.einsum("ngcijyx,gocij->ngoyx", patches, wg).reshape(N, O, oh, ow)
    if bias is not None:
        out = out + bias.to(torch.float64).reshape(1, O, 1, 1)
    return out.squeeze(0) if unbatched else out


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution with torch's ``F.conv_transpose2d`` semantics, in float64.

    Argument order is torch's (``output_padding`` and ``groups`` before ``dilation``).
    """
    stride, dilation = _check_common(input, weight, bias, groups, stride, dilation, "conv_transpose2d")
    if isinstance(padding, str):
        raise ValueError("conv_transpose2d: padding must be an int or a pair (torch has no string padding here)")
    (ph, pw), (oph, opw) = _pair(padding, "padding"), _pair(output_padding, "output_padding")
    (sh, sw), (dh, dw) = stride, dilation
    if min(ph, pw) < 0 or min(oph, opw) < 0:
        raise ValueError(f"conv_transpose2d: padding and output_padding must be >= 0, got {(ph, pw)}, {(oph, opw)}")
    if oph >= max(sh, dh) or opw >= max(sw, dw):
        raise ValueError(f"conv_transpose2d: output_padding {(oph, opw)} must be smaller than stride or "
                         f"dilation ({stride}, {dilation})")
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    x, w = x.to(torch.float64), weight.to(torch.float64)
    N, C, H, W = x.shape
    Cw, Og, kh, kw = w.shape
    if C != Cw:
        raise ValueError(f"conv_transpose2d: input has {C} channels, weight {tuple(w.shape)} expects {Cw}")
    if C % groups:
        raise ValueError(f"conv_transpose2d: in_channels ({C}) must be divisible by groups ({groups})")
    O = Og * groups
    if bias is not None and bias.shape[0] != O:
        raise ValueError(f"conv_transpose2d: bias must have shape ({O},), got {tuple(bias.shape)}")
    oh = conv_transpose_output_size(H, kh, sh, ph, oph, dh)
    ow = conv_transpose_output_size(W, kw, sw, pw, opw, dw)
    if oh < 1 or ow < 1:
        raise ValueError(f"conv_transpose2d: output size ({oh}, {ow}) is not positive")
    Cg = C // groups
    # contrib[n, g, o, i, j, y, x] = sum_c x[n, g*Cg + c, y, x] * w[g*Cg + c, o, i, j]
    contrib = torch.einsum("ngcyx,gcoij->ngoijyx", x.reshape(N, groups, Cg, H, W),
                           w.reshape(groups, Cg, Og, kh, kw)).reshape(N, O, kh, kw, H, W)
    # scatter into the uncropped output (row r of it is output row r - pH), then crop the padding
    full = x.new_zeros((N, O, oh + 2 * ph, ow + 2 * pw))
    for i in range(kh):
        for j in range(kw):
            dst = _tap(full, i, j, dilation, stride, (H, W))
            dst += contrib[:, :, i, j]           # in place on a view of `full`: autograd follows it
    out = full[:, :, ph: ph + oh, pw: pw + ow]
    if bias is not None:
        out = out + bias.to(torch.float64).reshape(1, O, 1, 1)
    return out.squeeze(0) if unbatched else out
