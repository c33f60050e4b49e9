"""Truncated backpropagation through time: a long sequence in chunks of k steps, the recurrent
state carried from chunk to chunk but cut from the graph at each boundary.

Backpropagating through a whole long sequence costs memory in proportion to its length and
lets gradients vanish or explode over it; TBPTT trains on k steps at a time, starting each
chunk from the state the previous one ended in, detached, so a chunk's backward stops at its
first step. ``chunks`` does the bookkeeping for any ``torch.nn.LSTM / GRU / RNN`` (fused or
not; one or more layers; LSTM ``(h, c)`` tuples or single tensors)::

    from fused_rnn import tbptt

    state = None
    for chunk in tbptt.chunks(rnn, x, k=32, lengths=lengths):   # x: padded, or a PackedSequence
        out, new_state = rnn(chunk.input, chunk.state(state))
        y = chunk.slice(targets)            # targets cut like the input: out.data <-> y.data
        loss = F.cross_entropy(head(out.data), y.data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = chunk.carry(state, new_state)   # detached, whole batch

Without ``lengths`` (every row as long as the input) ``chunk.input`` is the slice of ``x``
and ``out`` has its layout. With ``lengths``, or a PackedSequence, sequences of different
lengths share the batch: ``chunk.input`` is a PackedSequence of the rows that still have
steps in this chunk (``chunk.rows``, in batch order), ``chunk.state`` picks those rows of the
state, and ``chunk.carry`` writes their new state back while rows whose sequence has ended
keep theirs, so after the last chunk the state holds each row's state at its own last step,
as one call over the whole sequence would return it. The last chunk may be shorter than k.

A chunk's backward frees the graph it ran through, so whatever feeds the input must be a
leaf or be computed per chunk (embed the token ids ``chunk.slice(tokens)`` cuts, a
PackedSequence's ``.data``): an embedding of the whole sequence computed once would be freed
under the second chunk. A PackedSequence input is cut
by gathering rows of its ``data``, so each chunk's graph is its own.

Bidirectional modules are refused: their reverse direction starts at the end of the sequence,
so there is no state to carry forward from one chunk into the next.
"""
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

__all__ = ["chunks", "Chunk", "detach"]


def detach(state):
    """The state cut from the graph: a tensor, a tuple of tensors (LSTM's ``(h, c)``), or None."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


class Chunk:
    """Steps ``[start, stop)`` of the sequence, as ``chunks`` hands them out.

    ``input``: what to feed the module. ``rows``: the batch rows this chunk runs (a CPU
    LongTensor, in batch order), or None when every row runs every step of the chunk.
    ``lengths``: the steps each of those rows has in this chunk (None when ``rows`` is).
    """

    def __init__(self, start, stop, rows, lengths, whole_input, time_dim, batch_size):
        self.start, self.stop, self.rows, self.lengths = start, stop, rows, lengths
        self._time_dim, self._batch_size = time_dim, batch_size
        self.input = self.slice(whole_input)

    def slice(self, sequence):
        """``sequence`` (laid out like the whole input: time and batch first two dimensions in
        the module's order, or a PackedSequence) cut as this chunk's input is, e.g. the targets."""
        if isinstance(sequence, PackedSequence):
            # Gathered from sequence.data by index, so that each chunk's graph is its own: a
            # padded copy of the whole sequence would be one node that the first chunk's
            # backward frees under every later chunk.
            where = self.slice(_packed_positions(sequence, self._time_dim == 1)[0])
            return PackedSequence(sequence.data.index_select(0, where.data), where.batch_sizes,
                                  where.sorted_indices, where.unsorted_indices)
        steps = sequence.narrow(self._time_dim, self.start, self.stop - self.start)
        if self.rows is None:
            return steps
        rows = steps.index_select(1 - self._time_dim, self.rows.to(steps.device))
        return pack_padded_sequence(rows, self.lengths, batch_first=self._time_dim == 1, enforce_sorted=False)

    def state(self, state):
        """The rows of the whole batch's ``state`` that this chunk runs (None stays None)."""
        if state is None or self.rows is None:
            return state
        return _map(lambda s: s.index_select(1, self.rows.to(s.device)), state)

    def carry(self, state, new_state):
        """The whole batch's state after this chunk, detached: this chunk's rows take
        ``new_state`` (what the module returned), the other rows keep ``state``."""
        if self.rows is None:
            return detach(new_state)

        def merge(old, new):
            base = new.new_zeros(new.size(0), self._batch_size, *new.shape[2:]) if old is None else old.detach()
            return base.index_copy(1, self.rows.to(base.device), new.detach())

        if isinstance(new_state, tuple):
            olds = (None,) * len(new_state) if state is None else state
            return tuple(merge(o, n) for o, n in zip(olds, new_state))
        return merge(state, new_state)

    def __repr__(self):
        rows = "all" if self.rows is None else len(self.rows)
        return f"Chunk(steps {self.start}:{self.stop}, rows {rows})"


def chunks(rnn, input, k, lengths=None):
    """Splits ``input`` for ``rnn`` (an ``nn.LSTM / GRU / RNN``, whose ``batch_first`` gives the
    layout) into chunks of ``k`` steps, the last one shorter if k does not divide the length.

    ``input``: ``[T, B, I]`` (``[B, T, I]`` batch-first), unbatched ``[T, I]``, or a
    PackedSequence. ``lengths``: each row's number of steps (``B`` ints, 1 to T) for padded
    input whose rows differ in length. Returns an iterator of ``Chunk``.
    """
    _check_module(rnn)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"tbptt.chunks: k must be a positive int (steps per chunk), got {k!r}")
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("tbptt.chunks: lengths must be None for a PackedSequence input (it has its own)")
        lengths = _packed_positions(input, rnn.batch_first)[1]
        time_dim = 1 if rnn.batch_first else 0
        batch_size = lengths.numel()
    else:
        time_dim = 1 if rnn.batch_first and input.dim() == 3 else 0   # unbatched [T, I] is time-first
        batch_size = None if input.dim() == 2 else input.size(1 - time_dim)
        if lengths is not None:
            lengths = _check_lengths(lengths, input, time_dim)
    return _generate(input, k, lengths, time_dim, batch_size)


def _generate(input, k, lengths, time_dim, batch_size):
    total = input.size(time_dim) if lengths is None else int(lengths.max())
    for start in range(0, total, k):
        stop = min(start + k, total)
        rows = chunk_lengths = None
        if lengths is not None:
            steps_left = (lengths - start).clamp(0, stop - start)
            rows = steps_left.nonzero().flatten()
            chunk_lengths = steps_left[rows]
        yield Chunk(start, stop, rows, chunk_lengths, input, time_dim, batch_size)


def _packed_positions(packed, batch_first):
    """Where each (step, row) of ``packed`` sits in ``packed.data``, padded ([T, B] or [B, T]),
    and each row's length."""
    index = torch.arange(packed.data.size(0), device=packed.data.device)
    return pad_packed_sequence(packed._replace(data=index), batch_first=batch_first)


def _map(fn, state):
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


def _check_module(rnn):
    if not isinstance(rnn, nn.RNNBase):
        raise TypeError(f"tbptt.chunks: rnn must be an nn.LSTM, nn.GRU or nn.RNN (or fused_rnn's), "
                        f"got {type(rnn).__name__}")
    if rnn.bidirectional:
        raise ValueError("tbptt.chunks: bidirectional modules cannot be trained by truncated BPTT: the reverse "
                         "direction starts at the end of the sequence, so no state carries from one chunk "
                         "into the next. Use a unidirectional module, or backpropagate through whole sequences.")


def _check_lengths(lengths, input, time_dim):
    if input.dim() != 3:
        raise ValueError(f"tbptt.chunks: lengths needs batched 3-D input, got {input.dim()}-D input")
    lengths = torch.as_tensor(lengths, dtype=torch.int64, device="cpu").flatten()
    steps, batch = input.size(time_dim), input.size(1 - time_dim)
    if lengths.numel() != batch:
        raise ValueError(f"tbptt.chunks: lengths must hold one length per row ({batch}), got {lengths.numel()}")
    if lengths.numel() and (lengths.min() < 1 or lengths.max() > steps):
        raise ValueError(f"tbptt.chunks: lengths must lie in [1, {steps}] (the input's steps), "
                         f"got min {int(lengths.min())}, max {int(lengths.max())}")
    return lengths
