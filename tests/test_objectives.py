"""The objectives: weights with known closed forms, normalisers on hand-built tensors, and the collapse
(GRPO's gradient is a weighted-NLL gradient) proved with autograd, including where it stops holding."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.objectives import (
    ALGORITHMS,
    FOLLOW_UPS,
    NORMALIZERS,
    aggregate,
    algorithm_table,
    get_algorithm,
    policy_loss,
    sample_weights,
    weighted_nll,
    zero_spread_groups,
)

F64 = torch.float64


# --- a tiny policy in float64 ----------------------------------------------------------------------


class BigramPolicy(torch.nn.Module):
    """π(o_t | o_{t-1}): an embedding and a linear head, enough parameters to make the gradient a real check."""

    def __init__(self, vocab: int = 9, dim: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, dim).to(F64)
        self.head = torch.nn.Linear(dim, vocab).to(F64)

    def per_token_logps(self, completion_ids):  # (N, T) -> (N, T)
        prev = torch.nn.functional.pad(completion_ids[:, :-1], (1, 0))  # token 0 plays the prompt
        logits = self.head(torch.tanh(self.embed(prev)))  # (N, T, V)
        return torch.log_softmax(logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def sampled_batch(G=4, B=3, T=7, vocab=9, seed=0):
    """Binary-ish rewards with a mixed group of each kind plus an all-correct and an all-wrong group."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.tensor([1.0, 0.0, 0.1, 0.0,    # 1 of 4 correct
                            1.0, 1.0, 1.0, 0.1,    # 3 of 4 correct
                            1.0, 1.0, 1.0, 1.0,    # all correct: filtered out by group-relative rules
                            0.0, 0.1, 0.0, 0.0][: G * (B + 1)], dtype=F64)  # all wrong
    N = rewards.numel()
    ids = torch.randint(0, vocab, (N, T), generator=gen)
    lengths = torch.randint(1, T + 1, (N,), generator=gen)
    mask = (torch.arange(T) < lengths.unsqueeze(1)).long()  # (N, T)
    return rewards, ids, mask


def grads(loss, module):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(module.parameters()))])


# --- 1. the collapse ---------------------------------------------------------------------------------


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_on_policy_grpo_gradient_is_the_weighted_nll_gradient(normalizer):
    rewards, ids, mask = sampled_batch()
    policy = BigramPolicy()
    adv = sample_weights(rewards, 4, algo="grpo")
    logps = policy.per_token_logps(ids)
    pg, stats = policy_loss(logps, logps.detach(), adv, mask, beta=0.0, normalizer=normalizer,
                            max_completion_length=8)
    sft = weighted_nll(policy.per_token_logps(ids), adv, mask, normalizer=normalizer, max_completion_length=8)
    g_pg, g_sft = grads(pg, policy), grads(sft, policy)
    assert stats["ratio_mean"] == 1.0 and stats["clip_ratio/region_mean"] == 0.0
    assert g_sft.abs().max() > 1e-3
    torch.testing.assert_close(g_pg, g_sft, rtol=1e-12, atol=1e-14)


def test_fisft_pm_collapses_the_same_way_and_equals_grpo_with_grpo_weights():
    rewards, ids, mask = sampled_batch()
    policy = BigramPolicy(seed=1)
    # F-ISFT± as a policy loss and as weighted NLL: one gradient
    w_pm = sample_weights(rewards, 4, algo="fisft_pm", lam=0.7)
    logps = policy.per_token_logps(ids)
    g_pm_pg = grads(policy_loss(logps, None, w_pm, mask)[0], policy)
    g_pm_sft = grads(weighted_nll(policy.per_token_logps(ids), w_pm, mask), policy)
    torch.testing.assert_close(g_pm_pg, g_pm_sft, rtol=1e-12, atol=1e-14)
    # with GRPO's advantages as its weights, the F-ISFT± (SFT-form) update *is* the GRPO update
    adv = sample_weights(rewards, 4, algo="grpo")
    g_grpo = grads(policy_loss(policy.per_token_logps(ids), None, adv, mask)[0], policy)
    g_sft_grpo_weights = grads(weighted_nll(policy.per_token_logps(ids), adv, mask), policy)
    torch.testing.assert_close(g_grpo, g_sft_grpo_weights, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(g_grpo, g_pm_sft)  # ... and it is the weights, not the form, that differ


@pytest.mark.parametrize("c", [1, 2, 3])
def test_binary_grpo_weights_are_fisft_pm_with_a_difficulty_lambda(c):
    """Per group: Â = √((1−p)/p) · w_pm with λ = p/(1−p). GRPO is F-ISFT± re-weighted by difficulty."""
    G = 4
    p = c / G
    rewards = torch.tensor([1.0] * c + [0.0] * (G - c), dtype=F64)
    grpo = sample_weights(rewards, G, algo="grpo", std="population", eps_std=0.0)
    pm = sample_weights(rewards, G, algo="fisft_pm", lam=p / (1 - p))
    torch.testing.assert_close(grpo, math.sqrt((1 - p) / p) * pm)


def test_off_policy_clipping_breaks_the_collapse():
    rewards, ids, mask = sampled_batch()
    policy = BigramPolicy(seed=2)
    adv = sample_weights(rewards, 4, algo="grpo")
    logps = policy.per_token_logps(ids)
    old = logps.detach() + 0.4 * torch.randn(logps.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    pg, stats = policy_loss(logps, old, adv, mask)
    g_pg = grads(pg, policy)
    g_sft = grads(weighted_nll(policy.per_token_logps(ids), adv, mask), policy)
    assert stats["clip_ratio/region_mean"] > 0.1 and stats["ratio_mean"] != 1.0
    assert (g_pg - g_sft).abs().max() > 1e-3


def test_kl_penalty_breaks_the_collapse():
    rewards, ids, mask = sampled_batch()
    policy, reference = BigramPolicy(seed=4), BigramPolicy(seed=5)
    adv = sample_weights(rewards, 4, algo="grpo")
    with torch.no_grad():
        ref = reference.per_token_logps(ids)
    g_sft = grads(weighted_nll(policy.per_token_logps(ids), adv, mask), policy)
    pg0, _ = policy_loss(policy.per_token_logps(ids), None, adv, mask, ref_per_token_logps=ref, beta=0.0)
    pg1, stats = policy_loss(policy.per_token_logps(ids), None, adv, mask, ref_per_token_logps=ref, beta=0.1)
    torch.testing.assert_close(grads(pg0, policy), g_sft, rtol=1e-12, atol=1e-14)  # measured, not applied
    assert stats["kl"] > 0.01
    assert (grads(pg1, policy) - g_sft).abs().max() > 1e-3


# --- 2. weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize("G", [2, 3, 4, 8, 16])
def test_binary_rewards_give_the_closed_forms(G):
    for c in range(1, G):
        p = c / G
        rewards = torch.tensor([1.0] * c + [0.0] * (G - c), dtype=F64)
        plus, minus = math.sqrt((1 - p) / p), -math.sqrt(p / (1 - p))
        expected = torch.tensor([plus] * c + [minus] * (G - c), dtype=F64)
        exact = sample_weights(rewards, G, algo="grpo", std="population", eps_std=0.0)
        torch.testing.assert_close(exact, expected, rtol=1e-12, atol=1e-12)
        # TRL's eps shrinks every weight by std/(std + eps), std = √(p(1−p)): under 1e-4/std relative
        with_eps = sample_weights(rewards, G, algo="grpo", std="population")
        shrink = math.sqrt(p * (1 - p)) / (math.sqrt(p * (1 - p)) + 1e-4)
        torch.testing.assert_close(with_eps, expected * shrink, rtol=1e-12, atol=1e-12)
        # the default (sample std, as TRL) is the same up to √((G−1)/G)
        sample = sample_weights(rewards, G, algo="grpo", eps_std=0.0)
        torch.testing.assert_close(sample, expected * math.sqrt((G - 1) / G), rtol=1e-12, atol=1e-12)
        # Dr. GRPO: 1 − p for correct, −p for wrong
        dr = sample_weights(rewards, G, algo="dr_grpo")
        torch.testing.assert_close(dr, torch.tensor([1 - p] * c + [-p] * (G - c), dtype=F64))


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "fisft_pm"])
@pytest.mark.parametrize("value", [0.0, 0.1, 1.0])
def test_zero_spread_groups_get_exactly_zero(algo, value):
    rewards = torch.tensor([value] * 5 + [1.0, 0.0, 0.0, 0.1, 1.0], dtype=F64)
    assert zero_spread_groups(rewards, 5).tolist() == [True, False]
    w = sample_weights(rewards, 5, algo=algo, eps_std=0.0)  # eps 0: the 0/0 must not leak a NaN
    assert torch.equal(w[:5], torch.zeros(5, dtype=F64))
    assert (w[5:] != 0).any()


def test_fisft_plus_keeps_correct_samples_in_any_group():
    rewards = [1.0, 1.0, 1.0,  0.0, 0.1, 0.0,  1.0, 0.1, 0.0]
    w = sample_weights(rewards, 3, algo="fisft_plus")
    assert w.tolist() == [1, 1, 1, 0, 0, 0, 1, 0, 0]


def test_threshold_decides_what_counts_as_correct():
    rewards = [0.1, 0.0, 1.0, 0.1]
    assert sample_weights(rewards, 2, algo="fisft_pm").tolist() == [0, 0, 1, -1]  # 0.1 is a wrong answer
    assert sample_weights(rewards, 2, algo="fisft_pm", threshold=0.1).tolist() == [1, -1, 0, 0]


rewards_st = st.integers(min_value=2, max_value=6).flatmap(
    lambda G: st.tuples(
        st.just(G),
        st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0]), min_size=G, max_size=4 * G).map(
            lambda r: r[: len(r) - len(r) % G])))


@settings(max_examples=60, deadline=None)
@given(rewards_st, st.floats(min_value=-3, max_value=3), st.floats(min_value=0.1, max_value=10))
def test_group_relative_weights_centre_and_ignore_shift_and_scale(case, shift, scale):
    G, rewards = case
    r = torch.tensor(rewards, dtype=F64)
    for algo in ("grpo", "dr_grpo"):
        w = sample_weights(r, G, algo=algo, eps_std=0.0)
        torch.testing.assert_close(w.view(-1, G).sum(1), torch.zeros(len(r) // G, dtype=F64), atol=1e-9, rtol=0)
    # GRPO is invariant to an affine change of reward units (with eps 0); Dr. GRPO only to the shift
    base = sample_weights(r, G, algo="grpo", eps_std=0.0)
    torch.testing.assert_close(sample_weights(scale * r + shift, G, algo="grpo", eps_std=0.0), base,
                               atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(sample_weights(r + shift, G, algo="dr_grpo"), sample_weights(r, G, algo="dr_grpo"),
                               atol=1e-9, rtol=0)


@settings(max_examples=60, deadline=None)
@given(rewards_st, st.floats(min_value=0, max_value=3), st.randoms(use_true_random=False))
def test_weights_follow_their_samples_when_a_group_is_shuffled(case, lam, rnd):
    G, rewards = case
    perm = list(range(G))
    rnd.shuffle(perm)
    index = torch.tensor([b * G + g for b in range(len(rewards) // G) for g in perm])
    r = torch.tensor(rewards, dtype=F64)
    for algo in ALGORITHMS:
        w = sample_weights(r, G, algo=algo, lam=lam)
        torch.testing.assert_close(sample_weights(r[index], G, algo=algo, lam=lam), w[index], atol=1e-12, rtol=1e-12)
    allowed = {1.0, -lam, 0.0}
    assert set(sample_weights(r, G, algo="fisft_pm", lam=lam).tolist()) <= allowed


@settings(max_examples=60, deadline=None)
@given(rewards_st, st.floats(min_value=0, max_value=3), st.floats(min_value=0, max_value=1))
def test_the_follow_ups_rules_are_their_definitions(case, lam, positive):
    """F-ISFT− is F-ISFT± without its positives; NSR weighs every wrong completion −1 and nothing else, in every
    group; W-REINFORCE adds its positive weight to every right one (arXiv 2506.01347)."""
    G, rewards = case
    r = torch.tensor(rewards, dtype=F64)
    right = r >= 1.0
    pm = sample_weights(r, G, algo="fisft_pm", lam=lam)
    torch.testing.assert_close(sample_weights(r, G, algo="fisft_minus", lam=lam), torch.where(right, 0.0, pm))
    torch.testing.assert_close(sample_weights(r, G, algo="nsr"), torch.where(right, 0.0, -1.0).to(F64))
    torch.testing.assert_close(sample_weights(r, G, algo="w_reinforce", positive_weight=positive),
                               torch.where(right, positive, -1.0).to(F64))


# --- 3. normalisers on hand-built tensors ------------------------------------------------------------


MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # |o_1| = 3, |o_2| = 1, L_max = 4


@pytest.mark.parametrize(
    "normalizer, weights, expected",
    [
        ("sequence", [2.0, -1.0], (-2.0 + 1.0) / 2),  # per row −w_i, averaged over rows
        ("token", [2.0, -1.0], (-6.0 + 1.0) / 4),  # over the 4 real tokens
        ("constant", [2.0, -1.0], (-6.0 + 1.0) / (2 * 4)),  # over N · L_max
        ("kept_token", [2.0, -1.0], (-6.0 + 1.0) / 4),  # every row kept: same as token
        ("kept_token", [2.0, 0.0], -6.0 / 3),  # the zero-weight row leaves the denominator
        ("token", [2.0, 0.0], -6.0 / 4),  # ... but stays in it under token
    ],
)
def test_on_policy_loss_value_per_normalizer(normalizer, weights, expected):
    logps = torch.full((2, 4), -0.7, dtype=F64)
    loss, _ = policy_loss(logps, None, torch.tensor(weights, dtype=F64), MASK, normalizer=normalizer,
                          max_completion_length=4)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "normalizer, credit",
    [
        ("sequence", lambda w: [w[0] / (2 * 3), w[1] / (2 * 1)]),  # 1/(N |o_i|): short answers weigh more
        ("token", lambda w: [w[0] / 4, w[1] / 4]),
        ("constant", lambda w: [w[0] / (2 * 4), w[1] / (2 * 4)]),
    ],
)
def test_per_token_credit_of_each_normalizer(normalizer, credit):
    """∂loss/∂log π(o_{i,t}) = −w_i · c_i on real tokens and 0 on padding: chapter 3's per-token credit."""
    w = torch.tensor([2.0, -1.0], dtype=F64)
    logps = torch.full((2, 4), -0.7, dtype=F64, requires_grad=True)
    for loss in (policy_loss(logps, None, w, MASK, normalizer=normalizer, max_completion_length=4)[0],
                 weighted_nll(logps, w, MASK, normalizer=normalizer, max_completion_length=4)):
        (g,) = torch.autograd.grad(loss, logps)
        c = credit(w.tolist())
        expected = -torch.tensor([[c[0]] * 3 + [0.0], [c[1]] + [0.0] * 3], dtype=F64)
        torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-15)


def test_weighted_nll_is_sft_cross_entropy_for_fisft_plus():
    logps = torch.log(torch.tensor([[0.5, 0.25, 1.0, 1.0], [0.1, 1.0, 1.0, 1.0]], dtype=F64))
    w = sample_weights([1.0, 0.1], 2, algo="fisft_plus").to(F64)
    loss = weighted_nll(logps, w, MASK, normalizer=get_algorithm("fisft_plus").normalizer)
    assert loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.25) + 0.0) / 3, rel=1e-12)


def test_empty_kept_set_gives_zero_not_nan():
    logps = torch.full((2, 4), -0.7, dtype=F64, requires_grad=True)
    loss = weighted_nll(logps, torch.zeros(2, dtype=F64), MASK, normalizer="kept_token")
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, logps)
    assert torch.equal(g, torch.zeros_like(g))


# --- 4. clipping and KL on hand-built ratios ---------------------------------------------------------


def test_clipping_by_hand():
    # one token per row: (ρ, Â) = (1.5, +1) clipped high, (0.5, −1) clipped low, (1.5, −1) and (0.5, +1) not clipped
    ratio = torch.tensor([[1.5], [0.5], [1.5], [0.5]], dtype=F64)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)
    old = torch.zeros(4, 1, dtype=F64)
    logps = torch.log(ratio).requires_grad_()
    loss, stats = policy_loss(logps, old, adv, torch.ones(4, 1), epsilon=0.2, normalizer="sequence")
    # per-token loss −min(ρÂ, clip(ρ)Â) = [−1.2, 0.8, 1.5, −0.5]
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 1.5 - 0.5) / 4, rel=1e-12)
    (g,) = torch.autograd.grad(loss, logps)
    # d/d log ρ of −ρÂ is −ρÂ where unclipped, 0 where the clip holds
    torch.testing.assert_close(g.squeeze(1), torch.tensor([0.0, 0.0, 1.5, -0.5], dtype=F64) / 4)
    assert stats["clip_ratio/high_mean"] == 0.25 and stats["clip_ratio/low_mean"] == 0.25
    assert stats["clip_ratio/region_mean"] == 0.5 and stats["ratio_mean"] == pytest.approx(1.0)
    # clip higher: ε_high = 0.6 lets ρ = 1.5 through
    _, stats = policy_loss(logps, old, adv, torch.ones(4, 1), epsilon=0.2, epsilon_high=0.6)
    assert stats["clip_ratio/high_mean"] == 0.0 and stats["clip_ratio/low_mean"] == 0.25


def test_k3_kl_by_hand():
    logps = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    ref = torch.tensor([[math.log(2.0), 0.0]], dtype=F64)  # π_ref/π = 2 on the first token, 1 on the second
    loss, stats = policy_loss(logps, None, torch.zeros(1, dtype=F64), torch.ones(1, 2), beta=0.5,
                              ref_per_token_logps=ref, normalizer="token")
    k3 = 2.0 - math.log(2.0) - 1.0
    assert stats["kl"] == pytest.approx(k3 / 2, rel=1e-12)
    assert loss.item() == pytest.approx(0.5 * k3 / 2, rel=1e-12)
    (g,) = torch.autograd.grad(loss, logps)  # d k3 / d logp = 1 − π_ref/π
    torch.testing.assert_close(g, torch.tensor([[0.5 * (1 - 2.0) / 2, 0.0]], dtype=F64))


# --- 5. registry and bad input -----------------------------------------------------------------------


def test_registry_matches_the_design_table():
    assert list(ALGORITHMS) == ["grpo", "dr_grpo", "fisft_plus", "fisft_pm"]
    assert {a: ALGORITHMS[a].normalizer for a in ALGORITHMS} == {
        "grpo": "sequence", "dr_grpo": "constant", "fisft_plus": "kept_token", "fisft_pm": "sequence"}
    params = set(inspect.signature(sample_weights).parameters)
    for spec in ALGORITHMS.values():
        assert set(spec.knobs) <= params and spec.normalizer in NORMALIZERS
    assert [row["name"] for row in algorithm_table()] == list(ALGORITHMS)
    assert [row["name"] for row in algorithm_table(FOLLOW_UPS)] == ["fisft_minus", "nsr", "w_reinforce"]
    for spec in FOLLOW_UPS.values():
        assert set(spec.knobs) <= params and spec.normalizer in NORMALIZERS and spec.name not in ALGORITHMS


def test_unknown_algo_lists_the_known_ones():
    with pytest.raises(ValueError, match="grpo, dr_grpo, fisft_plus, fisft_pm"):
        sample_weights([1.0, 0.0], 2, algo="ppo")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sample_weights([1.0, 0.0, 1.0], 2, algo="grpo"), "do not split into groups"),
        (lambda: sample_weights([1.0, 0.0], 1, algo="grpo"), "num_generations must be"),
        (lambda: sample_weights([[1.0, 0.0]], 2, algo="grpo"), "must be 1-D"),
        (lambda: sample_weights([1.0, float("nan")], 2, algo="grpo"), "NaN"),
        (lambda: sample_weights([1.0, 0.0], 2, algo="grpo", std="biased"), "std must be one of"),
        (lambda: sample_weights([1.0, 0.0], 2, algo="fisft_pm", lam=-1.0), "lam"),
        (lambda: policy_loss(torch.zeros(2, 4), None, torch.zeros(2), MASK, beta=0.1), "ref_per_token_logps"),
        (lambda: policy_loss(torch.zeros(2, 4), None, torch.zeros(3), MASK), r"weights must be one per"),
        (lambda: policy_loss(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2), MASK), "old_per_token_logps"),
        (lambda: policy_loss(torch.zeros(2, 4), None, torch.zeros(2), MASK, normalizer="constant"),
         "max_completion_length"),
        (lambda: policy_loss(torch.zeros(2, 4), None, torch.zeros(2), MASK, normalizer="constant",
                             max_completion_length=3), "4 tokens wide"),
        (lambda: weighted_nll(torch.zeros(2, 4), torch.zeros(2), MASK, normalizer="mean"), "unknown normalizer"),
        (lambda: aggregate(torch.zeros(2, 4), MASK, normalizer="kept_token"), "pass weights"),
    ],
)
def test_bad_input_says_what_to_change(call, message):
    with pytest.raises(ValueError, match=message):
        call()
