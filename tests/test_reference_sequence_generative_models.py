"""The reference recurrent, sequence, generative, siamese and video models (issue 8).

- parameter counts of the standard configurations (meta device) against the registry's figures and
  against hand counts from the papers' layer tables; K l.651's decoder weights (5M, ~10x the cell);
- the recurrent cells, written from K's gate equations, against torch.nn.RNN / LSTM / GRU with copied
  weights (an independent oracle), stacked and bidirectional, float64; ConvLSTM against nn.LSTM at
  1x1 and against its equations (K l.588-592) for one step with peepholes;
- attention weights (Bahdanau, Luong dot / general / concat) sum to 1 and skip padding; greedy
  decoding agrees with teacher forcing on its own output;
- VAE loss components against torch.distributions, AdaIN statistics, the losses against hand values;
- forward + backward of every small configuration (finite, shapes, every parameter gets a gradient).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference import models
from reference.models import autoencoder, cyclegan, gan, pix2pix, rnn, seq2seq, siamese, video
from reference.models.flops import count_params

NEW_MODELS = ["rnn_classifier", "lstm_classifier", "gru_classifier", "bilstm_tagger", "convlstm_forecaster",
              "seq2seq_bahdanau", "seq2seq_luong", "fc_autoencoder", "conv_autoencoder", "denoising_autoencoder",
              "vae", "siamese_network", "gan_generator", "gan_discriminator", "stylegan_mapping", "stylegan_block",
              "pix2pix_generator", "patchgan_discriminator", "cyclegan_generator", "stargan_generator", "c3d",
              "r2plus1d_18"]


def _meta(name, **config):
    with torch.device("meta"):
        return models.create(name, **config)


def _call(model, x):
    return model(*x) if isinstance(x, tuple) else model(x)


def _outputs(y):
    return list(y) if isinstance(y, tuple) else [y]


# ----------------------------------------------------------------------------- parameter counts

def _lin(a, b, bias=True):
    return a * b + (b if bias else 0)


def _conv(cin, cout, k, bias=True, norm=0):
    return cin * cout * k * k + (cout if bias else 0) + norm * cout


def _pix2pix_count(ngf=64, cin=3, cout=3, downs=8):
    """Isola et al. App. 6.1.1 with the official code's biases (only where no BatchNorm follows)."""
    w = [ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * (downs - 3)
    total = _conv(cin, w[0], 4, bias=False)                                   # outermost down: no norm, no bias
    total += sum(_conv(a, b, 4, bias=False, norm=2) for a, b in zip(w[:-2], w[1:-1]))
    total += _conv(w[-2], w[-1], 4, bias=False)                               # innermost down: no norm
    total += _conv(w[-1], w[-2], 4, bias=False, norm=2)                       # innermost up: no skip yet
    total += sum(_conv(2 * b, a, 4, bias=False, norm=2) for a, b in zip(w[:-2], w[1:-1]))
    return total + _conv(2 * w[0], cout, 4)                                   # outermost up: bias, Tanh


def _cyclegan_count(ngf=64, blocks=9):
    """Zhu et al. App. 7.2: c7s1-64, d128, d256, R256 x 9, u128, u64, c7s1-3 (all with bias, no affine IN)."""
    return (_conv(3, ngf, 7) + _conv(ngf, 2 * ngf, 3) + _conv(2 * ngf, 4 * ngf, 3)
            + blocks * 2 * _conv(4 * ngf, 4 * ngf, 3)
            + _conv(4 * ngf, 2 * ngf, 3) + _conv(2 * ngf, ngf, 3) + _conv(ngf, 3, 7))


def _stargan_count(d=64, c=5, blocks=6):
    """Choi et al. Table 4, no conv biases, affine instance norms."""
    return (_conv(3 + c, d, 7, False, 2) + _conv(d, 2 * d, 4, False, 2) + _conv(2 * d, 4 * d, 4, False, 2)
            + blocks * 2 * _conv(4 * d, 4 * d, 3, False, 2) + _conv(4 * d, 2 * d, 4, False, 2)
            + _conv(2 * d, d, 4, False, 2) + _conv(d, 3, 7, False))


def _c3d_count(classes, fc6_in=8192):
    w = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    convs = sum(a * b * 27 + b for a, b in zip(w[:-1], w[1:]))
    return convs + _lin(fc6_in, 4096) + _lin(4096, 4096) + _lin(4096, classes)


def _lstm_classifier_count(vocab=10000, emb=300, hidden=500, classes=2):
    return vocab * emb + 4 * _lin(hidden + emb, hidden) + _lin(hidden, classes)


EXACT = {
    "fc_autoencoder": _lin(784, 64) + _lin(64, 32) + _lin(32, 64) + _lin(64, 784),
    "siamese_network": _conv(1, 96, 11) + _conv(96, 256, 5) + _lin(256, 512) + _lin(512, 128),
    "gan_generator": _lin(100, 1200) + _lin(1200, 1200) + _lin(1200, 784),
    "gan_discriminator": _lin(784, 240 * 5) + _lin(240, 240 * 5) + _lin(240, 1),
    "stylegan_mapping": 8 * _lin(512, 512),
    "pix2pix_generator": _pix2pix_count(),
    "patchgan_discriminator": (_conv(6, 64, 4) + _conv(64, 128, 4, False, 2) + _conv(128, 256, 4, False, 2)
                               + _conv(256, 512, 4, False, 2) + _conv(512, 1, 4)),
    "cyclegan_generator": _cyclegan_count(),
    "stargan_generator": _stargan_count(),
    "c3d": _c3d_count(487),
    "lstm_classifier": _lstm_classifier_count(),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_parameter_counts(name):
    assert count_params(_meta(name)) == EXACT[name]


def test_hand_counts_are_the_known_numbers():
    """The hand counts reproduce the numbers the official code / ports print (not recomputed from the models)."""
    assert EXACT["fc_autoencoder"] == 105_392 and EXACT["siamese_network"] == 823_616
    assert EXACT["pix2pix_generator"] == 54_413_955 and EXACT["patchgan_discriminator"] == 2_768_705
    assert EXACT["cyclegan_generator"] == 11_378_179 and EXACT["stargan_generator"] == 8_430_528
    assert EXACT["stylegan_mapping"] == 2_101_248


FIGURED = [(n, k) for n in NEW_MODELS for k in sorted(models.get(n).figures) if k == "params"]


@pytest.mark.parametrize("name,key", FIGURED, ids=[f"{n}-{k}" for n, k in FIGURED])
def test_parameter_count_against_figure(name, key):
    fig = models.get(name).figures[key]
    n = count_params(_meta(name, **fig.config))
    assert abs(n - fig.value) / fig.value <= fig.rtol, (name, n, fig.value, fig.source)


def test_figures_are_the_documents():
    figs = {n: models.get(n).figures for n in NEW_MODELS}
    assert {n for n, f in figs.items() if f} == {"seq2seq_bahdanau", "seq2seq_luong", "pix2pix_generator",
                                                "patchgan_discriminator", "cyclegan_generator", "c3d", "r2plus1d_18"}
    proj = figs["seq2seq_bahdanau"]["decoder_projection_weights"]
    assert proj.value == 5e6 and "K l.651" in proj.source
    assert figs["seq2seq_luong"]["projection_over_recurrent"].value == 10
    assert figs["pix2pix_generator"]["params"].value == 54.414e6
    assert figs["cyclegan_generator"]["params"].value == 11.378e6
    assert figs["r2plus1d_18"]["params"].value == 31.5e6


def test_c3d_78m_is_the_101_class_head():
    """~78M (issue 8) is C3D with a UCF101 fc8 and the released model's padded pool5 (8192 fc6 inputs);
    the paper prints no count; its Sports-1M head gives 80.0M, an unpadded pool5 65.3M."""
    assert count_params(_meta("c3d", num_classes=101)) == _c3d_count(101) == 78_409_573
    assert count_params(_meta("c3d")) == 79_991_015
    assert count_params(_meta("c3d", pool5_padding=False)) == _c3d_count(487, 512 * 3 * 3) == 65_310_951


def test_r2plus1d_midplanes_and_count():
    """31,505,325 = torchvision; eq. 1 applied to every conv (the paper's wording) gives 33,370,839."""
    assert count_params(_meta("r2plus1d_18")) == 31_505_325
    assert count_params(_meta("r2plus1d_18", mid_rule="paper")) == 33_370_839
    assert [video.midplanes(a, b) for a, b in ((64, 64), (64, 128), (128, 256), (256, 512))] == [144, 230, 460, 921]
    assert video.midplanes(3, 64, t=3, d=7) == 83                        # the stem by eq. 1 (torchvision: 45)
    m = _meta("r2plus1d_18")
    assert m.layer2[0].conv1[0][0].out_channels == 230 and m.layer2[0].conv2[0][0].out_channels == 230
    # eq. 1 keeps the weights of the full t x d x d conv (BN of the middle layer aside)
    for a, b in ((64, 64), (128, 256), (256, 512)):
        mid = video.midplanes(a, b)
        factored = a * mid * 9 + mid * b * 3
        assert abs(factored - a * b * 27) / (a * b * 27) < 0.01
    convs = [c for c in m.modules() if isinstance(c, nn.Conv3d) and c.kernel_size != (1, 1, 1)]
    assert {c.kernel_size for c in convs} == {(1, 7, 7), (3, 1, 1), (1, 3, 3)}
    assert [c.stride for c in convs if c.kernel_size == (3, 1, 1) and c.stride != (1, 1, 1)] == [(2, 1, 1)] * 3


def test_c3d_structure():
    m = _meta("c3d")
    convs = [c for c in m.modules() if isinstance(c, nn.Conv3d)]
    assert len(convs) == 8 and all(c.kernel_size == (3, 3, 3) and c.padding == (1, 1, 1) for c in convs)
    assert [c.out_channels for c in convs] == list(video.C3D_WIDTHS)
    pools = [p for p in m.modules() if isinstance(p, nn.MaxPool3d)]
    assert [p.kernel_size for p in pools] == [(1, 2, 2)] + [(2, 2, 2)] * 4
    assert m.classifier[0].in_features == 8192 and m.classifier[3].in_features == 4096
    assert m(torch.empty(1, 3, 16, 112, 112, device="meta")).shape == (1, 487)
    with pytest.raises(ValueError, match="clip"):
        m(torch.empty(1, 3, 8, 112, 112, device="meta"))


def test_video_architectures_without_enough_detail_are_recorded():
    missing = models.unmodelled()
    for name in ("i3d", "slowfast", "x3d"):
        assert name in missing and "O l." in missing[name]


def test_seq2seq_decoder_weights_k_l651():
    """K l.651: the 500 x 10k linear layer alone has 5M weights, ~10x the recurrent layer; l.650: the encoder
    has 500 neurons reading 800 inputs (300 embedding + 500 recurrent)."""
    ratios = {}
    for name in ("seq2seq_bahdanau", "seq2seq_luong"):
        m = _meta(name)
        figs = models.get(name).figures
        assert m.out.weight.numel() == figs["decoder_projection_weights"].value == 5_000_000
        cell = m.decoder_cell
        recurrent = sum(p.numel() for n, p in cell.named_parameters() if n.endswith("weight"))
        ratios[name] = m.out.weight.numel() / recurrent
        fig = figs["projection_over_recurrent"]
        assert abs(ratios[name] - fig.value) / fig.value <= fig.rtol
        enc = m.encoder.layers[0][0]
        assert enc.input_to_hidden.in_features + enc.hidden_to_hidden.in_features == 800 and enc.hidden_size == 500
    # measured: 5M / 650k = 7.7 for both (the cell reads [embedding, context / h~] and its own state)
    assert [round(r, 2) for r in ratios.values()] == [7.69, 7.69]
    assert round(5e6 / (500 * 800), 1) == 12.5              # the encoder-sized cell of l.650: "~10" either way


# ----------------------------------------------------------------------------- recurrent cells vs torch.nn

def _copy_rnn(ours, ref):
    for layer, cells in enumerate(ours.layers):
        for d, cell in enumerate(cells):
            s = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(ref, "weight_ih" + s), getattr(ref, "weight_hh" + s)
            b = getattr(ref, "bias_ih" + s) + getattr(ref, "bias_hh" + s)
            cell.input_to_hidden.weight.copy_(w_ih)
            cell.input_to_hidden.bias.copy_(b)
            cell.hidden_to_hidden.weight.copy_(w_hh)


def _copy_lstm(ours, ref):
    for layer, cells in enumerate(ours.layers):
        for d, cell in enumerate(cells):
            s = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(ref, "weight_ih" + s).chunk(4), getattr(ref, "weight_hh" + s).chunk(4)
            b = (getattr(ref, "bias_ih" + s) + getattr(ref, "bias_hh" + s)).chunk(4)
            for k, gate in enumerate((cell.input_gate, cell.forget_gate, cell.candidate, cell.output_gate)):
                gate.weight.copy_(torch.cat([w_hh[k], w_ih[k]], dim=1))            # [h_{t-1}, x_t]
                gate.bias.copy_(b[k])


def _copy_gru(ours, ref):
    """torch: r, z, n; h' = (1 - z) n + z h. Ours (K l.528) weights the candidate by z: z_ours = 1 - z_torch."""
    for layer, cells in enumerate(ours.layers):
        for d, cell in enumerate(cells):
            s = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(ref, "weight_ih" + s).chunk(3), getattr(ref, "weight_hh" + s).chunk(3)
            b_ih, b_hh = getattr(ref, "bias_ih" + s).chunk(3), getattr(ref, "bias_hh" + s).chunk(3)
            cell.reset_gate.weight.copy_(torch.cat([w_hh[0], w_ih[0]], dim=1))
            cell.reset_gate.bias.copy_(b_ih[0] + b_hh[0])
            cell.update_gate.weight.copy_(-torch.cat([w_hh[1], w_ih[1]], dim=1))
            cell.update_gate.bias.copy_(-(b_ih[1] + b_hh[1]))
            cell.candidate_input.weight.copy_(w_ih[2])
            cell.candidate_input.bias.copy_(b_ih[2])
            cell.candidate_hidden.weight.copy_(w_hh[2])
            if cell.candidate_hidden.bias is not None:
                cell.candidate_hidden.bias.copy_(b_hh[2])


def _compare(ours, ref, states_of, x):
    """Outputs, final states and input gradients of ``ours`` (Recurrent) and ``ref`` (torch.nn.*)."""
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    out, finals = ours(x1)
    ref_out, ref_state = ref(x2)
    torch.testing.assert_close(out, ref_out)
    dirs = ours.directions
    for layer, layer_finals in enumerate(finals):
        for d, state in enumerate(layer_finals):
            for mine, theirs in zip(states_of(state), ref_state if isinstance(ref_state, tuple) else (ref_state,)):
                torch.testing.assert_close(mine, theirs[layer * dirs + d])
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref_out * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("kind,nonlinearity,layers,bidirectional", [
    ("rnn", "tanh", 1, False), ("rnn", "relu", 2, True), ("lstm", None, 1, False), ("lstm", None, 2, True),
    ("gru", None, 1, False), ("gru", None, 2, True)])
def test_cells_match_torch_recurrent_modules(kind, nonlinearity, layers, bidirectional):
    n_in, hidden = 5, 7
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, batch_first=True)
    cell_kwargs = {}
    if kind == "rnn":
        ref = nn.RNN(n_in, hidden, nonlinearity=nonlinearity, **kwargs)
        cell_kwargs["nonlinearity"] = nonlinearity
    elif kind == "lstm":
        ref = nn.LSTM(n_in, hidden, **kwargs)
    else:
        ref = nn.GRU(n_in, hidden, **kwargs)
        cell_kwargs["reset_after"] = True                      # torch's variant
    ref = ref.double()
    ours = rnn.Recurrent(kind, n_in, hidden, layers, bidirectional, **cell_kwargs).double()
    with torch.no_grad():
        {"rnn": _copy_rnn, "lstm": _copy_lstm, "gru": _copy_gru}[kind](ours, ref)
    states_of = (lambda s: s) if kind == "lstm" else (lambda s: (s,))
    _compare(ours, ref, states_of, torch.randn(3, 6, n_in, dtype=torch.float64))


def test_gru_reset_before_matmul_k_l526():
    """K l.526 / Cho eq. 8 put r inside the matmul, W (r * h); torch puts it outside, r * (W h + b).
    With a diagonal W_hn and b_hn = 0 the two agree: then nn.GRU is an oracle for the paper's form too."""
    ref = nn.GRU(4, 6, batch_first=True).double()
    with torch.no_grad():
        ref.weight_hh_l0[12:] = torch.diag(torch.randn(6, dtype=torch.float64))
        ref.bias_hh_l0[12:] = 0
    ours = rnn.Recurrent("gru", 4, 6).double()
    assert ours.layers[0][0].candidate_hidden.bias is None and not ours.layers[0][0].reset_after
    with torch.no_grad():
        _copy_gru(ours, ref)
    _compare(ours, ref, lambda s: (s,), torch.randn(2, 5, 4, dtype=torch.float64))
    # a full W_hn separates the two forms
    with torch.no_grad():
        ours.layers[0][0].candidate_hidden.weight.add_(0.5)
    after = rnn.Recurrent("gru", 4, 6, reset_after=True).double()
    zero_bias = {"layers.0.0.candidate_hidden.bias": torch.zeros(6, dtype=torch.float64)}
    after.load_state_dict({**ours.state_dict(), **zero_bias})
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    assert not torch.allclose(ours(x)[0], after(x)[0])


def test_convlstm_at_1x1_is_an_lstm():
    """1x1 kernels on 1x1 frames, no peepholes: ConvLSTM (K l.588-592) is the LSTM of K l.486-496."""
    ref = nn.LSTM(3, 5, batch_first=True).double()
    cell = rnn.ConvLSTMCell(3, 5, kernel_size=1, peephole=False).double()
    w_ih, w_hh = ref.weight_ih_l0.detach().chunk(4), ref.weight_hh_l0.detach().chunk(4)
    b = (ref.bias_ih_l0 + ref.bias_hh_l0).detach().chunk(4)
    with torch.no_grad():
        for k, gate in enumerate((cell.input_gate, cell.forget_gate, cell.candidate, cell.output_gate)):
            gate.weight.copy_(torch.cat([w_ih[k], w_hh[k]], dim=1)[:, :, None, None])   # conv of [X, H]
            gate.bias.copy_(b[k])
    layer = rnn.ConvLSTM(3, (5,), kernel_size=1, peephole=False).double()
    layer.cells[0] = cell
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    outputs, finals = layer(x[:, :, :, None, None])
    ref_out, (h, c) = ref(x)
    torch.testing.assert_close(outputs[0][..., 0, 0], ref_out)
    torch.testing.assert_close(finals[0][1][..., 0, 0], c[0])


def test_convlstm_step_with_peepholes_follows_the_equations():
    """One step of K l.588-592 written out with F.conv2d (W_x* and W_h* as separate convs)."""
    cell = rnn.ConvLSTMCell(2, 3, kernel_size=3, spatial_size=(5, 6)).double()
    with torch.no_grad():
        for p in (cell.peephole_input, cell.peephole_forget, cell.peephole_output):
            p.normal_()
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    h0, c0 = torch.randn(2, 3, 5, 6, dtype=torch.float64), torch.randn(2, 3, 5, 6, dtype=torch.float64)

    def conv(gate, inp, state):                       # W_x * X + W_h * H + b
        return (F.conv2d(inp, gate.weight[:, :2], gate.bias, padding=1)
                + F.conv2d(state, gate.weight[:, 2:], padding=1))

    i = torch.sigmoid(conv(cell.input_gate, x, h0) + cell.peephole_input * c0)
    f = torch.sigmoid(conv(cell.forget_gate, x, h0) + cell.peephole_forget * c0)
    c1 = f * c0 + i * torch.tanh(conv(cell.candidate, x, h0))
    o = torch.sigmoid(conv(cell.output_gate, x, h0) + cell.peephole_output * c1)
    h, c = cell(x, (h0, c0))
    torch.testing.assert_close(c, c1)
    torch.testing.assert_close(h, o * torch.tanh(c1))
    assert cell.peephole_input.shape == (3, 5, 6)
    assert rnn.ConvLSTMCell(2, 3).peephole_output.shape == (3, 1, 1)


def test_sequence_models_read_the_right_states():
    torch.manual_seed(0)
    clf = rnn.SequenceClassifier("gru", vocab_size=20, embedding_dim=4, hidden_size=5, num_classes=3,
                                 bidirectional=True).double()
    tokens = torch.randint(0, 20, (2, 6))
    out, _ = clf.recurrent(clf.embedding(tokens))
    # the forward direction ends at t = T - 1, the backward one at t = 0
    last = torch.cat([out[:, -1, :5], out[:, 0, 5:]], dim=-1)
    torch.testing.assert_close(clf(tokens), clf.head(last))
    tagger, x = models.create_small("bilstm_tagger")
    assert tagger.recurrent.directions == 2 and tagger(x).shape == x.shape + (5,)
    with pytest.raises(ValueError, match="cell"):
        rnn.Recurrent("transformer", 3, 4)


# ----------------------------------------------------------------------------- attention, seq2seq

@pytest.mark.parametrize("kind", ["bahdanau", "dot", "general", "concat"])
def test_attention_weights_sum_to_one_and_skip_padding(kind):
    q, keys = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 5, 8, dtype=torch.float64)
    attn = seq2seq.AdditiveAttention(8, 8, 6) if kind == "bahdanau" else seq2seq.LuongAttention(kind, 8, 8)
    attn = attn.double()
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[1, 3:] = True
    context, w = attn(q, keys, mask)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, dtype=torch.float64))
    assert (w >= 0).all() and (w[1, 3:] == 0).all() and (w[1, :3] > 0).all()
    torch.testing.assert_close(context, torch.einsum("ns,nsa->na", w, keys))            # c = H w (K l.656)
    if kind == "dot":
        torch.testing.assert_close(w[0], torch.softmax(keys[0] @ q[0], dim=0))
    if kind == "bahdanau":                                                               # v^T tanh(W s + U h_j)
        e = torch.tanh(q[2] @ attn.query_proj.weight.T + keys[2] @ attn.key_proj.weight.T) @ attn.v.weight[0]
        torch.testing.assert_close(w[2], torch.softmax(e, dim=0))


@pytest.mark.parametrize("attention,cell,bidirectional", [("bahdanau", "gru", False), ("bahdanau", "lstm", True),
                                                          ("dot", "rnn", False), ("concat", "lstm", True)])
def test_seq2seq_greedy_decoding_is_teacher_forcing_on_its_own_output(attention, cell, bidirectional):
    m = seq2seq.Seq2Seq(attention, cell, src_vocab=15, tgt_vocab=12, embedding_dim=6, hidden_size=8, max_length=10,
                        bidirectional_encoder=bidirectional).double().eval()
    src = torch.randint(3, 15, (2, 7))
    src[1, -2:] = 0
    tokens, weights = m.greedy_decode(src, max_len=5)
    tgt = torch.cat([torch.ones(2, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    logits, tf_weights = m(src, tgt)
    alive = torch.cumsum(tokens == m.eos_idx, 1) - (tokens == m.eos_idx).long() == 0       # up to the first EOS
    assert (logits.argmax(-1) == tokens)[alive].all()
    torch.testing.assert_close(tf_weights[alive], weights[alive])
    assert (weights[1, :, -2:] == 0).all()                                               # padding never attended
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2], dtype=torch.float64))
    with pytest.raises(ValueError, match="max_length"):
        m(torch.randint(3, 15, (1, 11)), tgt[:1])


def test_seq2seq_structure_and_loss():
    b = _meta("seq2seq_bahdanau")
    assert b.decoder_cell.input_to_hidden.in_features == 300 + 500                         # [E y_{i-1}, c_i]
    lu = _meta("seq2seq_luong")
    assert lu.attention.score == "dot" and lu.combine.in_features == 1000                  # W_c [c_t; h_t]
    assert _meta("seq2seq_luong", input_feeding=False).decoder_cell.input_to_hidden.in_features == 300
    with pytest.raises(ValueError, match="attention"):
        seq2seq.Seq2Seq("multihead")
    logits = torch.randn(2, 3, 5)
    target = torch.tensor([[1, 2, 0], [3, 4, 2]])
    expected = -(torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0] * (target != 0)).sum() / 2
    torch.testing.assert_close(seq2seq.sequence_loss(logits, target), expected)


# ----------------------------------------------------------------------------- autoencoders, VAE

def test_fc_autoencoder_is_the_corrected_code():
    m = autoencoder.fc_autoencoder()
    assert [l.out_features for l in m.modules() if isinstance(l, nn.Linear)] == [64, 32, 64, 784]
    assert isinstance(m.decoder[-1], nn.Sigmoid)
    img = torch.rand(2, 1, 28, 28)
    y = m(img)
    assert y.shape == img.shape and ((y > 0) & (y < 1)).all()
    torch.testing.assert_close(y.flatten(1), m.decoder(m.encoder(img.flatten(1))))


def test_conv_and_denoising_autoencoders():
    m = autoencoder.ConvAutoencoder(widths=(4, 8))
    assert len([c for c in m.modules() if isinstance(c, nn.ConvTranspose2d)]) == 2
    assert m.encoder(torch.rand(1, 1, 28, 28)).shape == (1, 8, 7, 7)
    with pytest.raises(ValueError, match="divisible"):
        m(torch.rand(1, 1, 30, 30))
    dae = autoencoder.DenoisingAutoencoder(widths=(4, 8), noise_std=0.5)
    x = torch.rand(4, 1, 28, 28)
    g = torch.Generator().manual_seed(1)
    noisy = dae.corrupt(x, g)
    assert abs((noisy - x).std().item() - 0.5) < 0.03
    torch.testing.assert_close(dae.loss(x, torch.Generator().manual_seed(1)), F.mse_loss(dae(noisy), x))
    masked = autoencoder.DenoisingAutoencoder(widths=(4, 8), noise="masking", noise_std=0.25).corrupt(torch.ones(10000))
    assert set(masked.unique().tolist()) == {0.0, 1.0} and abs((masked == 0).float().mean().item() - 0.25) < 0.02


def test_vae_loss_components_and_reparameterization():
    m = autoencoder.VAE(in_features=12, hidden=8, latent=3).double()
    x = torch.rand(4, 12, dtype=torch.float64)
    eps = torch.randn(4, 3, dtype=torch.float64)
    recon, mu, logvar = m(x, eps=eps)
    loss, rec, kl = autoencoder.vae_loss(recon, x, mu, logvar)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, p).sum() / 4)
    # -E_q[ln p(x|z)] for a Bernoulli decoder with means r (one z sample), against torch.distributions
    bernoulli = torch.distributions.Bernoulli(probs=recon, validate_args=False)   # x in [0, 1], not binary
    torch.testing.assert_close(rec, -bernoulli.log_prob(x).sum() / 4)
    torch.testing.assert_close(loss, rec + kl)
    assert kl > 0
    # z = mu + sigma * eps: dz/dmu = 1, dz/dlogvar = sigma * eps / 2
    mu0, logvar0 = mu.detach().requires_grad_(True), logvar.detach().requires_grad_(True)
    m.reparameterize(mu0, logvar0, eps).sum().backward()
    torch.testing.assert_close(mu0.grad, torch.ones_like(mu0))
    torch.testing.assert_close(logvar0.grad, 0.5 * torch.exp(0.5 * logvar0.detach()) * eps)
    m.eval()
    torch.testing.assert_close(m(x)[0], m.decoder(mu))                                   # eval decodes the mean


# ----------------------------------------------------------------------------- siamese, GAN, StyleGAN

def test_siamese_shared_weights_and_input_size():
    m = siamese.SiameseNetwork(widths=(8, 16), fc=(32, 8)).double()
    x = torch.randn(2, 1, 51, 51, dtype=torch.float64)
    a, b = m(x, x.flip(0))
    torch.testing.assert_close(a, b.flip(0))                                            # the same network twice
    assert m.network_forward(torch.randn(1, 1, 54, 54, dtype=torch.float64)).shape == (1, 8)
    with pytest.raises(ValueError, match="51-54"):
        m.network_forward(torch.randn(1, 1, 64, 64, dtype=torch.float64))
    pooled = siamese.SiameseNetwork(widths=(8, 16), fc=(32, 8), global_pool=True)
    assert pooled.network_forward(torch.randn(1, 1, 96, 96)).shape == (1, 8)
    convs = [c for c in _meta("siamese_network").modules() if isinstance(c, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == \
        [(1, 96, (11, 11), (4, 4)), (96, 256, (5, 5), (1, 1))]


def test_contrastive_and_triplet_losses():
    e1 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    e2 = torch.tensor([[3.0, 4.0], [0.3, 0.4], [3.0, 4.0]])                            # distances 5, 0.5, 5
    y = torch.tensor([0, 1, 1])                                                         # similar, dissimilar x 2
    # (1/2 * 25 + 1/2 * (2 - 0.5)^2 + 0) / 3
    torch.testing.assert_close(siamese.contrastive_loss(e1, e2, y, margin=2.0), torch.tensor((12.5 + 1.125) / 3))
    a, p, n = torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    torch.testing.assert_close(siamese.triplet_loss(a, p, n, margin=1.0), torch.tensor((0 + 2.0) / 2))
    torch.testing.assert_close(siamese.triplet_loss(a, p, n, margin=1.0, squared=True), torch.tensor((0 + 4.0) / 2))


def test_gan_losses_and_maxout():
    d_real, d_fake = torch.tensor([0.9, 0.6]), torch.tensor([0.2, 0.5])
    expected = -(torch.log(d_real) + torch.log(1 - d_fake)).mean()
    torch.testing.assert_close(gan.discriminator_loss(d_real, d_fake), expected)
    torch.testing.assert_close(gan.generator_loss(d_fake), -torch.log(d_fake).mean())
    torch.testing.assert_close(gan.generator_loss(d_fake, non_saturating=False), torch.log(1 - d_fake).mean())
    mo = gan.Maxout(3, 2, 4)
    x = torch.randn(5, 3)
    torch.testing.assert_close(mo(x), (x @ mo.linear.weight.T + mo.linear.bias).reshape(5, 2, 4).max(-1).values)
    d = _meta("gan_discriminator")
    assert [m.p for m in d.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.5, 0.5]


def test_adain_statistics():
    """StyleGAN eq. 1: every output channel has mean y_b and standard deviation |y_s|."""
    adain = gan.AdaIN(4, 6).double()
    adain.eps = 0.0
    with torch.no_grad():
        adain.style.weight.normal_()
    x = 3 + 2 * torch.randn(2, 4, 5, 7, dtype=torch.float64)
    w = torch.randn(2, 6, dtype=torch.float64)
    y = adain(x, w)
    y_s, y_b = adain.style(w).chunk(2, dim=1)
    torch.testing.assert_close(y.mean(dim=(2, 3)), y_b)
    torch.testing.assert_close(y.std(dim=(2, 3), unbiased=False), y_s.abs())
    # the scale bias starts at 1: with a zero style weight AdaIN is instance norm
    fresh = gan.AdaIN(4, 6).double()
    nn.init.zeros_(fresh.style.weight)
    torch.testing.assert_close(fresh(x, w), F.instance_norm(x, eps=fresh.eps))


def test_stylegan_mapping_and_block():
    m = gan.MappingNetwork(z_dim=8, w_dim=8, hidden=8, num_layers=3).double()
    z = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(m(5.0 * z), m(z))                                        # pixel norm on z
    full = _meta("stylegan_mapping")
    assert len([l for l in full.modules() if isinstance(l, nn.Linear)]) == 8
    block = gan.StyleBlock(6, 4, 8).double()
    x, w = torch.randn(2, 6, 4, 4, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    torch.testing.assert_close(block(x, w), block(x, w))                                # noise scales start at 0
    with torch.no_grad():
        block.noise1.weight.fill_(1.0)
    n1, n2 = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y = block(x, w, (n1, n2))
    assert y.shape == (2, 4, 8, 8)
    torch.testing.assert_close(block(x, w, (n1, n2)), y)
    assert not torch.allclose(block(x, w, (n1 + 1, n2)), y)


# ----------------------------------------------------------------------------- pix2pix, CycleGAN, StarGAN

def test_pix2pix_generator_structure():
    g = _meta("pix2pix_generator")
    downs = [c for c in g.modules() if isinstance(c, nn.Conv2d)]
    ups = [c for c in g.modules() if isinstance(c, nn.ConvTranspose2d)]
    assert len(downs) == len(ups) == 8 and all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in downs + ups)
    assert [c.out_channels for c in downs] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert [c.in_channels for c in ups] == [512, 1024, 1024, 1024, 1024, 512, 256, 128]   # App. 6.1.1 decoder
    assert [m.p for m in g.modules() if isinstance(m, nn.Dropout)] == [0.5] * 3
    assert g(torch.empty(1, 3, 256, 256, device="meta")).shape == (1, 3, 256, 256)
    small, x = models.create_small("pix2pix_generator")
    with pytest.raises(ValueError, match="divisible"):
        small(torch.randn(1, 3, 48, 48))


def test_patchgan_receptive_field_is_70():
    d = pix2pix.PatchGANDiscriminator(in_channels=1, ndf=2).double().eval()             # eval: BN is per position
    x = torch.randn(1, 1, 100, 100, dtype=torch.float64, requires_grad=True)
    y = d(x)
    assert y.shape == (1, 1, 10, 10)                                                      # 256 -> 30 at full size
    y[0, 0, 5, 5].backward()
    rows, cols = x.grad[0, 0].abs().sum(1).nonzero(), x.grad[0, 0].abs().sum(0).nonzero()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70
    assert _meta("patchgan_discriminator")(torch.empty(1, 6, 256, 256, device="meta")).shape == (1, 1, 30, 30)


def test_pix2pix_loss():
    d = pix2pix.PatchGANDiscriminator(in_channels=2, ndf=2)
    cond, real, fake = torch.randn(3, 1, 1, 32, 32).unbind(0)
    g_loss, d_loss = pix2pix.pix2pix_loss(d, cond, real, fake, l1_weight=100.0)
    fl = d(torch.cat([cond, fake], 1))
    torch.testing.assert_close(g_loss, F.softplus(-fl).mean() + 100 * (fake - real).abs().mean())
    rl = d(torch.cat([cond, real], 1))
    torch.testing.assert_close(d_loss, 0.5 * (F.softplus(-rl).mean() + F.softplus(fl).mean()))


def test_cyclegan_generator_structure_and_cycle_loss():
    g = _meta("cyclegan_generator")
    blocks = [b for b in g.modules() if isinstance(b, cyclegan.ResidualBlock)]
    assert len(blocks) == 9 and sum(isinstance(m, nn.ReflectionPad2d) for m in g.modules()) == 2 + 2 * 9
    ups = [c for c in g.modules() if isinstance(c, nn.ConvTranspose2d)]
    assert [(u.stride, u.output_padding) for u in ups] == [((2, 2), (1, 1))] * 2
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and not any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert not norms[0].affine and not norms[0].track_running_stats
    block = cyclegan.ResidualBlock(3, lambda c: nn.Identity())
    with torch.no_grad():
        block.block[-2].weight.zero_()
        block.block[-2].bias.zero_()
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(block(x), x)                                              # zeroed branch: identity
    ident = nn.Identity()
    assert cyclegan.cycle_consistency_loss(ident, ident, x, x + 1) == 0
    assert cyclegan.cycle_consistency_loss(lambda t: 2 * t, ident, x, x).item() > 0
    batch_norm = cyclegan.ResnetGenerator(ngf=4, n_blocks=1, norm="batch")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch_norm.modules())


def test_stargan_domain_label_channels():
    g = _meta("stargan_generator")
    first = next(m for m in g.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 3 + 5 and first.kernel_size == (7, 7)
    assert len([b for b in g.modules() if isinstance(b, cyclegan.ResidualBlock)]) == 6
    small, (x, c) = models.create_small("stargan_generator")
    small.eval()
    other = torch.roll(c, 1, dims=1)
    assert not torch.allclose(small(x, c), small(x, other))
    with pytest.raises(ValueError, match="c_dim"):
        small(x, c[:, :2])


# ----------------------------------------------------------------------------- registry, small configs

EXPECTED_SHAPES = {
    "rnn_classifier": [(2, 3)], "lstm_classifier": [(2, 3)], "gru_classifier": [(2, 3)],
    "bilstm_tagger": [(2, 7, 5)], "convlstm_forecaster": [(2, 5, 1, 16, 16)],
    "seq2seq_bahdanau": [(2, 6, 30), (2, 6, 9)], "seq2seq_luong": [(2, 6, 30), (2, 6, 9)],
    "fc_autoencoder": [(2, 784)], "conv_autoencoder": [(2, 1, 28, 28)], "denoising_autoencoder": [(2, 1, 28, 28)],
    "vae": [(2, 64), (2, 4), (2, 4)], "siamese_network": [(2, 8), (2, 8)], "gan_generator": [(2, 64)],
    "gan_discriminator": [(2,)], "stylegan_mapping": [(2, 16)], "stylegan_block": [(2, 4, 8, 8)],
    "pix2pix_generator": [(2, 3, 32, 32)], "patchgan_discriminator": [(2, 1, 6, 6)],
    "cyclegan_generator": [(2, 3, 32, 32)], "stargan_generator": [(2, 3, 32, 32)], "c3d": [(2, 5)],
    "r2plus1d_18": [(2, 5)],
}


def _bn_relu_pairs(model):
    pairs = 0
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            kids = list(seq)
            pairs += sum(isinstance(a, nn.BatchNorm2d) and isinstance(b, nn.ReLU) for a, b in zip(kids, kids[1:]))
    return pairs


def test_registry_families():
    assert set(NEW_MODELS) <= set(models.list_models())
    for name in NEW_MODELS:
        fams = set(models.get(name).families)
        assert fams <= {"TC", "BNR"}, name
        m = _meta(name)
        has_tc = any(isinstance(c, nn.ConvTranspose2d) for c in m.modules())
        assert ("TC" in fams) == has_tc, name
        assert ("BNR" in fams) == (_bn_relu_pairs(m) > 0), name


@pytest.mark.parametrize("name", NEW_MODELS)
def test_small_config_forward_backward(name):
    model, x = models.create_small(name, batch=2)
    model.train()
    torch.manual_seed(0)                                           # VAE sampling, StyleGAN noise
    outs = _outputs(_call(model, x))
    assert [tuple(o.shape) for o in outs] == EXPECTED_SHAPES[name]
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.square().mean() for o in outs if o.is_floating_point()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)), name
    torch.manual_seed(0)
    with torch.no_grad():
        for a, b in zip(_outputs(_call(model, x)), outs):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():
        assert all(torch.isfinite(o).all() for o in _outputs(_call(model, x)))

