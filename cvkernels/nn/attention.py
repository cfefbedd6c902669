"""Drop-in attention modules on the cvkernels flash-attention kernel.

* ``MultiheadAttention``: a subclass of ``torch.nn.MultiheadAttention`` (same constructor,
  parameters and state_dict); its ``need_weights=False`` path runs the flash kernel, anything
  else (attention weights requested, add_bias_kv, add_zero_attn) runs torch's forward.
* ``vit_attention_forward``: the forward of a timm-style ViT ``Attention`` module (qkv / proj
  Linear, num_heads, head_dim, q_norm / k_norm, attn_drop, proj_drop) on the flash kernel;
  ``convert`` installs it on such modules (see cvkernels/convert.py).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.attention import scaled_dot_product_attention

__all__ = ["MultiheadAttention", "vit_attention_forward"]


def _heads_view(x, batch_first, num_heads):
    """(B, L, E) or (L, B, E) projection -> (B, H, L, E/H) view (no copy)."""
    if batch_first:
        B, L, E = x.shape
        return x.view(B, L, num_heads, E // num_heads).transpose(1, 2)
    L, B, E = x.shape
    return x.view(L, B, num_heads, E // num_heads).permute(1, 2, 0, 3)


def _additive(mask, dtype):
    """An nn.MultiheadAttention mask (bool: True = not allowed; float: added) as a float mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` on the cvkernels flash-attention kernel.

    Same constructor (plus keyword-only ``backend``), parameters and state_dict. ``forward`` has
    torch's signature; with ``need_weights=False`` it returns ``(output, None)`` computed by
    cvkernels.scaled_dot_product_attention. Shapes: query (B, L, E) if batch_first else (L, B, E)
    (or unbatched (L, E)), key / value (.., S, kdim / vdim); key_padding_mask (B, S) and attn_mask
    (L, S) or (B * num_heads, L, S), bool (True = not allowed, torch's convention) or float.
    """

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention, backend: Optional[str] = None) -> "MultiheadAttention":
        """Turns `module` into this class in place (same object and parameters) and returns it."""
        module.__class__ = cls
        module.backend = backend
        return module

    def _flash_supported(self, query, key, value, key_padding_mask, attn_mask):
        if self.bias_k is not None or self.add_zero_attn or query.dim() not in (2, 3):
            return False
        if not (query.dim() == key.dim() == value.dim()):
            return False
        dtype = query.dtype
        params = [p for p in (self.in_proj_weight, self.q_proj_weight, self.out_proj.weight) if p is not None]
        if any(p.dtype != dtype for p in params) or key.dtype != dtype or value.dtype != dtype:
            return False
        for m in (key_padding_mask, attn_mask):
            if m is not None and m.dtype != torch.bool and not m.is_floating_point():
                return False
        return True

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        if need_weights or not self._flash_supported(query, key, value, key_padding_mask, attn_mask):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if query.dim() == 2:  # unbatched
            kpm = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
            out, _ = self.forward(query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), kpm, False,
                                  attn_mask, average_attn_weights, is_causal) if not self.batch_first else \
                self.forward(query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0), kpm, False, attn_mask,
                             average_attn_weights, is_causal)
            return out.squeeze(1 if not self.batch_first else 0), None
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: need attn_mask if specifying the is_causal hint "
                               "(as torch.nn.MultiheadAttention)")
        E, H = self.embed_dim, self.num_heads
        q, k, v = self._project(query, key, value)
        q, k, v = (_heads_view(t, self.batch_first, H) for t in (q, k, v))
        B, L, S = q.shape[0], q.shape[2], k.shape[2]
        causal = bool(is_causal) and key_padding_mask is None
        mask = None
        if not causal:
            mask = self._merged_mask(key_padding_mask, attn_mask, B, L, S, q.dtype)
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=causal, backend=self.backend)
        # out (B, H, L, hd) in q's memory order: back to (B, L, E) / (L, B, E) as views
        out = out.transpose(1, 2).reshape(B, L, E) if self.batch_first else out.permute(2, 0, 1, 3).reshape(L, B, E)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias), None

    def _project(self, query, key, value):
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            w, b = self.in_proj_weight, self.in_proj_bias
            if query is key and key is value:  # self-attention: one GEMM, q/k/v are views of it
                qkv = F.linear(query, w, b)
                return qkv[..., :E], qkv[..., E:2 * E], qkv[..., 2 * E:]
            ws = w.chunk(3)
            bs = b.chunk(3) if b is not None else (None, None, None)
            if key is value:
                kv = F.linear(key, w[E:], b[E:] if b is not None else None)
                return F.linear(query, ws[0], bs[0]), kv[..., :E], kv[..., E:]
            return F.linear(query, ws[0], bs[0]), F.linear(key, ws[1], bs[1]), F.linear(value, ws[2], bs[2])
        b = self.in_proj_bias
        bs = b.chunk(3) if b is not None else (None, None, None)
        return (F.linear(query, self.q_proj_weight, bs[0]), F.linear(key, self.k_proj_weight, bs[1]),
                F.linear(value, self.v_proj_weight, bs[2]))

    def _merged_mask(self, key_padding_mask, attn_mask, B, L, S, dtype):
        """key_padding_mask and attn_mask as one SDPA mask broadcastable to (B, H, L, S)."""
        masks = []
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (L, S):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, but should be "
                                       f"{(L, S)}.")
                masks.append(attn_mask.view(1, 1, L, S))
            elif attn_mask.dim() == 3:
                if tuple(attn_mask.shape) != (B * self.num_heads, L, S):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, but should be "
                                       f"{(B * self.num_heads, L, S)}.")
                masks.append(attn_mask.view(B, self.num_heads, L, S))
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (B, S):
                raise RuntimeError(f"expecting key_padding_mask shape of {(B, S)}, but got "
                                   f"{tuple(key_padding_mask.shape)}")
            masks.append(key_padding_mask.view(B, 1, 1, S))
        if not masks:
            return None
        if all(m.dtype == torch.bool for m in masks):  # torch's True = masked; SDPA's True = attend
            allowed = ~masks[0]
            for m in masks[1:]:
                allowed = allowed & ~m
            return allowed
        total = _additive(masks[0], dtype)
        for m in masks[1:]:
            total = total + _additive(m, dtype)
        return total


def vit_attention_forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    """timm's ``Attention.forward`` (x (B, N, C) -> (B, N, C)) with the attention on the flash
    kernel: q, k, v are strided views of the qkv projection, read in place."""
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    drop = self.attn_drop.p if self.training else 0.0
    out = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop, scale=self.scale,
                                       backend=getattr(self, "_cvk_backend", None))
    out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
    norm = getattr(self, "norm", None)
    if norm is not None:
        out = norm(out)
    return self.proj_drop(self.proj(out))
