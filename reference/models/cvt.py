"""Reference CvT (Convolutional vision Transformer: conv token embedding, depthwise conv projections for q/k/v).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  O l.458-469  lecture notes: CvT uses convolutional layers instead of fully connected ones; the convolutional
               token embedding replaces ViT's patch embedding by a convolutional layer; the convolutional
               projection produces query, key and value by convolutions instead of linear maps; the squeezed
               convolutional projection (stride > 1) reduces the cost / down-samples the keys and values.
  O l.470-495  ViViT (tubelet embedding, four factorisations) and MViT (pooling attention): described, no
               configuration (recorded below as unmodelled).
Paper:
  Wu, Xiao, Codella, Liu, Dai, Yuan, Zhang, "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021,
  arXiv:2103.15808 (Sec. 3 / Fig. 2: three stages, each a convolutional token embedding (overlapping strided
  conv + LayerNorm) and transformer blocks whose q/k/v come from depthwise-separable convolutional projections
  (3x3 depthwise conv - BN - 1x1 / linear), keys and values with stride 2 (squeezed); no position embedding;
  the class token only in the last stage; Table 2: CvT-13 = embeddings 7x7/4 (64), 3x3/2 (192), 3x3/2 (384),
  depths 1 / 2 / 10, heads 1 / 3 / 6, MLP ratio 4; 20M parameters, 4.5 GFLOPs) and the authors' code
  (microsoft/CvT: ``conv_proj_q/k/v`` = depthwise Conv2d (no bias) + BatchNorm2d, then ``proj_q/k/v`` Linear
  with bias, ``proj`` Linear; the class token bypasses the convolutions and is prepended to q, k and v; final
  LayerNorm on the class token, Linear head).

Here the linear q/k/v projections, the scaled dot-product attention and the output projection are one
``nn.MultiheadAttention`` (batch_first, called with need_weights=False) fed with the three conv-projected
token sequences: the same parameters and arithmetic as the code's proj_q / proj_k / proj_v / proj, and the
module cvkernels routes to its flash-attention kernel. Deviations, stated: the attention scale is
1/sqrt(head_dim) (MHA, the paper's formula) where the authors' code uses 1/sqrt(dim) of the whole stage;
the parameter names are not the code's. CvT-13 counts 19,997,480 parameters (20M). Nothing here imports
cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register, register_unmodelled
from .vit import DropPath, Mlp

__all__ = ["ConvEmbed", "ConvProjection", "ConvAttention", "CvTBlock", "CvTStage", "CvT", "cvt_13"]


class ConvEmbed(nn.Module):
    """Convolutional token embedding: strided conv then LayerNorm over the channels:
    (B, C, H, W) -> (B, D, H', W')."""

    def __init__(self, in_channels, dim, kernel_size, stride, padding):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvProjection(nn.Sequential):
    """Depthwise k x k conv (no bias) - BN, flattened: (B, D, H, W) -> (B, H' W', D)."""

    def __init__(self, dim, kernel_size=3, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, stride, kernel_size // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x):
        return super().forward(x).flatten(2).transpose(1, 2)


class ConvAttention(nn.Module):
    """Attention with convolutional projections: x (B, [1 +] H W, D) on an (H, W) grid -> (B, [1 +] H W, D).

    q from a stride-1 depthwise projection, k and v from stride-``kv_stride`` ones (squeezed); the class token,
    if any, bypasses the convolutions. The linear projections and the attention are ``nn.MultiheadAttention``.
    """

    def __init__(self, dim, num_heads, kv_stride=2, kernel_size=3, qkv_bias=True, attn_drop=0.0, with_cls_token=False):
        super().__init__()
        self.with_cls_token = with_cls_token
        self.conv_proj_q = ConvProjection(dim, kernel_size, 1)
        self.conv_proj_k = ConvProjection(dim, kernel_size, kv_stride)
        self.conv_proj_v = ConvProjection(dim, kernel_size, kv_stride)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=attn_drop, bias=qkv_bias, batch_first=True)

    def forward(self, x, grid):
        cls = None
        if self.with_cls_token:
            cls, x = x[:, :1], x[:, 1:]
        fmap = x.transpose(1, 2).unflatten(2, grid)                  # (B, D, H, W)
        q, k, v = self.conv_proj_q(fmap), self.conv_proj_k(fmap), self.conv_proj_v(fmap)
        if cls is not None:
            q, k, v = (torch.cat([cls, t], dim=1) for t in (q, k, v))
        out, _ = self.attn(q, k, v, need_weights=False)
        return out


class CvTBlock(nn.Module):
    """Pre-LN block: x = x + drop_path(attn(norm1(x))); x = x + drop_path(mlp(norm2(x)))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop=0.0, drop_path=0.0, with_cls_token=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ConvAttention(dim, num_heads, with_cls_token=with_cls_token)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x, grid):
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CvTStage(nn.Module):
    """Conv token embedding + ``depth`` blocks: (B, C, H, W) -> (maps (B, D, H', W'), class token (B, D) or None)."""

    def __init__(self, in_channels, dim, depth, num_heads, kernel_size, stride, padding, mlp_ratio=4.0, drop=0.0,
                 drop_paths=None, with_cls_token=False):
        super().__init__()
        self.patch_embed = ConvEmbed(in_channels, dim, kernel_size, stride, padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if with_cls_token else None
        if with_cls_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        drop_paths = drop_paths or [0.0] * depth
        self.blocks = nn.ModuleList(CvTBlock(dim, num_heads, mlp_ratio, drop, drop_paths[i], with_cls_token)
                                    for i in range(depth))

    def forward(self, x):
        x = self.patch_embed(x)
        grid = tuple(x.shape[-2:])
        tokens = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens, grid)
        cls = None
        if self.cls_token is not None:
            cls, tokens = tokens[:, 0], tokens[:, 1:]
        return tokens.transpose(1, 2).unflatten(2, grid), cls


class CvT(nn.Module):
    """CvT classifier: (B, C, H, W) -> logits (B, num_classes).

    dims / depths / heads: per stage (CvT-13: (64, 192, 384), (1, 2, 10), (1, 3, 6)); embeddings: (kernel, stride,
    padding) of each stage's token embedding ((7, 4, 2), (3, 2, 1), (3, 2, 1)); the class token in the last stage.
    """

    def __init__(self, num_classes=1000, in_channels=3, dims=(64, 192, 384), depths=(1, 2, 10), heads=(1, 3, 6),
                 embeddings=((7, 4, 2), (3, 2, 1), (3, 2, 1)), mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.1):
        super().__init__()
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.stages = nn.ModuleList()
        cin, start = in_channels, 0
        for i, (dim, depth, h, (k, s, p)) in enumerate(zip(dims, depths, heads, embeddings)):
            self.stages.append(CvTStage(cin, dim, depth, h, k, s, p, mlp_ratio, drop_rate, dpr[start:start + depth],
                                        with_cls_token=i == len(dims) - 1))
            cin, start = dim, start + depth
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for stage in self.stages:
            x, cls = stage(x)
        return self.head(self.norm(cls))


def cvt_13(**kwargs):
    """CvT-13 (Wu et al. 2021, Table 2): 64/192/384 wide, depths 1/2/10, heads 1/3/6; 20M parameters."""
    return CvT(**kwargs)


def _input(batch, config):
    size = 224 if config.get("dims", (64,))[0] >= 64 else 32
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "cvt_13", cvt_13,
    small_config=dict(dims=(8, 16, 32), depths=(1, 1, 1), heads=(1, 2, 2), num_classes=10, drop_path_rate=0.0),
    example_input=_input,                                                      # 32x32: 8x8, 4x4, 2x2 tokens
    families=("DW", "FA"),
    figures={"params": Figure(20e6, "paper: Wu et al. 2021, Table 2 (CvT-13: 20M)", 0.01,
                              note="all parameters incl. BN affine of the conv projections and the 1000-way head: "
                                   "19,997,480; O l.458-469 print no figure")},
)

register_unmodelled(
    "vivit",
    "O l.470-489 describe ViViT's uniform frame sampling, tubelet embedding and its four variants (joint "
    "space-time attention, factorised encoder, factorised self-attention, factorised dot-product attention) "
    "with no configuration (width, depths, heads, tubelet size, frames) and no figure; a model would be the "
    "paper's, not the documents', and the variants are ViT blocks (vit.py) over re-grouped tokens")
register_unmodelled(
    "mvit",
    "O l.490-495 describe MViT only as CvT's idea applied to video plus multi-head pooling attention "
    "(strided pooling of Q, K, V; channel expansion per stage), with no configuration (stages, pooling "
    "kernels / strides, widths, heads) and no figure")
