"""Reference DPT (Dense Prediction Transformer: ViT tokens reassembled at four resolutions, fusion decoder).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  O l.584-592  lecture notes: DPT reassembles features at multiple resolutions (unlike Segmenter's fixed
               patches); Reassemble reshapes the flattened tokens back to image-like maps and changes their
               spatial and feature sizes by a (1x1) convolution followed by a convolution or a deconvolution,
               the CLS token being ignored, added or concatenated and projected; the transformer outputs go
               through a residual convolutional unit into the fusion module, which adds the previous stage's
               features, doubles the map size and brings the channels back.
Paper:
  Ranftl, Bochkovskiy, Koltun, "Vision Transformers for Dense Prediction", ICCV 2021, arXiv:2103.13413
  (Sec. 3 / Fig. 1: tokens of four encoder layers -- layers {5, 11, 17, 23} of ViT-L/16 (DPT-Large),
  {2, 5, 8, 11} of ViT-B/16 -- Read (ignore / add / project: concat with the readout token, Linear + GELU),
  Concatenate into a (H/p x W/p x D) map, Resample_s: 1x1 conv to D^ then a 3x3 conv of stride 2 (s = 32) or a
  strided transposed conv (s = 4, 8); D^ = 256, 512, 1024, 1024 for ViT-L (96, 192, 384, 768 for ViT-B);
  fusion with RefineNet-style blocks of residual conv units and 2x bilinear up-sampling, 256 features; the
  heads: depth = 3x3 conv to 128, 2x up-sampling, 3x3 conv to 32, ReLU, 1x1 conv to 1, ReLU; segmentation =
  3x3 conv - BN - ReLU - dropout 0.1 - 1x1 conv to the classes, 2x up-sampling; Sec. 4.1: DPT-Large has 343M
  parameters) and the authors' code (isl-org/DPT: ``act_postprocess``, ``scratch.layerN_rn`` (3x3, no bias),
  ``FeatureFusionBlock_custom``: out = x + RCU1(skip); RCU2; 2x bilinear (align_corners=True); 1x1 out conv;
  RCU = ReLU - conv - [BN] - ReLU - conv - [BN] + input, BN in the segmentation model only).

The encoder is reference.models.vit's ``VisionTransformer`` at the DPT input size (384x384: 24x24 patches +
the class token), its final LayerNorm and head unused (replaced by ``nn.Identity``, no parameters); the
``hooks`` blocks' outputs are taken. Deviations, stated: the segmentation model's auxiliary head and DPT-Hybrid
(a ResNet-50 front end) are left out. DPT-Large with the depth head has 341,848,257 parameters, 0.3% under
the paper's 343M: the authors' model also holds timm's unused final LayerNorm and 1000-way ViT head
(1,027,048 more: 342,875,305, 343M), which this one drops because no gradient reaches them. Nothing here
imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register
from .vit import VisionTransformer

__all__ = ["ReadoutProject", "Reassemble", "ResidualConvUnit", "FusionBlock", "DPT", "dpt_large", "dpt_base"]


class ReadoutProject(nn.Module):
    """Read with readout='project': each patch token concatenated with the class token, Linear(2D -> D) + GELU:
    (B, 1 + N, D) -> (B, N, D)."""

    def __init__(self, dim):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens):
        cls, patches = tokens[:, :1], tokens[:, 1:]
        return self.project(torch.cat([patches, cls.expand_as(patches)], dim=-1))


class Reassemble(nn.Module):
    """Read, reshape to the patch grid, 1x1 conv to ``channels``, resample by ``factor`` (4, 2: transposed conv
    k = s = factor; 1: none; 0.5: 3x3/2 conv): (B, 1 + N, D) -> (B, channels, gh * factor, gw * factor)."""

    def __init__(self, dim, channels, factor, grid, readout="project"):
        super().__init__()
        if readout not in ("ignore", "add", "project"):
            raise ValueError(f"readout must be 'ignore', 'add' or 'project', got {readout!r}")
        self.readout, self.grid = readout, grid
        self.read = ReadoutProject(dim) if readout == "project" else nn.Identity()
        layers = [nn.Conv2d(dim, channels, 1)]
        if factor > 1:
            layers.append(nn.ConvTranspose2d(channels, channels, int(factor), stride=int(factor)))
        elif factor == 0.5:
            layers.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
        elif factor != 1:
            raise ValueError(f"factor must be 4, 2, 1 or 0.5, got {factor}")
        self.resample = nn.Sequential(*layers)

    def forward(self, tokens):
        if self.readout == "project":
            x = self.read(tokens)
        elif self.readout == "add":
            x = tokens[:, 1:] + tokens[:, :1]
        else:
            x = tokens[:, 1:]
        x = x.transpose(1, 2).unflatten(2, self.grid)              # (B, D, gh, gw)
        return self.resample(x)


class ResidualConvUnit(nn.Module):
    """ReLU - 3x3 conv - [BN] - ReLU - 3x3 conv - [BN], + input: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels, batch_norm):
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()

    def forward(self, x):
        out = self.bn1(self.conv1(self.relu1(x)))
        out = self.bn2(self.conv2(self.relu2(out)))
        return out + x


class FusionBlock(nn.Module):
    """Fusion: x (+ RCU1(skip)), RCU2, 2x bilinear up-sampling, 1x1 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels, batch_norm, with_skip=True):
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels, batch_norm) if with_skip else None
        self.unit = ResidualConvUnit(channels, batch_norm)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x, skip=None):
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = self.unit(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPT(nn.Module):
    """DPT: ViT encoder + reassemble / fusion decoder + head; (B, C, S, S) -> (B, num_classes, S, S) for
    ``head='segmentation'``, (B, 1, S, S) non-negative depth for ``head='depth'``.

    hooks: the 0-based indices of the four blocks whose outputs are reassembled; channels: D^ per level;
    features: the fusion width (256); readout: 'ignore' / 'add' / 'project'. The patch size must be 16
    (the four levels are at 1/4, 1/8, 1/16 and 1/32 of the input).
    """

    def __init__(self, img_size=384, patch_size=16, embed_dim=1024, depth=24, num_heads=16, hooks=(5, 11, 17, 23),
                 channels=(256, 512, 1024, 1024), features=256, head="segmentation", num_classes=150,
                 readout="project", in_chans=3, dropout=0.1):
        super().__init__()
        if head not in ("segmentation", "depth"):
            raise ValueError(f"head must be 'segmentation' or 'depth', got {head!r}")
        if patch_size != 16 or len(hooks) != 4 or max(hooks) >= depth:
            raise ValueError("DPT needs patch_size 16 and four hooks inside the encoder's depth")
        self.hooks, self.head_kind = tuple(hooks), head
        self.encoder = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                                         embed_dim=embed_dim, depth=max(hooks) + 1, num_heads=num_heads)
        self.encoder.norm = nn.Identity()           # DPT reads the blocks' outputs, not the final LN
        grid = self.encoder.patch_embed.grid_size
        self.reassemble = nn.ModuleList(Reassemble(embed_dim, c, f, grid, readout)
                                        for c, f in zip(channels, (4, 2, 1, 0.5)))
        self.layer_rn = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in channels)
        batch_norm = head == "segmentation"
        self.fusion = nn.ModuleList(FusionBlock(features, batch_norm, with_skip=i < 3) for i in range(4))
        if head == "segmentation":
            self.head = nn.Sequential(nn.Conv2d(features, features, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(features), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                      nn.Conv2d(features, num_classes, 1))
        else:
            self.head = nn.Sequential(nn.Conv2d(features, features // 2, 3, padding=1))
            self.depth_out = nn.Sequential(nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(inplace=True),
                                           nn.Conv2d(32, 1, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        vit = self.encoder
        t = vit.patch_embed(x)
        t = torch.cat([vit.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = vit.pos_drop(t + vit.pos_embed)
        levels = []
        for i, block in enumerate(vit.blocks):
            t = block(t)
            if i in self.hooks:
                levels.append(t)
        maps = [rn(re(tokens)) for rn, re, tokens in zip(self.layer_rn, self.reassemble, levels)]
        path = self.fusion[3](maps[3])                                  # 1/32 -> 1/16
        for i in (2, 1, 0):
            path = self.fusion[i](path, maps[i])                         # ... -> 1/2
        y = self.head(path)
        y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        return y if self.head_kind == "segmentation" else self.depth_out(y)


def dpt_large(**kwargs):
    """DPT-Large: ViT-L/16 at 384x384, hooks 5/11/17/23, D^ 256/512/1024/1024; 343M with the depth head."""
    return DPT(**kwargs)


def dpt_base(**kwargs):
    """DPT-Base: ViT-B/16 at 384x384, hooks 2/5/8/11, D^ 96/192/384/768."""
    return DPT(**{**dict(embed_dim=768, depth=12, num_heads=12, hooks=(2, 5, 8, 11), channels=(96, 192, 384, 768)),
                  **kwargs})


def _input(batch, config):
    size = config.get("img_size", 384)
    return torch.randn(batch, config.get("in_chans", 3), size, size)


# small: 64x64 images, a 4x4 patch grid, four blocks of width 32 each reassembled
_SMALL = dict(img_size=64, embed_dim=32, depth=4, num_heads=2, hooks=(0, 1, 2, 3), channels=(8, 8, 16, 16),
              features=8, num_classes=5, dropout=0.0)
register("dpt_large", dpt_large, small_config=_SMALL, example_input=_input, families=("FA", "TC", "BNR"),
         figures={"params": Figure(343e6, "paper: Ranftl et al. 2021, Sec. 4.1 (DPT-Large: 343M)", 0.005,
                                   config=dict(head="depth"),
                                   note="ViT-L/16 at 384, reassemble, fusion, depth head: 341,848,257 (-0.3%); the "
                                        "authors' count also holds timm's unused final LN and 1000-way head "
                                        "(+1,027,048: 342,875,305); the documents (O l.584-592) print none")})
