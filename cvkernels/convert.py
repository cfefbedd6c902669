"""convert(model): route an existing model's operators to cvkernels without rewriting it.

Passes (each family adds its own):
  * BatchNorm → ReLU and BatchNorm → add → ReLU become one BatchNormReLU call. Patterns are
    found by tracing each module's *own* forward with torch.fx (its children are leaves), so
    the model keeps its class, names, parameters (the same Parameter objects) and state_dict
    keys; a module whose forward cannot be traced is left as it is and its children are still
    visited; a module that contains a pattern keeps its children and gets the rewritten
    forward (see _install_forward). A pattern is fused only when it is safe: the BatchNorm output feeds only the
    add/ReLU, the add output feeds only the ReLU, and the BatchNorm module is called once.
  * Detection operators: RoIAlign / RoIPool / MultiScaleRoIAlign modules (torchvision's names and
    attributes) and BatchedNMS modules (an ``iou_threshold``) get a routed subclass whose forward runs
    cvkernels' RoI and NMS kernels (see convert's ``detection``).
"""
import inspect
import logging
import operator

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import _dispatch
from .nn.batch_norm import BatchNormReLU, SyncBatchNormReLU
from .nn.attention import MultiheadAttention, vit_attention_forward
from .nn.conv import Conv2d, ConvTranspose2d
from .nn.roi import MultiScaleRoIAlign as _CvkMultiScaleRoIAlign, RoIAlign as _CvkRoIAlign, RoIPool as _CvkRoIPool
from .ops.nms import batched_nms as _batched_nms
from .ops.roi import roi_align as _roi_align, roi_pool as _roi_pool
from .ops.volume_render import volume_render as _volume_render
from .nn.volume_render import VolumeRenderer as _CvkVolumeRenderer

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


def _fused_from(bn, backend):
    """The BatchNormReLU module replacing `bn`, sharing its parameters and buffers."""
    fused_cls = SyncBatchNormReLU if isinstance(bn, nn.SyncBatchNorm) else BatchNormReLU
    return fused_cls.from_batch_norm(bn, backend=backend)


def _fusable_bn(module):
    return type(module) in _BN_TYPES and not isinstance(module, BatchNormReLU)


def _fuse_bn_relu_in(module, shared, backend):
    """Fuses the patterns in module's own forward, in place. Returns module, or None if nothing changed."""
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
    fused_names = []
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
        setattr(module, node.target, _fused_from(bn, backend))
        fused_names.append(node.target)
        with graph.inserting_before(relu):
            args = (node.args[0],) if residual is None else (node.args[0], residual)
            fused = graph.call_module(node.target, args)
        relu.replace_all_uses_with(fused)
        graph.erase_node(relu)
        if residual is not None:
            graph.erase_node(add)
        graph.erase_node(node)
    if not fused_names:
        return None
    graph.lint()
    _install_forward(module, graph, backend, fused_names)
    return module


def _install_forward(module, graph, backend, fused_names):
    """Gives `module` the rewritten forward while keeping its class (as a subclass), attributes,
    children order and state_dict. Pickling and deepcopy rebuild it from the unfused state."""
    gm = fx.GraphModule(module, graph)
    for node in graph.nodes:  # constants the tracer lifted onto the GraphModule
        if node.op == "get_attr" and "." not in node.target and not hasattr(module, node.target):
            object.__setattr__(module, node.target, getattr(gm, node.target))
    module.__dict__["_cvk_forward"] = type(gm).forward
    module.__dict__["_cvk_fused"] = tuple(fused_names)
    module.__dict__["_cvk_backend"] = backend
    module.__class__ = _converted_class(type(module))


_CONVERTED_CLASSES = {}


def _converted_class(base):
    if getattr(base, "_cvk_base", None) is not None:
        return base
    if base not in _CONVERTED_CLASSES:
        def forward(self, *args, **kwargs):
            fused_forward = self.__dict__.get("_cvk_forward")
            if fused_forward is None:  # e.g. a slice of a converted Sequential
                return base.forward(self, *args, **kwargs)
            return fused_forward(self, *args, **kwargs)

        _CONVERTED_CLASSES[base] = type(base.__name__, (base,), {
            "forward": forward, "_cvk_base": base, "__reduce_ex__": _reduce_converted,
            "__module__": base.__module__, "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
        })
    return _CONVERTED_CLASSES[base]


def _reduce_converted(self, protocol):
    state = dict(self.__dict__)
    state.pop("_cvk_forward", None)
    fused = state.pop("_cvk_fused", ())
    backend = state.pop("_cvk_backend", None)
    state["_modules"] = dict(state["_modules"])
    for name in fused:
        state["_modules"][name] = state["_modules"][name].to_batch_norm()
    return _rebuild_converted, (type(self)._cvk_base, state, backend)


def _rebuild_converted(base, state, backend):
    module = base.__new__(base)
    module.__dict__.update(state)
    _fuse_bn_relu_in(module, set(), backend)
    return module


def _shared_modules(model):
    seen, shared = set(), set()
    for _, m in model.named_modules(remove_duplicate=False):
        (shared if id(m) in seen else seen).add(id(m))
    return shared


def _fuse_sequential(seq, shared, backend):
    """nn.Sequential: BN at i and ReLU at i + 1 become BatchNormReLU and Identity (no tracing)."""
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        bn, relu = seq._modules[a], seq._modules[b]
        if _fusable_bn(bn) and id(bn) not in shared and type(relu) is nn.ReLU and id(relu) not in shared:
            seq._modules[a] = _fused_from(bn, backend)
            seq._modules[b] = nn.Identity()


def _convert_bn_relu(module, shared, backend):
    for child in module.children():
        _convert_bn_relu(child, shared, backend)
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        _fuse_sequential(module, shared, backend)
    else:
        _fuse_bn_relu_in(module, shared, backend)


_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu"}


def _conv_wins(conv):
    """Whether a cvkernels kernel serves this nn.Conv2d (depthwise, grouped or dilated, zeros
    or other padding modes); dense convs stay on cuDNN."""
    return conv.groups > 1 or tuple(conv.dilation) != (1, 1)


def _family_backend(family, backend):
    """`backend` if `family` has it (or it is "torch"), else None (automatic)."""
    if backend is None or backend == "torch":
        return backend
    impls = _dispatch.FAMILIES[family]
    return backend if backend in impls["gpu"] + impls["cpu"] else None


def _conv_backend(module, backend):
    """`backend` if the module's conv family has it (or it is "torch"), else None (automatic):
    convert(model, backend="cpp") names the BatchNorm backend; convolutions have no C++ one."""
    if isinstance(module, nn.ConvTranspose2d):
        family = "conv_transpose2d"
    elif module.groups > 1 and module.groups == module.in_channels:
        family = "depthwise_conv2d"
    else:
        family = "conv2d"
    return _family_backend(family, backend)


def _swap_conv(module, backend):
    """Turns an nn.Conv2d / nn.ConvTranspose2d that cvkernels serves into the cvkernels
    subclass in place (same object, parameters and hooks). Returns whether it did."""
    if type(module) is nn.Conv2d and _conv_wins(module):
        module.__class__ = Conv2d
    elif type(module) is nn.ConvTranspose2d and module.padding_mode == "zeros":
        module.__class__ = ConvTranspose2d
    else:
        return False
    module.activation, module.backend = None, _conv_backend(module, backend)
    return True


def _fuse_conv_activation(seq, shared):
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        conv, act = seq._modules[a], seq._modules[b]
        if (isinstance(conv, (Conv2d, ConvTranspose2d)) and conv.activation is None and id(conv) not in shared
                and type(act) in _ACTIVATION_MODULES and id(act) not in shared):
            conv.activation = _ACTIVATION_MODULES[type(act)]
            seq._modules[b] = nn.Identity()


def _convert_convs(model, shared, backend):
    for module in model.modules():
        _swap_conv(module, backend)
    for module in model.modules():
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            _fuse_conv_activation(module, shared)


def _is_vit_attention(m):
    """A timm-style ViT ``Attention``: qkv / proj Linear, num_heads x head_dim, q/k norms, dropouts."""
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    heads, head_dim = getattr(m, "num_heads", None), getattr(m, "head_dim", None)
    return (type(m).__name__ == "Attention" and isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)
            and isinstance(heads, int) and isinstance(head_dim, int) and qkv.out_features == 3 * heads * head_dim
            and all(isinstance(getattr(m, a, None), nn.Module) for a in ("q_norm", "k_norm", "proj_drop"))
            and isinstance(getattr(m, "attn_drop", None), nn.Dropout) and hasattr(m, "scale"))


# kind -> (the family that runs it, {method name: replacement}); the Swin kinds come from
# cvkernels.nn.window_attention (WINDOW_ROUTES, with their matchers)
_ROUTES = {"vit_attention": ("flash_attention", {"forward": vit_attention_forward})}
_ROUTED_CLASSES = {}


def _routed_class(base, kind):
    """A subclass of `base` whose methods named in _ROUTES[kind] run on cvkernels (isinstance and
    the class name are kept; instances deep-copy and pickle by rebuilding from `base`)."""
    if getattr(base, "_cvk_routed_base", None) is not None:
        return base
    key = (base, kind)
    if key not in _ROUTED_CLASSES:
        _ROUTED_CLASSES[key] = type(base.__name__, (base,), {
            **_ROUTES[kind][1], "_cvk_routed_base": base, "_cvk_routed_kind": kind,
            "__reduce_ex__": _reduce_routed, "__module__": base.__module__, "__qualname__": base.__qualname__,
            "__doc__": base.__doc__})
    return _ROUTED_CLASSES[key]


def _route(module, kind, backend):
    module.__class__ = _routed_class(type(module), kind)
    module.__dict__["_cvk_backend"] = _family_backend(_ROUTES[kind][0], backend)
    module.__dict__["_cvkernels_kernel"] = _ROUTES[kind][0]


def _reduce_routed(self, protocol):
    cls = type(self)
    return _rebuild_routed, (cls._cvk_routed_base, dict(self.__dict__), cls._cvk_routed_kind)


def _rebuild_routed(base, state, kind):
    module = base.__new__(base)
    module.__dict__.update(state)
    module.__class__ = _routed_class(base, kind)
    return module


def _attention_kind(module):
    if getattr(type(module), "_cvk_routed_base", None) is not None:
        return None
    if _is_vit_attention(module):
        return "vit_attention"
    for kind, (_, _, matches) in _WINDOW_ROUTES.items():
        if matches(module):
            return kind
    return None


_WINDOW_ROUTES = {}
from .nn.window_attention import WINDOW_ROUTES as _SWIN_ROUTES  # noqa: E402
_WINDOW_ROUTES.update(_SWIN_ROUTES)
_ROUTES.update({kind: (family, methods) for kind, (family, methods, _) in _SWIN_ROUTES.items()})


def _convert_attention(model, backend):
    for module in model.modules():
        if type(module) is nn.MultiheadAttention:
            MultiheadAttention.from_module(module, backend=_family_backend("flash_attention", backend))
            module.__dict__["_cvkernels_kernel"] = "flash_attention"
            continue
        kind = _attention_kind(module)
        if kind is not None:
            _route(module, kind, backend)


# ----------------------------------------------------------------------------- detection operators
# torchvision's (and reference/models/_detection.py's) RoIAlign / RoIPool / MultiScaleRoIAlign and BatchedNMS
# modules, matched by class name and attributes, run their forward on cvkernels' RoI / NMS kernels


def _has(m, *attrs):
    return all(hasattr(m, a) for a in attrs)


def _detection_kind(m):
    if getattr(type(m), "_cvk_routed_base", None) is not None or isinstance(m, _CVK_ROI_MODULES):
        return None
    name = type(m).__name__
    if name == "RoIAlign" and _has(m, "output_size", "spatial_scale", "sampling_ratio", "aligned") \
            and getattr(m, "pool_mode", "avg") == "avg":
        return "roi_align"
    if name == "RoIPool" and _has(m, "output_size", "spatial_scale"):
        return "roi_pool"
    if name == "MultiScaleRoIAlign" and _has(m, "featmap_names", "output_size", "sampling_ratio"):
        return "multiscale_roi_align"
    threshold = getattr(m, "iou_threshold", None)
    if name == "BatchedNMS" and isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        return "batched_nms"
    return None


def _routed_roi_align(self, input, rois):
    """torchvision.ops.RoIAlign.forward on cvkernels.roi_align (the module's current attributes)."""
    return _roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, bool(self.aligned),
                      backend=self.__dict__.get("_cvk_backend"))


def _routed_roi_pool(self, input, rois):
    """torchvision.ops.RoIPool.forward on cvkernels.roi_pool."""
    return _roi_pool(input, rois, self.output_size, self.spatial_scale, backend=self.__dict__.get("_cvk_backend"))


def _routed_multiscale_roi_align(self, x, boxes, image_shapes):
    """torchvision.ops.MultiScaleRoIAlign.forward on a cvkernels.nn.MultiScaleRoIAlign of the module's current
    attributes (built per call, so that the levels' scales are inferred from the call's features, as torchvision
    does)."""
    pooler = _CvkMultiScaleRoIAlign(list(self.featmap_names), self.output_size, self.sampling_ratio,
                                    canonical_scale=getattr(self, "canonical_scale", 224),
                                    canonical_level=getattr(self, "canonical_level", 4))
    return pooler(x, boxes, image_shapes)


def _routed_batched_nms(self, boxes, scores, idxs):
    """forward(boxes (K, 4), scores (K,), idxs (K,)) -> kept indices by decreasing score, on cvkernels.batched_nms."""
    return _batched_nms(boxes, scores, idxs, float(self.iou_threshold), backend=self.__dict__.get("_cvk_backend"))


_CVK_ROI_MODULES = (_CvkRoIAlign, _CvkRoIPool, _CvkMultiScaleRoIAlign)
_ROUTES.update({
    "roi_align": ("roi_align", {"forward": _routed_roi_align}),
    "roi_pool": ("roi_pool", {"forward": _routed_roi_pool}),
    "multiscale_roi_align": ("roi_align", {"forward": _routed_multiscale_roi_align}),
    "batched_nms": ("nms", {"forward": _routed_batched_nms}),
})


def _convert_detection(model, backend):
    for module in model.modules():
        kind = _detection_kind(module)
        if kind is not None:
            _route(module, kind, backend)


# ----------------------------------------------------------------------------- volume rendering
# NeRF-style VolumeRenderer modules (reference/models/nerf.py's interface: a ``background`` attribute,
# forward(sigmas (R, S), rgbs (R, S, F), t_starts, t_ends) -> (color, opacity, depth, weights)) run their
# compositing on cvkernels.volume_render


def _is_volume_renderer(m):
    if getattr(type(m), "_cvk_routed_base", None) is not None or isinstance(m, _CvkVolumeRenderer):
        return False
    if type(m).__name__ != "VolumeRenderer" or not hasattr(m, "background"):
        return False
    try:
        params = list(inspect.signature(m.forward).parameters)
    except (TypeError, ValueError):
        return False
    return params[:4] == ["sigmas", "rgbs", "t_starts", "t_ends"]


def _routed_volume_render(self, sigmas, rgbs, t_starts, t_ends):
    """VolumeRenderer.forward on cvkernels.volume_render: (color, opacity, depth, weights)."""
    bg = None if self.background is None else torch.as_tensor(self.background, dtype=rgbs.dtype, device=rgbs.device)
    out = _volume_render(sigmas, rgbs, t_starts, t_ends, background=bg, backend=self.__dict__.get("_cvk_backend"))
    return out.color, out.opacity, out.depth.to(sigmas.dtype), out.weights


_ROUTES["volume_renderer"] = ("volume_render", {"forward": _routed_volume_render})


def _convert_volume_render(model, backend):
    for module in model.modules():
        if _is_volume_renderer(module):
            _route(module, "volume_renderer", backend)


def convert(model: nn.Module, *, backend=None, bn_relu=True, conv=True, attention=True,
            detection=True, volume_render=True) -> nn.Module:
    """Routes the supported operators of ``model`` to cvkernels kernels; returns the model.

    Modifies ``model`` in place and returns it. Parameters and buffers are the same objects
    (optimizers keep working), state_dict keys are unchanged, and every module keeps its
    class (a module whose own forward contained a pattern becomes an instance of a subclass
    of its class with the rewritten forward; it deep-copies and pickles). In nn.Sequential
    containers a BatchNorm followed by ReLU becomes BatchNormReLU followed by Identity.
    Anything that cannot be converted safely is left unchanged.

    Args:
        model: any nn.Module.
        backend: force a backend for the swapped-in modules (None = automatic dispatch).
        bn_relu: fuse BatchNorm→ReLU and BatchNorm→add→ReLU.
        conv: route depthwise / grouped / dilated Conv2d and ConvTranspose2d to cvkernels.
        attention: nn.MultiheadAttention becomes cvkernels.nn.MultiheadAttention (flash kernel on
            its need_weights=False path); timm-style ViT ``Attention`` modules run their attention
            on the flash kernel; Swin ``WindowAttention`` / ``SwinTransformerBlock`` (timm's names
            and attributes) run the fused shifted-window kernel.
        detection: modules named RoIAlign / RoIPool / MultiScaleRoIAlign with torchvision's attributes
            (torchvision.ops' and reference/models/_detection.py's) run on cvkernels.roi_align / roi_pool /
            cvkernels.nn.MultiScaleRoIAlign (``_cvkernels_kernel`` "roi_align" / "roi_pool"), and modules named
            BatchedNMS with an ``iou_threshold`` (forward(boxes, scores, idxs) -> kept indices, torchvision's
            batched_nms semantics) on cvkernels.batched_nms ("nms"). They keep their class (a routed subclass),
            attributes and state; ``backend`` applies to RoIAlign, RoIPool and NMS (MultiScaleRoIAlign
            dispatches automatically).
        volume_render: NeRF ``VolumeRenderer`` modules (a ``background`` attribute and forward(sigmas,
            rgbs, t_starts, t_ends) -> (color, opacity, depth, weights), reference/models/nerf.py's
            interface) composite on cvkernels.volume_render ("volume_render").
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    shared = _shared_modules(model)
    if conv:
        _convert_convs(model, shared, backend)
    if attention:
        _convert_attention(model, backend)
    if detection:
        _convert_detection(model, backend)
    if volume_render:
        _convert_volume_render(model, backend)
    if bn_relu:
        _convert_bn_relu(model, shared, backend)
    return model
