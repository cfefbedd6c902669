"""Drop-in Conv2d and ConvTranspose2d: subclasses of torch's, same constructor, parameters and
state_dict, whose convolution runs on a cvkernels kernel for the cases one wins (depthwise,
grouped, dilated, transposed) and on torch otherwise (see cvkernels.ops.conv)."""
from typing import List, Optional

from torch import Tensor, nn
from torch.nn import functional as F

from ..ops import conv as conv_ops

__all__ = ["Conv2d", "ConvTranspose2d"]


def _adopt(cls, module, activation, backend):
    """An instance of `cls` with module's state (the same Parameter objects, hooks, mode)."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for name in ("_parameters", "_buffers", "_modules"):
        new.__dict__[name] = dict(module.__dict__[name])
    new.activation, new.backend = activation, backend
    return new


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` with cvkernels kernels and an optional fused activation.

    Takes nn.Conv2d's arguments plus, keyword-only, ``activation`` (None | 'relu' | 'relu6' |
    'silu', applied in the kernel's epilogue) and ``backend`` (None = automatic). Input
    (N, C_in, H, W) or (C_in, H, W); output (N, C_out, OH, OW).
    """

    def __init__(self, *args, activation: Optional[str] = None, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        conv_ops._activation_code("Conv2d", activation)
        self.activation, self.backend = activation, backend

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]):
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return conv_ops.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                               activation=self.activation, backend=self.backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", activation={self.activation!r}" if self.activation else "")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: Optional[str] = None, backend: Optional[str] = None):
        """A cvkernels Conv2d sharing conv's parameters (no copy)."""
        return _adopt(cls, conv, activation, backend)

    def to_conv(self) -> nn.Conv2d:
        """The plain nn.Conv2d with the same parameters (the activation is not part of it)."""
        conv = nn.Conv2d.__new__(nn.Conv2d)
        conv.__dict__.update(self.__dict__)
        for name in ("activation", "backend"):
            conv.__dict__.pop(name, None)
        return conv


class ConvTranspose2d(nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` on the cvkernels transposed-direction kernel.

    nn.ConvTranspose2d's arguments plus keyword-only ``activation`` and ``backend`` as in
    :class:`Conv2d`. ``forward(input, output_size=None)`` as torch's.
    """

    def __init__(self, *args, activation: Optional[str] = None, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        conv_ops._activation_code("ConvTranspose2d", activation)
        self.activation, self.backend = activation, backend

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only 'zeros' padding mode is supported for ConvTranspose2d")
        num_spatial_dims = 2
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              num_spatial_dims, self.dilation)
        return conv_ops.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                         self.groups, self.dilation, activation=self.activation,
                                         backend=self.backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", activation={self.activation!r}" if self.activation else "")

    @classmethod
    def from_conv(cls, conv: nn.ConvTranspose2d, activation: Optional[str] = None, backend: Optional[str] = None):
        """A cvkernels ConvTranspose2d sharing conv's parameters (no copy)."""
        return _adopt(cls, conv, activation, backend)

    def to_conv(self) -> nn.ConvTranspose2d:
        conv = nn.ConvTranspose2d.__new__(nn.ConvTranspose2d)
        conv.__dict__.update(self.__dict__)
        for name in ("activation", "backend"):
            conv.__dict__.pop(name, None)
        return conv
