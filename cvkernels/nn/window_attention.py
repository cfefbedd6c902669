"""Drop-in Swin WindowAttention (timm 1.0's constructor, parameter and buffer names, so a timm
state_dict loads) on the fused cvkernels kernel, and the fused replacement of a timm-style
SwinTransformerBlock._attn.

  WindowAttention(dim, num_heads, head_dim=None, window_size=7, qkv_bias=True, attn_drop=0.,
                  proj_drop=0., *, backend=None)
      .forward(x (B_, N, C), mask=None) -> (B_, N, C)        timm's WindowAttention.forward
      .forward_map(x (B, H, W, C), shift_size=0) -> (B, H, W, C)
          timm's SwinTransformerBlock._attn with this module's parameters: pad, qkv Linear,
          fused shifted-window attention, crop, proj — one kernel between the two Linears.
  fused_swin_attn(block, x)        block._attn(x) of a timm-style SwinTransformerBlock (attributes
                                   window_size, shift_size tuples and attn) on the fused kernel
  FusedSwinAttnMixin / fuse_swin_block(block)   make a block's _attn that function, in place
  WINDOW_ROUTES                    for cvkernels.convert: kind -> (family, {method: replacement},
                                   matcher) for timm SwinTransformerBlock._attn and
                                   WindowAttention.forward (methods read self._cvk_backend)
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import window_attention as ops

__all__ = ["WindowAttention", "attention_map", "fused_swin_attn", "swin_block_attn", "window_attention_forward",
           "is_window_attention", "is_swin_block", "WINDOW_ROUTES", "FusedSwinAttnMixin", "fuse_swin_block",
           "unfuse_swin_block"]


def _to_2tuple(v):
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def attention_map(attn: nn.Module, x: Tensor, window_size: Sequence[int], shift_size: Sequence[int],
                  backend: Optional[str] = None, roll_before_pad: bool = True) -> Tensor:
    """timm 1.0's SwinTransformerBlock._attn on x (B, H, W, C) (after norm1) with the parameters of
    `attn` (a timm or cvkernels WindowAttention: qkv, proj, proj_drop, attn_drop,
    relative_position_bias_table, num_heads, scale).

    timm rolls x by -shift, zero-pads it to window multiples (bottom/right), partitions, applies
    the qkv Linear per window (padded tokens carry the qkv bias), attends with the shift mask of
    the padded size, applies proj, merges, crops and rolls back. Here x is padded first (F.pad,
    so padded tokens still carry the bias), the qkv Linear runs once on the map, and the kernel
    does roll (over the unpadded rows/columns, timm's order), partition, mask, merge and the
    reverse roll by index arithmetic; crop and proj follow. Returns (B, H, W, C).
    roll_before_pad=False is the other order (pad, then roll the padded map, as the Swin authors'
    detection code does): the kernel then rolls over the padded size. The two agree when H and
    W are window multiples.
    """
    B, H, W, C = x.shape
    mh, mw = _to_2tuple(window_size)
    sh, sw = _to_2tuple(shift_size)
    pad_h = (mh - H % mh) % mh
    pad_w = (mw - W % mw) % mw
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    qkv = attn.qkv(x)
    dropout_p = attn.attn_drop.p if attn.training else 0.0
    out = ops.shifted_window_attention(qkv, attn.relative_position_bias_table, attn.num_heads, (mh, mw), (sh, sw),
                                       attn.scale, unpadded_size=(H, W) if roll_before_pad else None,
                                       dropout_p=dropout_p, backend=backend)
    if pad_h or pad_w:
        out = out[:, :H, :W, :]
    return attn.proj_drop(attn.proj(out))


class WindowAttention(nn.Module):
    """Window based multi-head self attention (W-MSA / SW-MSA) with relative position bias,
    timm 1.0's ``WindowAttention`` on the fused cvkernels kernel.

    Args:
        dim: input channels C.
        num_heads: attention heads.
        head_dim: channels per head (default dim // num_heads); attn_dim = head_dim * num_heads.
        window_size: M or (Mh, Mw).
        qkv_bias: bias of the qkv Linear.
        attn_drop: attention dropout (training only; runs the torch path).
        proj_drop: dropout after proj.
        backend: keyword-only, None (automatic) | 'triton' | 'torch'.

    Parameters and buffers (timm's names): qkv (Linear dim -> 3 attn_dim), proj (Linear attn_dim
    -> dim), relative_position_bias_table ((2Mh-1)(2Mw-1), num_heads), relative_position_index
    (N, N) non-persistent buffer.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: Optional[int] = None,
                 window_size: Union[int, Tuple[int, int]] = 7, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., *, backend: Optional[str] = None):
        super().__init__()
        self.dim = dim
        self.window_size = _to_2tuple(window_size)
        win_h, win_w = self.window_size
        self.window_area = win_h * win_w
        self.num_heads = num_heads
        head_dim = head_dim or dim // num_heads
        attn_dim = head_dim * num_heads
        self.scale = head_dim ** -0.5
        self.backend = backend
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win_h - 1) * (2 * win_w - 1), num_heads))
        self.register_buffer("relative_position_index", ops.relative_position_index(win_h, win_w), persistent=False)
        self.qkv = nn.Linear(dim, attn_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(attn_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.softmax = nn.Softmax(dim=-1)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """x (B_, N, C) windows, mask None or additive (nW, N, N) with B_ % nW == 0 -> (B_, N, C)."""
        qkv = self.qkv(x)
        dropout_p = self.attn_drop.p if self.training else 0.0
        out = ops.window_attention(qkv, self.relative_position_bias_table, self.num_heads, self.window_size, mask,
                                   self.scale, dropout_p=dropout_p, backend=self.backend)
        return self.proj_drop(self.proj(out))

    def forward_map(self, x: Tensor, shift_size: Union[int, Tuple[int, int]] = 0) -> Tensor:
        """x (B, H, W, C), any H, W -> (B, H, W, C): timm's SwinTransformerBlock._attn (pad, roll,
        partition, attention with the shift mask of the padded size, merge, crop, roll back)."""
        return attention_map(self, x, self.window_size, _to_2tuple(shift_size), self.backend)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # timm < 1.0 saved relative_position_index (persistent); it is derived from window_size
        index = state_dict.pop(prefix + "relative_position_index", None)
        if index is not None and not torch.equal(index.to(self.relative_position_index.device),
                                                 self.relative_position_index):
            error_msgs.append(f"{prefix}relative_position_index in the state_dict does not match window_size "
                              f"{self.window_size}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self):
        return (f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"
                + (f", backend={self.backend!r}" if self.backend else ""))

    @classmethod
    def from_timm(cls, attn: nn.Module, backend: Optional[str] = None) -> "WindowAttention":
        """A cvkernels WindowAttention sharing a timm WindowAttention's parameters and buffers (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in ("dim", "window_size", "window_area", "num_heads", "scale"):
            setattr(new, name, getattr(attn, name))
        new.window_size = _to_2tuple(new.window_size)
        new.backend = backend
        new.training = attn.training
        for name, child in attn.named_children():
            new.add_module(name, child)
        new.relative_position_bias_table = attn.relative_position_bias_table
        new.register_buffer("relative_position_index", attn.relative_position_index, persistent=False)
        return new


def fused_swin_attn(block: nn.Module, x: Tensor, backend: Optional[str] = None) -> Tensor:
    """``block._attn(x)`` of a timm-style SwinTransformerBlock (window_size and shift_size tuples,
    attn a WindowAttention) on the fused kernel. x (B, H, W, C) after norm1 -> (B, H, W, C).
    backend: None takes the block's ``_cvk_backend`` attribute (set by convert / fuse_swin_block).
    A block attribute ``roll_before_pad`` (reference/models/swin.py) False selects pad-then-roll."""
    if backend is None:
        backend = getattr(block, "_cvk_backend", None)
    return attention_map(block.attn, x, block.window_size, block.shift_size, backend,
                         roll_before_pad=getattr(block, "roll_before_pad", True))


def swin_block_attn(self, x: Tensor) -> Tensor:
    """Method form of :func:`fused_swin_attn`: the replacement of SwinTransformerBlock._attn."""
    return fused_swin_attn(self, x)


def window_attention_forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """timm's ``WindowAttention.forward`` (x (B_, N, C) windows, mask None or (nW, N, N)) with the
    attention on the fused kernel; the method replacement for a timm WindowAttention instance."""
    qkv = self.qkv(x)
    dropout_p = self.attn_drop.p if self.training else 0.0
    out = ops.window_attention(qkv, self.relative_position_bias_table, self.num_heads, _to_2tuple(self.window_size),
                               mask, self.scale, dropout_p=dropout_p,
                               backend=getattr(self, "_cvk_backend", getattr(self, "backend", None)))
    return self.proj_drop(self.proj(out))


def is_window_attention(m: nn.Module) -> bool:
    """A timm (v1) Swin ``WindowAttention`` (not cvkernels' own, not SwinV2's cosine attention):
    qkv / proj Linear, a ((2Mh-1)(2Mw-1), heads) relative_position_bias_table, window_size,
    num_heads, scale, attn_drop / proj_drop."""
    if isinstance(m, WindowAttention) or type(m).__name__ != "WindowAttention":
        return False
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    table, heads = getattr(m, "relative_position_bias_table", None), getattr(m, "num_heads", None)
    window = getattr(m, "window_size", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(table, torch.Tensor)
            and isinstance(heads, int) and heads > 0 and window is not None and hasattr(m, "scale")
            and isinstance(getattr(m, "attn_drop", None), nn.Dropout)
            and isinstance(getattr(m, "proj_drop", None), nn.Module)):
        return False
    if hasattr(m, "logit_scale") or hasattr(m, "cpb_mlp"):  # SwinV2: cosine attention, continuous bias
        return False
    mh, mw = _to_2tuple(window)
    return (tuple(table.shape) == ((2 * mh - 1) * (2 * mw - 1), heads) and qkv.out_features % (3 * heads) == 0
            and proj.in_features * 3 == qkv.out_features)


def is_swin_block(m: nn.Module) -> bool:
    """A timm 1.0 ``SwinTransformerBlock``: window_size / shift_size, an ``_attn`` method and a
    (timm or cvkernels) WindowAttention as ``attn``."""
    attn = getattr(m, "attn", None)
    return (type(m).__name__ == "SwinTransformerBlock" and callable(getattr(m, "_attn", None))
            and hasattr(m, "window_size") and hasattr(m, "shift_size")
            and (isinstance(attn, WindowAttention) or (attn is not None and is_window_attention(attn))))


# convert's routing table: kind -> (dispatch family, {method name: replacement}, matcher)
WINDOW_ROUTES = {
    "swin_block": ("window_attention", {"_attn": swin_block_attn}, is_swin_block),
    "window_attention": ("window_attention", {"forward": window_attention_forward}, is_window_attention),
}


class FusedSwinAttnMixin:
    """Put before a timm SwinTransformerBlock class in the bases: ``_attn`` runs fused_swin_attn
    (the block's ``_cvk_backend`` attribute, if set, names the backend)."""

    def _attn(self, x):
        return fused_swin_attn(self, x)


_FUSED_CLASSES = {}


def _fused_class(base):
    if getattr(base, "_cvk_swin_base", None) is not None:
        return base
    if base not in _FUSED_CLASSES:
        _FUSED_CLASSES[base] = type(base.__name__, (FusedSwinAttnMixin, base), {
            "_cvk_swin_base": base, "__reduce_ex__": _reduce_fused, "__module__": base.__module__,
            "__qualname__": base.__qualname__, "__doc__": base.__doc__})
    return _FUSED_CLASSES[base]


def _reduce_fused(self, protocol):
    return _rebuild_fused, (type(self)._cvk_swin_base, dict(self.__dict__))


def _rebuild_fused(base, state):
    block = base.__new__(base)
    block.__dict__.update(state)
    block.__class__ = _fused_class(base)
    return block


def fuse_swin_block(block: nn.Module, backend: Optional[str] = None) -> nn.Module:
    """Makes `block` (a timm-style SwinTransformerBlock) run its _attn on the fused kernel, in place:
    same object, parameters and state_dict; its class becomes a subclass with FusedSwinAttnMixin
    (pickling and deepcopy keep it fused). Returns the block."""
    for name in ("attn", "window_size", "shift_size"):
        if not hasattr(block, name):
            raise TypeError(f"fuse_swin_block: {type(block).__name__} has no attribute {name!r}; "
                            f"expected a timm-style SwinTransformerBlock")
    block.__dict__["_cvk_backend"] = backend
    block.__class__ = _fused_class(type(block))
    return block


def unfuse_swin_block(block: nn.Module) -> nn.Module:
    """Undoes fuse_swin_block, in place."""
    base = getattr(type(block), "_cvk_swin_base", None)
    if base is not None:
        block.__class__ = base
        block.__dict__.pop("_cvk_backend", None)
    return block
