"""The trainer's algorithms as objects: what differs between them, behind one small interface.

Every algorithm answers the same four questions, so that the training step (:func:`companion.trainer.step`) reads
the same for all of them:

* ``parameters(model)``: which parameters train;
* ``weights(model, rollout, rewards, processes)``: phase 3, the weight of each completion (N,) or of each token
  (N, T), and what the record should say about it;
* ``rows(weights, beta)``: the completions the update runs;
* ``extra_loss(model, micro_batch)``: a loss added to the clipped surrogate, and its value for the record.

:class:`GroupRule` is every rule of the algorithm tables (:data:`companion.objectives.WEIGHT_RULES`: the book's
four and the follow-ups', each turning a group's rewards into one weight per completion); :class:`companion.ppo.PPO`
is the per-token one. A new rule is a row of a table, not a branch here.
"""

from __future__ import annotations

import torch

from companion.objectives import rows_with_weight, sample_weights


class GroupRule:
    """GRPO, Dr. GRPO, F-ISFT+, F-ISFT± (or a follow-up's rule): each completion's weight from the rewards of its
    group of G."""

    record_keys = ()
    state = None  # nothing to checkpoint

    def __init__(self, config):
        self.config = config

    def parameters(self, model) -> list:
        return [p for p in model.parameters() if p.requires_grad]

    def weights(self, model, rollout, rewards: torch.Tensor, processes) -> tuple[torch.Tensor, dict]:
        c = self.config
        weights = sample_weights(rewards, c.num_generations, algo=c.algo, lam=c.lam, threshold=c.threshold, std=c.std,
                                 positive_weight=c.positive_weight)
        return weights.to(rollout.completion_mask.device), {}  # (B*G,)

    def rows(self, weights: torch.Tensor, beta: float) -> torch.Tensor:
        """Without a KL term (β = 0) a zero-weight completion adds exactly 0 to the loss and its gradient, so only
        the others run; every row when β > 0."""
        return rows_with_weight(weights, beta)

    def extra_loss(self, model, micro_batch) -> tuple[float, dict]:
        return 0.0, {}

    def load_state(self, state: dict) -> None:
        pass


def algorithm_for(config, model):
    """The algorithm ``config.algo`` names, for ``model`` (PPO builds its value head on the model's trunk)."""
    if config.algo == "ppo":
        from companion.ppo import PPO

        return PPO(config, model)
    return GroupRule(config)
