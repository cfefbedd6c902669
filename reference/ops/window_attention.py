"""Float64 oracle of Swin's (shifted) window attention, written plainly as in the paper and
in timm 1.0's SwinTransformerBlock / WindowAttention. Never imports cvkernels.

Forms:
  window_attention(qkv, table, num_heads, window_size, mask, scale)
      qkv (B_, N, 3C): windows of N = Mh*Mw tokens after the qkv Linear, last dim ordered
      (3, heads, head_dim); mask None or additive (nW, N, N), window b uses mask[b % nW].
      Returns (B_, N, C), C ordered (heads, head_dim).
  shifted_window_attention(qkv, table, num_heads, window_size, shift_size, scale, unpadded_size)
      qkv (B, H, W, 3C) with H, W multiples of the window: roll by -shift, partition, attention
      with the shift mask of the padded map, merge, roll back. unpadded_size (h, w): only the
      first h rows / w columns are rolled (timm rolls before padding); default (H, W).
  swin_block_attention(x, qkv_weight, qkv_bias, proj_weight, proj_bias, table, num_heads,
                       window_size, shift_size, scale)
      timm's SwinTransformerBlock._attn on x (B, H, W, C) after norm1, any H, W: roll, zero pad
      to window multiples, partition, qkv Linear, attention (+ shift mask of the padded size),
      proj Linear, merge, crop, roll back.
"""
import torch


def _pair(v):
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def relative_position_index(win_h, win_w):
    """(N, N) int64: (hi - hj + Mh - 1) * (2Mw - 1) + (wi - wj + Mw - 1), tokens row-major."""
    coords = torch.stack(torch.meshgrid(torch.arange(win_h), torch.arange(win_w), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    return (rel[0] + win_h - 1) * (2 * win_w - 1) + (rel[1] + win_w - 1)


def relative_position_bias(table, win_h, win_w):
    """(heads, N, N) gathered from the ((2Mh-1)(2Mw-1), heads) table."""
    n = win_h * win_w
    idx = relative_position_index(win_h, win_w).to(table.device)
    return table[idx.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)


def window_partition(x, win_h, win_w):
    """(B, H, W, C) -> (B * nW, Mh * Mw, C), windows row-major over the map."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // win_h, win_h, W // win_w, win_w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win_h * win_w, C)


def window_reverse(windows, win_h, win_w, H, W):
    """(B * nW, Mh * Mw, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.reshape(-1, H // win_h, W // win_w, win_h, win_w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def shift_attention_mask(H, W, window_size, shift_size, dtype=torch.float64, device="cpu"):
    """(nW, N, N) additive mask of SW-MSA on an (H, W) map (the padded size): regions per
    dimension are the slices (0, -M), (-M, -shift), (-shift, None); tokens of different regions
    get -100. None when there is no shift (the paper's / timm's construction, slice by slice)."""
    win_h, win_w = _pair(window_size)
    sh, sw = _pair(shift_size)
    if sh == 0 and sw == 0:
        return None
    img = torch.zeros((1, H, W, 1), dtype=dtype, device=device)
    label = 0
    for hs in (slice(0, -win_h), slice(-win_h, -sh), slice(-sh, None)):
        for ws in (slice(0, -win_w), slice(-win_w, -sw), slice(-sw, None)):
            img[:, hs, ws, :] = label
            label += 1
    windows = window_partition(img, win_h, win_w).squeeze(-1)  # nW, N
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


def window_attention(qkv, table, num_heads, window_size, mask=None, scale=None):
    """Oracle of timm's WindowAttention after its qkv Linear: (B_, N, 3C) -> (B_, N, C), float64."""
    win_h, win_w = _pair(window_size)
    qkv = qkv.double()
    table = table.double()
    B_, N, C3 = qkv.shape
    C = C3 // 3
    D = C // num_heads
    scale = D ** -0.5 if scale is None else scale
    q, k, v = qkv.reshape(B_, N, 3, num_heads, D).permute(2, 0, 3, 1, 4)  # each B_, heads, N, D
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn + relative_position_bias(table, win_h, win_w).unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.reshape(B_ // nw, nw, num_heads, N, N) + mask.double().unsqueeze(1).unsqueeze(0)
        attn = attn.reshape(B_, num_heads, N, N)
    attn = torch.softmax(attn, dim=-1)
    return (attn @ v).transpose(1, 2).reshape(B_, N, C)


def _roll_valid(x, shifts, valid):
    """Rolls dims 1 and 2 of x by `shifts`, over the first valid[0] rows / valid[1] columns only."""
    for dim, s, n in ((1, shifts[0], valid[0]), (2, shifts[1], valid[1])):
        if s == 0:
            continue
        head, tail = x.narrow(dim, 0, n), x.narrow(dim, n, x.shape[dim] - n)
        x = torch.cat([torch.roll(head, s, dim), tail], dim)
    return x


def shifted_window_attention(qkv, table, num_heads, window_size, shift_size=0, scale=None, unpadded_size=None):
    """Oracle of the fused op on a qkv map (B, H, W, 3C) -> (B, H, W, C), float64."""
    win_h, win_w = _pair(window_size)
    sh, sw = _pair(shift_size)
    qkv = qkv.double()
    B, H, W, C3 = qkv.shape
    valid = (H, W) if unpadded_size is None else _pair(unpadded_size)
    shifted = _roll_valid(qkv, (-sh, -sw), valid)
    windows = window_partition(shifted, win_h, win_w)
    mask = shift_attention_mask(H, W, (win_h, win_w), (sh, sw), device=qkv.device)
    out = window_attention(windows, table, num_heads, (win_h, win_w), mask, scale)
    out = window_reverse(out, win_h, win_w, H, W)
    return _roll_valid(out, (sh, sw), valid)


def swin_block_attention(x, qkv_weight, qkv_bias, proj_weight, proj_bias, table, num_heads, window_size,
                         shift_size=0, scale=None):
    """Oracle of timm 1.0's SwinTransformerBlock._attn (x after norm1, (B, H, W, C)), float64."""
    win_h, win_w = _pair(window_size)
    sh, sw = _pair(shift_size)
    x = x.double()
    B, H, W, C = x.shape
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    pad_h = (win_h - H % win_h) % win_h
    pad_w = (win_w - W % win_w) % win_w
    x = torch.nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    windows = window_partition(x, win_h, win_w)
    qkv = windows @ qkv_weight.double().t()
    if qkv_bias is not None:
        qkv = qkv + qkv_bias.double()
    mask = shift_attention_mask(Hp, Wp, (win_h, win_w), (sh, sw), device=x.device)
    out = window_attention(qkv, table, num_heads, (win_h, win_w), mask, scale)
    out = out @ proj_weight.double().t()
    if proj_bias is not None:
        out = out + proj_bias.double()
    out = window_reverse(out, win_h, win_w, Hp, Wp)[:, :H, :W, :]
    if sh or sw:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out
