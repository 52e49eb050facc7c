"""Chapter 3's length simulation: the model, the loss it trains with, the prediction, and the claim."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from companion import lengthsim as ls
from companion.objectives import policy_loss, weighted_nll

SMALL = ls.LengthSimConfig(samples_per_step=32, num_prompts=8, steps=10, calibration_batches=2, record_every=5)


def _batch(configs, seed=0):
    runs = ls.Runs(configs)
    policy = ls.initial_policy(runs)
    batch = ls.sample_batch(policy, runs, [torch.Generator().manual_seed(seed + r) for r in range(len(runs))])
    return runs, policy, batch


# --------------------------------------------------------------------------------------------------
# config and environment
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    (dict(num_generations=3), "multiple of num_generations"),
    (dict(normalizer="tokens"), "normalizer must be one of"),
    (dict(algo="ppo"), "unknown algo"),
    (dict(approach_accuracy=(1.0, 0.0)), "strictly between 0 and 1"),
    (dict(min_length=1), "min_length"),
    (dict(initial_mean_length=60.0), "initial_mean_length"),
    (dict(base_accuracy=1.0), "base_accuracy"),
    (dict(steps=0), "steps must be positive"),
])
def test_config_rejects_bad_values_with_a_hint(bad, message):
    with pytest.raises(ValueError, match=message):
        ls.LengthSimConfig(**bad)


def test_unreachable_base_accuracy_says_what_range_works():
    with pytest.raises(ValueError, match="choose a base_accuracy in between"):
        ls.initial_policy(ls.Runs([ls.LengthSimConfig(base_accuracy=0.995)]))


def test_runs_must_share_the_lengths_and_the_schedule():
    with pytest.raises(ValueError, match="must share steps"):
        ls.Runs([SMALL, replace(SMALL, steps=20)])
    with pytest.raises(ValueError, match="unknown LengthSimConfig fields"):
        ls.grid_configs(group_size=[4])


@pytest.mark.parametrize("cfg", [
    ls.LengthSimConfig(),
    ls.LengthSimConfig(base_accuracy=0.2, length_accuracy=1.0),
    ls.LengthSimConfig(base_accuracy=0.8, length_accuracy=-1.0, min_length=3, initial_length_shape=1.5),
])
def test_initial_policy_has_the_configured_accuracy_and_lengths(cfg):
    runs = ls.Runs([cfg])
    policy = ls.initial_policy(runs)
    pmf = policy.length_pmf()[0].double()  # (2, L)
    expected = ls.initial_length_pmf(cfg)
    assert torch.allclose(pmf, expected.expand(2, -1), atol=1e-5)
    assert pmf[:, :cfg.min_length - 1].abs().max() == 0
    assert ls.policy_stats(policy, runs)[0]["accuracy"] == pytest.approx(cfg.base_accuracy, abs=1e-5)


def test_sampled_lengths_and_rewards_follow_the_policy():
    cfg = ls.LengthSimConfig(samples_per_step=4096, num_generations=8)
    runs, policy, batch = _batch([cfg])
    stats = ls.policy_stats(policy, runs)[0]
    length = batch.length.double()
    assert length.min() >= cfg.min_length and length.max() <= cfg.max_completion_length
    assert length.mean().item() == pytest.approx(stats["mean_length"], abs=0.4)  # sd ≈ 7.7 / √4096 ≈ 0.12
    assert batch.rewards.mean().item() == pytest.approx(stats["accuracy"], abs=0.03)
    # group b of every run answers one prompt
    assert (batch.prompts.view(1, -1, 8) == batch.prompts.view(1, -1, 8)[..., :1]).all()


def test_a_run_does_not_depend_on_the_other_runs_in_the_batch():
    alone = ls.simulate(SMALL, progress=False)
    together = ls.simulate([replace(SMALL, algo="fisft_plus", seed=3), SMALL,
                            replace(SMALL, normalizer="token", num_generations=4)], progress=False)
    mine = [r for r in together if r["algo"] == "grpo" and r["normalizer"] == "sequence"]
    assert [r["step"] for r in alone] == [0, 5, 10]
    for a, b in zip(alone, mine, strict=True):
        assert a["mean_length_wrong"] == pytest.approx(b["mean_length_wrong"], abs=1e-4)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-5)


# --------------------------------------------------------------------------------------------------
# the loss: per-token log-probs, packing, stacking, and the collapse
# --------------------------------------------------------------------------------------------------


def test_response_logps_sum_to_the_log_probability_of_the_response():
    runs, policy, batch = _batch([SMALL, replace(SMALL, approach_accuracy=(0.7, 0.3))])
    logps, mask = ls.response_logps(policy, batch)
    assert (mask.sum(-1) == batch.length).all()
    packed, packed_mask = ls.packed_token_logps(policy, batch)
    assert torch.allclose((logps * mask).sum(-1), packed.sum(-1), atol=1e-5)
    assert (packed_mask.sum(-1) == batch.length).all()
    # and that is log P(approach) + log P(length | approach)
    pmf = policy.length_pmf()
    share = torch.sigmoid(policy.approach_logits).gather(1, batch.prompts)
    p_approach = torch.where(batch.approach == 0, share, 1 - share)
    p_length = pmf[torch.arange(2)[:, None], batch.approach, batch.length - 1]
    assert torch.allclose(packed.sum(-1), (p_approach * p_length).log(), atol=1e-4)


def _grads(loss, policy):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, policy.parameters(), retain_graph=True)])


def test_packed_and_explicit_tokens_give_the_same_gradient_under_every_normaliser():
    configs = [replace(SMALL, algo=a, normalizer=n, seed=i) for i, (a, n) in enumerate([
        ("grpo", "sequence"), ("grpo", "token"), ("dr_grpo", "constant"), ("fisft_plus", "kept_token"),
        ("fisft_pm", "token"), ("fisft_plus", "sequence")])]
    runs, policy, batch = _batch(configs)
    weights = ls.sample_weights(batch.rewards, runs)
    scale = torch.linspace(0.5, 2.0, len(runs))
    packed = _grads(ls.total_loss(policy, batch, weights, runs, scale, packed=True), policy)
    explicit = _grads(ls.total_loss(policy, batch, weights, runs, scale, packed=False), policy)
    assert packed.abs().max() > 0
    assert torch.allclose(packed, explicit, atol=1e-6, rtol=1e-4)


def test_stacked_runs_get_exactly_their_own_gradient():
    """total_loss batches runs (row means, one-row token runs, kept_token one by one); each run's gradient
    must equal the gradient of weighted_nll on its batch alone, divided by its scale."""
    configs = [replace(SMALL, algo=a, normalizer=n, seed=i) for i, (a, n) in enumerate([
        ("grpo", "sequence"), ("fisft_pm", "sequence"), ("grpo", "token"), ("dr_grpo", "token"),
        ("fisft_plus", "kept_token"), ("fisft_plus", "kept_token"), ("dr_grpo", "constant")])]
    runs, policy, batch = _batch(configs)
    weights = ls.sample_weights(batch.rewards, runs)
    scale = torch.arange(1.0, len(runs) + 1)
    stacked = torch.autograd.grad(ls.total_loss(policy, batch, weights, runs, scale), policy.parameters())
    logps, mask = ls.response_logps(policy, batch)
    for r, cfg in enumerate(configs):
        alone = weighted_nll(logps[r], weights[r].float(), mask[r], normalizer=cfg.resolved_normalizer,
                             max_completion_length=cfg.max_completion_length) / scale[r]
        own = torch.autograd.grad(alone, policy.parameters(), retain_graph=True)
        for g_stacked, g_own in zip(stacked, own):
            assert torch.allclose(g_stacked[r], g_own[r], atol=1e-7, rtol=1e-4), (r, cfg.resolved_normalizer)


@pytest.mark.parametrize("normalizer", ["sequence", "token", "constant", "kept_token"])
def test_the_simulation_trains_with_the_grpo_gradient(normalizer):
    """The simulation minimises weighted_nll; on-policy with β = 0 that is policy_loss's gradient (chapter 2)."""
    cfg = replace(SMALL, normalizer=normalizer)
    runs, policy, batch = _batch([cfg])
    weights = ls.sample_weights(batch.rewards, runs)[0].float()
    logps, mask = ls.response_logps(policy, batch)
    kw = dict(normalizer=normalizer, max_completion_length=cfg.max_completion_length)
    grpo, _ = policy_loss(logps[0], None, weights, mask[0], beta=0.0, **kw)
    nll = weighted_nll(logps[0], weights, mask[0], **kw)
    assert torch.allclose(_grads(grpo, policy), _grads(nll, policy), atol=1e-7)


# --------------------------------------------------------------------------------------------------
# the prediction
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo"])
@pytest.mark.parametrize("accuracy", [0.1, 0.5, 0.93])
def test_group_relative_weights_average_to_zero(algo, accuracy):
    """Group-relative weights sum to zero in every group, so their mean over the own outcome is zero."""
    omega = ls.outcome_weights(ls.LengthSimConfig(algo=algo), accuracy)
    assert omega[0] < 0 < omega[1]
    assert (accuracy * omega[1] + (1 - accuracy) * omega[0]).item() == pytest.approx(0.0, abs=1e-6)


def test_outcome_weights_of_fisft_plus_are_its_weights():
    assert ls.outcome_weights(ls.LengthSimConfig(algo="fisft_plus"), 0.3).tolist() == pytest.approx([0.0, 1.0])


def test_effective_reward_is_exact_only_where_the_normaliser_is_per_sample():
    policy = ls.initial_policy(ls.Runs([SMALL]))
    with pytest.raises(ValueError, match="sampled_gradient"):
        ls.effective_reward(policy, replace(SMALL, normalizer="token"))
    seq = ls.effective_reward(policy, SMALL)  # (M, 2, L)
    const = ls.effective_reward(policy, replace(SMALL, normalizer="constant"))
    L = SMALL.max_completion_length
    assert torch.allclose(seq * ls.lengths(SMALL), const * L)
    flawed = seq[0, 1, SMALL.min_length - 1:]
    assert (flawed < 0).all() and (flawed[1:] > flawed[:-1]).all()  # a wrong path loses less per token when long


@pytest.mark.parametrize("normalizer", ["sequence", "constant"])
def test_monte_carlo_gradient_matches_the_exact_expected_gradient(normalizer):
    cfg = ls.LengthSimConfig(normalizer=normalizer, samples_per_step=512, num_prompts=4)
    start = ls.initial_policy(ls.Runs([cfg]))
    policy = replace(start, approach_logits=start.approach_logits.detach().double().requires_grad_(),
                     stop_logits=start.stop_logits.detach().double().requires_grad_())
    exact = ls.expected_gradient(policy, cfg)
    sampled = ls.sampled_gradient(policy, cfg, batches=100, seed=1)
    flat_exact, flat_sampled = (torch.cat([g.flatten() for g in grads]) for grads in (exact, sampled))
    cosine = torch.nn.functional.cosine_similarity(flat_exact, flat_sampled, dim=0).item()
    assert cosine > 0.99, cosine  # measured: 0.9998 (sequence), 0.9998 (constant)
    assert flat_sampled.norm().item() == pytest.approx(flat_exact.norm().item(), rel=0.05)
    if normalizer == "sequence":  # the length part alone, the one that carries the effect
        cosine = torch.nn.functional.cosine_similarity(exact[1].flatten(), sampled[1].flatten(), dim=0).item()
        assert cosine > 0.95, cosine  # measured: 0.996


def test_predicted_drift_sequence_lengthens_wrong_paths_constant_does_not():
    seq = ls.predicted_drift(ls.LengthSimConfig())
    const = ls.predicted_drift(ls.LengthSimConfig(normalizer="constant"))
    assert seq["mean_length_flawed"] > 0 > seq["mean_length_sound"]
    assert seq["accuracy"] > 0 and const["accuracy"] > 0
    # at κ = 0 a path's accuracy does not depend on its length: constant gives no length gradient at all
    assert abs(const["mean_length_flawed"]) < 1e-6 * abs(seq["mean_length_flawed"]) + 1e-9
    assert abs(const["mean_length_sound"]) < 1e-6 * abs(seq["mean_length_sound"]) + 1e-9


# --------------------------------------------------------------------------------------------------
# the claim
# --------------------------------------------------------------------------------------------------


def test_wrong_answers_grow_under_sequence_normalisation_only():
    """The papers' qualitative claim, in the default scenario (what chapter 3's figure shows)."""
    pairs = [("grpo", "sequence"), ("fisft_pm", "sequence"), ("grpo", "constant"), ("dr_grpo", "constant"),
             ("fisft_plus", "kept_token"), ("grpo", "token")]
    records = ls.simulate([ls.LengthSimConfig(algo=a, normalizer=n) for a, n in pairs], progress=False)
    final = {(r["algo"], r["normalizer"]): r for r in records if r["step"] == ls.LengthSimConfig().steps}
    start = {(r["algo"], r["normalizer"]): r for r in records if r["step"] == 0}
    for pair in pairs:
        assert final[pair]["accuracy"] > start[pair]["accuracy"] + 0.25, pair  # every rule learns the task
    growth = {pair: final[pair]["mean_length_wrong"] - start[pair]["mean_length_wrong"] for pair in pairs}
    assert growth[("grpo", "sequence")] > 2.5 and growth[("fisft_pm", "sequence")] > 1.5, growth
    for pair in [("grpo", "constant"), ("dr_grpo", "constant"), ("fisft_plus", "kept_token"), ("grpo", "token")]:
        assert abs(growth[pair]) < 1.0, (pair, growth)
    assert final[("grpo", "sequence")]["mean_length_correct"] < start[("grpo", "sequence")]["mean_length_correct"] - 5
    assert set(records[0]) >= {"algo", "normalizer", "step", "accuracy", "mean_length_correct",
                               "mean_length_wrong", "filtered"}
