"""Sequence-to-sequence models with attention on the fused LSTM/GRU.

- :class:`Attention` -- dot / general / concat (Luong) / additive (Bahdanau) scores, masked.
- :class:`Encoder` -- embedding + fused LSTM/GRU over packed sources, bridged final states.
- :class:`Decoder` -- embedding + fused LSTM/GRU + attention, Luong or Bahdanau arrangement.
- :class:`Seq2Seq` -- both, with a padding-aware loss and ``generate`` (greedy/sample/beam).
- :func:`decode` with :class:`DecodeOptions` -- the decoding behind ``generate``, for any
  decoder (a language model passes its own state and no memory); :mod:`.penalties`.
- :mod:`.tasks` -- generated data sets (dates -> ISO, sequence reversal); :mod:`.demo`.
"""
from .attention import SCORES, Attention, lengths_to_mask
from .decoder import Decoder, DecoderState, Memory
from .decoding import DecodeOptions, decode
from .encoder import Encoder, EncoderOutput
from .model import Seq2Seq, Seq2SeqOutput
from .search import STRATEGIES, Generation

__all__ = ["Attention", "Encoder", "EncoderOutput", "Decoder", "DecoderState", "Memory",
           "Seq2Seq", "Seq2SeqOutput", "Generation", "DecodeOptions", "decode", "lengths_to_mask",
           "SCORES", "STRATEGIES"]
