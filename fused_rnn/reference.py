"""Pure-PyTorch reference of every fused_rnn op: the ground truth the kernels are tested against.

One layer, one direction, written as plainly as possible with torch.nn's equations and gate
order. Everything here is differentiable by autograd (no in-place writes; outputs are built
with torch.cat), so gradients of the reference are the reference gradients.

Row layout follows ``torch.nn.utils.rnn.PackedSequence``: packed ``input`` is ``[N, I]`` with
``batch_sizes`` (CPU int64, non-increasing); step t owns rows ``[offset_t, offset_t +
batch_sizes[t])``, which belong to the first ``batch_sizes[t]`` sequences. Padded input
``[T, B, I]`` is the special case ``batch_sizes = [B] * T``.
"""
import torch
import torch.nn.functional as F

__all__ = ["lstm_cell", "gru_cell", "rnn_cell", "lstm", "gru", "rnn"]


# ---------------------------------------------------------------------------------------------
# Cells: one time step.
# ---------------------------------------------------------------------------------------------

LAYER_NORM_EPS = 1e-5


def layer_norm(v, weight, bias=None):
    """LN(v; γ, β) = γ * (v - mean(v)) / sqrt(var(v) + 1e-5) + β over the last dimension, biased
    variance (Ba et al. 2016)."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + LAYER_NORM_EPS) * weight
    return out if bias is None else out + bias


# The regularizers inside the recurrence (fused_rnn/regularizers.py draws their masks), as the
# cells' keyword-only masks, None when off:
#   zoneout_h [B, P] (and the LSTM's zoneout_c [B, H]): the weight m of the previous state per
#     row and unit, h = m * h_prev + (1 - m) * h~ (the cell's h'); the LSTM's gates and h~ see
#     the cell's c' itself, the state carries m_c * c_prev + (1 - m_c) * c'.
#   dropout_h [B, P]: recurrent dropout, h_prev * d is what W_hh multiplies (the GRU's direct
#     path z * h keeps h).
# The layers below take zoneout's masks with the output's leading shape ([T, B, P] or [N, P]),
# recurrent dropout's as [B, P] for the whole sequence.

def _zone_out(mask, prev, fresh):
    return fresh if mask is None else mask * prev + (1 - mask) * fresh


def _dropped(h, dropout_h):
    return h if dropout_h is None else h * dropout_h


def _normalized_paths(x, h, weight_ih, weight_hh, bias_ih, bias_hh, ln_weight_ih, ln_weight_hh):
    """The two GEMM paths of a cell, (x W_ih^T + b_ih, h W_hh^T + b_hh); layer-normalized cells
    (ln_weight_ih and ln_weight_hh given) normalize each GEMM result before its bias."""
    if ln_weight_ih is None:
        return F.linear(x, weight_ih, bias_ih), F.linear(h, weight_hh, bias_hh)
    x_part = layer_norm(F.linear(x, weight_ih), ln_weight_ih, bias_ih)
    return x_part, layer_norm(F.linear(h, weight_hh), ln_weight_hh, bias_hh)


def lstm_cell(x, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None, *, weight_ch=None,
              ln_weight_ih=None, ln_weight_hh=None, ln_weight_c=None, ln_bias_c=None, zoneout_h=None,
              zoneout_c=None, dropout_h=None):
    """One step. x [B, I], hx = (h [B, P or H], c [B, H]) or None (zeros) -> (h', c').

    h' is projected by weight_hr [P, H] when given: h' = (o * tanh(c')) @ weight_hr.T.
    weight_ch [3H] = (w_ci, w_cf, w_co) makes it a peephole LSTM (Gers et al. 2002): the input
    and forget gates see c, the output gate sees c'.
    ln_weight_ih, ln_weight_hh [4H], ln_weight_c, ln_bias_c [H] make it a layer-normalized LSTM:
    p = LN(W_ih x; γ_ih) + LN(W_hh h; γ_hh) + b_ih + b_hh, h' = o * tanh(LN(c'; γ_c) + β_c).
    zoneout_h, zoneout_c, dropout_h: the regularizers' masks (above).
    """
    h, c = hx if hx is not None else (x.new_zeros(x.size(0), weight_hh.size(1)),
                                      x.new_zeros(x.size(0), weight_hh.size(0) // 4))
    x_part, h_part = _normalized_paths(x, _dropped(h, dropout_h), weight_ih, weight_hh, bias_ih, bias_hh,
                                       ln_weight_ih, ln_weight_hh)
    i, f, g, o = (x_part + h_part).chunk(4, -1)
    if weight_ch is not None:
        w_ci, w_cf, w_co = weight_ch.chunk(3)
        i, f = i + w_ci * c, f + w_cf * c
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if weight_ch is not None:
        o = o + w_co * c_next
    c_out = c_next if ln_weight_c is None else layer_norm(c_next, ln_weight_c, ln_bias_c)
    h_next = torch.sigmoid(o) * torch.tanh(c_out)
    if weight_hr is not None:
        h_next = F.linear(h_next, weight_hr)
    return _zone_out(zoneout_h, h, h_next), _zone_out(zoneout_c, c, c_next)


def gru_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, ln_weight_ih=None, ln_weight_hh=None,
             zoneout_h=None, dropout_h=None):
    """One step. x [B, I], h [B, H] or None (zeros) -> h' [B, H]. Gate order r|z|n; b_hn sits
    inside r * (...). ln_weight_ih, ln_weight_hh [3H] make it a layer-normalized GRU: each GEMM
    result normalized before its bias, LN(W_ih x; γ_ih) + b_ih and LN(W_hh h; γ_hh) + b_hh.
    zoneout_h, dropout_h: the regularizers' masks (above)."""
    h = h if h is not None else x.new_zeros(x.size(0), weight_hh.size(1))
    x_part, h_part = _normalized_paths(x, _dropped(h, dropout_h), weight_ih, weight_hh, bias_ih, bias_hh,
                                       ln_weight_ih, ln_weight_hh)
    x_r, x_z, x_n = x_part.chunk(3, -1)
    h_r, h_z, h_n = h_part.chunk(3, -1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return _zone_out(zoneout_h, h, (1 - z) * n + z * h)


def rnn_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh", *, zoneout_h=None,
             dropout_h=None):
    """One step. x [B, I], h [B, H] or None (zeros) -> h' = act(W_ih x + b_ih + W_hh h + b_hh),
    act = tanh or relu; zoneout_h, dropout_h: the regularizers' masks (above)."""
    h = h if h is not None else x.new_zeros(x.size(0), weight_hh.size(1))
    pre = F.linear(x, weight_ih, bias_ih) + F.linear(_dropped(h, dropout_h), weight_hh, bias_hh)
    if nonlinearity == "tanh":
        return _zone_out(zoneout_h, h, torch.tanh(pre))
    if nonlinearity == "relu":
        return _zone_out(zoneout_h, h, torch.relu(pre))
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


# ---------------------------------------------------------------------------------------------
# The time loop, once for all cells. A state is a tuple of [B, ...] tensors whose first entry
# is the hidden state that goes to the output. step(x, state, rows) gets the step's packed rows.
# ---------------------------------------------------------------------------------------------

def _step_masks(zoneout, dropout_h, rows, n):
    """The cell's mask keywords for the step owning packed rows `rows` (a slice), whose batch
    is n: zoneout's rows (zoneout: name -> [N, W] or None), recurrent dropout's first n."""
    masks = {name: mask[rows] for name, mask in zoneout.items() if mask is not None}
    return masks if dropout_h is None else {**masks, "dropout_h": dropout_h[:n]}


def _rows(mask, batch_sizes):
    """A zoneout mask as rows of the packed layout ([T, B, W] -> [T * B, W]); None stays None."""
    return mask if mask is None or batch_sizes is not None else mask.reshape(-1, mask.size(-1))


def _recurrence(step, input, state0, batch_sizes, reverse):
    if batch_sizes is None:  # padded [T, B, I] == packed with every sequence of length T
        T, B = input.shape[:2]
        batch_sizes = torch.full((T,), B, dtype=torch.int64)
        output, state = _recurrence(step, input.reshape(T * B, input.size(-1)), state0, batch_sizes, reverse)
        return output.reshape(T, B, output.size(-1)), state

    sizes = batch_sizes.tolist()
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    outputs = [None] * len(sizes)

    if not reverse:
        state = state0
        for t, n in enumerate(sizes):
            rows = slice(offsets[t], offsets[t + 1])
            new = step(input[rows], tuple(s[:n] for s in state), rows)
            # Rows n: have finished their sequence; they keep their last state.
            state = tuple(torch.cat([a, s[n:]]) for a, s in zip(new, state))
            outputs[t] = new[0]
    else:
        state = tuple(s[:0] for s in state0)  # no sequence has started yet
        for t in reversed(range(len(sizes))):
            n = sizes[t]
            # Sequences of length t + 1 (rows len(state):n) start here, from their initial state.
            state = tuple(torch.cat([s, s0[s.size(0):n]]) for s, s0 in zip(state, state0))
            rows = slice(offsets[t], offsets[t + 1])
            state = step(input[rows], state, rows)
            outputs[t] = state[0]
    return torch.cat(outputs), state


def _batch_size(input, batch_sizes):
    return input.size(1) if batch_sizes is None else int(batch_sizes[0])


def _zeros(input, batch_sizes, size):
    return input.new_zeros(_batch_size(input, batch_sizes), size)


# ---------------------------------------------------------------------------------------------
# Layers: one layer, one direction.
# ---------------------------------------------------------------------------------------------

def lstm(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None,
         batch_sizes=None, reverse=False, *, zoneout_h=None, zoneout_c=None, dropout_h=None, **variant):
    """input [T, B, I] or packed [N, I]; hx = (h0 [B, P or H], c0 [B, H]) or None (zeros).
    variant: the keyword-only weights of lstm_cell's variants (peephole, layer norm); the masks
    of the regularizers with the shapes above.

    Returns (output [T, B, P or H] or [N, P or H], (h_n [B, P or H], c_n [B, H])).
    """
    if hx is None:
        hx = (_zeros(input, batch_sizes, weight_hh.size(1)),       # P (or H without projection)
              _zeros(input, batch_sizes, weight_hh.size(0) // 4))  # H
    zoneout = {"zoneout_h": _rows(zoneout_h, batch_sizes), "zoneout_c": _rows(zoneout_c, batch_sizes)}

    def step(x, state, rows):
        masks = _step_masks(zoneout, dropout_h, rows, x.size(0))
        return lstm_cell(x, state, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, **variant, **masks)

    output, (h_n, c_n) = _recurrence(step, input, tuple(hx), batch_sizes, reverse)
    return output, (h_n, c_n)


def gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None,
        batch_sizes=None, reverse=False, *, zoneout_h=None, dropout_h=None, **variant):
    """input [T, B, I] or packed [N, I]; hx = h0 [B, H] or None (zeros). Returns (output, h_n).
    variant: gru_cell's keyword-only layer-norm weights; the masks of the regularizers as above."""
    if hx is None:
        hx = _zeros(input, batch_sizes, weight_hh.size(1))
    zoneout = {"zoneout_h": _rows(zoneout_h, batch_sizes)}

    def step(x, state, rows):
        masks = _step_masks(zoneout, dropout_h, rows, x.size(0))
        return (gru_cell(x, state[0], weight_ih, weight_hh, bias_ih, bias_hh, **variant, **masks),)

    output, (h_n,) = _recurrence(step, input, (hx,), batch_sizes, reverse)
    return output, h_n


def rnn(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None,
        batch_sizes=None, reverse=False, nonlinearity="tanh", *, zoneout_h=None, dropout_h=None):
    """input [T, B, I] or packed [N, I]; hx = h0 [B, H] or None (zeros). Returns (output, h_n).
    The masks of the regularizers as above."""
    if hx is None:
        hx = _zeros(input, batch_sizes, weight_hh.size(1))
    zoneout = {"zoneout_h": _rows(zoneout_h, batch_sizes)}

    def step(x, state, rows):
        masks = _step_masks(zoneout, dropout_h, rows, x.size(0))
        return (rnn_cell(x, state[0], weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity, **masks),)

    output, (h_n,) = _recurrence(step, input, (hx,), batch_sizes, reverse)
    return output, h_n
