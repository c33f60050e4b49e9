"""Encoder, decoder paths, and the decoding strategies of Seq2Seq.generate."""
import itertools

import pytest
import torch

from fused_rnn.seq2seq import Seq2Seq
from fused_rnn.seq2seq.search import StepRules

PAD, BOS, EOS = 0, 1, 2
SRC_V = 9


def model(tgt_vocab=7, cell="lstm", attention="general", style="luong", input_feeding=False,
          layers=1, bidirectional=True, seed=0, hidden=16):
    torch.manual_seed(seed)
    m = Seq2Seq(SRC_V, tgt_vocab, embed_size=8, hidden_size=hidden, num_layers=layers, cell=cell,
                bidirectional=bidirectional, attention=attention, style=style,
                input_feeding=input_feeding).double()
    with torch.no_grad():   # spread the output distribution so hypotheses differ clearly
        m.decoder.out.weight.mul_(4)
    return m.eval()


def sources(lengths=(5, 2, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    src = torch.randint(3, SRC_V, (len(lengths), int(lengths.max())), generator=g)
    src[torch.arange(src.shape[1])[None] >= lengths[:, None]] = PAD
    return src, lengths


def targets(batch, length, vocab, seed=2):
    g = torch.Generator().manual_seed(seed)
    tgt = torch.randint(3, vocab, (batch, length), generator=g)
    tgt[:, -1] = EOS
    return tgt


def check_well_formed(gen, max_len=None, min_len=0):
    """Every hypothesis: tokens up to one EOS at length-1, PAD after it, zero attention after."""
    B, N, L = gen.tokens.shape
    for b, n in itertools.product(range(B), range(N)):
        length = int(gen.lengths[b, n])
        toks = gen.tokens[b, n]
        assert length >= 1
        assert toks[length - 1] == EOS
        assert (toks[:length - 1] != EOS).all() and (toks[:length - 1] > EOS).all()
        assert (toks[length:] == PAD).all()
        if gen.attention is not None:
            assert (gen.attention[b, n, length:] == 0).all()
            torch.testing.assert_close(gen.attention[b, n, :length].sum(-1),
                                       torch.ones(length, dtype=gen.attention.dtype))
        assert length - 1 >= min_len
        if max_len is not None:
            assert length - 1 <= max_len


# ---- encoder --------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_encoder_padding_costs_nothing_and_changes_nothing(cell):
    m = model(cell=cell, layers=2)
    src, lengths = sources((6, 3, 1, 4))
    enc = m.encoder(src, lengths)
    assert enc.outputs.shape == (4, 6, 2 * 16)
    assert (enc.outputs[~enc.mask] == 0).all()
    for i in range(4):
        n = int(lengths[i])
        alone = m.encoder(src[i:i + 1, :n], lengths[i:i + 1])
        torch.testing.assert_close(enc.outputs[i, :n], alone.outputs[0])
        h, h_alone = (enc.state[0], alone.state[0]) if cell == "lstm" else (enc.state, alone.state)
        assert h.shape == (2, 4, 16)
        torch.testing.assert_close(h[:, i], h_alone[:, 0])


# ---- the two decoder paths --------------------------------------------------------------------
@pytest.mark.parametrize("cell,attention,layers", [("lstm", "general", 1), ("gru", "concat", 2),
                                                   ("lstm", None, 2), ("gru", "dot", 1)])
def test_fused_teacher_forcing_equals_stepwise(cell, attention, layers):
    m = model(cell=cell, attention=attention, layers=layers, bidirectional=attention != "dot")
    m.train()
    assert m.decoder.fused_path
    src, lengths = sources()
    tgt = targets(3, 5, 7)
    fused = m(src, lengths, tgt)
    steps = m(src, lengths, tgt, stepwise=True)
    torch.testing.assert_close(fused.logits, steps.logits)
    if attention is None:
        assert fused.attention is None and steps.attention is None
    else:
        torch.testing.assert_close(fused.attention, steps.attention)
    params = [p for p in m.parameters()]
    g1 = torch.autograd.grad(m.loss(src, lengths, tgt), params, allow_unused=True)
    loss2 = torch.nn.functional.cross_entropy(steps.logits.reshape(-1, 7), tgt.reshape(-1),
                                              ignore_index=PAD)
    g2 = torch.autograd.grad(loss2, params, allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("style,feed", [("luong", True), ("bahdanau", False)])
def test_stepwise_decoders_give_shapes_and_normalised_attention(style, feed):
    m = model(style=style, input_feeding=feed, attention="additive")
    assert not m.decoder.fused_path
    src, lengths = sources()
    out = m(src, lengths, targets(3, 5, 7))
    assert out.logits.shape == (3, 5, 7) and out.attention.shape == (3, 5, 5)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 5, dtype=torch.float64))
    assert (out.attention[1, :, 2:] == 0).all()


def test_teacher_forcing_ratio():
    m = model()
    src, lengths = sources()
    tgt = targets(3, 6, 7)
    full = m(src, lengths, tgt).logits
    stepwise = m(src, lengths, tgt, teacher_forcing=1.0, stepwise=True).logits
    torch.testing.assert_close(stepwise, full)
    a = m(src, lengths, tgt, teacher_forcing=0.5, generator=torch.Generator().manual_seed(3)).logits
    b = m(src, lengths, tgt, teacher_forcing=0.5, generator=torch.Generator().manual_seed(3)).logits
    torch.testing.assert_close(a, b)
    # ratio 0: the decoder reads its own argmax, which is what greedy decoding (unconstrained) does
    own = m(src, lengths, tgt, teacher_forcing=0.0).logits
    torch.testing.assert_close(own[:, 0], full[:, 0])
    inputs = torch.cat([torch.full((3, 1), BOS), own.argmax(-1)[:, :-1]], 1)
    state, memory = m.decoder.start(m.encoder(src, lengths))
    torch.testing.assert_close(m.decoder(inputs, state, memory)[0], own)


# ---- generation -------------------------------------------------------------------------------
def test_beam_size_one_equals_greedy():
    for kw in (dict(), dict(cell="gru", style="bahdanau", attention="additive"),
               dict(input_feeding=True, attention="concat")):
        m = model(**kw)
        src, lengths = sources()
        greedy = m.generate(src, lengths, "greedy", max_len=8, length_penalty=0)
        beam = m.generate(src, lengths, "beam", beam_size=1, max_len=8, length_penalty=0)
        assert torch.equal(greedy.tokens, beam.tokens)
        assert torch.equal(greedy.lengths, beam.lengths)
        torch.testing.assert_close(greedy.scores, beam.scores)
        torch.testing.assert_close(greedy.attention, beam.attention)


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_score_is_sum_of_token_log_probs_and_attention_matches(strategy):
    m = model()
    src, lengths = sources()
    gen = m.generate(src, lengths, strategy, beam_size=4, n_best=1 if strategy == "greedy" else 3,
                     max_len=6, length_penalty=0.7, generator=torch.Generator().manual_seed(0))
    check_well_formed(gen, max_len=6)
    for n in range(gen.tokens.shape[1]):
        tgt = gen.tokens[:, n]
        torch.testing.assert_close(gen.scores[:, n], m.log_prob(src, lengths, tgt))
        torch.testing.assert_close(gen.normalized_scores[:, n],
                                   gen.scores[:, n] / gen.lengths[:, n].double() ** 0.7)
        attn = m(src, lengths, tgt).attention
        for b in range(3):
            k = int(gen.lengths[b, n])
            torch.testing.assert_close(gen.attention[b, n, :k], attn[b, :k])
    if strategy != "greedy":
        assert (gen.normalized_scores[:, :-1] >= gen.normalized_scores[:, 1:]).all()


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_eos_blocked_below_min_len_and_forced_at_max_len(strategy):
    m = model()
    src, lengths = sources()
    kw = dict(beam_size=3, n_best=2 if strategy != "greedy" else 1, length_penalty=0,
              generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.decoder.out.bias[EOS] = 60.0          # EOS wins wherever it is allowed
    gen = m.generate(src, lengths, strategy, min_len=3, max_len=9, **kw)
    check_well_formed(gen, max_len=9, min_len=3)
    assert (gen.lengths[:, 0] == 4).all()
    with torch.no_grad():
        m.decoder.out.bias[EOS] = -60.0         # EOS loses wherever it is not forced
    gen = m.generate(src, lengths, strategy, max_len=torch.tensor([2, 5, 3]), **kw)
    check_well_formed(gen)
    assert gen.lengths.tolist() == [[3] * gen.lengths.shape[1], [6] * gen.lengths.shape[1],
                                    [4] * gen.lengths.shape[1]]
    torch.testing.assert_close(gen.scores[:, 0], m.log_prob(src, lengths, gen.tokens[:, 0]))


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batched_generation_equals_one_by_one(strategy):
    m = model(cell="gru", layers=2)
    src, lengths = sources((5, 2, 4, 1))
    n_best = 1 if strategy == "greedy" else 2
    batched = m.generate(src, lengths, strategy, beam_size=3, n_best=n_best)
    for i in range(4):
        n = int(lengths[i])
        one = m.generate(src[i:i + 1, :n], lengths[i:i + 1], strategy, beam_size=3, n_best=n_best)
        L = one.tokens.shape[-1]
        assert torch.equal(batched.tokens[i, :, :L], one.tokens[0])
        assert (batched.tokens[i, :, L:] == PAD).all()
        assert torch.equal(batched.lengths[i], one.lengths[0])
        torch.testing.assert_close(batched.scores[i], one.scores[0])
        torch.testing.assert_close(batched.attention[i, :, :L, :n], one.attention[0])


@pytest.mark.parametrize("length_penalty,min_len", [(0.0, 0), (1.0, 0), (0.6, 1)])
def test_wide_beam_equals_brute_force(length_penalty, min_len):
    """Content tokens {3, 4}, at most 3 before EOS: 15 hypotheses; a beam of 32 holds them all."""
    m = model(tgt_vocab=5, attention="concat")
    src, lengths = sources((4, 2))
    max_len, n_best = 3, 6
    gen = m.generate(src, lengths, "beam", beam_size=32, n_best=n_best, max_len=max_len,
                     min_len=min_len, length_penalty=length_penalty)
    hyps = [list(p) + [EOS] for n in range(min_len, max_len + 1)
            for p in itertools.product([3, 4], repeat=n)]
    tgt = torch.full((len(hyps), max_len + 1), PAD)
    for i, h in enumerate(hyps):
        tgt[i, :len(h)] = torch.tensor(h)
    hyp_len = torch.tensor([len(h) for h in hyps], dtype=torch.float64)
    for b in range(2):
        rep = src[b:b + 1].expand(len(hyps), -1)
        scores = m.log_prob(rep, lengths[b:b + 1].expand(len(hyps)), tgt)
        norm = scores / hyp_len ** length_penalty
        best = norm.argsort(descending=True)[:n_best]
        L = gen.tokens.shape[-1]
        assert torch.equal(gen.tokens[b], tgt[best, :L])
        torch.testing.assert_close(gen.scores[b], scores[best])
        torch.testing.assert_close(gen.normalized_scores[b], norm[best])


def test_sampling_is_reproducible_with_a_seed():
    m = model(tgt_vocab=12)
    src, lengths = sources()

    def draw(seed):
        return m.generate(src, lengths, "sample", n_best=5, temperature=1.3,
                          generator=torch.Generator().manual_seed(seed))
    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.scores, b.scores)
    assert not torch.equal(a.tokens, c.tokens)
    torch.manual_seed(5)
    d = m.generate(src, lengths, "sample", top_p=0.9)
    torch.manual_seed(5)
    e = m.generate(src, lengths, "sample", top_p=0.9)
    assert torch.equal(d.tokens, e.tokens)


def _step_log_probs(m, src, lengths, tgt, temperature, max_len):
    """The constrained step distributions a decode of ``tgt`` saw, by teacher forcing."""
    logits = m(src, lengths, tgt).logits
    rules = StepRules(eos_id=EOS, blocked_ids=(PAD, BOS), temperature=temperature)
    return [rules.log_probs(logits[:, t], tgt[:, :t], max_len) for t in range(tgt.shape[1])]


def test_top_k_and_top_p_stay_inside_their_sets():
    m = model(tgt_vocab=12)
    src, lengths = sources()
    max_len = torch.full((3,), 6)
    for kw in (dict(top_k=3), dict(top_p=0.6), dict(top_k=1)):
        gen = m.generate(src, lengths, "sample", n_best=25, max_len=6, temperature=1.7,
                         generator=torch.Generator().manual_seed(0), **kw)
        check_well_formed(gen, max_len=6)
        for n in range(25):
            tgt = gen.tokens[:, n]
            steps = _step_log_probs(m, src, lengths, tgt, 1.7, max_len)
            picked = torch.stack([steps[t].gather(1, tgt[:, t:t + 1])[:, 0]
                                  for t in range(tgt.shape[1])], 1)
            live = tgt != PAD
            # the score is the sum of the tempered log-probs of the emitted tokens
            torch.testing.assert_close(gen.scores[:, n], picked.masked_fill(~live, 0).sum(1))
            for t in range(tgt.shape[1]):
                logp, tok = steps[t], tgt[:, t]
                for b in range(3):
                    if not live[b, t]:
                        continue
                    if "top_k" in kw:
                        assert tok[b] in logp[b].topk(kw["top_k"]).indices
                    else:
                        p = logp[b].exp()
                        assert p[p > p[tok[b]]].sum() < kw["top_p"]
    greedy = m.generate(src, lengths, "greedy", max_len=6)
    top1 = m.generate(src, lengths, "sample", top_k=1, max_len=6, n_best=2)
    assert torch.equal(top1.tokens[:, 0], greedy.tokens[:, 0])
    assert torch.equal(top1.tokens[:, 1], greedy.tokens[:, 0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(strategy="topk"), r"strategy: expected one of .* got 'topk'"),
    (dict(strategy="beam", beam_size=0), r"beam_size: expected an int >= 1, got 0"),
    (dict(strategy="beam", beam_size=2, n_best=3),
     r"n_best: expected at most beam_size \(2\), got 3"),
    (dict(strategy="sample", top_p=0.0), r"top_p: expected None or a number in \(0, 1\], got 0.0"),
    (dict(strategy="sample", top_p=1.5), r"top_p: .* got 1.5"),
    (dict(strategy="sample", top_k=0), r"top_k: expected None or an int >= 1, got 0"),
    (dict(strategy="sample", temperature=0.0), r"temperature: expected a number > 0, got 0.0"),
    (dict(strategy="greedy", temperature=-1), r"temperature: .* got -1"),
    (dict(strategy="greedy", top_k=5), r"top_k/top_p: expected None for strategy 'greedy'"),
    (dict(strategy="greedy", n_best=2), r"n_best: expected 1 for strategy 'greedy'"),
    (dict(strategy="greedy", min_len=5, max_len=3), r"max_len: expected >= min_len \(5\)"),
])
def test_bad_generate_arguments(kwargs, match):
    m = model()
    src, lengths = sources()
    with pytest.raises(ValueError, match=match):
        m.generate(src, lengths, **kwargs)


def test_bad_model_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"cell: expected one of \('lstm', 'gru'\), got 'rnn'"):
        Seq2Seq(5, 5, 4, 4, cell="rnn")
    with pytest.raises(ValueError, match=r"style: expected one of .* got 'vaswani'"):
        Seq2Seq(5, 5, 4, 4, style="vaswani")
    with pytest.raises(ValueError, match=r"attention: expected one of .* got 'cos'"):
        Seq2Seq(5, 5, 4, 4, attention="cos")
    with pytest.raises(ValueError, match=r"input_feeding: expected False unless style='luong'"):
        Seq2Seq(5, 5, 4, 4, style="bahdanau", input_feeding=True)
    m = model()
    src, lengths = sources()
    with pytest.raises(ValueError, match=r"src_lengths: expected every length in \[1, 5\] "
                                         r"\(a length-0 source is a fully padded row\), "
                                         r"got .*\[0, 5\]"):
        m.generate(src, torch.tensor([5, 0, 4]))
    with pytest.raises(ValueError, match=r"src_lengths: .* got lengths in \[0, 5\]"):
        m(src, torch.tensor([5, 0, 4]), targets(3, 4, 7))
    with pytest.raises(ValueError, match=r"teacher_forcing: expected a ratio in \[0, 1\], got 1.5"):
        m(src, lengths, targets(3, 4, 7), teacher_forcing=1.5)
