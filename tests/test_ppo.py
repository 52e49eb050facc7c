"""PPO with a value head (chapter 9's per-token credit): GAE against its definition, whitening, the value loss, the
critic on the policy's trunk, and the trainer's ppo runs (learning, the critic's loss, exact resume, bad input)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from companion.objectives import policy_loss, weighted_nll
from companion.ppo import gae, value_loss, whiten, whiten_sums
from companion.records import TIMING_METRICS
from companion.trainer import TrainConfig, train


def _definition(rewards, values, mask, gamma, lam):
    """Â_t = Σ_l (γλ)^l δ_{t+l} with δ_t = r_t + γ V_{t+1} − V_t, written out as the double sum, one row at a time."""
    out = torch.zeros_like(values, dtype=torch.float64)
    for i in range(values.shape[0]):
        n = int(mask[i].sum())
        v = [float(x) for x in values[i, :n]] + [0.0]  # V = 0 after the end
        r = [0.0] * (n - 1) + [float(rewards[i])]
        delta = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            out[i, t] = sum((gamma * lam) ** k * delta[t + k] for k in range(n - t))
    return out


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_is_the_discounted_sum_of_td_errors(gamma, lam):
    gen = torch.Generator().manual_seed(0)
    N, T = 6, 9
    lengths = torch.tensor([1, 3, 9, 5, 9, 2])
    mask = (torch.arange(T) < lengths.unsqueeze(1)).long()
    values = torch.randn(N, T, generator=gen) * mask + 7.0 * (1 - mask)  # padding holds junk: it must not matter
    rewards = torch.tensor([1.0, 0.0, 0.1, 1.0, 0.0, 0.5])
    adv, ret = gae(rewards, values, mask, gamma=gamma, gae_lambda=lam)
    expected = _definition(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, (adv + values) * mask)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_gae_at_its_ends_is_monte_carlo_and_one_step_td():
    values = torch.tensor([[0.2, 0.4, 0.6, 0.0], [0.5, 0.1, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    rewards = torch.tensor([1.0, 0.0])
    mc, _ = gae(rewards, values, mask, gamma=1.0, gae_lambda=1.0)
    torch.testing.assert_close(mc, (rewards.unsqueeze(1) - values) * mask)  # R − V(s_t)
    td, _ = gae(rewards, values, mask, gamma=1.0, gae_lambda=0.0)
    torch.testing.assert_close(td, torch.tensor([[0.2, 0.2, 0.4, 0.0], [-0.4, -0.1, 0.0, 0.0]]))  # V' − V, R − V
    # with V = 0 and λ = γ = 1 every token of a completion gets its reward: GRPO's uniform split (A2) without groups
    uniform, _ = gae(rewards, torch.zeros(2, 4), mask, gamma=1.0, gae_lambda=1.0)
    torch.testing.assert_close(uniform, rewards.unsqueeze(1) * mask.float())


def test_whitening_over_two_halves_with_their_summed_moments_is_whitening_the_whole():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 5, generator=gen) * 3 + 1
    mask = (torch.arange(5) < torch.tensor([5, 2, 4, 1, 5, 3, 3, 5]).unsqueeze(1)).long()
    whole = whiten(x, mask)
    real = whole[mask.bool()]
    assert real.mean().abs() < 1e-6 and real.std().item() == pytest.approx(1.0, abs=1e-5)
    top, bottom = whiten_sums(x[:4], mask[:4]), whiten_sums(x[4:], mask[4:])
    total = tuple(a + b for a, b in zip(top, bottom))
    torch.testing.assert_close(torch.cat([whiten(x[:4], mask[:4], total=total), whiten(x[4:], mask[4:], total=total)]),
                               whole)


def test_per_token_weights_are_the_weight_of_each_token_in_the_loss_and_in_weighted_sft():
    gen = torch.Generator().manual_seed(1)
    logps = (-torch.rand(3, 4, generator=gen)).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    row = torch.tensor([0.5, -1.0, 2.0])
    for normalizer in ("sequence", "token", "kept_token"):
        a, _ = policy_loss(logps, None, row, mask, normalizer=normalizer)
        b, _ = policy_loss(logps, None, row.unsqueeze(1).expand(3, 4), mask, normalizer=normalizer)
        torch.testing.assert_close(a, b)  # a row's weight on every token is the per-sample rule
    tokens = torch.randn(3, 4, generator=gen)
    loss, _ = policy_loss(logps, None, tokens, mask, normalizer="token")
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(grad, -tokens * mask / mask.sum())  # on-policy: ∂/∂logp_t = −Â_t / tokens
    (sft,) = torch.autograd.grad(weighted_nll(logps, tokens, mask, normalizer="token"), logps)
    torch.testing.assert_close(grad, sft)  # and the collapse holds token by token
    with pytest.raises(ValueError, match="one per token"):
        policy_loss(logps, None, torch.zeros(3, 5), mask)


def test_the_value_loss_is_half_the_squared_error_over_real_tokens():
    values = torch.tensor([[1.0, 2.0, 9.0], [0.0, 0.0, 0.0]], requires_grad=True)
    returns = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss = value_loss(values, returns, mask)
    assert loss.item() == pytest.approx(0.5 * (1 + 4 + 1) / 3)
    (grad,) = torch.autograd.grad(loss, values)
    torch.testing.assert_close(grad, torch.tensor([[1 / 3, 2 / 3, 0.0], [-1 / 3, 0.0, 0.0]]))


@pytest.mark.parametrize("call, message", [
    (lambda: gae(torch.ones(2), torch.zeros(2, 3), torch.ones(2, 3), gae_lambda=1.5), "must be in"),
    (lambda: gae(torch.ones(3), torch.zeros(2, 3), torch.ones(2, 3)), "one per completion"),
    (lambda: gae(torch.ones(2), torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]])), "at least one token"),
    (lambda: gae(torch.ones(2), torch.zeros(2, 3), torch.ones(2, 4)), "both be"),
])
def test_gae_bad_input_says_what_to_change(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- the critic on the policy's trunk ---------------------------------------------------------------------------


def _batch(tiny_policy, n=2, width=6):
    from companion.rollout import encode_prompts

    model, tok = tiny_policy
    prompt_ids, prompt_mask = encode_prompts(tok, ["Using the numbers", "Tom has 3 apples and"], "cpu")
    gen = torch.Generator().manual_seed(0)
    completion_ids = torch.randint(5, 40, (n, width), generator=gen)
    completion_mask = torch.ones(n, width, dtype=torch.long)
    completion_mask[1, 4:] = 0
    return model, prompt_ids, prompt_mask, completion_ids, completion_mask


def test_the_value_of_token_t_sees_the_prompt_and_the_tokens_before_t_only(tiny_policy):
    from companion.ppo import ValueHead, per_token_values

    model, prompt_ids, prompt_mask, ids, mask = _batch(tiny_policy)
    head = ValueHead(model.config.hidden_size)
    assert (per_token_values(model, head, prompt_ids, prompt_mask, ids, mask) == 0).all()  # starts at V = 0
    torch.nn.init.normal_(head.linear.weight, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = per_token_values(model, head, prompt_ids, prompt_mask, ids, mask)
        changed = ids.clone()
        changed[:, 3] = (changed[:, 3] + 1) % 40
        after = per_token_values(model, head, prompt_ids, prompt_mask, changed, mask)
    torch.testing.assert_close(after[:, :4], before[:, :4])  # V(s_t) for t <= 3 does not see o_3
    assert (after[0, 4:] - before[0, 4:]).abs().max() > 1e-6  # V(s_4) does


def test_the_value_head_learns_the_returns_of_a_batch(tiny_policy):
    from companion.ppo import ValueHead, per_token_values

    model, prompt_ids, prompt_mask, ids, mask = _batch(tiny_policy)
    model = __import__("copy").deepcopy(model)
    head = ValueHead(model.config.hidden_size)
    _, returns = gae(torch.tensor([1.0, 0.0]), torch.zeros(2, 6), mask, gae_lambda=0.9)
    optimizer = torch.optim.AdamW(list(head.parameters()) + list(model.parameters()), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = value_loss(per_token_values(model, head, prompt_ids, prompt_mask, ids, mask), returns, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::5]


# --- the trainer's ppo ------------------------------------------------------------------------------------------


SMALL = dict(algo="ppo", steps=3, prompts_per_step=4, num_generations=4, max_completion_length=32, train_problems=16,
             eval_every=0, save_every=1, num_threads=1, device="cpu", learning_rate=1e-2)


@pytest.fixture
def seven_reward(monkeypatch):
    from companion.tasks import CountdownTask

    monkeypatch.setattr(CountdownTask, "reward", lambda self, completion, problem: float("7" in completion))


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in TIMING_METRICS} for r in records]


def test_a_ppo_run_records_its_critic_and_resumes_exactly(tiny_policy_dir, tmp_path, seven_reward):
    config = TrainConfig(out=str(tmp_path / "straight"), model=str(tiny_policy_dir), micro_batch_size=5, **SMALL)
    straight = train(config, progress=False).metrics
    halves = dataclasses.replace(config, out=str(tmp_path / "halves"))
    train(halves, until_step=1, progress=False)
    resumed = train(halves, resume=True, progress=False).metrics
    assert _comparable(resumed) == _comparable(straight)  # the value head and its optimizer state are in the checkpoint
    steps = [r for r in straight if r["step"] > 0]
    assert steps[0]["value_mean"] == 0.0 and steps[-1]["value_mean"] != 0.0  # V starts at 0, then learns
    assert all(r["value_loss"] > 0 and r["frac_weighted"] == 1.0 for r in steps)  # every completion has advantages
    assert all(r["explained_variance"] is not None for r in steps[1:])
    whole = train(dataclasses.replace(config, out=str(tmp_path / "whole"), micro_batch_size=0), progress=False).metrics
    for a, b in zip(whole, straight):  # micro-batches change memory, not the update
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["value_loss"] == pytest.approx(b["value_loss"], rel=1e-4)


def test_a_checkpoint_with_a_value_head_resumes_only_as_ppo(tiny_policy_dir, tmp_path, seven_reward):
    from companion.runs import RunError
    from companion.checkpoint import load_checkpoint

    config = TrainConfig(out=str(tmp_path / "ppo"), model=str(tiny_policy_dir), **{**SMALL, "steps": 1})
    result = train(config, progress=False)
    params = [p for p in result.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1.0)
    with pytest.raises(RunError, match="with a value head"):
        load_checkpoint(tmp_path / "ppo" / "checkpoint.pt", model=result.model, optimizer=optimizer,
                        scheduler=scheduler)


@pytest.mark.parametrize("overrides, match", [
    (dict(algo="grpo", gae_lambda=0.5), "--gae-lambda set the value head of --algo ppo"),
    (dict(algo="fisft_plus", value_coef=0.5, gamma=0.9), "--gamma, --value-coef set the value head"),
    (dict(algo="ppo", value_coef=0.0), "value_coef must be > 0"),
    (dict(algo="ppo", gamma=1.5), "gamma and gae_lambda must be in"),
    (dict(algo="ppo", refresh_every=4), "Use --algo fisft_plus or --refresh-every 1"),
])
def test_value_head_options_that_do_not_combine_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**overrides)


def test_ppo_uses_the_token_mean_by_default():
    assert TrainConfig(algo="ppo").loss_normalizer == "token"
    assert TrainConfig(algo="ppo", normalizer="sequence").loss_normalizer == "sequence"
