"""Encoder: embedding + fused LSTM/GRU over packed sources, final states bridged to the decoder."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..rnn import GRU, LSTM
from .attention import lengths_to_mask
from .checks import check_ints, check_lengths, check_tokens

CELLS = {"lstm": LSTM, "gru": GRU}


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int,
             dropout: float, bidirectional: bool = False) -> nn.Module:
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {tuple(CELLS)}, got {cell!r}")
    return CELLS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                       dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)


@dataclass
class EncoderOutput:
    outputs: Tensor        # [B, S, H * directions], zero at padded positions
    mask: Tensor           # [B, S] bool, True at real positions
    lengths: Tensor        # [B] int64 (CPU)
    state: object          # decoder-sized initial state: h [L, B, Hd] or (h, c)


class Encoder(nn.Module):
    """Embedding + fused LSTM/GRU (multi-layer, optionally bidirectional) over token ids.

    ``forward(src [B, S], lengths [B])`` packs the batch, so padding costs no recurrence
    steps, and returns an :class:`EncoderOutput`.  The final states (both directions
    concatenated for a bidirectional encoder) are bridged by a linear layer (tanh for ``h``,
    linear for the LSTM cell ``c``) to ``decoder_hidden_size``; with one direction and equal
    sizes the bridge is the identity.
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int = 1,
                 cell: str = "lstm", bidirectional: bool = False, dropout: float = 0.0,
                 padding_idx: int | None = 0, decoder_hidden_size: int | None = None):
        super().__init__()
        check_ints(vocab_size=vocab_size, embed_size=embed_size, hidden_size=hidden_size, num_layers=num_layers)
        if decoder_hidden_size is not None:
            check_ints(decoder_hidden_size=decoder_hidden_size)
        self.vocab_size = vocab_size
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.directions
        self.decoder_hidden_size = decoder_hidden_size or hidden_size
        self.embedding = nn.Embedding(vocab_size, embed_size, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.rnn = make_rnn(cell, embed_size, hidden_size, num_layers, dropout, bidirectional)
        needs_bridge = bidirectional or self.decoder_hidden_size != hidden_size
        self.bridge_h = (nn.Linear(self.output_size, self.decoder_hidden_size)
                         if needs_bridge else None)
        self.bridge_c = (nn.Linear(self.output_size, self.decoder_hidden_size)
                         if needs_bridge and cell == "lstm" else None)

    def forward(self, src: Tensor, lengths) -> EncoderOutput:
        src = check_tokens("src", src, "S")
        lengths = check_lengths(lengths, src.shape[0], src.shape[1]).cpu()
        embedded = self.dropout(self.embedding(src))
        if src.shape[0] == 0:   # pack_padded_sequence refuses an empty batch; it has no padding to skip
            outputs, final = self.rnn(embedded)
        else:
            packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
            out, final = self.rnn(packed)
            outputs, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        mask = lengths_to_mask(lengths.to(src.device), src.shape[1])
        return EncoderOutput(outputs, mask, lengths, self.bridge(final))

    def _join(self, state: Tensor) -> Tensor:
        # [L * D, B, H] -> [L, B, D * H]: directions of one layer side by side (sizes spelled
        # out: an empty batch cannot infer a -1)
        L, D, B, H = self.num_layers, self.directions, state.shape[1], state.shape[2]
        return state.view(L, D, B, H).permute(0, 2, 1, 3).reshape(L, B, D * H)

    def bridge(self, final):
        if self.cell == "lstm":
            h, c = final
            if self.bridge_h is None:
                return h, c
            return torch.tanh(self.bridge_h(self._join(h))), self.bridge_c(self._join(c))
        if self.bridge_h is None:
            return final
        return torch.tanh(self.bridge_h(self._join(final)))
