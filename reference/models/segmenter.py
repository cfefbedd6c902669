"""Reference Segmenter (ViT encoder + mask transformer decoder with learned class embeddings).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  O l.575-582  lecture notes: Segmenter, a Transformer-based semantic segmentation model; the encoder is a
               ViT; the decoder takes the encoder output and class tokens as inputs; the embedded patch
               matrix (N x D) and the class mask matrix (D x K) are multiplied and a softmax over the class
               dimension gives pixel-wise class scores (N patches, D channels, K classes; the symbols are
               stripped from the notes).
  O l.584      DPT, unlike Segmenter, reassembles several resolutions: Segmenter decodes the fixed patches.
Paper:
  Strudel, Garcia, Laptev, Schmid, "Segmenter: Transformer for Semantic Segmentation", ICCV 2021,
  arXiv:2105.05633 (Sec. 3.2: the mask transformer; K learnable class embeddings processed jointly with the
  projected patch encodings by M = 2 transformer layers; masks = L2-normalised patch embeddings times
  L2-normalised class embeddings, (N x D)(D x K), a LayerNorm over the classes, reshaped to the patch grid and
  bilinearly up-sampled to the image; Table 1: Seg-B = ViT-B/16, 12 layers, D 768, 12 heads; ADE20K (150
  classes) at 512x512) and the authors' code (``MaskTransformer``: proj_dec Linear, cls_emb, blocks with
  n_heads = D / 64, decoder_norm, proj_patch / proj_classes D x D matrices, mask_norm).

The encoder is reference.models.vit's ``VisionTransformer`` (its final LayerNorm applied, the class token
dropped, no classification head); the decoder blocks are vit.py's pre-LN ``Block`` (qkv with bias, GELU
MLP of ratio 4, LayerNorm eps 1e-5 as the authors' decoder). The output are the mask logits (the softmax
over the classes belongs to the loss). Deviations, stated: the linear-decoder variant is not built; the
decoder's dropout is an option set to 0 in the small config. The documents print no figure and the paper
reports backbone sizes only. Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .vit import Block, VisionTransformer

__all__ = ["MaskTransformer", "Segmenter", "segmenter_b16"]


class MaskTransformer(nn.Module):
    """Segmenter's decoder: (B, N, D_enc) patch encodings on a (gh, gw) grid -> masks (B, K, gh, gw).

    [proj_dec(patches); cls_emb] -> ``depth`` blocks -> LN; masks = norm(patches @ proj_patch) @
    norm(classes @ proj_classes)^T, LayerNorm over the K classes.
    """

    def __init__(self, num_classes, encoder_dim, dim=768, depth=2, num_heads=None, mlp_ratio=4.0, dropout=0.1):
        super().__init__()
        self.num_classes = num_classes
        num_heads = num_heads or max(1, dim // 64)
        self.proj_dec = nn.Linear(encoder_dim, dim)
        self.cls_emb = nn.Parameter(torch.randn(1, num_classes, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True, proj_drop=dropout)
                                    for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(dim)
        self.proj_patch = nn.Parameter(dim ** -0.5 * torch.randn(dim, dim))
        self.proj_classes = nn.Parameter(dim ** -0.5 * torch.randn(dim, dim))
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, patches, grid):
        x = self.proj_dec(patches)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches, classes = x[:, :-self.num_classes], x[:, -self.num_classes:]
        patches = F.normalize(patches @ self.proj_patch, dim=-1)
        classes = F.normalize(classes @ self.proj_classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))          # (B, N, K)
        return masks.transpose(1, 2).unflatten(2, grid)                    # (B, K, gh, gw)


class Segmenter(nn.Module):
    """Segmenter: (B, C, S, S) -> mask logits (B, num_classes, S, S).

    img_size / patch_size / embed_dim / depth / num_heads: the ViT encoder (Seg-B/16: 512, 16, 768, 12, 12);
    decoder_depth: the mask transformer's layers (2); its width is the encoder's.
    """

    def __init__(self, num_classes=150, img_size=512, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                 decoder_depth=2, in_chans=3, dropout=0.1):
        super().__init__()
        self.encoder = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                                         embed_dim=embed_dim, depth=depth, num_heads=num_heads)
        self.decoder = MaskTransformer(num_classes, embed_dim, embed_dim, decoder_depth, dropout=dropout)

    def forward(self, x):
        size = x.shape[-2:]
        tokens = self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens:]
        masks = self.decoder(tokens, self.encoder.patch_embed.grid_size)
        return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)


def segmenter_b16(**kwargs):
    """Seg-B/16 with the mask transformer (Strudel et al. 2021): ViT-B/16 at 512x512, 2 decoder layers, 150 classes."""
    return Segmenter(**kwargs)


def _input(batch, config):
    size = config.get("img_size", 512)
    return torch.randn(batch, config.get("in_chans", 3), size, size)


register(
    "segmenter_b16", segmenter_b16,
    small_config=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_depth=1,
                      num_classes=5, dropout=0.0),                            # 4x4 patches
    example_input=_input,
    families=("FA",),
    figures={},   # O l.575-582 print none
)
