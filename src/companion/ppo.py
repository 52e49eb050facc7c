"""PPO with a value head: the one algorithm of the book that breaks assumption A2 (the reward split uniformly over
the tokens). Chapter 9's per-token credit.

A learned critic V(s_t) on the policy's trunk (:class:`ValueHead`) turns each terminal reward into per-token
advantages by generalised advantage estimation (:func:`gae`), whitened over the batch (:func:`whiten`); the same
clipped loss as every other rule then consumes them (:func:`companion.objectives.policy_loss` takes per-token
weights), and the critic's squared error (:func:`value_loss`) is added to it. :class:`PPO` is the trainer's view
of all this: the object that gives a batch its weights, names the parameters that train and adds the extra loss
(:mod:`companion.algorithms` has the same interface for the group rules).
"""

from __future__ import annotations

import torch

from companion.objectives import aggregate


class ValueHead(torch.nn.Module):
    """PPO's critic: V(s_t) = w·h_t + b on the policy's final hidden state h_t at each completion token, the state
    s_t = prompt + o_<t of chapter 1's MDP. It shares the policy's trunk (its squared error trains the trunk too,
    scaled by ``value_coef``, as in TRL's older value-head models) and starts at V = 0 everywhere."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, T, h) -> (N, T)
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def per_token_values(model, head: ValueHead, prompt_ids, prompt_mask, completion_ids, completion_mask):
    """V(s_t) at each completion token: (N, T), with gradient through ``head`` and the policy's trunk.

    The hidden state at the position that predicts token t (what :func:`companion.rollout.per_token_logps` reads its
    logit from) is the state before o_t. One forward of the trunk over each whole (prompt, completion) row, apart
    from the policy's.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    T = completion_ids.shape[1]
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False).last_hidden_state  # (N, P+T, h)
    return head(hidden[:, -(T + 1):-1])


def gae(rewards: torch.Tensor, values: torch.Tensor, completion_mask: torch.Tensor, *, gamma: float = 1.0,
        gae_lambda: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) for completions with one terminal reward.

    The MDP of chapter 1: state s_t = prompt + o_<t, the reward R_i comes after the last real token (EOS, or the
    cut at ``max_completion_length``, which ends the episode too) and is 0 before it; V(s) = 0 after the end. With
    δ_t = r_t + γ V(s_{t+1}) − V(s_t), the advantage is Â_t = Σ_l (γλ)^l δ_{t+l} and the value target
    Â_t + V(s_t). λ = 1, γ = 1 gives Â_t = R − V(s_t) (Monte Carlo); λ = 0 gives δ_t (one-step TD).

    Args: ``rewards`` (N,), ``values`` (N, T) V(s_t) at each completion token (detached: the sampler's value),
    ``completion_mask`` (N, T), right padded; ``gae_lambda`` is GAE's λ. Returns ``(advantages, returns)``, both
    (N, T) and 0 on padding.

    >>> adv, ret = gae(torch.tensor([1.0]), torch.tensor([[0.5, 0.25, 0.0]]), torch.tensor([[1, 1, 0]]), gae_lambda=1.0)
    >>> adv.tolist(), ret.tolist()
    ([[0.5, 0.75, 0.0]], [[1.0, 1.0, 0.0]])
    """
    if values.dim() != 2 or completion_mask.shape != values.shape:
        raise ValueError(f"values and completion_mask must both be (N, T); got {tuple(values.shape)} and "
                         f"{tuple(completion_mask.shape)}")
    rewards = torch.as_tensor(rewards, dtype=values.dtype, device=values.device)
    if rewards.shape != values.shape[:1]:
        raise ValueError(f"rewards must be one per completion, shape ({values.shape[0]},); got {tuple(rewards.shape)}")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= gae_lambda <= 1.0):
        raise ValueError(f"gamma and gae_lambda must be in [0, 1]; got gamma={gamma}, gae_lambda={gae_lambda}")
    mask = completion_mask.to(values.dtype)  # (N, T)
    lengths = mask.sum(dim=1).long()  # (N,)
    if (lengths == 0).any():
        raise ValueError("every completion needs at least one token (its EOS) to carry its reward")
    values = values.detach() * mask
    N, T = values.shape
    per_token_reward = torch.zeros_like(values)
    per_token_reward[torch.arange(N, device=values.device), lengths - 1] = rewards  # R after the last token
    next_values = torch.cat([values[:, 1:], values.new_zeros(N, 1)], dim=1)  # V(s_{t+1}); 0 after the end
    delta = (per_token_reward + gamma * next_values - values) * mask  # (N, T)
    advantages = torch.zeros_like(values)
    running = values.new_zeros(N)
    for t in reversed(range(T)):  # Â_t = δ_t + γλ Â_{t+1}; padding has δ = 0 and lies after the end
        running = delta[:, t] + gamma * gae_lambda * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, completion_mask: torch.Tensor, *, total: tuple[float, float, float] | None = None,
           eps: float = 1e-8) -> torch.Tensor:
    """``values`` shifted and scaled to mean 0, standard deviation 1 over the real tokens (Bessel-corrected, as
    TRL's ``masked_whiten``), 0 on padding. ``total``: (count, sum, sum of squares) of a larger batch (all
    data-parallel processes' tokens) to whiten with instead of this one's.

    >>> whiten(torch.tensor([[1., 3., 9.]]), torch.tensor([[1, 1, 0]])).tolist()
    [[-0.7071067690849304, 0.7071067690849304, 0.0]]
    """
    mask = completion_mask.to(values.dtype)
    count, total_sum, total_sq = total if total is not None else whiten_sums(values, completion_mask)
    mean = total_sum / max(count, 1.0)
    var = (total_sq - count * mean**2) / max(count - 1.0, 1.0)
    return (values - mean) / (max(var, 0.0) ** 0.5 + eps) * mask


def whiten_sums(values: torch.Tensor, completion_mask: torch.Tensor) -> tuple[float, float, float]:
    """(count, sum, sum of squares) of ``values`` over the real tokens: what :func:`whiten` needs of a batch."""
    mask = completion_mask.to(torch.float64)
    x = values.to(torch.float64) * mask
    return mask.sum().item(), x.sum().item(), (x * x).sum().item()


def value_loss(values: torch.Tensor, returns: torch.Tensor, completion_mask: torch.Tensor, *,
               normalizer: str = "token", max_completion_length: int | None = None) -> torch.Tensor:
    """½ (V(s_t) − target_t)², averaged over the real tokens with a length normaliser (:func:`aggregate`; the
    policy loss's, so that micro-batch shares apply to both).

    >>> value_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[1, 1]])).item()
    0.25
    """
    if values.shape != returns.shape:
        raise ValueError(f"values {tuple(values.shape)} and returns {tuple(returns.shape)} must match")
    per_token = 0.5 * (values - returns.detach()) ** 2
    return aggregate(per_token, completion_mask, normalizer=normalizer,
                     weights=completion_mask.any(dim=1).to(values.dtype), max_completion_length=max_completion_length)


def explained_variance(targets: torch.Tensor, predicted: torch.Tensor) -> float | None:
    """1 − Var(target − predicted) / Var(target), population variances; None when the targets do not vary.

    >>> explained_variance(torch.tensor([0., 2.]), torch.tensor([0., 1.]))
    0.75
    """
    if targets.numel() < 2:
        return None
    spread = targets.var(correction=0)
    return (1 - (targets - predicted).var(correction=0) / spread).item() if spread > 0 else None


class PPO:
    """``--algo ppo`` as the trainer sees it: a value head on the policy's trunk that gives every token its own
    weight (the whitened GAE advantage), trains with the policy, and adds its squared error to the loss.

    The interface of every algorithm (:mod:`companion.algorithms`): :meth:`parameters`, :meth:`weights`,
    :meth:`rows`, :meth:`extra_loss`, and the state a checkpoint keeps (:attr:`state`, :meth:`load_state`).
    """

    record_keys = ("value_loss",)

    def __init__(self, config, model):
        self.config = config
        self.head = ValueHead(model.config.hidden_size).to(next(model.parameters()).device)  # float32, like LoRA's
        self.returns = None  # (N, T) the value targets of the batch :meth:`weights` saw last

    def parameters(self, model) -> list:
        return [p for p in model.parameters() if p.requires_grad] + list(self.head.parameters())

    def weights(self, model, rollout, rewards: torch.Tensor, processes) -> tuple[torch.Tensor, dict]:
        """Per-token weights (N, T): GAE advantages on the sampler's values V(s_t) (one forward, no gradient),
        whitened over every process's tokens; and ``value_mean`` and ``explained_variance`` (of the value targets
        by the values, over this process's tokens) for the record."""
        mask, size = rollout.completion_mask, self.config.micro_batch_size or rollout.completion_mask.shape[0]
        with torch.no_grad():
            values = torch.cat([per_token_values(model, self.head, *rollout.model_inputs(slice(i, i + size))).float()
                                for i in range(0, mask.shape[0], size)])
        advantages, self.returns = gae(rewards.to(values.device), values, mask, gamma=self.config.gamma,
                                       gae_lambda=self.config.gae_lambda)
        sums = processes.sum(torch.tensor(whiten_sums(advantages, mask), dtype=torch.float64, device=mask.device))
        real = mask.bool()
        stats = {"value_mean": values[real].mean().item(),
                 "explained_variance": explained_variance(self.returns[real], values[real])}
        return whiten(advantages, mask, total=tuple(sums.tolist())), stats

    def rows(self, weights: torch.Tensor, beta: float) -> torch.Tensor:
        """Every row: the critic learns from every completion, whatever its advantage."""
        return torch.arange(len(weights), device=weights.device)

    def extra_loss(self, model, micro_batch) -> tuple[torch.Tensor, dict]:
        """``value_coef`` × the critic's squared error on the micro-batch, and its value for the record."""
        returns = self.returns[micro_batch.rows][:, :micro_batch.mask.shape[1]]  # (n, T) as the pass is cut
        critic = value_loss(per_token_values(model, self.head, *micro_batch.inputs), returns,
                            micro_batch.mask, normalizer=self.config.loss_normalizer,
                            max_completion_length=self.config.max_completion_length)
        return self.config.value_coef * critic, {"value_loss": critic.item()}

    @property
    def state(self) -> dict:
        return {"value_head": {k: v.detach().clone() for k, v in self.head.state_dict().items()}}

    def load_state(self, state: dict) -> None:
        self.head.load_state_dict(state["value_head"])

