"""fused_rnn.tbptt against a plain truncated-BPTT reference: the whole sequence run step by step
with fused_rnn.reference's cells, each row's state frozen once its sequence has ended (a mask,
not packing), and the state detached at every chunk boundary. A chunk's loss must have the
same gradients there, to 1e-10 in float64 (docs/DESIGN.md §4)."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn import reference, tbptt

from checks import DEVICES, assert_close

MODULES = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "rnn_tanh": fused_rnn.RNN}
TORCH_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}
CELLS = {"lstm": reference.lstm_cell, "gru": reference.gru_cell, "rnn_tanh": reference.rnn_cell}
# How the batch comes: every row T steps (time-major), rows of different lengths given as
# `lengths` (batch-first), or the same as a PackedSequence (time-major).
LAYOUTS = ["full", "lengths", "packed"]
T, B, I, H, K = 10, 5, 3, 4, 4   # chunks of 4, 4 and a last one of 2 steps


def _module(mode, num_layers, batch_first, device):
    rnn = MODULES[mode](I, H, num_layers=num_layers, batch_first=batch_first)
    return rnn.to(device, torch.float64)


def _case(layout, device):
    """The leaf the gradients are taken of, a function giving it as a fresh [T, B, I] (the
    reference's input; fresh, so no chunk's backward frees another's graph), each row's
    length, and what to hand to tbptt.chunks."""
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    if layout == "full":
        x.requires_grad_()
        return x, lambda: x, torch.full((B,), T), dict(input=x)
    lengths = torch.tensor([7, T, 1, 9, 4])   # unsorted; the longest is T
    if layout == "lengths":
        x.requires_grad_()
        return x, lambda: x, lengths, dict(input=x.transpose(0, 1), lengths=lengths)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    leaf = packed.data.requires_grad_()
    return leaf, lambda: pad_packed_sequence(packed)[0], lengths, dict(input=packed)


def _states(state):
    return state if isinstance(state, tuple) else (state,)


def _reference_step(mode, rnn, x_t, state):
    """One step of every layer; state is a tuple of [layers, B, H] tensors."""
    new = []
    for layer in range(rnn.num_layers):
        weights = [getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if mode == "lstm":
            h, c = CELLS[mode](x_t, (state[0][layer], state[1][layer]), *weights)
            new.append((h, c))
        else:
            h = CELLS[mode](x_t, state[0][layer], *weights)
            new.append((h,))
        x_t = h
    return tuple(torch.stack(parts) for parts in zip(*new)), x_t


def _reference_chunk(mode, rnn, x, lengths, state, start, stop):
    """Steps [start, stop) from `state` (tuple); rows past their length keep their state and
    output zeros. Returns the outputs [stop - start, B, H] and the state after the chunk."""
    outputs = []
    for t in range(start, stop):
        active = (lengths > t).to(x.device).view(1, -1, 1)
        new, out = _reference_step(mode, rnn, x[t], state)
        state = tuple(torch.where(active, n, s) for n, s in zip(new, state))
        outputs.append(torch.where(active[0], out, torch.zeros_like(out)))
    return torch.stack(outputs), state


def _chunk_loss(out, new_state, out_weight, state_weight):
    """A loss on both the chunk's outputs and its final state, with fixed random weights."""
    return (out * out_weight).sum() + sum((s * w).sum() for s, w in zip(_states(new_state), state_weight))


def _padded(out, chunk):
    """The fused chunk's outputs as [steps, B, H], zero where a row has no step."""
    if chunk.rows is None:
        return out
    padded, _ = pad_packed_sequence(out, total_length=chunk.stop - chunk.start)
    full = padded.new_zeros(padded.size(0), B, padded.size(2))
    return full.index_copy(1, chunk.rows.to(padded.device), padded)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("mode", list(MODULES))
def test_chunk_gradients_equal_reference_with_detached_boundaries(mode, num_layers, layout, device):
    torch.manual_seed(0)
    rnn = _module(mode, num_layers, batch_first=layout == "lengths", device=device)
    leaf, padded_x, lengths, given = _case(layout, device)
    params = list(rnn.parameters())
    n_states = 2 if mode == "lstm" else 1
    state = ref_state = None
    for chunk in tbptt.chunks(rnn, k=K, **given):
        out_weight = torch.randn(chunk.stop - chunk.start, B, H, dtype=torch.float64, device=device)
        state_weight = [torch.randn(num_layers, B, H, dtype=torch.float64, device=device) for _ in range(n_states)]
        active = (lengths > chunk.start).nonzero().flatten().to(device)

        out, new_state = rnn(chunk.input, chunk.state(state))
        out = _padded(out, chunk)
        loss = _chunk_loss(out, new_state, out_weight, [w[:, active] for w in state_weight])
        grads = torch.autograd.grad(loss, [leaf] + params)
        state = chunk.carry(state, new_state)

        if ref_state is None:
            ref_state = tuple(torch.zeros(num_layers, B, H, dtype=torch.float64, device=device)
                              for _ in range(n_states))
        ref_out, ref_new = _reference_chunk(mode, rnn, padded_x(), lengths, ref_state, chunk.start, chunk.stop)
        ref_loss = _chunk_loss(ref_out, tuple(s[:, active] for s in ref_new), out_weight,
                               [w[:, active] for w in state_weight])
        ref_grads = torch.autograd.grad(ref_loss, [leaf] + params)
        ref_state = tuple(s.detach() for s in ref_new)

        where = f"{chunk}"
        assert_close(out, ref_out, f"{where} outputs")
        for s, r in zip(_states(state), ref_state):
            assert_close(s, r, f"{where} carried state")
        assert_close(grads[0], ref_grads[0], f"{where} d loss / d input")
        for (name, _), g, r in zip(rnn.named_parameters(), grads[1:], ref_grads[1:]):
            assert_close(g, r, f"{where} d loss / d {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", list(MODULES))
def test_final_state_is_that_of_one_call_over_the_whole_sequence(mode, layout):
    """Each row's carried state ends at its own last step, as torch.nn's one call returns it."""
    torch.manual_seed(0)
    rnn = _module(mode, 2, batch_first=layout == "lengths", device="cpu")
    _, padded_x, lengths, given = _case(layout, "cpu")
    state = None
    for chunk in tbptt.chunks(rnn, k=K, **given):
        state = chunk.carry(state, rnn(chunk.input, chunk.state(state))[1])
    whole = TORCH_MODULES[mode](I, H, num_layers=2).to(torch.float64)
    whole.load_state_dict(rnn.state_dict())
    _, expected = whole(pack_padded_sequence(padded_x(), lengths, enforce_sorted=False))
    for s, e in zip(_states(state), _states(expected)):
        assert_close(s, e, f"{mode} {layout} final state")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunks_cover_every_step_exactly_once(layout):
    _, _, lengths, given = _case(layout, "cpu")
    rnn = _module("gru", 1, batch_first=layout == "lengths", device="cpu")
    ids = torch.arange(T * B).view(T, B)            # ids[t, b]: step t of row b
    ids_laid_out = ids.t() if layout == "lengths" else ids
    seen, spans = [], []
    for chunk in tbptt.chunks(rnn, k=K, **given):
        cut = chunk.slice(ids_laid_out)
        seen.append(cut.flatten() if chunk.rows is None else cut.data)
        spans.append((chunk.start, chunk.stop))
    assert spans == [(0, 4), (4, 8), (8, 10)]
    valid = ids[torch.arange(T).view(T, 1) < lengths.view(1, B)]
    assert torch.equal(torch.cat(seen).sort().values, valid.sort().values)


def test_chunk_input_is_the_slice_of_its_rows_and_steps():
    """chunk.input and chunk.slice cut alike, so out.data lines up with slice(targets).data."""
    lengths = _case("packed", "cpu")[2]
    rnn = _module("lstm", 1, batch_first=False, device="cpu")
    x = torch.arange(T * B, dtype=torch.float64).view(T, B, 1).expand(T, B, I)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    ids = torch.arange(T * B, dtype=torch.float64).view(T, B)
    for chunk in tbptt.chunks(rnn, packed, K):
        assert torch.equal(chunk.input.data[:, 0], chunk.slice(ids).data)
        assert chunk.lengths.tolist() == (lengths[chunk.rows] - chunk.start).clamp(max=K).tolist()
        assert (chunk.lengths > 0).all()
    assert chunk.rows.tolist() == [1, 3]   # the last chunk runs only the rows of 9 and 10 steps


@pytest.mark.parametrize("mode", list(MODULES))
def test_carried_state_is_cut_from_the_graph(mode):
    torch.manual_seed(0)
    rnn = _module(mode, 2, batch_first=False, device="cpu")
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    state = None
    for chunk in tbptt.chunks(rnn, x, K, lengths=torch.tensor([7, T, 1, 9, 4])):
        out, new_state = rnn(chunk.input, chunk.state(state))
        # Without the detach, the second chunk's backward would run into the first chunk's
        # freed graph and raise; here it must stop at the chunk's first step.
        pad_packed_sequence(out)[0].sum().backward()
        state = chunk.carry(state, new_state)
        for s in _states(state):
            assert s.grad_fn is None and not s.requires_grad
    assert x.grad is not None


def test_unbatched_input_runs_in_chunks():
    torch.manual_seed(0)
    rnn = _module("gru", 2, batch_first=True, device="cpu")   # unbatched [T, I] is time-first anyway
    x = torch.randn(T, I, dtype=torch.float64)
    state, outs = None, []
    for chunk in tbptt.chunks(rnn, x, K):
        out, new_state = rnn(chunk.input, chunk.state(state))
        outs.append(out)
        state = chunk.carry(state, new_state)
    expected_out, expected_state = rnn(x)
    assert_close(torch.cat(outs), expected_out, "outputs")
    assert_close(state, expected_state, "final state")


def test_bidirectional_is_refused():
    rnn = fused_rnn.LSTM(I, H, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        tbptt.chunks(rnn, torch.randn(T, B, I), K)


@pytest.mark.parametrize("args,message", [
    (dict(k=0), "k must be a positive int"),
    (dict(k=2.0), "k must be a positive int"),
    (dict(k=K, lengths=[3, 4]), "one length per row"),
    (dict(k=K, lengths=[3, 0, 2, 1, 5]), r"lengths must lie in \[1, 10\]"),
    (dict(k=K, lengths=[3, 11, 2, 1, 5]), r"lengths must lie in \[1, 10\]"),
])
def test_bad_arguments_are_named(args, message):
    rnn = fused_rnn.GRU(I, H)
    with pytest.raises(ValueError, match=message):
        tbptt.chunks(rnn, torch.randn(T, B, I), **args)


def test_a_cell_is_refused():
    with pytest.raises(TypeError, match="must be an nn.LSTM, nn.GRU or nn.RNN"):
        tbptt.chunks(fused_rnn.GRUCell(I, H), torch.randn(T, B, I), K)
