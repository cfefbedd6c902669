"""Reference recurrent networks written from their gate equations: RNN, LSTM, GRU, BiLSTM, ConvLSTM.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.465-478  Kalhor: simple RNN, h_t = f(V h_{t-1} + U x_t) (l.465), o_t = g(W h_t) (l.467),
               f, g in {ReLU, tanh, sigmoid, ...} (l.478).
  K l.480-509  LSTM gates (l.486-496), output y_t = f(V h_t + b_v) (l.498).
  K l.511-528  GRU gates (l.522-528).
  K l.533-556  bidirectional and deep (stacked) RNNs: one RNN forwards, one backwards.
  K l.573-595  ConvLSTM (Shi et al. 2015) with peepholes (l.588-592), '*' convolution, 'o' Hadamard.
  R l.1086-1136, O l.285-333  RNN / LSTM / GRU / ConvLSTM / ConvGRU in prose; R l.1127-1129: the
               bidirectional outputs of both directions are concatenated.
Papers:
  Elman, "Finding Structure in Time", Cognitive Science 1990 (simple RNN).
  Hochreiter, Schmidhuber, "Long Short-Term Memory", Neural Computation 1997; Gers, Schmidhuber,
  Cummins, "Learning to Forget: Continual Prediction with LSTM", Neural Computation 2000 (forget gate).
  Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
  Translation", EMNLP 2014, arXiv:1406.1078, eqs. (5)-(8) (GRU).
  Shi et al., "Convolutional LSTM Network: A Machine Learning Approach for Precipitation
  Nowcasting", NeurIPS 2015, arXiv:1506.04214, eq. (3) (ConvLSTM).

The equations implemented ([a, b] is concatenation, * elementwise unless said otherwise):

  RNN  (K l.465)       h_t = f(U x_t + V h_{t-1} + b)           f = tanh (or relu)
  LSTM (K l.486-496)   f_t = sigmoid(W_f [h_{t-1}, x_t] + b_f)     forget gate
                       i_t = sigmoid(W_i [h_{t-1}, x_t] + b_i)     input ("write") gate
                       C~_t = tanh(W_C [h_{t-1}, x_t] + b_C)       candidate
                       C_t = f_t * C_{t-1} + i_t * C~_t
                       o_t = sigmoid(W_o [h_{t-1}, x_t] + b_o)     output ("read") gate
                       h_t = o_t * tanh(C_t)
  GRU  (K l.522-528)   z_t = sigmoid(W_z [h_{t-1}, x_t] + b_z)     update gate
                       r_t = sigmoid(W_r [h_{t-1}, x_t] + b_r)     reset gate
                       h~_t = tanh(W [r_t * h_{t-1}, x_t] + b)
                       h_t = (1 - z_t) * h_{t-1} + z_t * h~_t
  ConvLSTM (K l.588-592, Shi et al. eq. 3; W_x* X + W_h* H is one conv of [X, H])
                       i_t = sigmoid(W_xi * X_t + W_hi * H_{t-1} + W_ci o C_{t-1} + b_i)
                       f_t = sigmoid(W_xf * X_t + W_hf * H_{t-1} + W_cf o C_{t-1} + b_f)
                       C_t = f_t o C_{t-1} + i_t o tanh(W_xc * X_t + W_hc * H_{t-1} + b_c)
                       o_t = sigmoid(W_xo * X_t + W_ho * H_{t-1} + W_co o C_t + b_o)
                       H_t = o_t o tanh(C_t)

Each gate is its own ``nn.Linear`` over [h_{t-1}, x_t] (``nn.Conv2d`` over [X_t, H_{t-1}] in
ConvLSTM), as the equations are written; the cells run one time step at a time (no nn.LSTM).

What the documents get wrong or leave out, fixed here:
- K l.482 credits the printed LSTM to Hochreiter & Schmidhuber 1997; the 1997 cell has no forget
  gate (its cell state is C_t = C_{t-1} + i_t * C~_t): f_t is Gers et al. 2000. The equations
  as printed (with f_t) are the standard LSTM and are what is implemented.
- K l.465 and l.522-526 print no biases; each gate here has one (``bias=False`` gives the equations
  as printed). torch.nn.RNN/LSTM/GRU carry two biases per gate (b_ih + b_hh); their sum is ours.
- K l.528 weights the candidate by z_t; Cho et al. eq. (7) writes h_t = z h_{t-1} + (1 - z) h~_t.
  The two are the same family (z <-> 1 - z by negating W_z and b_z): K's form is implemented, and
  torch's GRU z is 1 - ours.
- K l.526 applies the reset gate before the hidden matmul (W [r * h, x], Cho et al. eq. 8);
  torch / cuDNN apply it after (tanh(W_x x + b_x + r * (W_h h + b_h))). ``reset_after=True`` gives
  torch's variant (the one nn.GRU computes); the default is the paper's and K's.
- K's ConvLSTM equations match Shi et al. eq. (3). The paper's peephole weights W_c. are tensors of
  the cell's size (hidden, H, W) (``spatial_size=(H, W)``); by default they are per channel
  (hidden, 1, 1), so the cell takes any frame size. Peepholes start at zero.
Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import register

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "ConvLSTMCell", "CELLS", "Recurrent", "ConvLSTM",
           "SequenceClassifier", "SequenceTagger", "ConvLSTMForecaster", "rnn_classifier", "lstm_classifier",
           "gru_classifier", "bilstm_tagger", "convlstm_forecaster"]


class _Cell(nn.Module):
    """A cell whose state is the hidden vector h (N, hidden_size); ``hidden(state)`` reads h from any state."""

    def zeros(self, x):
        return x.new_zeros(x.shape[0], self.hidden_size)

    def initial_state(self, x):
        return self.zeros(x)

    @staticmethod
    def hidden(state):
        return state


class _MemoryCell(_Cell):
    """A cell whose state is (h, C), hidden and cell state, both zero at the start."""

    def initial_state(self, x):
        zeros = self.zeros(x)
        return zeros, zeros

    @staticmethod
    def hidden(state):
        return state[0]


class RNNCell(_Cell):
    """Elman cell (K l.465): x (N, input_size), h (N, hidden) -> h_t (N, hidden).

    ``input_to_hidden`` is U (with the bias b), ``hidden_to_hidden`` is V."""

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", bias=True):
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.hidden_size = hidden_size
        self.input_to_hidden = nn.Linear(input_size, hidden_size, bias=bias)
        self.hidden_to_hidden = nn.Linear(hidden_size, hidden_size, bias=False)
        self.activation = torch.tanh if nonlinearity == "tanh" else torch.relu

    def forward(self, x, h):
        return self.activation(self.input_to_hidden(x) + self.hidden_to_hidden(h))


class LSTMCell(_MemoryCell):
    """LSTM cell (K l.486-496): x (N, input_size), state (h, C) each (N, hidden) -> (h_t, C_t)."""

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        self.hidden_size = hidden_size
        n = hidden_size + input_size
        self.forget_gate = nn.Linear(n, hidden_size, bias=bias)
        self.input_gate = nn.Linear(n, hidden_size, bias=bias)
        self.candidate = nn.Linear(n, hidden_size, bias=bias)
        self.output_gate = nn.Linear(n, hidden_size, bias=bias)

    def forward(self, x, state):
        h, c = state
        hx = torch.cat([h, x], dim=-1)                                  # [h_{t-1}, x_t]
        f = torch.sigmoid(self.forget_gate(hx))
        i = torch.sigmoid(self.input_gate(hx))
        c_tilde = torch.tanh(self.candidate(hx))
        c = f * c + i * c_tilde
        o = torch.sigmoid(self.output_gate(hx))
        return o * torch.tanh(c), c


class GRUCell(_Cell):
    """GRU cell (K l.522-528): x (N, input_size), h (N, hidden) -> h_t (N, hidden).

    W [r * h, x] is split into ``candidate_hidden`` (W_h) and ``candidate_input`` (W_x, with the
    bias); reset_after=True computes tanh(W_x x + b_x + r * (W_h h + b_h)) (torch / cuDNN)."""

    def __init__(self, input_size, hidden_size, bias=True, reset_after=False):
        super().__init__()
        self.hidden_size, self.reset_after = hidden_size, reset_after
        n = hidden_size + input_size
        self.update_gate = nn.Linear(n, hidden_size, bias=bias)
        self.reset_gate = nn.Linear(n, hidden_size, bias=bias)
        self.candidate_input = nn.Linear(input_size, hidden_size, bias=bias)
        self.candidate_hidden = nn.Linear(hidden_size, hidden_size, bias=bias and reset_after)

    def forward(self, x, h):
        hx = torch.cat([h, x], dim=-1)
        z = torch.sigmoid(self.update_gate(hx))
        r = torch.sigmoid(self.reset_gate(hx))
        if self.reset_after:
            h_tilde = torch.tanh(self.candidate_input(x) + r * self.candidate_hidden(h))
        else:
            h_tilde = torch.tanh(self.candidate_input(x) + self.candidate_hidden(r * h))
        return (1 - z) * h + z * h_tilde


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


class Recurrent(nn.Module):
    """A stack of ``num_layers`` recurrent layers, each one cell per direction, run step by step.

    x (N, T, input_size) [, initial states] -> (outputs (N, T, directions * hidden),
    final states: a list over layers of a list over directions of the cell's state).
    Layer l > 0 reads the concatenated outputs of both directions of layer l - 1 (K l.549-556);
    ``dropout`` is applied to the inputs of layers l > 0 (as nn.LSTM).
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bidirectional=False, dropout=0.0, **cell_kwargs):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.directions = 2 if bidirectional else 1
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList()
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size * self.directions
            self.layers.append(nn.ModuleList(CELLS[cell](size, hidden_size, **cell_kwargs)
                                             for _ in range(self.directions)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, states=None):
        finals = []
        for index, cells in enumerate(self.layers):
            if index > 0:
                x = self.dropout(x)
            outs, layer_finals = [], []
            for direction, cell in enumerate(cells):
                state = cell.initial_state(x) if states is None else states[index][direction]
                steps = range(x.shape[1]) if direction == 0 else range(x.shape[1] - 1, -1, -1)
                hs = [None] * x.shape[1]
                for t in steps:
                    state = cell(x[:, t], state)
                    hs[t] = cell.hidden(state)
                outs.append(torch.stack(hs, dim=1))
                layer_finals.append(state)
            x = torch.cat(outs, dim=-1)
            finals.append(layer_finals)
        return x, finals


class ConvLSTMCell(_MemoryCell):
    """ConvLSTM cell (K l.588-592, Shi et al. eq. 3): X (N, C_in, H, W), state (H, C) each
    (N, hidden, H, W) -> (H_t, C_t). Peephole weights: (hidden, *spatial_size) or (hidden, 1, 1)."""

    def __init__(self, input_channels, hidden_channels, kernel_size=3, peephole=True, spatial_size=None, bias=True):
        super().__init__()
        self.hidden_channels = hidden_channels
        n = input_channels + hidden_channels

        def gate():
            return nn.Conv2d(n, hidden_channels, kernel_size, padding=kernel_size // 2, bias=bias)

        self.input_gate, self.forget_gate, self.candidate, self.output_gate = gate(), gate(), gate(), gate()
        if peephole:
            shape = (hidden_channels,) + (tuple(spatial_size) if spatial_size else (1, 1))
            self.peephole_input = nn.Parameter(torch.zeros(shape))       # W_ci
            self.peephole_forget = nn.Parameter(torch.zeros(shape))      # W_cf
            self.peephole_output = nn.Parameter(torch.zeros(shape))      # W_co
        self.peephole = peephole

    def zeros(self, x):
        return x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[-2:])

    def forward(self, x, state):
        h, c = state
        xh = torch.cat([x, h], dim=1)
        i_pre, f_pre, o_pre = self.input_gate(xh), self.forget_gate(xh), self.output_gate(xh)
        if self.peephole:
            i_pre = i_pre + self.peephole_input * c
            f_pre = f_pre + self.peephole_forget * c
        c = torch.sigmoid(f_pre) * c + torch.sigmoid(i_pre) * torch.tanh(self.candidate(xh))
        if self.peephole:
            o_pre = o_pre + self.peephole_output * c                      # the output gate peeks at C_t
        return torch.sigmoid(o_pre) * torch.tanh(c), c


class ConvLSTM(nn.Module):
    """Stacked ConvLSTM layers: x (N, T, C, H, W) -> (outputs of every layer, each (N, T, hidden_l, H, W),
    final (H, C) state of every layer)."""

    def __init__(self, input_channels, hidden_channels=(64, 64), kernel_size=3, peephole=True, spatial_size=None):
        super().__init__()
        sizes = [input_channels] + list(hidden_channels)
        self.cells = nn.ModuleList(ConvLSTMCell(a, b, kernel_size, peephole, spatial_size)
                                   for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x, states=None):
        outputs, finals = [], []
        for index, cell in enumerate(self.cells):
            state = cell.initial_state(x[:, 0]) if states is None else states[index]
            hs = []
            for t in range(x.shape[1]):
                state = cell(x[:, t], state)
                hs.append(state[0])
            x = torch.stack(hs, dim=1)
            outputs.append(x)
            finals.append(state)
        return outputs, finals


class SequenceClassifier(nn.Module):
    """Embedding -> recurrent stack -> linear head on the final hidden state(s) (many-to-one, O l.292).

    tokens (N, T) long -> logits (N, num_classes). With bidirectional=True the head reads the
    last forward state and the last backward state (the backward one is at t = 0), concatenated."""

    def __init__(self, cell="lstm", vocab_size=10000, embedding_dim=300, hidden_size=500, num_layers=1,
                 num_classes=2, bidirectional=False, dropout=0.0, **cell_kwargs):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.recurrent = Recurrent(cell, embedding_dim, hidden_size, num_layers, bidirectional, dropout, **cell_kwargs)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * self.recurrent.directions, num_classes)

    def forward(self, tokens):
        _, finals = self.recurrent(self.embedding(tokens))
        cells = self.recurrent.layers[-1]
        last = torch.cat([cell.hidden(state) for cell, state in zip(cells, finals[-1])], dim=-1)
        return self.head(self.dropout(last))


class SequenceTagger(SequenceClassifier):
    """Embedding -> recurrent stack -> linear head at every step (many-to-many, e.g. a BiLSTM tagger, K l.546).

    tokens (N, T) long -> logits (N, T, num_tags)."""

    def __init__(self, cell="lstm", vocab_size=10000, embedding_dim=300, hidden_size=500, num_layers=1,
                 num_tags=10, bidirectional=True, dropout=0.0, **cell_kwargs):
        super().__init__(cell, vocab_size, embedding_dim, hidden_size, num_layers, num_tags, bidirectional, dropout,
                         **cell_kwargs)

    def forward(self, tokens):
        outputs, _ = self.recurrent(self.embedding(tokens))
        return self.head(self.dropout(outputs))


class ConvLSTMForecaster(nn.Module):
    """Next-frame predictor: stacked ConvLSTM, then a 1x1 conv over the concatenated hidden states
    of all layers (Shi et al. Sec. 3.2 / Fig. 3 predict from all states) and a sigmoid.

    frames (N, T, C, H, W) in [0, 1] -> predicted next frames (N, T, C, H, W) (output t predicts t + 1)."""

    def __init__(self, in_channels=1, hidden_channels=(64, 64), kernel_size=3, peephole=True, spatial_size=None):
        super().__init__()
        self.convlstm = ConvLSTM(in_channels, hidden_channels, kernel_size, peephole, spatial_size)
        self.head = nn.Conv2d(sum(hidden_channels), in_channels, 1)

    def forward(self, frames):
        outputs, _ = self.convlstm(frames)
        h = torch.cat(outputs, dim=2)
        n, t = h.shape[:2]
        y = self.head(h.flatten(0, 1))
        return torch.sigmoid(y).reshape(n, t, *y.shape[1:])


def rnn_classifier(**kwargs):
    """Elman RNN (tanh) sequence classifier, K's sizes: embedding 300, hidden 500, 10k vocabulary."""
    return SequenceClassifier(cell="rnn", **kwargs)


def lstm_classifier(**kwargs):
    """LSTM sequence classifier, K's sizes: embedding 300, hidden 500, 10k vocabulary."""
    return SequenceClassifier(cell="lstm", **kwargs)


def gru_classifier(**kwargs):
    """GRU sequence classifier (reset gate before the matmul, as K l.526), embedding 300, hidden 500."""
    return SequenceClassifier(cell="gru", **kwargs)


def bilstm_tagger(**kwargs):
    """Bidirectional LSTM tagger (K l.533-547): 500 hidden per direction, outputs concatenated."""
    return SequenceTagger(cell="lstm", bidirectional=True, **kwargs)


def convlstm_forecaster(**kwargs):
    """ConvLSTM next-frame forecaster with peepholes (Shi et al. 2015): two 64-channel 3x3 layers, 1 input channel."""
    return ConvLSTMForecaster(**kwargs)


def _tokens(batch, config):
    return torch.randint(0, config.get("vocab_size", 10000), (batch, 7))


def _frames(batch, config):
    size = config.get("spatial_size") or (16, 16)
    return torch.rand(batch, 5, config.get("in_channels", 1), *size)


_SMALL_TEXT = dict(vocab_size=50, embedding_dim=8, hidden_size=12, num_classes=3)
for _name, _factory in (("rnn_classifier", rnn_classifier), ("lstm_classifier", lstm_classifier),
                        ("gru_classifier", gru_classifier)):
    register(_name, _factory, small_config=dict(_SMALL_TEXT, num_layers=2), example_input=_tokens, families=(),
             figures={})   # the documents publish no sizes for these beyond K's example (l.641-651)
register("bilstm_tagger", bilstm_tagger, small_config=dict(vocab_size=50, embedding_dim=8, hidden_size=6, num_tags=5),
         example_input=_tokens, families=(), figures={})
register("convlstm_forecaster", convlstm_forecaster, small_config=dict(hidden_channels=(4, 6)), example_input=_frames,
         families=(), figures={})   # 3x3 convs with groups=1 only: no cvkernels family
