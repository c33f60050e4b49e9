"""The decoding options of Seq2Seq.generate: no_repeat_ngram_size, repetition_penalty,
length_penalty ("wu", alpha), coverage_penalty, num_return_sequences, max_len (a, b).

Three kinds of check: (1) against the formulas written out in plain Python on a fake decoder
whose logits and attention are a fixed function of the prefix -- beam search against every
hypothesis enumerated, greedy and sampling step by step; (2) each formula on numbers worked
out by hand; (3) properties of generate() on a real (untrained) model.
"""
import itertools
import math

import pytest
import torch

from fused_rnn.seq2seq import DecodeOptions, Seq2Seq, decode
from fused_rnn.seq2seq.penalties import coverage_penalty, length_normalized, penalize_repetitions, repeated_ngram_mask
from fused_rnn.seq2seq.search import StepRules

PAD, BOS, EOS = 0, 1, 2
CONTENT = (3, 4, 5)
V, S = 6, 4                      # vocabulary (3 special + 3 content tokens), source positions
SRC_LENGTHS = (4, 2)             # two sources; the second is padded


# ---- a fake decoder: logits and attention a fixed function of (source, prefix) -----------------
class Prefixes:
    """The fake decoder's state: the tokens each row has read, BOS first."""

    def __init__(self, tokens):
        self.tokens = tokens

    def index_select(self, index):
        return Prefixes(self.tokens.index_select(0, index))

    def repeat_interleave(self, n):
        return Prefixes(self.tokens.repeat_interleave(n, 0))


class Sources:
    """The fake decoder's memory: which source each row decodes."""

    def __init__(self, index):
        self.index = index

    def index_select(self, index):
        return Sources(self.index.index_select(0, index))

    def repeat_interleave(self, n):
        return Sources(self.index.repeat_interleave(n, 0))


def table(source, prefix):
    """Logits ``[V]`` and attention ``[S]`` (zero past the source's length) after ``prefix``
    (the tokens after BOS): pseudo-random, the same every time for the same arguments."""
    g = torch.Generator().manual_seed(hash((source,) + tuple(prefix)) % 2 ** 62)
    logits = 2.0 * torch.randn(V, generator=g, dtype=torch.float64)
    scores = torch.randn(S, generator=g, dtype=torch.float64)
    n = SRC_LENGTHS[source]
    weights = torch.zeros(S, dtype=torch.float64)
    weights[:n] = torch.softmax(scores[:n], 0)
    return logits, weights


class FakeDecoder:
    def step(self, tokens, state, memory):
        state = Prefixes(torch.cat([state.tokens, tokens[:, None]], 1))
        rows = [table(src, prefix[1:]) for src, prefix in zip(memory.index.tolist(), state.tokens.tolist())]
        return torch.stack([r[0] for r in rows]), state, torch.stack([r[1] for r in rows])


def fake_decode(options, max_len, generator=None):
    start = Prefixes(torch.full((len(SRC_LENGTHS), 0), BOS, dtype=torch.long))
    return decode(FakeDecoder(), start, Sources(torch.arange(len(SRC_LENGTHS))),
                  torch.tensor(max_len), options, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                  blocked_ids=(PAD, BOS), src_lengths=torch.tensor(SRC_LENGTHS), generator=generator)


# ---- the formulas, written out ----------------------------------------------------------------
def repeats_ngram(seq, n):
    """Whether the last n tokens of ``seq`` form an n-gram that occurs earlier in it."""
    if n < 1 or len(seq) < n:
        return False
    earlier = {tuple(seq[i:i + n]) for i in range(len(seq) - n)}
    return tuple(seq[-n:]) in earlier


def hand_step(source, prefix, opts, max_len):
    """{token: log-prob} of the tokens allowed after ``prefix``: the repetition penalty on the
    logits, the temperature, log-softmax over all V tokens; then PAD and BOS, tokens repeating
    an n-gram, EOS before min_len, and all but EOS at max_len are not allowed."""
    logits = table(source, prefix)[0].tolist()
    p = opts.repetition_penalty
    for tok in set(prefix):
        logits[tok] = logits[tok] / p if logits[tok] > 0 else logits[tok] * p
    z = [x / opts.temperature for x in logits]
    log_norm = math.log(sum(math.exp(x) for x in z))
    allowed = {}
    for tok in CONTENT + (EOS,):
        if (tok == EOS and len(prefix) < opts.min_len) or (tok != EOS and len(prefix) >= max_len):
            continue
        if not repeats_ngram(prefix + (tok,), opts.no_repeat_ngram_size):
            allowed[tok] = z[tok] - log_norm
    return allowed


def hand_normalized(source, hyp, score, opts):
    """score / lp(|Y|) + coverage penalty, |Y| counting EOS."""
    lp = opts.length_penalty
    norm = score / (((5 + len(hyp)) / 6) ** lp[1] if isinstance(lp, tuple) else len(hyp) ** lp)
    coverage = [0.0] * SRC_LENGTHS[source]
    for j in range(len(hyp)):
        weights = table(source, hyp[:j])[1].tolist()
        coverage = [c + w for c, w in zip(coverage, weights)]
    return norm + opts.coverage_penalty * sum(math.log(min(c, 1.0)) for c in coverage)


def every_hypothesis(source, opts, max_len):
    """[(normalized score, score, hypothesis)] of every hypothesis the options allow, best first."""
    out = []

    def grow(prefix, score):
        for tok, logp in hand_step(source, prefix, opts, max_len).items():
            if tok == EOS:
                hyp = prefix + (EOS,)
                out.append((hand_normalized(source, hyp, score + logp, opts), score + logp, hyp))
            else:
                grow(prefix + (tok,), score + logp)
    grow((), 0.0)
    return sorted(out, reverse=True)


MAX_LEN = 4
# Beam search is exact only when it prunes no candidate: every finite candidate of a step must
# rank among the first K.  The most are at step MAX_LEN - 1: 3 ** (MAX_LEN - 1) prefixes, each
# with 3 tokens or EOS (at MAX_LEN only EOS is allowed).
EXACT_BEAM = len(CONTENT) ** (MAX_LEN - 1) * (len(CONTENT) + 1)
OPTION_CASES = [
    dict(),
    dict(repetition_penalty=1.8),
    dict(no_repeat_ngram_size=1),
    dict(no_repeat_ngram_size=2),
    dict(length_penalty=("wu", 0.6)),
    dict(length_penalty=("wu", 2.0)),
    dict(coverage_penalty=0.5),
    dict(repetition_penalty=1.3, no_repeat_ngram_size=2, length_penalty=("wu", 1.0),
         coverage_penalty=0.3, temperature=0.8, min_len=1),
]


@pytest.mark.parametrize("kw", OPTION_CASES)
def test_wide_beam_finds_the_brute_force_n_best(kw):
    opts = DecodeOptions("beam", beam_size=EXACT_BEAM, n_best=5, **kw)
    gen = fake_decode(opts, [MAX_LEN] * 2)
    plain = DecodeOptions("beam", beam_size=EXACT_BEAM, n_best=5)
    changed = []
    for b in range(2):
        expected = every_hypothesis(b, opts, MAX_LEN)[:5]
        changed.append([h[2] for h in expected] != [h[2] for h in every_hypothesis(b, plain, MAX_LEN)[:5]])
        for i, (norm, score, hyp) in enumerate(expected):
            assert gen.tokens[b, i, :len(hyp)].tolist() == list(hyp)
            assert (gen.tokens[b, i, len(hyp):] == PAD).all()
            assert int(gen.lengths[b, i]) == len(hyp)
            assert gen.scores[b, i].item() == pytest.approx(score, rel=1e-12)
            assert gen.normalized_scores[b, i].item() == pytest.approx(norm, rel=1e-12)
    assert any(changed) or not kw    # the option changes the n-best here, or this case tests nothing


@pytest.mark.parametrize("length_penalty", [2.0, ("wu", 2.0)])
def test_wide_beam_stops_only_when_no_live_beam_can_win(length_penalty):
    """A strong length penalty favours long hypotheses: the search may stop once it holds
    n_best finished ones only if no live beam, finished at its most favourable length, could
    beat them (stopping on the shortest length's bound instead misses the best here)."""
    max_len = MAX_LEN + 1
    opts = DecodeOptions("beam", beam_size=len(CONTENT) ** (max_len - 1) * (len(CONTENT) + 1),
                         n_best=1, length_penalty=length_penalty)
    gen = fake_decode(opts, [max_len] * 2)
    for b in range(2):
        norm, score, hyp = every_hypothesis(b, opts, max_len)[0]
        assert gen.tokens[b, 0, :len(hyp)].tolist() == list(hyp)
        assert gen.normalized_scores[b, 0].item() == pytest.approx(norm, rel=1e-12)


@pytest.mark.parametrize("kw", OPTION_CASES[1:4] + OPTION_CASES[-1:])
def test_greedy_takes_the_best_allowed_token_of_the_formulas(kw):
    kw = {k: v for k, v in kw.items() if k != "coverage_penalty"}   # beam search only
    opts = DecodeOptions("greedy", **kw)
    gen = fake_decode(opts, [5, 5])
    for b in range(2):
        prefix, score = (), 0.0
        while not prefix or prefix[-1] != EOS:
            allowed = hand_step(b, prefix, opts, 5)
            tok = max(allowed, key=allowed.get)
            prefix, score = prefix + (tok,), score + allowed[tok]
        assert gen.tokens[b, 0, :len(prefix)].tolist() == list(prefix)
        assert gen.scores[b, 0].item() == pytest.approx(score, rel=1e-12)


def test_samples_draw_allowed_tokens_scored_by_the_formulas():
    opts = DecodeOptions("sample", n_best=30, repetition_penalty=1.5, no_repeat_ngram_size=2,
                         temperature=1.3, length_penalty=("wu", 0.6))
    gen = fake_decode(opts, [5, 5], generator=torch.Generator().manual_seed(0))
    for b, i in itertools.product(range(2), range(30)):
        hyp = tuple(gen.tokens[b, i, :int(gen.lengths[b, i])].tolist())
        score = 0.0
        for j, tok in enumerate(hyp):
            allowed = hand_step(b, hyp[:j], opts, 5)
            assert tok in allowed
            score += allowed[tok]
        assert gen.scores[b, i].item() == pytest.approx(score, rel=1e-12)
        assert gen.normalized_scores[b, i].item() == pytest.approx(hand_normalized(b, hyp, score, opts),
                                                                   rel=1e-12)
    assert len({tuple(t) for t in gen.tokens[0].tolist()}) > 5    # they are different draws


def test_a_row_with_every_token_blocked_has_no_hypothesis():
    """n = 1 allows each of the 3 content tokens once; min_len 4 then leaves nothing to emit."""
    for strategy in ("greedy", "sample", "beam"):
        opts = DecodeOptions(strategy, no_repeat_ngram_size=1, min_len=4,
                             n_best=1 if strategy == "greedy" else 2)
        gen = fake_decode(opts, [6, 6], generator=torch.Generator().manual_seed(0))
        assert (gen.lengths == 0).all() and (gen.tokens == PAD).all()
        assert (gen.scores == -math.inf).all() and (gen.normalized_scores == -math.inf).all()
        assert (gen.attention == 0).all()
    ok = fake_decode(DecodeOptions("greedy", no_repeat_ngram_size=1, min_len=3), [6, 6])
    assert (ok.lengths == 4).all()


# ---- each formula on numbers worked out by hand -----------------------------------------------
def test_repetition_penalty_formula():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 3.0]])
    history = torch.tensor([[0, 1, 0, 3]])     # 0 twice: penalised once
    expected = torch.tensor([[2.0 / 1.5, -1.0 * 1.5, 0.5, 0.0, 3.0]])
    torch.testing.assert_close(penalize_repetitions(logits, history, 1.5), expected)
    rules = StepRules(eos_id=4, repetition_penalty=1.5, temperature=2.0)
    torch.testing.assert_close(rules.log_probs(logits, history, torch.tensor([9])),
                               torch.log_softmax(expected / 2.0, -1))


def test_repeated_ngram_mask_formula():
    history = torch.tensor([[3, 4, 3, 5, 3], [5, 5, 5, 5, 5]])
    blocked = lambda n: [repeated_ngram_mask(history, n, 7)[r].nonzero().flatten().tolist() for r in range(2)]
    assert blocked(1) == [[3, 4, 5], [5]]
    assert blocked(2) == [[4, 5], [5]]         # "3 4" and "3 5" were seen; the last token is 3
    assert blocked(3) == [[], [5]]             # "5 3" was never followed by anything but now
    assert blocked(6) == [[], []]
    assert repeated_ngram_mask(history[:, :0], 2, 7).sum() == 0


def test_length_penalty_formulas():
    scores = torch.tensor([-3.0, -3.0, -2.0])
    lengths = torch.tensor([4, 1, 0])          # 0: no hypothesis, counts as 1
    torch.testing.assert_close(length_normalized(scores, lengths, ("wu", 0.6)),
                               torch.tensor([-3.0 / 1.5 ** 0.6, -3.0, -2.0]))   # (5 + 4) / 6 = 1.5
    torch.testing.assert_close(length_normalized(scores, lengths, 0.5),
                               torch.tensor([-1.5, -3.0, -2.0]))
    torch.testing.assert_close(length_normalized(scores, lengths, 0), scores)


def test_coverage_penalty_formula():
    attention = torch.tensor([[[0.5, 0.5, 0.0], [0.9, 0.1, 0.0]],     # source length 2
                              [[0.2, 0.3, 0.5], [0.0, 0.0, 0.0]]])    # length 3, one token
    cp = coverage_penalty(attention, torch.tensor([2, 3]), 0.2)
    # coverage 1.4 -> 1 (log 0) and 0.6; then 0.2, 0.3, 0.5
    torch.testing.assert_close(cp, torch.tensor([0.2 * math.log(0.6),
                                                 0.2 * (math.log(0.2) + math.log(0.3) + math.log(0.5))]))


# ---- properties of generate() on a real model ---------------------------------------------------
def model(attention="general", tgt_vocab=7, seed=0):
    torch.manual_seed(seed)
    m = Seq2Seq(9, tgt_vocab, embed_size=8, hidden_size=16, attention=attention).double()
    with torch.no_grad():
        m.decoder.out.weight.mul_(4)
    return m.eval()


def sources(lengths=(5, 2, 4)):
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor(lengths)
    src = torch.randint(3, 9, (len(lengths), int(lengths.max())), generator=g)
    src[torch.arange(src.shape[1])[None] >= lengths[:, None]] = PAD
    return src, lengths


def hypotheses(gen):
    return [gen.tokens[b, i, :int(gen.lengths[b, i])].tolist()
            for b, i in itertools.product(range(gen.tokens.shape[0]), range(gen.tokens.shape[1]))]


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_no_repeated_ngram_is_ever_emitted(strategy):
    m = model()
    with torch.no_grad():   # a model that loves token 3 and repeats it when left alone
        m.decoder.out.bias[3] = 6.0
        m.decoder.out.bias[EOS] = -4.0
    src, lengths = sources()
    kw = dict(max_len=12, beam_size=4, n_best=1 if strategy == "greedy" else 4,
              generator=torch.Generator().manual_seed(0))
    free = hypotheses(m.generate(src, lengths, strategy, **kw))
    assert any(repeats_ngram(h[:k], 2) for h in free for k in range(len(h) + 1))
    for n in (1, 2, 3):
        gen = m.generate(src, lengths, strategy, no_repeat_ngram_size=n, **kw)
        for h in hypotheses(gen):
            assert h and h[-1] == EOS
            assert not any(repeats_ngram(h[:k], n) for k in range(len(h) + 1)), (n, h)


def test_repetition_penalty_scores_are_the_penalized_log_probs():
    m = model()
    src, lengths = sources()
    p, T = 1.7, 0.9
    gen = m.generate(src, lengths, "beam", n_best=3, max_len=7, repetition_penalty=p, temperature=T)
    for i in range(3):
        tgt = gen.tokens[:, i]
        logits = m(src, lengths, tgt).logits
        for b in range(3):
            total = 0.0
            for t in range(int(gen.lengths[b, i])):
                row = logits[b, t].tolist()
                for tok in set(tgt[b, :t].tolist()):
                    row[tok] = row[tok] / p if row[tok] > 0 else row[tok] * p
                total += torch.log_softmax(torch.tensor(row, dtype=torch.float64) / T, 0)[tgt[b, t]].item()
            assert gen.scores[b, i].item() == pytest.approx(total, rel=1e-10)
    plain = m.generate(src, lengths, "beam", n_best=3, max_len=7, temperature=T)
    assert not torch.equal(plain.scores, gen.scores)


def test_wu_length_penalty_and_coverage_penalty_in_generate():
    m = model()
    src, lengths = sources()
    gen = m.generate(src, lengths, "beam", beam_size=5, n_best=4, max_len=8,
                     length_penalty=("wu", 0.6), coverage_penalty=0.4)
    valid = torch.arange(src.shape[1])[None, None] < lengths[:, None, None]
    coverage = gen.attention.sum(2).clamp(max=1).log().masked_fill(~valid, 0).sum(-1)
    lp = ((5 + gen.lengths.double()) / 6) ** 0.6
    torch.testing.assert_close(gen.normalized_scores, gen.scores / lp + 0.4 * coverage)
    assert (gen.normalized_scores[:, :-1] >= gen.normalized_scores[:, 1:]).all()
    wu = m.generate(src, lengths, "greedy", max_len=8, length_penalty=("wu", 0.6))
    torch.testing.assert_close(wu.normalized_scores,
                               wu.scores / ((5 + wu.lengths.double()) / 6) ** 0.6)


def test_num_return_sequences_returns_that_many_samples():
    m = model(tgt_vocab=12)
    src, lengths = sources()
    for n in (1, 3, 7):
        gen = m.generate(src, lengths, "sample", num_return_sequences=n,
                         generator=torch.Generator().manual_seed(2))
        assert gen.tokens.shape[:2] == (3, n) and gen.lengths.shape == gen.scores.shape == (3, n)
        assert (gen.lengths > 0).all()
        same = m.generate(src, lengths, "sample", n_best=n, generator=torch.Generator().manual_seed(2))
        assert torch.equal(gen.tokens, same.tokens)       # the same option under its other name
    assert len({tuple(t) for t in gen.tokens[0].tolist()}) > 1
    beam = m.generate(src, lengths, "beam", num_return_sequences=3)
    assert beam.tokens.shape[:2] == (3, 3)


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_max_len_a_times_source_length_plus_b_per_row(strategy):
    m = model()
    with torch.no_grad():
        m.decoder.out.bias[EOS] = -60.0    # EOS only where forced
    src, lengths = sources((5, 2, 4))
    gen = m.generate(src, lengths, strategy, max_len=(1.5, 0.5), n_best=1 if strategy == "greedy" else 2,
                     generator=torch.Generator().manual_seed(0))
    # floor(1.5 * 5 + 0.5) = 8, floor(3.5) = 3, floor(6.5) = 6 tokens before EOS
    assert (gen.lengths - 1).tolist() == [[k] * gen.lengths.shape[1] for k in (8, 3, 6)]
    with torch.no_grad():
        m.decoder.out.bias[EOS] = 0.0
    gen = m.generate(src, lengths, strategy, max_len=(0.5, 1), n_best=1 if strategy == "greedy" else 2,
                     generator=torch.Generator().manual_seed(0))
    assert (gen.lengths - 1 <= torch.tensor([3, 2, 3])[:, None]).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(no_repeat_ngram_size=-1), r"no_repeat_ngram_size: expected an int >= 0 \(0: none\), got -1"),
    (dict(no_repeat_ngram_size=1.5), r"no_repeat_ngram_size: .* got 1.5"),
    (dict(repetition_penalty=0.0), r"repetition_penalty: expected a number > 0 \(1: none\), got 0.0"),
    (dict(repetition_penalty=float("nan")), r"repetition_penalty: .* got nan"),
    (dict(length_penalty="wu"), r"length_penalty: expected a number or \('wu', alpha\) .* got 'wu'"),
    (dict(length_penalty=("gnmt", 0.6)), r"length_penalty: .* got \('gnmt', 0.6\)"),
    (dict(length_penalty=("wu", "0.6")), r"length_penalty: .* got \('wu', '0.6'\)"),
    (dict(strategy="beam", coverage_penalty=-0.1), r"coverage_penalty: expected a number >= 0 \(0: none\)"),
    (dict(strategy="greedy", coverage_penalty=0.2),
     r"coverage_penalty: expected 0 for strategy 'greedy' \(it applies to 'beam'\), got 0.2"),
    (dict(strategy="sample", n_best=2, num_return_sequences=3),
     r"num_return_sequences: expected n_best left at 1 or equal to it .* got 3 with n_best=2"),
    (dict(strategy="greedy", num_return_sequences=2), r"n_best: expected 1 for strategy 'greedy'"),
    (dict(max_len=(1.5,)), r"max_len: expected None, an int, a tensor or a pair \(a, b\) of numbers, got \(1.5,\)"),
    (dict(max_len=(1, "2")), r"max_len: .* got \(1, '2'\)"),
    (dict(max_len=(-1, 2)), r"max_len: expected >= 0, got -3"),
    (dict(max_len=(0.1, 0), min_len=1), r"max_len: expected >= min_len \(1\) for every source, got 0"),
])
def test_bad_option_values_name_the_argument(kwargs, match):
    m = model()
    src, lengths = sources()
    with pytest.raises(ValueError, match=match):
        m.generate(src, lengths, **kwargs)


def test_coverage_penalty_needs_attention():
    m = model(attention=None)
    src, lengths = sources()
    with pytest.raises(ValueError, match=r"coverage_penalty: expected 0 for a model without attention"):
        m.generate(src, lengths, "beam", coverage_penalty=0.2)
