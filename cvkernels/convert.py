"""convert(model): route an existing model's operators to cvkernels without rewriting it.

Passes (each family adds its own):
  * BatchNorm → ReLU and BatchNorm → add → ReLU become one BatchNormReLU call. Patterns are
    found by tracing each module's *own* forward with torch.fx (its children are leaves), so
    the model keeps its class, names, parameters (the same Parameter objects) and state_dict
    keys; a module whose forward cannot be traced is left as it is and its children are still
    visited; a module that contains a pattern is replaced by an fx.GraphModule with the same
    children. A pattern is fused only when it is safe: the BatchNorm output feeds only the
    add/ReLU, the add output feeds only the ReLU, and the BatchNorm module is called once.
"""
import logging
import operator

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .nn.batch_norm import BatchNormReLU, SyncBatchNormReLU

log = logging.getLogger("cvkernels")

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_RELU_FUNCTIONS = (torch.relu, torch.relu_, torch.nn.functional.relu)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


class _OwnForwardTracer(fx.Tracer):
    """Traces one module's forward with every submodule kept as a leaf call."""

    def is_leaf_module(self, m, module_qualified_name):
        return True


def _is_relu(node, modules):
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return len(node.args) == 1 and set(node.kwargs) <= {"inplace", "input"}
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return len(node.args) == 1 and not node.kwargs
    return False


def _is_add(node):
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return len(node.args) == 2 and not node.kwargs
    if node.op == "call_method" and node.target in ("add", "add_", "__add__", "__iadd__"):
        return len(node.args) == 2 and not node.kwargs
    return False


def _fusable_bn(module):
    return type(module) in _BN_TYPES and not isinstance(module, BatchNormReLU)


def _fuse_bn_relu_in(module, shared, backend):
    """Fuses the patterns in module's own forward. Returns a GraphModule, or None if nothing changed."""
    try:
        graph = _OwnForwardTracer().trace(module)
    except Exception as exc:  # data-dependent control flow, unsupported Python, ...
        log.debug("convert: cannot trace %s (%s); leaving it unchanged", type(module).__name__, exc)
        return None
    modules = dict(module.named_children())
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_module" or "." in node.target or not _fusable_bn(modules.get(node.target)):
            continue
        bn = modules[node.target]
        if calls[node.target] != 1 or id(bn) in shared or len(node.args) != 1 or node.kwargs:
            continue
        users = list(node.users)
        if len(users) != 1:
            continue
        residual, relu = None, None
        if _is_relu(users[0], modules):
            relu = users[0]
        elif _is_add(users[0]):
            add = users[0]
            a, b = add.args
            other = b if a is node else a
            if (a is node) == (b is node) or not isinstance(other, fx.Node):
                continue
            add_users = list(add.users)
            if len(add_users) == 1 and _is_relu(add_users[0], modules):
                residual, relu = other, add_users[0]
        if relu is None:
            continue
        fused_cls = SyncBatchNormReLU if isinstance(bn, nn.SyncBatchNorm) else BatchNormReLU
        setattr(module, node.target, fused_cls.from_batch_norm(bn, backend=backend))
        with graph.inserting_before(relu):
            args = (node.args[0],) if residual is None else (node.args[0], residual)
            fused = graph.call_module(node.target, args)
        relu.replace_all_uses_with(fused)
        graph.erase_node(relu)
        if residual is not None:
            graph.erase_node(add)
        graph.erase_node(node)
        changed = True
    if not changed:
        return None
    graph.lint()
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    # keep children that the graph no longer calls (e.g. an unused ReLU) so state_dict keys stay
    for name, child in module.named_children():
        if not hasattr(gm, name):
            gm.add_module(name, child)
    gm.train(module.training)
    return gm


def _shared_modules(model):
    seen, shared = set(), set()
    for _, m in model.named_modules(remove_duplicate=False):
        (shared if id(m) in seen else seen).add(id(m))
    return shared


def _convert_bn_relu(module, shared, backend):
    for name, child in list(module.named_children()):
        new_child = _convert_bn_relu(child, shared, backend)
        if new_child is not child:
            setattr(module, name, new_child)
    fused = _fuse_bn_relu_in(module, shared, backend)
    return fused if fused is not None else module


def convert(model: nn.Module, *, backend=None, bn_relu=True) -> nn.Module:
    """Routes the supported operators of ``model`` to cvkernels kernels; returns the model.

    Modifies ``model`` in place where it can (sub-modules are swapped; parameters and
    buffers are shared, so optimizers and state_dicts keep working) and returns it; use the
    returned object, which is a ``torch.fx.GraphModule`` when the root module's own forward
    contained a fused pattern. Anything that cannot be converted safely is left unchanged.

    Args:
        model: any nn.Module.
        backend: force a backend for the swapped-in modules (None = automatic dispatch).
        bn_relu: fuse BatchNorm→ReLU and BatchNorm→add→ReLU.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    if bn_relu:
        model = _convert_bn_relu(model, _shared_modules(model), backend)
    return model
