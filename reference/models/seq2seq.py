"""Reference RNN encoder-decoder (seq2seq) with Bahdanau (additive) or Luong (multiplicative) attention.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.630-656  Kalhor's translation example: max sentence length 100, embedding 300, hidden 500,
               vocabularies 9k (source) / 10k (target) (l.641-645); E a 500-neuron RNN encoder with
               800 inputs (300 embedding + 500 recurrent) that only initialises the decoder (l.650);
               D a recurrent layer of 500 and a 10k linear layer: "The linear layer alone has 5
               million (500 * 10k) weights -- ~10 times more weights than the recurrent layer"
               (l.651); score / w: 100-long alignment scores and softmax weights, c = H w (l.652-656).
  K l.670-717  the attention steps: score every encoder state, softmax (weights add up to 1),
               weight, sum into the context, feed it to the decoder; dot-product scores (l.677).
  R l.1138-1187  seq2seq: argmax decoding, greedy decoding (l.1168), teacher forcing at training
               time and feeding back the prediction at inference time (l.1185-1186), cross entropy.
  R l.1248-1279  attention scores: dot h_t s_k (l.1261), bilinear h_t W s_k (l.1267) with the
               tanh W_c[h_t, s_k] combination (l.1271, "Luong attention"), MLP
               w_2^T tanh W_1 [h_t, s_k] (l.1277, "Bahdanau").
Papers:
  Bahdanau, Cho, Bengio, "Neural Machine Translation by Jointly Learning to Align and Translate",
  ICLR 2015, arXiv:1409.0473 (Sec. 3.1, App. A.1.2: e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j),
  alpha = softmax_j(e), c_i = sum_j alpha_ij h_j, s_i = f(s_{i-1}, y_{i-1}, c_i); App. A.2.2:
  s_0 = tanh(W_s h_1^backward) with a bidirectional encoder).
  Luong, Pham, Manning, "Effective Approaches to Attention-based Neural Machine Translation",
  EMNLP 2015, arXiv:1508.04025 (eq. 8: score(h_t, h_s) = h_t^T h_s (dot), h_t^T W_a h_s (general),
  v_a^T tanh(W_a [h_t; h_s]) (concat); eq. 5: h~_t = tanh(W_c [c_t; h_t]); eq. 6: softmax(W_s h~_t);
  Sec. 3.3 input feeding: h~_{t-1} is concatenated with the next input).

Structure (``Seq2Seq``): source embedding -> ``Recurrent`` encoder (reference/models/rnn.py cells)
-> annotations H (N, S, A); decoder cell initialised with the encoder's final state (K l.650; with a
bidirectional encoder, s_0 = tanh(W_s h_1^backward) as Bahdanau); per target step
  Bahdanau: context from s_{i-1}; s_i = cell([E y_{i-1}, c_i], s_{i-1}); logits = W_out s_i
  Luong:    h_t = cell([E y_{t-1}, h~_{t-1}] (input feeding) or E y_{t-1}, h_{t-1}); context from h_t;
            h~_t = tanh(W_c [c_t; h_t]); logits = W_out h~_t.
Defaults are K's example: a plain (Elman) RNN cell, embedding 300, hidden 500, 9k -> 10k tokens,
sources of at most 100 tokens. W_out is the 500 x 10k "linear layer" of K l.651 (5,000,000 weights).
Deviations, stated: the papers use gated cells (Bahdanau: GRU-like, 1000 units, bidirectional
encoder; Luong: 4-layer LSTM) -- ``cell="gru"/"lstm"``, ``bidirectional_encoder=True`` give those;
Bahdanau's maxout "deep output" layer is replaced by K's single linear layer on s_i.
Padding (``pad_idx``) in the source is masked out of the attention.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register
from .rnn import CELLS, Recurrent

__all__ = ["AdditiveAttention", "LuongAttention", "Seq2Seq", "sequence_loss", "seq2seq_bahdanau", "seq2seq_luong"]


def _attend(scores, keys, mask):
    """scores (N, S), keys (N, S, A), mask (N, S) bool (True = padding) -> context (N, A), weights (N, S)."""
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.bmm(weights.unsqueeze(1), keys).squeeze(1), weights


class AdditiveAttention(nn.Module):
    """Bahdanau: e_j = v_a^T tanh(W_a s + U_a h_j) (App. A.1.2; R l.1277). query (N, Q), keys (N, S, A)."""

    def __init__(self, query_size, key_size, attention_size):
        super().__init__()
        self.query_proj = nn.Linear(query_size, attention_size, bias=False)   # W_a
        self.key_proj = nn.Linear(key_size, attention_size, bias=False)       # U_a
        self.v = nn.Linear(attention_size, 1, bias=False)                     # v_a

    def forward(self, query, keys, mask=None):
        scores = self.v(torch.tanh(self.query_proj(query).unsqueeze(1) + self.key_proj(keys))).squeeze(-1)
        return _attend(scores, keys, mask)


class LuongAttention(nn.Module):
    """Luong eq. 8: dot h^T h_s, general h^T W_a h_s, concat v_a^T tanh(W_a [h; h_s]).

    query (N, H), keys (N, S, A) -> context (N, A), weights (N, S); dot needs A == H."""

    SCORES = ("dot", "general", "concat")

    def __init__(self, score, query_size, key_size):
        super().__init__()
        if score not in self.SCORES:
            raise ValueError(f"score must be one of {self.SCORES}, got {score!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(f"dot scores need equal sizes, got query {query_size} and keys {key_size}")
        self.score = score
        if score == "general":
            self.W_a = nn.Linear(key_size, query_size, bias=False)
        elif score == "concat":
            self.W_a = nn.Linear(query_size + key_size, query_size, bias=False)
            self.v = nn.Linear(query_size, 1, bias=False)

    def forward(self, query, keys, mask=None):
        if self.score == "concat":
            q = query.unsqueeze(1).expand(-1, keys.shape[1], -1)
            scores = self.v(torch.tanh(self.W_a(torch.cat([q, keys], dim=-1)))).squeeze(-1)
        else:
            projected = keys if self.score == "dot" else self.W_a(keys)
            scores = torch.bmm(projected, query.unsqueeze(-1)).squeeze(-1)
        return _attend(scores, keys, mask)


class Seq2Seq(nn.Module):
    """RNN encoder-decoder with attention.

    forward(src (N, S) long, tgt (N, T) long) -> (logits (N, T, tgt_vocab), attention weights (N, T, S)):
    teacher forcing, ``tgt`` is the decoder input (SOS then the target shifted right).
    greedy_decode(src, max_len) -> (tokens (N, L), attention (N, L, S)), each step fed its own argmax.

    attention: "bahdanau" (additive, scores from s_{i-1}) or a Luong score "dot" / "general" / "concat"
    (scores from h_t); cell: "rnn" / "gru" / "lstm".
    """

    def __init__(self, attention="bahdanau", cell="rnn", src_vocab=9000, tgt_vocab=10000, embedding_dim=300,
                 hidden_size=500, max_length=100, bidirectional_encoder=False, input_feeding=True, pad_idx=0,
                 sos_idx=1, eos_idx=2):
        super().__init__()
        if attention != "bahdanau" and attention not in LuongAttention.SCORES:
            raise ValueError(f"attention must be 'bahdanau' or one of {LuongAttention.SCORES}, got {attention!r}")
        self.attention_kind, self.max_length = attention, max_length
        self.pad_idx, self.sos_idx, self.eos_idx = pad_idx, sos_idx, eos_idx
        self.bahdanau = attention == "bahdanau"
        self.input_feeding = input_feeding and not self.bahdanau
        self.src_embedding = nn.Embedding(src_vocab, embedding_dim)
        self.tgt_embedding = nn.Embedding(tgt_vocab, embedding_dim)
        self.encoder = Recurrent(cell, embedding_dim, hidden_size, bidirectional=bidirectional_encoder)
        annotation = hidden_size * self.encoder.directions
        # s_0 = tanh(W_s h_1^backward) (Bahdanau A.2.2); a unidirectional encoder hands over its final state
        self.bridge = nn.Linear(hidden_size, hidden_size) if bidirectional_encoder else None
        if self.bahdanau:
            self.attention = AdditiveAttention(hidden_size, annotation, hidden_size)
            decoder_input = embedding_dim + annotation
        else:
            self.attention = LuongAttention(attention, hidden_size, annotation)
            self.combine = nn.Linear(annotation + hidden_size, hidden_size, bias=False)     # W_c
            decoder_input = embedding_dim + (hidden_size if self.input_feeding else 0)
        self.decoder_cell = CELLS[cell](decoder_input, hidden_size)
        self.out = nn.Linear(hidden_size, tgt_vocab)                                        # K l.651: 500 x 10k

    def encode(self, src):
        """src (N, S) -> annotations (N, S, A), padding mask (N, S) or None, initial decoder state."""
        if src.shape[1] > self.max_length:
            raise ValueError(f"source of {src.shape[1]} tokens is longer than max_length={self.max_length}")
        mask = (src == self.pad_idx) if self.pad_idx is not None else None
        annotations, finals = self.encoder(self.src_embedding(src))
        forward_state, *backward = finals[-1]
        if self.bridge is None:
            state = forward_state
        else:
            h = torch.tanh(self.bridge(self.encoder.layers[-1][1].hidden(backward[0])))
            state = (h, torch.zeros_like(h)) if isinstance(forward_state, tuple) else h
        return annotations, mask, state

    def step(self, token, state, feed, annotations, mask):
        """One decoder step: token (N,) -> (logits (N, V), weights (N, S), state, feed (h~_t for input feeding))."""
        emb = self.tgt_embedding(token)
        cell = self.decoder_cell
        if self.bahdanau:
            context, weights = self.attention(cell.hidden(state), annotations, mask)
            state = cell(torch.cat([emb, context], dim=-1), state)
            return self.out(cell.hidden(state)), weights, state, None
        state = cell(torch.cat([emb, feed], dim=-1) if self.input_feeding else emb, state)
        h = cell.hidden(state)
        context, weights = self.attention(h, annotations, mask)
        attentional = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))            # h~_t, Luong eq. 5
        return self.out(attentional), weights, state, attentional

    def _initial_feed(self, annotations):
        return annotations.new_zeros(annotations.shape[0], self.decoder_cell.hidden_size)

    def forward(self, src, tgt):
        annotations, mask, state = self.encode(src)
        feed = self._initial_feed(annotations)
        logits, weights = [], []
        for t in range(tgt.shape[1]):
            out, w, state, feed = self.step(tgt[:, t], state, feed, annotations, mask)
            logits.append(out)
            weights.append(w)
        return torch.stack(logits, dim=1), torch.stack(weights, dim=1)

    @torch.no_grad()
    def greedy_decode(self, src, max_len=None):
        """Greedy decoding (R l.1168): starts from SOS, stops when every sequence has produced EOS
        (positions after a sequence's EOS hold pad_idx)."""
        max_len = self.max_length if max_len is None else max_len
        annotations, mask, state = self.encode(src)
        feed = self._initial_feed(annotations)
        token = torch.full((src.shape[0],), self.sos_idx, dtype=torch.long, device=src.device)
        done = torch.zeros_like(token, dtype=torch.bool)
        tokens, weights = [], []
        for _ in range(max_len):
            out, w, state, feed = self.step(token, state, feed, annotations, mask)
            token = out.argmax(dim=-1)
            tokens.append(token.masked_fill(done, self.pad_idx if self.pad_idx is not None else self.eos_idx))
            weights.append(w)
            done = done | (token == self.eos_idx)
            if done.all():
                break
        return torch.stack(tokens, dim=1), torch.stack(weights, dim=1)


def sequence_loss(logits, target, pad_idx=0):
    """Cross entropy summed over time, averaged over the batch (R l.1181), padding ignored.
    logits (N, T, V), target (N, T) long -> scalar."""
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100 if pad_idx is None else pad_idx,
                           reduction="sum")
    return loss / logits.shape[0]


def seq2seq_bahdanau(**kwargs):
    """RNN encoder-decoder with Bahdanau (additive) attention, K's example sizes (300 / 500 / 9k -> 10k)."""
    return Seq2Seq(attention="bahdanau", **kwargs)


def seq2seq_luong(attention="dot", **kwargs):
    """RNN encoder-decoder with Luong attention (dot by default, K l.677; "general" / "concat"), input feeding."""
    return Seq2Seq(attention=attention, **kwargs)


def _pair(batch, config):
    """(src (N, 9), tgt (N, 6)) token ids >= 3 (0 pad, 1 SOS, 2 EOS); sample 1 ends in two padding tokens,
    tgt starts with SOS."""
    src = torch.randint(3, config.get("src_vocab", 9000), (batch, 9))
    tgt = torch.randint(3, config.get("tgt_vocab", 10000), (batch, 6))
    tgt[:, 0] = 1
    if batch > 1:
        src[1, -2:] = 0
    return src, tgt


_FIGURES = {
    "decoder_projection_weights": Figure(
        5e6, "K l.651 (the linear layer alone has 5 million (500 * 10k) weights)", 0.001,
        note="weight matrix of the decoder's output Linear (hidden 500 -> 10k target tokens), bias not counted"),
    "projection_over_recurrent": Figure(
        10.0, "K l.651 (~10 times more weights than the recurrent layer)", 0.3,
        note="output-layer weights / weights of the decoder's recurrent cell (biases not counted); the RNN cell "
             "reads [embedding 300, context or h~ 500] and its 500 recurrent inputs: 650k weights, ratio 7.7; "
             "'~10' is K's rounding"),
}
_SMALL = dict(src_vocab=40, tgt_vocab=30, embedding_dim=8, hidden_size=12, max_length=20)
register("seq2seq_bahdanau", seq2seq_bahdanau, small_config=dict(_SMALL, cell="gru"), example_input=_pair,
         families=(), figures=_FIGURES)
register("seq2seq_luong", seq2seq_luong, small_config=dict(_SMALL, cell="lstm", attention="general"),
         example_input=_pair, families=(), figures=_FIGURES)
