"""Attentional decoder: embedding + fused LSTM/GRU + attention, Luong or Bahdanau arrangement.

Luong et al. (2015): the RNN runs first, its output ``h_t`` queries the memory, and
``h~_t = tanh(W_c [c_t; h_t])`` is the readout; with input feeding ``h~_{t-1}`` joins the
next input.  Bahdanau et al. (2014): the previous top-layer state queries the memory first,
the context joins the embedded input of the RNN, and the readout is
``tanh(W_r [h_t; c_t; e_t])``.  Without attention the decoder sees the source only through
its initial state (Sutskever et al. 2014; Cho et al. 2014) and its readout is ``tanh(W_r h_t)``.

Teacher-forced training of a Luong decoder without input feeding (and of the attention-free
decoder) runs the RNN over the whole target in one fused call and attends all steps in one
batched product.  The stepwise path (:meth:`Decoder.step`) serves generation, input feeding,
Bahdanau attention and teacher forcing below 1; both paths compute the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import SCORES, Attention, check_mask
from .checks import check_ints, check_tokens, is_number
from .encoder import EncoderOutput, make_rnn

STYLES = ("luong", "bahdanau")


def _map_state(state, fn):
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


@dataclass
class Memory:
    """What the decoder attends to, fixed for a whole decode: keys, mask, projected keys."""
    keys: Tensor                 # [B, S, K]
    mask: Tensor                 # [B, S] bool
    projected: Tensor | None     # Attention.project_keys(keys), computed once

    def index_select(self, index: Tensor) -> "Memory":
        proj = None if self.projected is None else self.projected.index_select(0, index)
        return Memory(self.keys.index_select(0, index), self.mask.index_select(0, index), proj)

    def repeat_interleave(self, n: int) -> "Memory":
        idx = torch.arange(self.keys.shape[0], device=self.keys.device).repeat_interleave(n)
        return self.index_select(idx)


@dataclass
class DecoderState:
    """The part of the decoder that changes from step to step (batch is dim 1 of ``rnn``)."""
    rnn: object                  # h [L, B, H] (GRU) or (h, c) (LSTM)
    feed: Tensor | None = None   # Luong input feeding: the previous attentional vector [B, H]

    def index_select(self, index: Tensor) -> "DecoderState":
        rnn = _map_state(self.rnn, lambda s: s.index_select(1, index))
        feed = None if self.feed is None else self.feed.index_select(0, index)
        return DecoderState(rnn, feed)

    def repeat_interleave(self, n: int) -> "DecoderState":
        h = self.rnn[0] if isinstance(self.rnn, tuple) else self.rnn
        idx = torch.arange(h.shape[1], device=h.device).repeat_interleave(n)
        return self.index_select(idx)


class Decoder(nn.Module):
    """Embedding + fused LSTM/GRU + attention (``attention=None``: no attention).

    ``memory_size``: feature size of the encoder outputs (keys).  ``style``: ``"luong"`` or
    ``"bahdanau"``.  ``input_feeding`` (Luong only): feed ``h~_{t-1}`` into step ``t``.
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int,
                 memory_size: int | None = None, num_layers: int = 1, cell: str = "lstm",
                 attention: str | None = "general", style: str = "luong",
                 input_feeding: bool = False, dropout: float = 0.0, padding_idx: int | None = 0,
                 attn_size: int | None = None, readout_size: int | None = None):
        super().__init__()
        check_ints(vocab_size=vocab_size, embed_size=embed_size, hidden_size=hidden_size, num_layers=num_layers)
        if style not in STYLES:
            raise ValueError(f"style: expected one of {STYLES}, got {style!r}")
        if attention is not None and attention not in SCORES:
            raise ValueError(f"attention: expected one of {SCORES} or None, got {attention!r}")
        if input_feeding and (style != "luong" or attention is None):
            raise ValueError("input_feeding: expected False unless style='luong' with attention, "
                             f"got True with style={style!r}, attention={attention!r}")
        memory_size = hidden_size if memory_size is None else memory_size
        readout_size = hidden_size if readout_size is None else readout_size
        check_ints(memory_size=memory_size, readout_size=readout_size)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.memory_size = memory_size
        self.num_layers = num_layers
        self.cell = cell
        self.style = style if attention is not None else "none"
        self.input_feeding = input_feeding
        self.readout_size = readout_size
        self.embedding = nn.Embedding(vocab_size, embed_size, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        rnn_input = embed_size
        if self.style == "bahdanau":
            rnn_input += memory_size
        elif input_feeding:
            rnn_input += readout_size
        self.rnn = make_rnn(cell, rnn_input, hidden_size, num_layers, dropout)
        if attention is None:
            self.attention = None
            readout_in = hidden_size
        else:
            self.attention = Attention(hidden_size, memory_size, attention, attn_size)
            readout_in = hidden_size + memory_size
            if self.style == "bahdanau":
                readout_in += embed_size
        self.readout = nn.Linear(readout_in, readout_size)
        self.out = nn.Linear(readout_size, vocab_size)

    # ---- setting up a decode ------------------------------------------------------------
    def memory(self, keys: Tensor, mask: Tensor) -> Memory | None:
        """Check the mask once and project the keys once for a whole decode."""
        if self.attention is None:
            return None
        check_mask(mask)
        return Memory(keys, mask, self.attention.project_keys(keys))

    def start(self, enc: EncoderOutput) -> tuple[DecoderState, Memory | None]:
        """Initial state and memory from an :class:`EncoderOutput`."""
        feed = None
        if self.input_feeding:
            h = enc.state[0] if isinstance(enc.state, tuple) else enc.state
            feed = h.new_zeros(h.shape[1], self.readout_size)
        return DecoderState(enc.state, feed), self.memory(enc.outputs, enc.mask)

    @property
    def fused_path(self) -> bool:
        """Whether teacher forcing can run all steps in one RNN call."""
        return self.style in ("luong", "none") and not self.input_feeding

    # ---- pieces ---------------------------------------------------------------------------
    def _attend(self, query: Tensor, memory: Memory):
        return self.attention(query, memory.keys, memory.mask, projected_keys=memory.projected,
                              validate=False)

    def _top_hidden(self, rnn_state) -> Tensor:
        h = rnn_state[0] if isinstance(rnn_state, tuple) else rnn_state
        return h[-1]

    # ---- one step -------------------------------------------------------------------------
    def step(self, tokens: Tensor, state: DecoderState, memory: Memory | None
             ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One decoder step: ``tokens [B]`` -> ``(logits [B, V], new state, weights [B, S])``."""
        emb = self.dropout(self.embedding(tokens))
        weights = None
        if self.style == "bahdanau":
            context, weights = self._attend(self._top_hidden(state.rnn), memory)
            out, rnn_state = self.rnn(torch.cat([emb, context], -1).unsqueeze(1), state.rnn)
            out = out.squeeze(1)
            readout = torch.tanh(self.readout(torch.cat([out, context, emb], -1)))
        else:
            x = emb if state.feed is None else torch.cat([emb, state.feed], -1)
            out, rnn_state = self.rnn(x.unsqueeze(1), state.rnn)
            out = out.squeeze(1)
            if self.style == "luong":
                context, weights = self._attend(out, memory)
                readout = torch.tanh(self.readout(torch.cat([context, out], -1)))
            else:
                readout = torch.tanh(self.readout(out))
        feed = readout if self.input_feeding else None
        logits = self.out(self.dropout(readout))
        return logits, DecoderState(rnn_state, feed), weights

    # ---- all steps ------------------------------------------------------------------------
    def forward(self, inputs: Tensor, state: DecoderState, memory: Memory | None,
                teacher_forcing: float = 1.0, stepwise: bool = False,
                generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor | None, DecoderState]:
        """Decode ``inputs [B, T]`` (BOS then the gold target shifted right).

        Returns ``(logits [B, T, V], weights [B, T, S] or None, final state)``.  With
        ``teacher_forcing < 1`` each step's input is, per row, the gold token with that
        probability and otherwise the argmax of the previous step.  ``stepwise=True``
        forces the step-by-step path even where the one-call path applies.
        """
        if not is_number(teacher_forcing) or not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing: expected a ratio in [0, 1], got {teacher_forcing!r}")
        inputs = check_tokens("inputs", inputs, "T")
        if (memory is None) != (self.attention is None):   # else a step fails deep inside attention
            expected = ("None (the decoder has no attention)" if self.attention is None
                        else "a Memory (the decoder attends)")
            raise ValueError(f"memory: expected {expected}, got {type(memory).__name__}")
        if self.fused_path and teacher_forcing == 1.0 and not stepwise:
            return self._forward_fused(inputs, state, memory)
        logits, weights = [], []
        tokens = inputs[:, 0]
        for t in range(inputs.shape[1]):
            if t > 0:
                tokens = inputs[:, t]
                if teacher_forcing < 1.0:
                    own = logits[-1].argmax(-1)
                    coin = torch.rand(tokens.shape, device=tokens.device,
                                      generator=generator) < teacher_forcing
                    tokens = torch.where(coin, tokens, own)
            step_logits, state, w = self.step(tokens, state, memory)
            logits.append(step_logits)
            weights.append(w)
        attn = None if weights[0] is None else torch.stack(weights, 1)
        return torch.stack(logits, 1), attn, state

    def _forward_fused(self, inputs, state, memory):
        emb = self.dropout(self.embedding(inputs))
        out, rnn_state = self.rnn(emb, state.rnn)           # one fused call over all T steps
        weights = None
        if self.style == "luong":
            context, weights = self._attend(out, memory)     # [B, T, S] in one batched product
            readout = torch.tanh(self.readout(torch.cat([context, out], -1)))
        else:
            readout = torch.tanh(self.readout(out))
        return self.out(self.dropout(readout)), weights, DecoderState(rnn_state, None)
