"""Reference Swin Transformers: Swin-T, Swin-S, Swin-B (shifted-window attention, patch merging).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.3236-3254  Kalhor: Swin ("Shifted window Transformer"): hierarchical feature maps and shifted-window
                 attention, self-attention limited to non-overlapping local windows with cross-window
                 connections through the shift; patch merging and Swin Transformer blocks.
  K l.3320-3322  the ImageNet table: Swin-T 29M / 4.5 GFLOPs / 81.3%, Swin-S 50M / 8.7, Swin-B 88M / 15.4.
  O l.443-457    lecture notes: window attention, shifted windows, relative position bias. A l.224.
Paper:
  Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021,
  arXiv:2103.14030: Sec. 3.1 (4x4 patches, linear embedding to C, patch merging: concat of 2x2 neighbours
  -> 4C -> linear to 2C), 3.2 (W-MSA / SW-MSA in alternate blocks, window M = 7, shift floor(M/2), the
  cyclic shift with a mask, relative position bias B from a table of (2M-1)^2 entries per head,
  Attention = softmax(QK^T / sqrt(d) + B) V), 3.3 (Swin-T C = 96, layers {2, 2, 6, 2}; Swin-S C = 96,
  {2, 2, 18, 2}; Swin-B C = 128, {2, 2, 18, 2}; head dim 32: heads {3, 6, 12, 24} / {4, 8, 16, 32}).

Structure and names follow timm 1.0's ``swin_transformer.py`` (channels-last tensors (B, H, W, C) between
blocks; patch_embed.{proj, norm}, layers.N.{downsample, blocks.M.{norm1, attn.{relative_position_bias_table,
qkv, proj}, norm2, mlp.{fc1, fc2}}}, norm, head.fc), so a timm state_dict loads (the buffers
relative_position_index and attn_mask are rebuilt, not loaded). ``WindowAttention`` is timm's module:
softmax((q * scale) @ k^T + B [+ mask]) @ v with the mask added as (B, nW, heads, N, N) +
mask[None, :, None] -- what cvkernels' shifted-window attention fuses.

Resolutions that are not a multiple of the window: ``SwinTransformerBlock._attn`` (x after norm1) does what
timm 1.0 does: cyclic shift of the unpadded map by -shift (torch.roll over dims 1, 2), zero padding at the
bottom / right to a multiple of the window, window partition, ``self.attn(windows, mask=self.attn_mask)``,
window reverse, crop, roll back; the shift mask is built on the padded resolution with the slices
(0, -ws), (-ws, -shift), (-shift, None). (With padding, timm's mask regions then do not line up with the
wrapped-around strips: a timm quirk, kept -- it is what cvkernels' fused kernel reproduces.)
``roll_before_pad=False`` pads first and rolls the padded map (the Swin authors' detection code), where
the regions are exactly the wrapped strips. The two orders agree whenever the resolution is a multiple
of the window (every standard configuration at 224x224) or the block does not shift; the tests check both
against a dense attention written out without partition or roll. PatchMerging zero-pads odd maps to even
sizes (timm 1.0).
Parameter counts (timm): Swin-T 28,288,354, Swin-S 49,606,258, Swin-B 87,768,224.
Nothing here imports cvkernels, torchvision or timm.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register
from .vit import DropPath, Mlp, PatchEmbed, _pair

__all__ = ["window_partition", "window_reverse", "get_relative_position_index", "shift_window_mask",
           "WindowAttention", "SwinTransformerBlock", "PatchMerging", "SwinTransformerStage", "SwinTransformer",
           "swin_t", "swin_s", "swin_b"]


def window_partition(x, window_size):
    """(B, H, W, C) -> (B * nW, wh, ww, C), windows in row-major order; H, W multiples of the window."""
    B, H, W, C = x.shape
    wh, ww = window_size
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, C)


def window_reverse(windows, window_size, H, W):
    """(B * nW, wh, ww, C) -> (B, H, W, C), the inverse of window_partition."""
    wh, ww = window_size
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def get_relative_position_index(win_h, win_w, device=None):
    """(wh*ww, wh*ww) long: for tokens i = (hi, wi), j = (hj, wj) of a window,
    (hi - hj + wh - 1) * (2 ww - 1) + (wi - wj + ww - 1), the row of the bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(win_h, device=device), torch.arange(win_w, device=device),
                                        indexing="ij")).flatten(1)          # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)        # N, N, 2
    return (rel[..., 0] + win_h - 1) * (2 * win_w - 1) + (rel[..., 1] + win_w - 1)


def shift_window_mask(resolution, window_size, shift_size, device=None, dtype=torch.float32):
    """(nW, N, N) additive mask of shifted-window attention, or None without a shift.

    The map is padded to a multiple of the window (Hp, Wp); each padded dimension is cut into the slices
    (0, -ws), (-ws, -shift), (-shift, None) (Swin / timm), giving up to 9 regions; after the cyclic shift
    by -shift, two tokens of a window from different regions were not neighbours: -100.0, else 0.
    """
    if not any(shift_size):
        return None
    Hp, Wp = (math.ceil(r / w) * w for r, w in zip(resolution, window_size))
    img = torch.zeros(1, Hp, Wp, 1, device=device, dtype=dtype)
    cnt = 0
    for h in ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None)):
        for w in ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None)):
            img[:, h[0]:h[1], w[0]:w[1], :] = cnt
            cnt += 1
    regions = window_partition(img, window_size).view(-1, window_size[0] * window_size[1])
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias (timm's ``WindowAttention``).

    forward(x (nW*B, N, C), mask (nW, N, N) additive or None) -> (nW*B, N, C), N = wh * ww:
    softmax((q * scale) @ k^T + B + mask) @ v, B[h, i, j] = table[index[i, j], h].
    """

    def __init__(self, dim, num_heads, head_dim=None, window_size=7, qkv_bias=True, attn_drop=0., proj_drop=0.):
        super().__init__()
        self.dim = dim
        self.window_size = _pair(window_size)
        win_h, win_w = self.window_size
        self.window_area = win_h * win_w
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        attn_dim = self.head_dim * num_heads
        self.scale = self.head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win_h - 1) * (2 * win_w - 1), num_heads))
        self.register_buffer("relative_position_index", get_relative_position_index(win_h, win_w),
                             persistent=False)
        self.qkv = nn.Linear(dim, attn_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(attn_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.softmax = nn.Softmax(dim=-1)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)

    def _get_rel_pos_bias(self):
        """(1, heads, N, N) relative position bias."""
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(self.window_area, self.window_area, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn + self._get_rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, -1)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class SwinTransformerBlock(nn.Module):
    """Swin block on channels-last maps: x (B, H, W, C) -> (B, H, W, C),
    x = x + drop_path1(_attn(norm1(x))); x = x + drop_path2(mlp(norm2(x))).

    window_size / shift_size become (h, w) tuples with timm's rule: where the input resolution is <= the
    window, the window is the resolution and the shift 0 in that dimension.
    roll_before_pad: True (default) rolls the unpadded map and pads after (timm 1.0); False pads first
    and rolls the padded map (the Swin detection code; see the module docstring).
    """

    def __init__(self, dim, input_resolution, num_heads, head_dim=None, window_size=7, shift_size=0, mlp_ratio=4.,
                 qkv_bias=True, proj_drop=0., attn_drop=0., drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 roll_before_pad=True):
        super().__init__()
        self.dim = dim
        self.input_resolution = _pair(input_resolution)
        target_window, target_shift = _pair(window_size), _pair(shift_size)
        self.window_size = tuple(r if r <= w else w for r, w in zip(self.input_resolution, target_window))
        self.shift_size = tuple(0 if r <= w else s for r, w, s in zip(self.input_resolution, self.window_size,
                                                                       target_shift))
        if any(not 0 <= s < w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(f"shift {self.shift_size} must lie in [0, window {self.window_size})")
        self.window_area = self.window_size[0] * self.window_size[1]
        self.mlp_ratio = mlp_ratio
        self.roll_before_pad = roll_before_pad
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, head_dim, self.window_size, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.register_buffer("attn_mask", shift_window_mask(self.input_resolution, self.window_size,
                                                            self.shift_size), persistent=False)

    def _attn(self, x):
        B, H, W, C = x.shape
        if (H, W) != self.input_resolution:
            raise ValueError(f"input resolution {(H, W)} does not match the block's {self.input_resolution}")
        has_shift = any(self.shift_size)
        pad_h = (self.window_size[0] - H % self.window_size[0]) % self.window_size[0]
        pad_w = (self.window_size[1] - W % self.window_size[1]) % self.window_size[1]
        if has_shift and self.roll_before_pad:          # timm: cyclic shift of the unpadded map
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))         # zero-pad bottom / right to window multiples
        Hp, Wp = H + pad_h, W + pad_w
        if has_shift and not self.roll_before_pad:      # Swin detection code: cyclic shift of the padded map
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows.view(-1, self.window_size[0], self.window_size[1], C), self.window_size, Hp, Wp)
        if has_shift and not self.roll_before_pad:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        x = x[:, :H, :W, :]                              # crop the padding
        if has_shift and self.roll_before_pad:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x.contiguous()

    def forward(self, x):
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(B, -1, C)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim): concat of each 2x2 neighbourhood in the order
    (0,0), (1,0), (0,1), (1,1) (row, col offsets; Swin's x0..x3) -> LayerNorm(4C) -> Linear(4C, out_dim, no bias).
    Odd maps are zero-padded at the bottom / right first (timm 1.0)."""

    def __init__(self, dim, out_dim=None, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x):
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H, W = x.shape[1], x.shape[2]
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinTransformerStage(nn.Module):
    """[PatchMerging] then ``depth`` blocks, shifting by window // 2 in every second block."""

    def __init__(self, dim, out_dim, input_resolution, depth, downsample=True, num_heads=4, head_dim=None,
                 window_size=7, mlp_ratio=4., qkv_bias=True, proj_drop=0., attn_drop=0., drop_path=0.,
                 norm_layer=nn.LayerNorm, roll_before_pad=True):
        super().__init__()
        self.dim = dim
        self.input_resolution = _pair(input_resolution)
        self.output_resolution = tuple((r + 1) // 2 for r in self.input_resolution) if downsample \
            else self.input_resolution
        self.depth = depth
        window_size = _pair(window_size)
        shift_size = tuple(w // 2 for w in window_size)
        if downsample:
            self.downsample = PatchMerging(dim, out_dim, norm_layer)
        else:
            if dim != out_dim:
                raise ValueError("a stage without downsampling keeps its width")
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(out_dim, self.output_resolution, num_heads, head_dim, window_size,
                                 0 if i % 2 == 0 else shift_size, mlp_ratio, qkv_bias, proj_drop, attn_drop,
                                 drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                                 norm_layer=norm_layer, roll_before_pad=roll_before_pad)
            for i in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class ClassifierHead(nn.Module):
    """Global average pool over (H, W) of a channels-last map, dropout, fc (timm's ``ClassifierHead``, NHWC)."""

    def __init__(self, in_features, num_classes, drop_rate=0.):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        return self.fc(self.drop(x.mean(dim=(1, 2))))


class SwinTransformer(nn.Module):
    """Swin Transformer (Liu et al. 2021): 4x4 patch embedding + LayerNorm, stages of Swin blocks with patch
    merging between them (width x2, resolution /2), final LayerNorm, average pool, linear head.
    forward(x (B, in_chans, H, W)) -> (B, num_classes); the image size is fixed (the masks depend on it)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), head_dim=None, window_size=7, mlp_ratio=4., qkv_bias=True, drop_rate=0.,
                 proj_drop_rate=0., attn_drop_rate=0., drop_path_rate=0.1, norm_layer=nn.LayerNorm,
                 roll_before_pad=True):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads must have one entry per stage")
        self.num_classes = num_classes
        self.num_layers = len(depths)
        embed_dims = [int(embed_dim * 2 ** i) for i in range(self.num_layers)]
        self.num_features = embed_dims[-1]
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dims[0], norm_layer, output_fmt="NHWC")
        resolution = self.patch_embed.grid_size
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        stages, in_dim = [], embed_dims[0]
        for i in range(self.num_layers):
            stage = SwinTransformerStage(in_dim, embed_dims[i], resolution, depths[i], i > 0, num_heads[i], head_dim,
                                         window_size, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate, dpr[i],
                                         norm_layer, roll_before_pad)
            stages.append(stage)
            resolution, in_dim = stage.output_resolution, embed_dims[i]
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x):
        return self.norm(self.layers(self.patch_embed(x)))

    def forward(self, x):
        return self.head(self.forward_features(x))


def swin_t(**kwargs):
    """Swin-T: C 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7; 29M parameters, 4.5 GFLOPs (K l.3320)."""
    return SwinTransformer(**{**dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)), **kwargs})


def swin_s(**kwargs):
    """Swin-S: C 96, depths (2, 2, 18, 2), heads (3, 6, 12, 24), window 7; 50M parameters, 8.7 GFLOPs (K l.3321)."""
    return SwinTransformer(**{**dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)), **kwargs})


def swin_b(**kwargs):
    """Swin-B: C 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32), window 7; 88M parameters, 15.4 GFLOPs
    (K l.3322)."""
    return SwinTransformer(**{**dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)), **kwargs})


# ----------------------------------------------------------------------------- registry


def _image_input(batch, config):
    size = _pair(config.get("img_size", 224))
    return torch.randn(batch, config.get("in_chans", 3), *size)


_IMAGENET = (1, 3, 224, 224)
_PARAM_NOTE = ("all parameters incl. the relative position bias tables and the 1000-way head (the index and "
               "mask buffers are not parameters)")
_MAC_NOTE = ("multiply-adds per 224x224 image of the conv / linear layers (reference/models/flops.py) plus the "
             "window-attention matmuls q @ k^T and attn @ v (2 nW N^2 C per block), which count_macs, hooking "
             "modules, does not see (without them: 4.35G for Swin-T); softmax, LayerNorm, GELU, bias adds, "
             "the relative position bias and the mask not counted")
_SMALL = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), num_classes=10, drop_path_rate=0.0)
# Swin-T small: 40x40 -> 10x10 tokens, window 7: padded to 14x14 (4 windows), shift 3, then 5x5 (one window,
# no shift); Swin-S small: 32x32 -> 8x8, window 4 (a multiple), shift 2, then 4x4 = the window; Swin-B
# small: 56x56 -> 14x14, window 7 (a multiple), shift 3, then 7x7 = the window
_SMALL_CONFIGS = {"swin_t": dict(_SMALL, img_size=40), "swin_s": dict(_SMALL, img_size=32, window_size=4),
                  "swin_b": dict(_SMALL, img_size=56)}

for _name, _factory, _params, _src_params, _rtol, _gflops, _line in (
        ("swin_t", swin_t, 29e6, "K l.3320 (Swin-T 29M)", 0.03, 4.5e9, "K l.3320"),
        ("swin_s", swin_s, 50e6, "K l.3321 (Swin-S 50M)", 0.02, 8.7e9, "K l.3321"),
        ("swin_b", swin_b, 88e6, "K l.3322 (Swin-B 88M)", 0.02, 15.4e9, "K l.3322")):
    register(_name, _factory, small_config=_SMALL_CONFIGS[_name], example_input=_image_input, families=("SWA",),
             figures={"params": Figure(_params, _src_params, _rtol, note=_PARAM_NOTE),
                      "macs": Figure(_gflops, f"{_line} (FLOPs (B))", 0.02, input_shape=_IMAGENET, note=_MAC_NOTE)})
