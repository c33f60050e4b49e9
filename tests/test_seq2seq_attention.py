"""Attention: masking, shapes, and values and gradients against a direct float64 reference."""
import pytest
import torch

from fused_rnn.seq2seq import SCORES, Attention, lengths_to_mask

B, T, S, HQ, HK = 3, 4, 6, 5, 7


def make(score, hq=HQ, hk=HK, seed=0):
    torch.manual_seed(seed)
    if score == "dot":
        hk = hq
    att = Attention(hq, hk, score, attn_size=8).double()
    with torch.no_grad():   # fresh, non-trivial parameters
        for p in att.parameters():
            p.uniform_(-0.8, 0.8)
    query = torch.randn(B, T, hq, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(B, S, hk, dtype=torch.float64, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([S, 2, 5]), S)
    return att, query, keys, mask


def reference(att, query, keys, mask):
    """Score by score, straight from the formulas (one query row and one key at a time)."""
    scores = torch.empty(B, query.shape[1], S, dtype=query.dtype)
    rows = []
    for b in range(B):
        for t in range(query.shape[1]):
            q = query[b, t]
            row = []
            for s in range(S):
                k = keys[b, s]
                if att.score_name == "dot":
                    e = q @ k
                elif att.score_name == "general":
                    e = q @ (att.key_proj.weight @ k)
                elif att.score_name == "concat":
                    e = att.v.weight[0] @ torch.tanh(att.weight @ torch.cat([q, k]))
                else:
                    e = att.v.weight[0] @ torch.tanh(att.query_proj.weight @ q
                                                     + att.key_proj.weight @ k + att.key_proj.bias)
                row.append(e if mask[b, s] else torch.tensor(float("-inf"), dtype=q.dtype))
            rows.append(torch.stack(row))
    scores = torch.stack(rows).view(B, query.shape[1], S)
    weights = torch.softmax(scores, -1)
    context = torch.einsum("bts,bsh->bth", weights, keys)
    return context, weights


@pytest.mark.parametrize("score", SCORES)
def test_rows_sum_to_one_and_pads_get_exactly_zero(score):
    att, query, keys, mask = make(score)
    _, w = att(query, keys, mask)
    assert w.shape == (B, T, S)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, T, dtype=w.dtype))
    pads = ~mask[:, None, :].expand_as(w)
    assert (w[pads] == 0).all()
    assert (w[~pads] > 0).all()


@pytest.mark.parametrize("score", SCORES)
def test_values_and_gradients_match_reference(score):
    att, query, keys, mask = make(score)
    ctx, w = att(query, keys, mask)
    ctx_r, w_r = reference(att, query, keys, mask)
    torch.testing.assert_close(ctx, ctx_r)
    torch.testing.assert_close(w, w_r)
    g_ctx, g_w = torch.randn_like(ctx), torch.randn_like(w)   # the same cotangents for both
    inputs = [query, keys] + list(att.parameters())
    grads = torch.autograd.grad((ctx * g_ctx).sum() + (w * g_w).sum(), inputs)
    grads_r = torch.autograd.grad((ctx_r * g_ctx).sum() + (w_r * g_w).sum(), inputs)
    for g, g_r in zip(grads, grads_r):
        torch.testing.assert_close(g, g_r)


@pytest.mark.parametrize("score", SCORES)
def test_gradcheck(score):
    att, query, keys, mask = make(score)
    torch.autograd.gradcheck(lambda q, k: att(q, k, mask), (query, keys))


@pytest.mark.parametrize("score", SCORES)
def test_one_step_query_equals_all_steps(score):
    att, query, keys, mask = make(score)
    ctx, w = att(query, keys, mask)
    for t in range(T):
        c1, w1 = att(query[:, t], keys, mask)
        assert c1.shape == (B, keys.shape[-1]) and w1.shape == (B, S)
        torch.testing.assert_close(c1, ctx[:, t])
        torch.testing.assert_close(w1, w[:, t])


@pytest.mark.parametrize("score", SCORES)
def test_padded_keys_do_not_matter(score):
    att, query, keys, mask = make(score)
    ctx, w = att(query, keys, mask)
    other = keys.detach().clone()
    other[~mask] = torch.randn(int((~mask).sum()), other.shape[-1], dtype=other.dtype) * 100
    ctx2, w2 = att(query, other, mask)
    torch.testing.assert_close(ctx, ctx2)
    torch.testing.assert_close(w, w2)


def test_projected_keys_reuse_gives_same_result():
    att, query, keys, mask = make("additive")
    proj = att.project_keys(keys)
    torch.testing.assert_close(att(query, keys, mask, projected_keys=proj)[0],
                               att(query, keys, mask)[0])


def test_fully_padded_row_is_an_error_not_nan():
    att, query, keys, mask = make("general")
    mask = mask.clone()
    mask[1] = False
    with pytest.raises(ValueError,
                       match=r"mask: expected at least one real .* got fully padded row.*\[1\]"):
        att(query, keys, mask)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"score: expected one of .*got 'cosine'"):
        Attention(4, 4, "cosine")
    with pytest.raises(ValueError, match=r"key_size: .*'dot'.*got 6"):
        Attention(4, 6, "dot")
    att, query, keys, mask = make("general")
    with pytest.raises(ValueError, match=r"mask: expected shape"):
        att(query, keys, mask[:, :3])
    with pytest.raises(ValueError, match=r"mask: expected a bool tensor"):
        att(query, keys, mask.long())
    with pytest.raises(ValueError, match=r"query: expected last dim"):
        att(query[..., :2], keys, mask)
