"""Reference DETR (DEtection TRansformer) with a ResNet-50 backbone.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  A l.225        design-patterns report: DETR, a transformer for object detection.
  K l.3364-3373  Kalhor: the overall architecture of DETR (CNN backbone, transformer encoder-decoder,
                 set prediction by bipartite matching).
  K l.3392       the COCO table: DETR, 500 epochs, AP 42.0, 41M parameters, 86 GFLOPs, 28 FPS.
  O l.540        lecture notes: DETR.
Paper:
  Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020, arXiv:2005.12872: Sec. 3.2
  (backbone feature map 2048 x H/32 x W/32 -> 1x1 conv to d; the encoder: 6 post-LN layers of
  self-attention + FFN with the fixed positional encodings added to the queries and keys of every
  attention layer; the decoder: 6 layers over N = 100 learned object queries (the "query positional
  embeddings", added at every layer, the decoder input being zeros), self-attention + cross-attention
  over the encoder output; FFN heads: a linear class layer (num_classes + 1 with "no object") and a
  3-layer ReLU MLP predicting normalized (cx, cy, w, h) through a sigmoid), Appendix A.3 / the released
  code: d = 256, 8 heads, FFN 2048, dropout 0.1, a final LayerNorm on the decoder output, the 2-D sine
  position encoding (128 channels per axis, temperature 10000, normalized cumulative coordinates x 2 pi),
  91 COCO class ids + 1.

Attention is ``torch.nn.MultiheadAttention`` (batch_first=True), called with need_weights=False; where
images are padded (``mask``: True at padded pixels, as DETR's NestedTensor) the encoder's and the cross
attention's ``key_padding_mask`` is the mask downsampled to the feature map. Names follow the released
code (backbone.0.body.{conv1, bn1, layer1..4}, input_proj, query_embed, transformer.{encoder, decoder}.
layers.N.{self_attn, multihead_attn, linear1, linear2, norm1..3}, transformer.decoder.norm, class_embed,
bbox_embed.layers.0..2). The backbone is reference.models.resnet's ResNet-50 (torchvision structure)
with ordinary ``nn.BatchNorm2d`` -- the BN -> ReLU pairs cvkernels fuses -- where DETR freezes them
(FrozenBatchNorm2d: affine as buffers) and also freezes conv1 and layer1; here every parameter trains.
Counts: 41,577,888 parameters = DETR's 41,302,368 trainable + 222,400 (conv1 and layer1 convs, frozen
there) + 53,120 (BN affine, buffers there). The auxiliary decoding losses' intermediate outputs are not
returned. Nothing here imports cvkernels, torchvision or timm.
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register
from . import resnet as _resnet

__all__ = ["PositionEmbeddingSine", "Backbone", "Joiner", "TransformerEncoderLayer", "TransformerDecoderLayer",
           "DETRTransformer", "MLP", "DETR", "detr_resnet50"]


class PositionEmbeddingSine(nn.Module):
    """2-D sine position encoding of DETR: for the unpadded pixels, y and x = cumulative counts (normalized to
    (0, 2 pi] when ``normalize``), each encoded as sin / cos of pos / temperature^(2 floor(i/2) / F) over F =
    num_pos_feats channels, interleaved; output (B, 2F, H, W) in ``dtype``, y channels first."""

    def __init__(self, num_pos_feats=128, temperature=10000, normalize=True, scale=2 * math.pi):
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize, self.scale = num_pos_feats, temperature, normalize, scale

    def forward(self, mask, dtype=torch.float32):
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=dtype)
        x = not_mask.cumsum(2, dtype=dtype)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            x = x / (x[:, :, -1:] + eps) * self.scale
        i = torch.arange(self.num_pos_feats, dtype=dtype, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)
        px, py = x[..., None] / dim_t, y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


class Backbone(nn.Module):
    """The ResNet body (stem + layer1..4, no pooling / fc) -> (B, C, H/32, W/32)."""

    def __init__(self, name="resnet50", width=64):
        super().__init__()
        net = getattr(_resnet, name)(width=width)
        self.body = nn.Sequential(OrderedDict((k, getattr(net, k)) for k in
                                              ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                               "layer4")))
        self.num_channels = net.fc.in_features

    def forward(self, x):
        return self.body(x)


class Joiner(nn.Sequential):
    """(backbone, position encoding): features, downsampled padding mask, position encodings."""

    def __init__(self, backbone, position_embedding):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, x, mask):
        features = self[0](x)
        mask = F.interpolate(mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]
        return features, mask, self[1](mask, features.dtype)


class TransformerEncoderLayer(nn.Module):
    """DETR encoder layer (post-LN): q = k = x + pos, v = x; x = LN(x + attn); x = LN(x + FFN(x))."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(self, src, pos, key_padding_mask=None):
        q = k = src + pos
        a = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(a))
        f = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(f))


class TransformerDecoderLayer(nn.Module):
    """DETR decoder layer (post-LN): self-attention with q = k = tgt + query_pos; cross-attention with
    q = tgt + query_pos, k = memory + pos, v = memory; FFN."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(self, tgt, memory, pos, query_pos, memory_key_padding_mask=None):
        q = k = tgt + query_pos
        a = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(a))
        c = self.multihead_attn(tgt + query_pos, memory + pos, memory, key_padding_mask=memory_key_padding_mask,
                                need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(c))
        f = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(f))


class _Encoder(nn.Module):
    def __init__(self, num_layers, **kw):
        super().__init__()
        self.layers = nn.ModuleList([TransformerEncoderLayer(**kw) for _ in range(num_layers)])

    def forward(self, src, pos, key_padding_mask=None):
        for layer in self.layers:
            src = layer(src, pos, key_padding_mask)
        return src


class _Decoder(nn.Module):
    def __init__(self, num_layers, d_model, **kw):
        super().__init__()
        self.layers = nn.ModuleList([TransformerDecoderLayer(d_model, **kw) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, query_pos, memory_key_padding_mask=None):
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_key_padding_mask)
        return self.norm(tgt)


class DETRTransformer(nn.Module):
    """Encoder over the flattened feature map (B, HW, d), decoder over the object queries (B, Q, d)."""

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.1):
        super().__init__()
        kw = dict(nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout)
        self.encoder = _Encoder(num_encoder_layers, d_model=d_model, **kw)
        self.decoder = _Decoder(num_decoder_layers, d_model, **kw)
        self.d_model, self.nhead = d_model, nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query_embed, pos):
        """src, pos (B, d, H, W); mask (B, H, W) True = padded; query_embed (Q, d) -> (B, Q, d)."""
        B = src.shape[0]
        src = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        key_padding_mask = mask.flatten(1)
        query_pos = query_embed.unsqueeze(0).expand(B, -1, -1)
        memory = self.encoder(src, pos, key_padding_mask)
        tgt = torch.zeros_like(query_pos)
        return self.decoder(tgt, memory, pos, query_pos, key_padding_mask)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class DETR(nn.Module):
    """DETR: forward(images (B, 3, H, W), mask (B, H, W) bool = None, True at padded pixels)
    -> (pred_logits (B, Q, num_classes + 1), pred_boxes (B, Q, 4) in [0, 1], (cx, cy, w, h)).

    backbone / backbone_width: a ResNet of reference.models.resnet and its base width (64: the standard one).
    """

    def __init__(self, num_classes=91, num_queries=100, hidden_dim=256, nheads=8, num_encoder_layers=6,
                 num_decoder_layers=6, dim_feedforward=2048, dropout=0.1, backbone="resnet50", backbone_width=64):
        super().__init__()
        self.num_queries = num_queries
        body = Backbone(backbone, backbone_width)
        self.backbone = Joiner(body, PositionEmbeddingSine(hidden_dim // 2, normalize=True))
        self.input_proj = nn.Conv2d(body.num_channels, hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.transformer = DETRTransformer(hidden_dim, nheads, num_encoder_layers, num_decoder_layers,
                                           dim_feedforward, dropout)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)

    def forward(self, images, mask=None):
        if mask is None:
            mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        features, mask, pos = self.backbone(images, mask)
        hs = self.transformer(self.input_proj(features), mask, self.query_embed.weight, pos)
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()


def detr_resnet50(**kwargs):
    """DETR with ResNet-50: d 256, 8 heads, 6+6 layers, FFN 2048, 100 queries; 41M parameters (K l.3392)."""
    return DETR(**kwargs)


def _image_input(batch, config):
    if config.get("backbone_width", 64) >= 64:
        return torch.randn(batch, 3, 800, 1216)       # a COCO-sized input (shorter side 800)
    return torch.randn(batch, 3, 64, 96)              # 2 x 3 feature map: 6 memory tokens


register(
    "detr_resnet50", detr_resnet50,
    # a 4-wide ResNet-50 (layer4: 128 channels), d 32, 2 heads, one encoder and one decoder layer, 8 queries:
    # three attention calls (6-token encoder self-attention, 8-query self-attention, 8 x 6 cross-attention)
    small_config=dict(backbone_width=4, hidden_dim=32, nheads=2, num_encoder_layers=1, num_decoder_layers=1,
                      dim_feedforward=64, num_queries=8, num_classes=5, dropout=0.0),
    example_input=_image_input,
    families=("FA", "BNR"),
    figures={
        "params": Figure(41e6, "K l.3392 (DETR #Params (M) 41)", 0.02,
                         note="all parameters: ResNet-50 body incl. BN affine (trainable here), input projection, "
                              "transformer, 100 queries, class (91 + 1) and box heads: 41,577,888; DETR itself "
                              "trains 41,302,368 (conv1, layer1 and the frozen BN excluded)"),
    },
)
