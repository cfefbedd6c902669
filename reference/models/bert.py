"""Reference BERT-base encoder (bidirectional Transformer encoder with token-type embeddings and a pooler).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  O l.416-418   lecture notes: BERT appends a CLS token to the input and uses it as the aggregated
                embedding; pre-trained by masked-token prediction and next-sentence prediction.
Papers:
  Devlin, Chang, Lee, Toutanova, "BERT: Pre-training of Deep Bidirectional Transformers for Language
  Understanding", NAACL 2019, arXiv:1810.04805: Sec. 3 (BERT_BASE: L = 12 layers, H = 768, A = 12 heads,
  feed-forward 4H = 3072, 110M total parameters), Sec. 3 / Fig. 2 (input = token + segment + position
  embeddings; WordPiece vocabulary of 30,000 tokens: 30522 in the released uncased model; 512 positions),
  Sec. 3.1 (the final hidden state of [CLS] as the aggregate representation); GELU activation (Sec. 3 via
  the OpenAI GPT setup); the released code: post-LN layers, LayerNorm eps 1e-12, dropout 0.1 on hidden
  states and attention probabilities, pooler = tanh(dense(h_[CLS])).
  Vaswani et al. 2017 (the encoder layer; see reference/models/transformer.py).

Attention is ``torch.nn.MultiheadAttention`` (batch_first=True, with biases as BERT), called with
need_weights=False; padding goes in ``key_padding_mask``. The released model keeps query/key/value as
three Linear layers; here they are the packed ``in_proj_weight`` / ``in_proj_bias`` of the
MultiheadAttention (same parameters, concatenated in q, k, v order). Names otherwise follow the
released model where they can (embeddings.word_embeddings / position_embeddings /
token_type_embeddings / LayerNorm, pooler.dense). 109,482,240 parameters at the base configuration
(Hugging Face BertModel bert-base-uncased, pooler included, no pre-training heads).
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import Figure, register

__all__ = ["BertEmbeddings", "BertLayer", "BertPooler", "Bert", "bert_base"]


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, vocab_size, hidden_size, max_position_embeddings, type_vocab_size, dropout, eps):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids, token_type_ids=None):
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(f"{length} tokens; at most {self.position_embeddings.num_embeddings} positions")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(length, device=input_ids.device)[None]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) \
            + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertLayer(nn.Module):
    """Post-LN encoder layer: x = LN(x + Dropout(SelfAttn(x))); x = LN(x + Dropout(W2 GELU(W1 x)))."""

    def __init__(self, hidden_size, num_heads, intermediate_size, dropout, attn_dropout, eps):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=attn_dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.linear1 = nn.Linear(hidden_size, intermediate_size)
        self.activation = nn.GELU()
        self.linear2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x, key_padding_mask=None):
        a = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(a))
        f = self.linear2(self.activation(self.linear1(x)))
        return self.norm2(x + self.dropout2(f))


class BertEncoder(nn.Module):
    def __init__(self, num_layers, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList([BertLayer(**layer_kwargs) for _ in range(num_layers)])

    def forward(self, x, key_padding_mask=None):
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return x


class BertPooler(nn.Module):
    """tanh(dense(hidden state of the first token, [CLS]))."""

    def __init__(self, hidden_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, x):
        return self.activation(self.dense(x[:, 0]))


class Bert(nn.Module):
    """BERT encoder: forward(input_ids (B, L) long, token_type_ids (B, L) = None, attention_mask (B, L) = None)
    -> (sequence_output (B, L, hidden), pooled_output (B, hidden)).

    attention_mask has the released model's meaning: 1 (True) = a real token, 0 = padding (it becomes
    ``key_padding_mask = attention_mask == 0``); None attends everywhere, as the released model.
    """

    def __init__(self, vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                 max_position_embeddings=512, type_vocab_size=2, dropout=0.1, attn_dropout=0.1,
                 layer_norm_eps=1e-12, initializer_range=0.02):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.embeddings = BertEmbeddings(vocab_size, hidden_size, max_position_embeddings, type_vocab_size,
                                         dropout, layer_norm_eps)
        self.encoder = BertEncoder(num_layers, hidden_size=hidden_size, num_heads=num_heads,
                                   intermediate_size=intermediate_size, dropout=dropout, attn_dropout=attn_dropout,
                                   eps=layer_norm_eps)
        self.pooler = BertPooler(hidden_size)
        for name, p in self.named_parameters():   # the released model's init: N(0, 0.02), zero biases
            if p.dim() > 1:
                nn.init.normal_(p, std=initializer_range)
            elif "norm" in name.lower() and name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        key_padding_mask = None if attention_mask is None else attention_mask == 0
        x = self.encoder(self.embeddings(input_ids, token_type_ids), key_padding_mask)
        return x, self.pooler(x)


def bert_base(**kwargs):
    """BERT-base: 12 layers, hidden 768, 12 heads, FFN 3072, GELU; 110M parameters (Devlin et al. 2019)."""
    return Bert(**kwargs)


def _tokens(batch, config):
    return torch.randint(0, config.get("vocab_size", 30522), (batch, 12))


register(
    "bert_base", bert_base,
    # two layers of 12 tokens: two self-attention calls
    small_config=dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                      max_position_embeddings=16, dropout=0.0, attn_dropout=0.0),
    example_input=_tokens,
    families=("FA",),
    figures={
        "params": Figure(110e6, "paper: Devlin et al. 2019, Sec. 3 (BERT_BASE 110M); O l.416", 0.01,
                         note="embeddings (30522 WordPiece, 512 positions, 2 token types), 12 layers, pooler; "
                              "no pre-training heads (Hugging Face bert-base-uncased BertModel: 109,482,240)"),
    },
)
