"""Reference test: our `policy_loss` against TRL 1.16's own GRPO loss code, run on the same tensors.

TRL's loss lives in `GRPOTrainer._compute_loss(model, inputs)`. We call that bound method on a trainer made
with `GRPOTrainer.__new__` (no model loading, no datasets, no generation), given the attributes
`GRPOTrainer.__init__` derives from a real `GRPOConfig`, and a stub model standing in for a model patched by
TRL's `add_fused_lm_head`: it returns the per-token log-probs of the completion tokens, computed from a logits
parameter. Both losses are differentiated with respect to that parameter and compared, value and gradient.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from companion.objectives import group_std, policy_loss, sample_weights

trl = pytest.importorskip("trl", reason="trl is not importable: install the test extras (pip install -e '.[test]')")
if trl.__version__ != "1.16.0":
    pytest.skip(f"the reference calls TRL 1.16.0 internals; found trl {trl.__version__}", allow_module_level=True)

from accelerate import Accelerator  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

G, B, P, T, V = 4, 3, 2, 6, 7  # generations, prompts, prompt length, completion length, vocab
L_MAX = 8  # max_completion_length, > T so the constant normaliser is not the token count


class FusedLogpsModel(torch.nn.Module):
    """Plays a model patched with trl's `add_fused_lm_head`: `model(..., fused_lm_head=True).log_probs`."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)  # (N, T, V) float64

    def completion_logps(self, completion_ids):  # (N, T) -> (N, T)
        return torch.log_softmax(self.logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)

    def forward(self, input_ids, attention_mask, labels, fused_lm_head):
        assert fused_lm_head, "trl 1.16 asks for fused log-probs"
        logps = self.completion_logps(input_ids[:, -T:])  # (N, T), the completion is the last T tokens
        prompt_part = torch.zeros(input_ids.shape[0], input_ids.shape[1] - T, dtype=logps.dtype)
        full = torch.cat([prompt_part, logps], dim=1)  # (N, P+T); trl keeps the last T
        return SimpleNamespace(log_probs=full, entropy=torch.zeros_like(full))


def trl_trainer(model, tmp_path, **config) -> GRPOTrainer:
    """A GRPOTrainer with only what `_compute_loss` reads, set the way trl 1.16's `__init__` sets it."""
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[],
                      max_completion_length=L_MAX, **config)
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.args = args
    trainer.model = model
    trainer.accelerator = Accelerator(cpu=True)
    trainer.loss_type = args.loss_type
    trainer.beta = args.beta
    trainer.epsilon_low = args.epsilon
    trainer.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    trainer.max_completion_length = args.max_completion_length
    trainer.importance_sampling_level = args.importance_sampling_level
    trainer.off_policy_mask_threshold = args.off_policy_mask_threshold
    trainer.top_entropy_quantile = args.top_entropy_quantile
    trainer.use_vllm = args.use_vllm
    trainer.vllm_importance_sampling_correction = args.vllm_importance_sampling_correction
    trainer.aux_loss_enabled = False  # set from the model config in trl; ours is not a mixture of experts
    trainer._entropy_bonus_enabled = args.entropy_coef != 0.0 or args.use_adaptive_entropy
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    return trainer


def make_batch(seed: int, algo: str):
    """Tokens, masks of varied lengths, rewards with a zero-spread group, and a model in float64."""
    gen = torch.Generator().manual_seed(seed)
    N = B * G
    completion_ids = torch.randint(0, V, (N, T), generator=gen)
    lengths = torch.randint(1, T + 1, (N,), generator=gen)
    completion_mask = (torch.arange(T) < lengths.unsqueeze(1)).long()  # (N, T)
    rewards = torch.tensor([1.0, 0.1, 0.0, 1.0,  # mixed
                            0.1, 0.1, 0.1, 0.1,  # zero spread: no signal
                            1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    model = FusedLogpsModel(torch.randn(N, T, V, generator=gen, dtype=torch.float64))
    return dict(
        model=model,
        prompt_ids=torch.randint(0, V, (N, P), generator=gen),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        advantages=sample_weights(rewards, G, algo=algo),
        noise=torch.randn(N, T, generator=gen, dtype=torch.float64),
    )


def run_both(tmp_path, *, loss_type, off_policy, beta=0.0, bias_correction=False, epsilon_high=None, seed=0):
    """Loss, gradient and stats from trl's `_compute_loss` and from our `policy_loss`, on one batch."""
    algo = {"bnpo": "grpo"}.get(loss_type, loss_type)
    batch = make_batch(seed, algo)
    model = batch["model"]
    with torch.no_grad():
        current = model.completion_logps(batch["completion_ids"])
    # off-policy: π_old drawn around π_θ with log-ratios of scale 0.3, so many tokens leave [0.8, 1.2]
    old = current + 0.3 * batch["noise"] if off_policy else None
    ref = current - 0.5 * batch["noise"].flip(0) if beta > 0 else None

    inputs = dict(prompt_ids=batch["prompt_ids"], prompt_mask=torch.ones_like(batch["prompt_ids"]),
                  completion_ids=batch["completion_ids"], completion_mask=batch["completion_mask"],
                  advantages=batch["advantages"], old_per_token_logps=old, ref_per_token_logps=ref)
    trainer = trl_trainer(model, tmp_path, loss_type=loss_type, beta=beta, epsilon=0.2, epsilon_high=epsilon_high,
                          use_bias_correction_kl=bias_correction)
    trl_loss = trainer._compute_loss(model, inputs)
    (trl_grad,) = torch.autograd.grad(trl_loss, model.logits)
    trl_stats = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    normalizer = {"grpo": "sequence", "dr_grpo": "constant", "bnpo": "token"}[loss_type]
    logps = model.completion_logps(batch["completion_ids"])
    ours, stats = policy_loss(logps, old, batch["advantages"], batch["completion_mask"], epsilon=0.2,
                              epsilon_high=epsilon_high, beta=beta, ref_per_token_logps=ref,
                              use_bias_correction_kl=bias_correction, normalizer=normalizer,
                              max_completion_length=L_MAX)
    (our_grad,) = torch.autograd.grad(ours, model.logits)
    return (trl_loss, trl_grad, trl_stats), (ours, our_grad, stats)


CASES = [
    pytest.param(dict(off_policy=False), id="on-policy"),
    pytest.param(dict(off_policy=True), id="off-policy-clipped"),
    pytest.param(dict(off_policy=True, epsilon_high=0.28), id="clip-higher"),
    pytest.param(dict(off_policy=False, beta=0.04), id="kl-on-policy"),
    pytest.param(dict(off_policy=True, beta=0.04), id="kl-off-policy"),
    pytest.param(dict(off_policy=True, beta=0.04, bias_correction=True), id="kl-bias-corrected"),
]


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo"])
@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradient_match_trl(tmp_path, loss_type, case):
    (trl_loss, trl_grad, trl_stats), (ours, our_grad, stats) = run_both(tmp_path, loss_type=loss_type, **case)
    if case["off_policy"]:  # the comparison must exercise the clip, not just the identity branch
        assert stats["clip_ratio/region_mean"] > 0.05
    assert trl_grad.abs().max() > 1e-3  # a real gradient, not two zeros
    torch.testing.assert_close(ours, trl_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(our_grad, trl_grad, rtol=1e-10, atol=1e-13)
    # trl logs its metrics through a float32 token count, hence the looser tolerance
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert stats[name] == pytest.approx(trl_stats[name], rel=1e-6, abs=1e-12)
    if case.get("beta"):
        assert stats["kl"] == pytest.approx(trl_stats["kl"], rel=1e-6)


def test_kl_bias_correction_changes_the_on_policy_gradient(tmp_path):
    """TRL 1.16 defaults to use_bias_correction_kl=True; on-policy the value is the same, the gradient is not."""
    (_, plain_grad, _), (plain, _, _) = run_both(tmp_path, loss_type="grpo", off_policy=False, beta=0.04)
    (_, corrected_grad, _), (corrected, _, _) = run_both(tmp_path, loss_type="grpo", off_policy=False, beta=0.04,
                                                         bias_correction=True)
    torch.testing.assert_close(plain, corrected)
    assert (plain_grad - corrected_grad).abs().max() > 1e-4


def test_sample_std_is_trls_std():
    """Our default `std="sample"` is trl's `nanstd` (Bessel-corrected), which its group scaling uses."""
    grouped = torch.tensor([[1.0, 0.0, 0.0, 0.1], [1.0, 1.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(group_std(grouped, "sample").squeeze(1), nanstd(grouped, dim=1))
    assert not torch.allclose(group_std(grouped, "population").squeeze(1), nanstd(grouped, dim=1))
