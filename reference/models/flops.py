"""Multiply-add counter for the "FLOPs" figures the documents publish.

The ResNet paper (He et al. 2015, Table 1; P l.1195-1205: "1 FLOP = 1 multiply+add
operation") and torchvision's model cards count FLOPs as multiply-accumulates (MACs) of the
convolutions and fully connected layers only: BatchNorm, ReLU, pooling, residual additions and
bias additions are not counted. ``count_macs`` does the same by running one forward pass with
forward hooks on the layers that do multiply-adds and counting from the shapes they see, so it
works on the meta device (no memory, no arithmetic):

    with torch.device("meta"):
        model = resnet50()
        x = torch.empty(1, 3, 224, 224)
    count_macs(model, x).total      # 4.09e9 for torchvision's ResNet-50 (v1.5)

Per layer (out = output tensor, k = kernel elements, g = groups):
    ConvNd:           out.numel() * (in_channels / g) * prod(k)
    ConvTransposeNd:  in.numel()  * (out_channels / g) * prod(k)   (each input value is scattered
                                                                     to prod(k) * out_channels/g outputs)
    Linear, Bilinear: out.numel() * in_features (Bilinear: in1 * in2)
Counts are for the whole input batch; divide by the batch size for per-image figures.
"""
import dataclasses
import math
from typing import Dict

import torch
from torch import nn

__all__ = ["MacCount", "count_macs", "count_params"]


def _conv(module, inputs, output):
    k = math.prod(module.kernel_size)
    return output.numel() * (module.in_channels // module.groups) * k


def _conv_transpose(module, inputs, output):
    k = math.prod(module.kernel_size)
    return inputs[0].numel() * (module.out_channels // module.groups) * k


def _linear(module, inputs, output):
    return output.numel() * module.in_features


def _bilinear(module, inputs, output):
    return output.numel() * module.in1_features * module.in2_features


# module type -> macs(module, inputs, output); extend for new layer types
HANDLERS = {
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_transpose, nn.ConvTranspose2d: _conv_transpose,
    nn.ConvTranspose3d: _conv_transpose,
    nn.Linear: _linear, nn.Bilinear: _bilinear,
}


@dataclasses.dataclass
class MacCount:
    total: int
    by_module: Dict[str, int]        # qualified module name -> MACs (summed over its calls)
    by_type: Dict[str, int]          # module class name -> MACs

    def __str__(self):
        rows = ", ".join(f"{k} {v / 1e9:.3f}G" for k, v in sorted(self.by_type.items()))
        return f"{self.total / 1e9:.3f} GMACs ({rows})"


def count_macs(model, *inputs, **kwargs):
    """MACs of one forward of ``model(*inputs, **kwargs)`` (no gradients; modules are left as they are)."""
    by_module, by_type, handles = {}, {}, []

    def hook_for(name, fn):
        def hook(module, args, output):
            macs = int(fn(module, args, output))
            by_module[name] = by_module.get(name, 0) + macs
            kind = type(module).__name__
            by_type[kind] = by_type.get(kind, 0) + macs
        return hook

    for name, module in model.named_modules():
        for kind, fn in HANDLERS.items():
            if isinstance(module, kind):
                handles.append(module.register_forward_hook(hook_for(name, fn)))
                break
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return MacCount(sum(by_module.values()), by_module, by_type)


def count_params(model, trainable_only=False):
    """Number of parameters (buffers such as BatchNorm running statistics are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
