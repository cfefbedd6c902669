"""Reference scaled-dot-product attention, written out plainly (float64-capable).

    softmax(Q K^T * scale + bias) V

q (..., H, Nq, D), k (..., Hkv, Nk, D), v (..., Hkv, Nk, Dv); H a multiple of Hkv (each group of
H / Hkv query heads shares one key/value head). Masks follow SDPA: a bool mask is True where
attention is allowed, a float mask is added to the scores; `causal_offset` shifts the causal
diagonal (query i sees keys j <= i + offset; 0 is SDPA's top-left alignment). A row that sees no
key gives zeros. Dropout takes an explicit keep mask (True = kept), scaled by 1 / (1 - p).
"""
import math

import torch


def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None, causal_offset=0):
    """The (..., H, Nq, Nk) probabilities, zero rows where no key is visible."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    group = q.shape[-3] // k.shape[-3]
    k = k.repeat_interleave(group, dim=-3)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    visible = torch.ones(scores.shape, dtype=torch.bool, device=q.device)
    if is_causal:
        n_q, n_k = scores.shape[-2], scores.shape[-1]
        i = torch.arange(n_q, device=q.device)[:, None]
        j = torch.arange(n_k, device=q.device)[None, :]
        visible = visible & (j <= i + causal_offset)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            visible = visible & attn_mask
        else:
            scores = scores + attn_mask.to(scores.dtype)
            visible = visible & (attn_mask != float("-inf"))
    scores = scores.masked_fill(~visible, float("-inf"))
    row_max = scores.amax(-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    e = torch.exp(scores - row_max)
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, causal_offset=0,
                                 dropout_p=0.0, keep_mask=None):
    """Attention output (..., H, Nq, Dv). With dropout_p > 0, keep_mask (..., H, Nq, Nk) bool says
    which weights are kept (a kept weight is scaled by 1 / (1 - dropout_p))."""
    p = attention_weights(q, k, attn_mask, is_causal, scale, causal_offset)
    if dropout_p > 0:
        p = torch.where(keep_mask, p / (1.0 - dropout_p), torch.zeros_like(p))
    group = q.shape[-3] // v.shape[-3]
    return torch.matmul(p, v.repeat_interleave(group, dim=-3))
