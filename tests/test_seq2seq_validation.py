"""Argument checks of fused_rnn.seq2seq (issue #16): each bad argument of a public entry point is
a ValueError (TypeError for something that is not even a tensor) naming it, raised before any
computation; an empty batch works, as in torch.nn."""
import pytest
import torch

from fused_rnn.seq2seq import DecodeOptions, Decoder, DecoderState, Seq2Seq, decode
from fused_rnn.seq2seq.tasks import PairDataset, Vocab, make_dates, make_reversal, pad_batch, reversal_vocab
from fused_rnn.seq2seq.train import fit, predict

from checks import DEVICES

PAD, BOS, EOS = 0, 1, 2


def model(tgt_vocab=7, attention="general", **kw):
    torch.manual_seed(0)
    return Seq2Seq(9, tgt_vocab, embed_size=8, hidden_size=16, attention=attention, **kw).double().eval()


def sources(lengths=(5, 2, 4)):
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor(lengths)
    src = torch.randint(3, 9, (len(lengths), max(lengths.tolist(), default=1)), generator=g)
    src[torch.arange(src.shape[1])[None] >= lengths[:, None]] = PAD
    return src, lengths


def computing_nothing(m):
    """``m`` with an encoder and decoder that fail the test if they run: the checks come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model ran before its arguments were checked")
    m.encoder.forward = m.decoder.forward = m.decoder.step = refuse
    return m


# ---- min_len that no hypothesis can reach -------------------------------------------------------
@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_min_len_with_nothing_to_emit_before_eos_is_refused(strategy):
    """Before: [PAD] with score -inf (greedy, sample) or an empty hypothesis (beam)."""
    src, lengths = sources()
    m = computing_nothing(model(tgt_vocab=3))       # PAD, BOS, EOS and nothing else
    with pytest.raises(ValueError, match=r"min_len: expected at most 0 \(the vocabulary of 3 has no token "
                                         r"besides EOS \(2\) and blocked_ids \(0, 1\)\), got 1"):
        m.generate(src, lengths, strategy, min_len=1, n_best=1)
    assert model(tgt_vocab=3).generate(src, lengths, strategy, n_best=1).lengths.eq(1).all()   # min_len 0 works


def test_min_len_beyond_what_no_repeat_ngram_size_allows_is_refused():
    """4 content tokens: without a repeated 1-gram at most 4 tokens precede EOS, without a repeated
    2-gram at most 4 ** 2 + 1 = 17 (a de Bruijn sequence)."""
    src, lengths = sources()
    m = model()
    with pytest.raises(ValueError, match=r"min_len: expected at most 4 \(no longer hypothesis of the 4 tokens "
                                         r"that are neither EOS nor blocked repeats no 1-gram\), got 5"):
        computing_nothing(model()).generate(src, lengths, "beam", no_repeat_ngram_size=1, min_len=5)
    with pytest.raises(ValueError, match=r"min_len: expected at most 17 .* got 18"):
        m.generate(src, lengths, "greedy", no_repeat_ngram_size=2, min_len=18, max_len=20)
    gen = m.generate(src, lengths, "greedy", no_repeat_ngram_size=1, min_len=4)
    assert gen.lengths.eq(5).all()


def test_decode_refuses_what_blocked_ids_leave_unreachable():
    m = model(tgt_vocab=5)
    src, lengths = sources()
    state, memory = m.decoder.start(m.encoder(src, lengths))
    args = (m.decoder, state, memory, torch.full((3,), 6), DecodeOptions("greedy", min_len=2))
    with pytest.raises(ValueError, match=r"min_len: expected at most 0 .* blocked_ids \(0, 1, 3, 4\)"):
        decode(*args, bos_id=BOS, eos_id=EOS, pad_id=PAD, blocked_ids=(PAD, BOS, 3, 4))
    with pytest.raises(ValueError, match=r"blocked_ids: expected ids other than eos_id \(2\)"):
        decode(*args, bos_id=BOS, eos_id=EOS, pad_id=PAD, blocked_ids=(PAD, EOS))


# ---- ids outside the vocabulary ----------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(eos_id=99), r"eos_id: expected an int id in \[0, 7\) \(tgt_vocab_size\), got 99"),
    (dict(eos_id=-1), r"eos_id: expected an int id in \[0, 7\) \(tgt_vocab_size\), got -1"),
    (dict(pad_id=-1), r"pad_id: expected an int id in \[0, 7\) \(tgt_vocab_size\), got -1"),
    (dict(bos_id=7), r"bos_id: .* got 7"),
    (dict(tgt_vocab=12, pad_id=10, bos_id=1, eos_id=2), r"pad_id: expected an int id in \[0, 9\) \(src_vocab_size\)"),
    (dict(eos_id=True), r"eos_id: .* got True"),
    (dict(bos_id=1.0), r"bos_id: .* got 1.0"),
])
def test_special_ids_outside_the_vocabulary_are_refused(kwargs, match):
    """Before: eos_id=-1 decoded silently to max_len (never finishing), the others an IndexError."""
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


def test_decode_refuses_ids_outside_the_vocabulary():
    m = model()
    src, lengths = sources()
    state, memory = m.decoder.start(m.encoder(src, lengths))
    args = (m.decoder, state, memory, torch.full((3,), 6), DecodeOptions("greedy"))
    with pytest.raises(ValueError, match=r"eos_id: expected an int id in \[0, 7\) \(the decoder's vocab_size\), "
                                         r"got 7"):
        decode(*args, bos_id=BOS, eos_id=7, pad_id=PAD)
    with pytest.raises(ValueError, match=r"bos_id: .* got -2"):
        decode(*args, bos_id=-2, eos_id=EOS, pad_id=PAD)


# ---- the tensors -------------------------------------------------------------------------------
@pytest.mark.parametrize("make_src,error,match", [
    (lambda s: s[0], ValueError, r"src: expected token ids \[B, S\] \(S >= 1\), got shape \(5,\)"),
    (lambda s: s[0, 0], ValueError, r"src: expected token ids \[B, S\] \(S >= 1\), got shape \(\)"),
    (lambda s: s[:, :0], ValueError, r"src: .* got shape \(3, 0\)"),
    (lambda s: s[:, None], ValueError, r"src: .* got shape \(3, 1, 5\)"),
    (lambda s: s.double(), ValueError, r"src: expected an integer dtype \(token ids\), got torch.float64"),
    (lambda s: s.bool(), ValueError, r"src: expected an integer dtype \(token ids\), got torch.bool"),
    (lambda s: s.tolist(), TypeError, r"src: expected a tensor of token ids \[B, S\], got list"),
    (lambda s: s + 90, ValueError, r"src: expected token ids in \[0, 9\) \(src_vocab_size\), got ids in \[90, 98\]"),
    (lambda s: s - 4, ValueError, r"src: .* got ids in \[-4, 4\]"),
])
def test_bad_src_is_refused_before_any_computation(make_src, error, match):
    """Before: IndexError 'tuple index out of range', or the embedding's error naming no argument."""
    src, lengths = sources()
    with pytest.raises(error, match=match):
        computing_nothing(model()).generate(make_src(src), lengths)


@pytest.mark.parametrize("lengths,error,match", [
    (torch.tensor([5, 0, 4]), ValueError, r"src_lengths: expected every length in \[1, 5\]"),
    (torch.tensor([5, -1, 4]), ValueError, r"src_lengths: .* got lengths in \[-1, 5\]"),
    (torch.tensor([5, 6, 4]), ValueError, r"src_lengths: .* got lengths in \[4, 6\]"),
    (torch.tensor([5, 2]), ValueError, r"src_lengths: expected a 1-D tensor of 3 lengths, got shape \(2,\)"),
    (torch.tensor([5.0, 2.0, 4.0]), ValueError, r"src_lengths: expected integer lengths, got dtype torch.float32"),
    (None, TypeError, r"src_lengths: expected a tensor or a sequence of 3 ints, got NoneType"),
])
def test_bad_src_lengths_are_refused_before_any_computation(lengths, error, match):
    src, _ = sources()
    with pytest.raises(error, match=match):
        computing_nothing(model()).generate(src, lengths)


def test_integer_src_of_any_width_gives_the_same_result():
    m = model()
    src, lengths = sources()
    expected = m.generate(src, lengths, "beam", n_best=2)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        gen = m.generate(src.to(dtype), lengths.to(dtype), "beam", n_best=2)
        assert torch.equal(gen.tokens, expected.tokens) and torch.equal(gen.scores, expected.scores)
    torch.testing.assert_close(m.loss(src.int(), lengths, expected.tokens[:, 0].int()),
                               m.loss(src, lengths, expected.tokens[:, 0]))


@pytest.mark.parametrize("make_tgt,match", [
    (lambda t: t[:, :0], r"tgt: expected token ids \[3, T\] \(T >= 1\), got shape \(3, 0\)"),
    (lambda t: t[:2], r"tgt: expected token ids \[3, T\] \(T >= 1\), got shape \(2, 4\)"),
    (lambda t: t.float(), r"tgt: expected an integer dtype \(token ids\), got torch.float32"),
])
def test_bad_tgt_is_refused(make_tgt, match):
    """Before: an empty target gave cross_entropy's 'Expected input batch_size (3) to match target
    batch_size (0)'."""
    src, lengths = sources()
    tgt = torch.tensor([[3, 4, 5, EOS]] * 3)
    m = model()
    for call in (m, m.loss, m.log_prob):
        with pytest.raises(ValueError, match=match):
            call(src, lengths, make_tgt(tgt))


def test_bad_max_len_tensor_is_refused():
    src, lengths = sources()
    m = computing_nothing(model())
    with pytest.raises(ValueError, match=r"max_len: expected an integer tensor of shape \(3,\), got torch.bool"):
        m.generate(src, lengths, max_len=torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match=r"max_len: expected every value >= 0, got -1"):
        m.generate(src, lengths, max_len=torch.tensor([3, -1, 2]))


# ---- an empty batch ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy,attention", [("greedy", "general"), ("sample", None), ("beam", "additive")])
def test_an_empty_batch_gives_an_empty_result(device, strategy, attention):
    """Before: 'min(): Expected reduction dim to be specified for input.numel() == 0'."""
    m = model(attention=attention).to(device)
    src = torch.zeros(0, 6, dtype=torch.long, device=device)
    lengths = torch.zeros(0, dtype=torch.long)
    n = 1 if strategy == "greedy" else 3
    gen = m.generate(src, lengths, strategy, n_best=n)
    assert gen.tokens.shape[:2] == gen.lengths.shape == gen.scores.shape == gen.normalized_scores.shape == (0, n)
    assert gen.tokens.dtype == gen.lengths.dtype == torch.long and gen.scores.dtype == torch.float64
    assert gen.tokens.device.type == gen.scores.device.type == device
    if attention is None:
        assert gen.attention is None
    else:
        assert gen.attention.shape[:2] == (0, n) and gen.attention.shape[-1] == 6
    assert gen.best() == []
    out = m(src, lengths, torch.zeros(0, 4, dtype=torch.long, device=device))
    assert out.logits.shape == (0, 4, 7)
    assert out.attention is None if attention is None else out.attention.shape == (0, 4, 6)


def test_an_empty_batch_still_checks_max_len():
    """Found by the adversarial suite: an int max_len < 0 was checked per row only, so B = 0 took it."""
    m = model()
    with pytest.raises(ValueError, match=r"max_len: expected >= 0, got -1"):
        m.generate(torch.zeros(0, 6, dtype=torch.long), torch.zeros(0, dtype=torch.long), max_len=-1)


# ---- option types ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(strategy="sample", top_k=True), r"top_k: expected None or an int >= 1, got True"),
    (dict(strategy="beam", beam_size=True), r"beam_size: expected an int >= 1, got True"),
    (dict(strategy="beam", n_best=True), r"n_best: expected an int >= 1, got True"),
    (dict(min_len=True), r"min_len: expected an int >= 0, got True"),
    (dict(no_repeat_ngram_size=True), r"no_repeat_ngram_size: expected an int >= 0 \(0: none\), got True"),
    (dict(max_len=True), r"max_len: expected None, an int, a tensor or a pair \(a, b\) of numbers, got True"),
    (dict(strategy="sample", num_return_sequences=True),
     r"num_return_sequences: expected None or an int >= 1, got True"),
    (dict(strategy="sample", num_return_sequences=2.0),
     r"num_return_sequences: expected None or an int >= 1, got 2.0"),
])
def test_a_bool_or_float_is_not_an_int_option(kwargs, match):
    src, lengths = sources()
    with pytest.raises(ValueError, match=match):
        computing_nothing(model()).generate(src, lengths, **kwargs)


def test_decode_checks_its_own_arguments():
    m = model()
    src, lengths = sources()
    state, memory = m.decoder.start(m.encoder(src, lengths))
    ids = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)
    with pytest.raises(TypeError, match=r"options: expected a DecodeOptions, got dict"):
        decode(m.decoder, state, memory, torch.full((3,), 6), {"strategy": "greedy"}, **ids)
    with pytest.raises(TypeError, match=r"max_len: expected an integer tensor \[B\], got int"):
        decode(m.decoder, state, memory, 6, DecodeOptions(), **ids)
    with pytest.raises(ValueError, match=r"max_len: expected an integer tensor \[B\], got torch.int64 \(3, 1\)"):
        decode(m.decoder, state, memory, torch.full((3, 1), 6), DecodeOptions(), **ids)
    with pytest.raises(ValueError, match=r"src_lengths: expected the source lengths \[3\], got shape \(2,\)"):
        decode(m.decoder, state, memory, torch.full((3,), 6), DecodeOptions("beam", coverage_penalty=0.1),
               src_lengths=lengths[:2], **ids)


# ---- the model's and decoder's other arguments --------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_size=True), r"hidden_size: expected an int >= 1, got True"),
    (dict(embed_size=-1), r"embed_size: expected an int >= 1, got -1"),
    (dict(num_layers=1.5), r"num_layers: expected an int >= 1, got 1.5"),
    (dict(src_vocab_size=0), r"src_vocab_size: expected an int >= 1, got 0"),
    (dict(tgt_vocab_size=7.0), r"tgt_vocab_size: expected an int >= 1, got 7.0"),
])
def test_bad_model_sizes_name_the_argument(kwargs, match):
    """Before: 'Trying to create tensor with negative dimension', 'empty(): argument 'size' ... bool'."""
    args = dict(src_vocab_size=9, tgt_vocab_size=7, embed_size=8, hidden_size=16) | kwargs
    with pytest.raises(ValueError, match=match):
        Seq2Seq(**args)


def test_decoder_forward_checks_teacher_forcing_and_memory():
    m = model()
    src, lengths = sources()
    tgt = torch.tensor([[3, 4, EOS]] * 3)
    with pytest.raises(ValueError, match=r"teacher_forcing: expected a ratio in \[0, 1\], got True"):
        m(src, lengths, tgt, teacher_forcing=True)
    state, _ = m.decoder.start(m.encoder(src, lengths))
    with pytest.raises(ValueError, match=r"memory: expected a Memory \(the decoder attends\), got None"):
        m.decoder(tgt, state, None)
    lm = Decoder(7, 8, 16, attention=None)
    with pytest.raises(ValueError, match=r"inputs: expected token ids \[B, T\] \(T >= 1\), got shape \(3,\)"):
        lm(tgt[:, 0], DecoderState(None), None)


# ---- training helpers and tasks ----------------------------------------------------------------
def reversal_data(n=4):
    vocab = reversal_vocab()
    return PairDataset(make_reversal(n, 1, 3, seed=0), vocab, vocab)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), r"batch_size: expected an int >= 1, got 0"),
    (dict(steps=-1), r"steps: expected an int >= 0, got -1"),
    (dict(clip=-1.0), r"clip: expected a number > 0 \(inf: no clipping\), got -1.0"),
])
def test_fit_checks_its_arguments(kwargs, match):
    """Before: batch_size 0 failed in pad_batch; a negative clip flipped every gradient's sign."""
    m = computing_nothing(Seq2Seq(23, 23, 4, 4))
    with pytest.raises(ValueError, match=match):
        fit(m, reversal_data(), **(dict(steps=1) | kwargs))


def test_fit_and_predict_refuse_what_they_cannot_use():
    m = Seq2Seq(23, 23, 4, 4)
    with pytest.raises(ValueError, match=r"data: expected at least one pair, got an empty PairDataset"):
        fit(m, PairDataset([], reversal_vocab(), reversal_vocab()), steps=1)
    with pytest.raises(ValueError, match=r"batch_size: expected an int >= 1, got 0"):
        predict(m, reversal_data(), batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size: expected an int >= 1, got -2"):
        list(reversal_data().batches(-2))


def test_tasks_check_their_arguments():
    vocab = reversal_vocab()
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 23\), got -1"):
        vocab.decode([3, -1])                 # before: the last symbol, silently
    with pytest.raises(ValueError, match=r"symbols: expected none of the special symbols .* got '<s>'"):
        Vocab(["a", "<s>"])
    with pytest.raises(ValueError, match=r"seqs: expected at least one sequence"):
        pad_batch([])
    with pytest.raises(ValueError, match=r"alphabet: expected at least one symbol, got ''"):
        make_reversal(2, 1, 2, alphabet="")
    with pytest.raises(ValueError, match=r"min_len, max_len: expected ints with 1 <= min_len <= max_len, got 1.5, 2"):
        make_reversal(2, 1.5, 2)
    with pytest.raises(ValueError, match=r"exclude: expected to leave some string to draw, got all 6"):
        make_reversal(2, 1, 2, alphabet="ab", exclude={"a", "b", "aa", "ab", "ba", "bb"})   # before: hung
    with pytest.raises(ValueError, match=r"n: expected an int >= 0, got -1"):
        make_reversal(-1, 1, 2)
    with pytest.raises(ValueError, match=r"n: expected an int >= 0, got -1"):
        make_dates(-1)
