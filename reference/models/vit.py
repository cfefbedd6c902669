"""Reference Vision Transformers: ViT-B/16, ViT-L/16, ViT-H/14 and DeiT-Ti/S/B (with and without distillation).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.3174-3234  Kalhor: ViT splits the image into patches, flattens them, embeds them linearly, adds
                 (learned) positional embeddings and feeds the sequence to a standard Transformer
                 encoder; the table (l.3220-3223): ViT-Base 12 layers, D 768, MLP 3072, 12 heads, 86M;
                 ViT-Large 24, 1024, 4096, 16, 307M; ViT-Huge 32, 1280, 5120, 16, 632M.
  K l.3294-3336  the ImageNet comparison table: DeiT-Ti 5M / 1.3 GFLOPs (l.3307), DeiT-S 22M / 4.6
                 (l.3308), DeiT-B 86M / 17.6 (l.3309).
  O l.426, 433   lecture notes: ViT; DeiT adds a distillation token.
Papers:
  Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, arXiv:2010.11929: Eq. 1-4 (class token,
  learned 1-D position embeddings, pre-LN blocks x' = x + MSA(LN(x)), x = x' + MLP(LN(x')), GELU MLP, final
  LN on the class token, linear head), Table 1 (the three sizes).
  Touvron et al., "Training data-efficient image transformers & distillation through attention",
  ICML 2021, arXiv:2012.12877: Table 1 (DeiT-Ti 192 / 3 heads, DeiT-S 384 / 6, DeiT-B 768 / 12, depth 12;
  5M / 22M / 86M), Sec. 5.2 (the distillation token: a second prefix token with its own linear head;
  at test time the two heads' softmax outputs are fused, here their logits averaged as timm does;
  DeiT-Ti/S/B distilled 6M / 22M / 87M).

Structure and names follow timm's ``vision_transformer.py`` / ``deit.py`` (patch_embed.proj, cls_token,
dist_token, pos_embed, blocks.N.{norm1, attn.{qkv, q_norm, k_norm, attn_drop, proj, proj_drop}, ls1,
drop_path1, norm2, mlp.{fc1, act, drop1, norm, fc2, drop2}, ls2, drop_path2}, norm, fc_norm, head,
head_dist), so a timm state_dict loads. ``Attention`` is timm's module with the attention written out:
softmax((q * scale) @ k^T) @ v, the dropout on the probabilities (it is what cvkernels' flash
attention replaces). LayerNorm eps 1e-6, qkv with bias, as timm's ViT / DeiT.
Parameter counts: ViT-B/16 86,567,656 (timm vit_base_patch16_224), L/16 304,326,632, H/14 632,045,800;
DeiT-Ti 5,717,416, S 22,050,664, B 86,567,656; distilled 5,910,800 / 22,436,432 / 87,338,192.
The table's 307M for ViT-L is not reproduced by L/16 (304.3M, -0.9%; L/32 has 306.5M).
Nothing here imports cvkernels, torchvision or timm.
"""
from functools import partial

import torch
from torch import nn

from . import Figure, register

__all__ = ["DropPath", "Attention", "Mlp", "Block", "PatchEmbed", "VisionTransformer", "vit_b_16", "vit_l_16",
           "vit_h_14", "deit_tiny", "deit_small", "deit_base", "deit_tiny_distilled", "deit_small_distilled",
           "deit_base_distilled"]


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016): zero a sample's residual branch with probability p,
    scale the kept ones by 1 / (1 - p); the identity in eval mode or at p = 0."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention (timm's ``Attention``): x (B, N, C) -> (B, N, C).

    qkv = Linear(C, 3C) viewed as (B, N, 3, heads, head_dim) -> (3, B, heads, N, head_dim);
    out = proj(softmax((q * scale) @ k^T) @ v), attn_drop on the probabilities, proj_drop after proj.
    """

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_norm=False, attn_drop=0., proj_drop=0.,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class Mlp(nn.Module):
    """fc1 -> act -> drop1 -> norm (Identity) -> fc2 -> drop2 (timm's ``Mlp``)."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Block(nn.Module):
    """Pre-LN encoder block: x = x + drop_path(attn(norm1(x))); x = x + drop_path(mlp(norm2(x)))."""

    def __init__(self, dim, num_heads, mlp_ratio=4., qkv_bias=False, qk_norm=False, proj_drop=0., attn_drop=0.,
                 drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop, norm_layer)
        self.ls1 = nn.Identity()                       # timm's LayerScale (init_values=None: off)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a stride-p conv: (B, C, H, W) -> (B, N, D), or (B, H/p, W/p, D) when
    ``output_fmt='NHWC'`` (Swin). The image size is fixed (the position embedding / the windows depend on it)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, norm_layer=None, output_fmt="NLC"):
        super().__init__()
        self.img_size, self.patch_size = _pair(img_size), _pair(patch_size)
        if any(i % p for i, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"image size {self.img_size} is not a multiple of the patch size {self.patch_size}")
        self.grid_size = tuple(i // p for i, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.output_fmt = output_fmt
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} does not match the model's {self.img_size}")
        x = self.proj(x)
        x = x.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else x.flatten(2).transpose(1, 2)
        return self.norm(x)


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021) / DeiT (Touvron et al. 2021): patch embedding, [class token,
    distillation token] prefix, learned position embedding, ``depth`` pre-LN blocks, final LN, linear head
    on the class token.

    distilled=True adds DeiT's distillation token (after the class token) and ``head_dist``; the output is
    the mean of the two heads' logits, or the pair (class, distillation) in training mode when
    ``distilled_training`` is set (timm's ``VisionTransformerDistilled``).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4., qkv_bias=True, qk_norm=False, distilled=False, drop_rate=0.,
                 pos_drop_rate=0., proj_drop_rate=0., attn_drop_rate=0., drop_path_rate=0.,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU):
        super().__init__()
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.distilled, self.distilled_training = distilled, False
        self.num_prefix_tokens = 2 if distilled else 1
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens,
                                                  embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_norm, proj_drop_rate, attn_drop_rate, dpr[i],
                  act_layer, norm_layer) for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if distilled:
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.patch_embed(x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x):
        if not self.distilled:
            return self.head(self.head_drop(self.fc_norm(x[:, 0])))
        x, x_dist = self.head(self.head_drop(x[:, 0])), self.head_dist(self.head_drop(x[:, 1]))
        if self.distilled_training and self.training:
            return x, x_dist
        return (x + x_dist) / 2

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def vit_b_16(**kwargs):
    """ViT-B/16: 12 layers, D 768, MLP 3072, 12 heads; 86M parameters (K l.3221)."""
    return VisionTransformer(**{**dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), **kwargs})


def vit_l_16(**kwargs):
    """ViT-L/16: 24 layers, D 1024, MLP 4096, 16 heads; 307M parameters (K l.3222; L/16 has 304.3M)."""
    return VisionTransformer(**{**dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), **kwargs})


def vit_h_14(**kwargs):
    """ViT-H/14: 32 layers, D 1280, MLP 5120, 16 heads; 632M parameters (K l.3223)."""
    return VisionTransformer(**{**dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16), **kwargs})


def _deit(embed_dim, num_heads, distilled, kwargs):
    return VisionTransformer(**{**dict(patch_size=16, embed_dim=embed_dim, depth=12, num_heads=num_heads,
                                       distilled=distilled), **kwargs})


def deit_tiny(**kwargs):
    """DeiT-Ti: ViT with D 192, 3 heads, depth 12; 5M parameters, 1.3 GFLOPs (K l.3307)."""
    return _deit(192, 3, False, kwargs)


def deit_small(**kwargs):
    """DeiT-S: D 384, 6 heads, depth 12; 22M parameters, 4.6 GFLOPs (K l.3308)."""
    return _deit(384, 6, False, kwargs)


def deit_base(**kwargs):
    """DeiT-B: D 768, 12 heads, depth 12 (ViT-B/16); 86M parameters, 17.6 GFLOPs (K l.3309)."""
    return _deit(768, 12, False, kwargs)


def deit_tiny_distilled(**kwargs):
    """DeiT-Ti with the distillation token and head: 6M parameters (paper)."""
    return _deit(192, 3, True, kwargs)


def deit_small_distilled(**kwargs):
    """DeiT-S with the distillation token and head: 22M parameters (paper)."""
    return _deit(384, 6, True, kwargs)


def deit_base_distilled(**kwargs):
    """DeiT-B with the distillation token and head: 87M parameters (paper)."""
    return _deit(768, 12, True, kwargs)


# ----------------------------------------------------------------------------- registry


def _image_input(batch, config):
    size = _pair(config.get("img_size", 224))
    return torch.randn(batch, config.get("in_chans", 3), *size)


_IMAGENET = (1, 3, 224, 224)
_PARAM_NOTE = "all parameters: patch embedding, class token, position embedding, blocks, final LN, 1000-way head"
_MAC_NOTE = ("multiply-adds per 224x224 image of the conv / linear layers (reference/models/flops.py) plus the "
             "attention matmuls q @ k^T and attn @ v (2 N^2 D per block), which count_macs, hooking modules, "
             "does not see; softmax, LayerNorm, GELU, biases not counted")
# small CPU configurations: 32x32 images in 8x8 patches (16 + prefix tokens), width 32, 2 heads
_SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
_SMALL_DEIT = dict(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, num_classes=10)

register("vit_b_16", vit_b_16, small_config=_SMALL, example_input=_image_input, families=("FA",),
         figures={"params": Figure(86e6, "K l.3221 (ViT-Base 86M)", 0.01,
                                   note=_PARAM_NOTE + " (timm vit_base_patch16_224: 86,567,656)")})
register("vit_l_16", vit_l_16, small_config=dict(_SMALL, patch_size=16, img_size=(32, 48)),
         example_input=_image_input, families=("FA",),
         figures={"params": Figure(307e6, "K l.3222 (ViT-Large 307M)", 0.01,
                                   note=_PARAM_NOTE + "; L/16 has 304,326,632 (timm vit_large_patch16_224), 0.9% "
                                                      "under the table (ViT-L/32 has 306.5M)")})
register("vit_h_14", vit_h_14, small_config=dict(_SMALL, patch_size=14, img_size=28, depth=1),
         example_input=_image_input, families=("FA",),
         figures={"params": Figure(632e6, "K l.3223 (ViT-Huge 632M)", 0.01,
                                   note=_PARAM_NOTE + " (timm vit_huge_patch14_224: 632,045,800)")})

# the documents print DeiT's counts truncated to whole millions (DeiT-Ti has 5.72M): the test also checks
# floor(count / 1e6) against them
for _name, _factory, _params, _gflops, _line, _exact in (
        ("deit_tiny", deit_tiny, 5e6, 1.3e9, "K l.3307", "5,717,416"),
        ("deit_small", deit_small, 22e6, 4.6e9, "K l.3308", "22,050,664"),
        ("deit_base", deit_base, 86e6, 17.6e9, "K l.3309", "86,567,656")):
    register(_name, _factory, small_config=_SMALL_DEIT, example_input=_image_input, families=("FA",),
             figures={"params": Figure(_params, f"{_line} (DeiT table, Params (M))", 0.15,
                                       note=_PARAM_NOTE + f"; {_exact}, printed truncated to whole millions"),
                      # printed with one decimal: +-0.05 (3.8% of DeiT-Ti's 1.3; it counts 1.254G)
                      "macs": Figure(_gflops, f"{_line} (FLOPs (B))", max(0.01, 0.05e9 / _gflops),
                                     input_shape=_IMAGENET, note=_MAC_NOTE)})

for _name, _factory, _params, _exact in (
        ("deit_tiny_distilled", deit_tiny_distilled, 6e6, "5,910,800"),
        ("deit_small_distilled", deit_small_distilled, 22e6, "22,436,432"),
        ("deit_base_distilled", deit_base_distilled, 87e6, "87,338,192")):
    register(_name, _factory, small_config=_SMALL_DEIT, example_input=_image_input, families=("FA",),
             figures={"params": Figure(_params, "paper: Touvron et al. 2021 (distilled DeiT-Ti/S/B: 6M / 22M / 87M)",
                                       0.03, note=_PARAM_NOTE + f" + distillation token and head: {_exact}")})
