"""Reference Transformer (encoder-decoder) of "Attention is all you need".

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  A l.180-227     design-patterns report: the Transformer as an encoder-decoder of attention layers.
  K l.2768-2780   Kalhor: "Vanilla Transformer": N=6 identical encoder blocks (multi-head self-attention
                  + position-wise FFN), a residual connection around each module followed by Layer
                  Normalization (post-LN), N=6 decoder blocks that insert cross-attention between the
                  self-attention and the FFN, the decoder's self-attention prevented from attending to
                  subsequent positions.
  K l.2940-2983   the worked example of scaled dot-product attention: scores q1.k1 = 112, q1.k2 = 96,
                  divided by 8 (sqrt(d_k), d_k = 64): 14, 12; softmax: 0.88, 0.12 (checked in
                  tests/test_reference_attention_models.py).
  K l.2768-3138, R l.1301, O l.401-415   positional encoding, multi-head attention, masking.
Paper:
  Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762: Sec. 3.1 (N = 6,
  d_model = 512, LayerNorm(x + Sublayer(x))), 3.2.1 (Attention(Q, K, V) = softmax(QK^T / sqrt(d_k))V),
  3.2.2 (h = 8, d_k = d_v = 64; MultiHead = Concat(head_1..h) W^O with head_i = Attention(QW_i^Q, KW_i^K,
  VW_i^V): no biases in the projections), 3.2.3 (the decoder masks illegal connections), 3.3 (FFN(x) =
  max(0, xW1 + b1)W2 + b2, d_ff = 2048), 3.4 (embeddings multiplied by sqrt(d_model); one weight matrix
  shared by the two embedding layers and the pre-softmax linear transformation), 3.5 (sinusoidal PE:
  PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...)), 5.4 (P_drop = 0.1 on every
  sub-layer output before the residual addition and on the sums of embeddings and positional
  encodings); Table 3: the base model has 65M parameters (EN-DE, shared BPE vocabulary of ~37000
  tokens, Sec. 5.1).

Attention is ``torch.nn.MultiheadAttention`` (batch_first=True), the module cvkernels' flash
attention replaces: called with need_weights=False; the decoder's causal self-attention passes a
bool ``attn_mask`` (True = may not attend) with ``is_causal=True``; padding goes in
``key_padding_mask`` (True = a padded key). The projections have no biases (``attn_bias=False``,
the paper's equations and the tensor2tensor code); ``attn_bias=True`` gives nn.Transformer's.
Layer and parameter names follow ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
(self_attn, multihead_attn, linear1, linear2, norm1..3). There is no final LayerNorm after the
stacks (post-LN: each sub-layer already ends in one; nn.Transformer adds one). Dropout inside the
attention (on the probabilities) is not in the paper: ``attn_dropout`` defaults to 0.

With the shared 37000-token vocabulary the base model has 63.0M parameters; the paper's 65M is not
reproduced exactly by any configuration it documents (with attention biases: 63.1M); the test
records the difference. Nothing here imports cvkernels, torchvision or timm.
"""
import math

import torch
from torch import nn

from . import Figure, register

__all__ = ["sinusoidal_position_encoding", "causal_mask", "PositionalEncoding", "TransformerEncoderLayer",
           "TransformerDecoderLayer", "Transformer", "transformer_base"]


def sinusoidal_position_encoding(length, d_model, dtype=torch.float32, device=None):
    """(length, d_model): PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    pos = torch.arange(length, dtype=torch.float64, device=device)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64, device=device)
    angle = pos / torch.pow(10000.0, two_i / d_model)
    pe = torch.zeros(length, d_model, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.to(dtype)


def causal_mask(length, device=None):
    """(length, length) bool, True above the diagonal: position i may not attend to j > i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class PositionalEncoding(nn.Module):
    """x * sqrt(d_model) + PE[:L], then dropout (Sec. 3.4, 3.5, 5.4). x: (B, L, d_model) embeddings."""

    def __init__(self, d_model, dropout=0.1, max_len=5000):
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_position_encoding(max_len, d_model), persistent=False)

    def forward(self, x):
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} tokens is longer than max_len={self.pe.shape[0]}")
        return self.dropout(x * math.sqrt(self.d_model) + self.pe[: x.shape[1]].to(x.dtype))


class TransformerEncoderLayer(nn.Module):
    """Post-LN encoder layer: x = LN(x + Dropout(SelfAttn(x))); x = LN(x + Dropout(FFN(x)))."""

    def __init__(self, d_model=512, nhead=8, dim_feedforward=2048, dropout=0.1, attn_dropout=0.0, attn_bias=False,
                 activation=nn.ReLU):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=attn_dropout, bias=attn_bias,
                                               batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = activation()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x, key_padding_mask=None):
        a = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(a))
        f = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.norm2(x + self.dropout2(f))


class TransformerDecoderLayer(nn.Module):
    """Post-LN decoder layer: causal self-attention, cross-attention over the encoder output (memory), FFN;
    each sub-layer as LN(x + Dropout(sublayer(x)))."""

    def __init__(self, d_model=512, nhead=8, dim_feedforward=2048, dropout=0.1, attn_dropout=0.0, attn_bias=False,
                 activation=nn.ReLU):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=attn_dropout, bias=attn_bias,
                                               batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=attn_dropout, bias=attn_bias,
                                                    batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = activation()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, x, memory, tgt_mask, tgt_key_padding_mask=None, memory_key_padding_mask=None):
        a = self.self_attn(x, x, x, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask, need_weights=False,
                           is_causal=True)[0]
        x = self.norm1(x + self.dropout1(a))
        c = self.multihead_attn(x, memory, memory, key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
        x = self.norm2(x + self.dropout2(c))
        f = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.norm3(x + self.dropout3(f))


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList([TransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers)])

    def forward(self, x, key_padding_mask=None):
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return x


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList([TransformerDecoderLayer(**layer_kwargs) for _ in range(num_layers)])

    def forward(self, x, memory, tgt_key_padding_mask=None, memory_key_padding_mask=None):
        mask = causal_mask(x.shape[1], device=x.device)
        for layer in self.layers:
            x = layer(x, memory, mask, tgt_key_padding_mask, memory_key_padding_mask)
        return x


class Transformer(nn.Module):
    """Encoder-decoder Transformer (Vaswani et al. 2017, Fig. 1) returning next-token logits.

    forward(src (B, S) long, tgt (B, T) long = None, src_key_padding_mask (B, S) bool = None,
    tgt_key_padding_mask (B, T) bool = None) -> logits (B, T, tgt_vocab).
    tgt=None decodes the source itself (a copy task), so that ``model(tokens)`` works with the registry's
    single example input. A padding mask that is not given is derived from ``pad_idx`` (tokens equal to it
    are padding; pad_idx=None: no padding). True in a padding mask marks a padded position.

    src_vocab/tgt_vocab: vocabulary sizes (tgt_vocab=None: the same); share_embeddings: one embedding
    matrix for source and target (the paper, with its shared BPE vocabulary; needs equal vocabularies);
    tie_output: the pre-softmax linear layer uses the target embedding matrix (the paper).
    """

    def __init__(self, src_vocab=37000, tgt_vocab=None, d_model=512, nhead=8, num_encoder_layers=6,
                 num_decoder_layers=6, dim_feedforward=2048, dropout=0.1, attn_dropout=0.0, attn_bias=False,
                 share_embeddings=True, tie_output=True, pad_idx=0, max_len=5000):
        super().__init__()
        tgt_vocab = src_vocab if tgt_vocab is None else tgt_vocab
        if share_embeddings and tgt_vocab != src_vocab:
            raise ValueError("share_embeddings needs src_vocab == tgt_vocab")
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} is not divisible by nhead={nhead}")
        self.d_model, self.pad_idx = d_model, pad_idx
        self.src_embed = nn.Embedding(src_vocab, d_model)
        self.tgt_embed = self.src_embed if share_embeddings else nn.Embedding(tgt_vocab, d_model)
        self.pos_encoding = PositionalEncoding(d_model, dropout, max_len)
        layer = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout,
                     attn_dropout=attn_dropout, attn_bias=attn_bias)
        self.encoder = TransformerEncoder(num_encoder_layers, **layer)
        self.decoder = TransformerDecoder(num_decoder_layers, **layer)
        self.generator = nn.Linear(d_model, tgt_vocab, bias=False)
        self._reset_parameters()
        if tie_output:
            self.generator.weight = self.tgt_embed.weight

    def _reset_parameters(self):
        for name, p in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(p, std=self.d_model ** -0.5)   # x sqrt(d_model) in the forward: unit scale
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _padding(self, tokens, mask):
        if mask is None and self.pad_idx is not None:
            mask = tokens == self.pad_idx
        return mask

    def encode(self, src, src_key_padding_mask=None):
        src_key_padding_mask = self._padding(src, src_key_padding_mask)
        return self.encoder(self.pos_encoding(self.src_embed(src)), src_key_padding_mask), src_key_padding_mask

    def decode(self, tgt, memory, tgt_key_padding_mask=None, memory_key_padding_mask=None):
        tgt_key_padding_mask = self._padding(tgt, tgt_key_padding_mask)
        x = self.decoder(self.pos_encoding(self.tgt_embed(tgt)), memory, tgt_key_padding_mask,
                         memory_key_padding_mask)
        return self.generator(x)

    def forward(self, src, tgt=None, src_key_padding_mask=None, tgt_key_padding_mask=None):
        if tgt is None:
            tgt, tgt_key_padding_mask = src, src_key_padding_mask
        memory, src_key_padding_mask = self.encode(src, src_key_padding_mask)
        return self.decode(tgt, memory, tgt_key_padding_mask, src_key_padding_mask)


def transformer_base(**kwargs):
    """Transformer base (Vaswani et al. 2017, Table 3): N=6+6, d_model 512, 8 heads, d_ff 2048, dropout 0.1,
    shared 37000-token vocabulary; 65M parameters (paper)."""
    return Transformer(**kwargs)


def _tokens(batch, config):
    """(batch, 10) token ids in [1, vocab); sample 1 (if any) ends in three padding tokens (pad_idx)."""
    vocab = config.get("src_vocab", 37000)
    x = torch.randint(1, vocab, (batch, 10))
    pad = config.get("pad_idx", 0)
    if batch > 1 and pad is not None:
        x[1, -3:] = pad
    return x


register(
    "transformer_base", transformer_base,
    # one encoder and one decoder layer: three attention calls (encoder self, causal decoder self, cross)
    # on 10 tokens, the padding of the second sample in key_padding_mask
    small_config=dict(src_vocab=50, d_model=32, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                      dim_feedforward=64, dropout=0.0),
    example_input=_tokens,
    families=("FA",),
    figures={
        "params": Figure(65e6, "paper: Vaswani et al. 2017, Table 3 (base: 65M)", 0.035,
                         note="all parameters, one 37000 x 512 matrix shared by both embeddings and the output "
                              "layer, projections without biases (the paper's equations): 63,045,632; the paper's "
                              "65M is ~3% more than any documented configuration gives"),
    },
)
