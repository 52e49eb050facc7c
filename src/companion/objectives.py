"""GRPO, Dr. GRPO, F-ISFT+ and F-ISFT± as one loss: a per-sample weight and a length normaliser.

The book's thesis in code. Every algorithm here turns the G rewards of a prompt into per-sample weights
w_i (:func:`sample_weights`) and then minimises the same token-level loss (:func:`policy_loss`); they differ
only in the weight rule and in how per-token terms are averaged (the *normaliser*). :data:`ALGORITHMS`
is the table of DESIGN.md §2 as data.

Conventions (the trainer's and TRL's): a batch is B prompts × G completions (``num_generations``),
flattened prompt-major, so row ``b * G + g`` is completion g of prompt b; tensors are ``(B*G,)`` per
sample and ``(B*G, T)`` per token, padded on the right, with ``completion_mask`` 1 on real tokens.

Normalisers (how per-token terms ℓ_{i,t} become one number; N = B*G rows, |o_i| = tokens in row i):

- ``sequence``   (1/N) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}      GRPO / TRL ``loss_type="grpo"``
- ``token``      Σ_{i,t} ℓ_{i,t} / Σ_i |o_i|          DAPO-like / TRL ``"bnpo"``
- ``constant``   Σ_{i,t} ℓ_{i,t} / (N · L_max)        Dr. GRPO / TRL ``"dr_grpo"``, L_max = ``max_completion_length``
- ``kept_token`` Σ_{i∈K,t} ℓ_{i,t} / Σ_{i∈K} |o_i|    K = rows with w_i ≠ 0: the SFT token mean over the
  samples a filter kept. F-ISFT+ uses it: its loss is then exactly the supervised cross-entropy on the
  correct samples, whatever else is in the batch. (``token`` would also count the dropped samples' tokens
  in the denominator, scaling the step by the batch's success rate.)

Matching TRL 1.16 (read from ``trl/trainer/grpo_trainer.py``): its group scaling is
(R − mean) / (std + 1e-4) with the Bessel-corrected std (``nanstd``), our ``std="sample"`` default; its
``grpo``, ``dr_grpo`` and ``bnpo`` losses are our ``sequence``, ``constant`` and ``token`` normalisers over
the rows of one micro-batch; it then divides by the gradient-accumulation steps, which is the trainer's
business, not the loss's. Two differences, both deliberate: zero-spread groups get exactly 0 here (TRL
leaves float dust of ~1e-13), and the KL is the plain k3 unless ``use_bias_correction_kl=True`` (TRL's
default).

The collapse (DESIGN.md §2): on-policy (ρ = 1), β = 0, the gradient of :func:`policy_loss` with
advantages Â equals the gradient of :func:`weighted_nll` with weights Â, under any normaliser.
``tests/test_objectives.py`` checks it with autograd; ``tests/test_objectives_trl.py`` checks
:func:`policy_loss` against TRL's own loss code.

A batch too large for one pass is run in micro-batches: each one's loss is :func:`policy_loss` over its own rows,
scaled by its part of the whole batch's denominator (:func:`loss_denominators`, the one place that says what each
normaliser divides by), so that the micro-batches' losses and gradients add up to the whole batch's exactly.
PPO's per-token credit (GAE, whitening, the value loss) is :mod:`companion.ppo`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

NORMALIZERS = ("sequence", "token", "constant", "kept_token")
STD_KINDS = ("sample", "population")


# --------------------------------------------------------------------------------------------------
# Weights: rewards (B*G,) -> w (B*G,)
# --------------------------------------------------------------------------------------------------


def _grouped(rewards, num_generations: int) -> torch.Tensor:
    """Rewards as a float (B, G) tensor, with the checks every weight rule needs."""
    rewards = torch.as_tensor(rewards)
    if rewards.dtype != torch.float64:
        rewards = rewards.float()  # integers and half precision: the std of small spreads needs >= float32
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, one per completion (B*G,); got shape {tuple(rewards.shape)}")
    if not isinstance(num_generations, int) or num_generations < 2:
        raise ValueError(f"num_generations must be an int >= 2 (a group needs a spread); got {num_generations!r}")
    if rewards.numel() == 0 or rewards.numel() % num_generations:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of num_generations={num_generations}: "
            "pass B*G rewards, prompt-major (row b*G + g)"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf: map unscorable completions to a number (e.g. 0.0) first")
    return rewards.view(-1, num_generations)  # (B, G)


def zero_spread_groups(rewards, num_generations: int) -> torch.Tensor:
    """(B,) bool: groups whose G rewards are all equal. Group-relative weights give them nothing.

    Equality is exact: verifier rewards are a few discrete values, so "all equal" is a fact, not a
    tolerance. The trainer logs the fraction (TRL calls it ``frac_reward_zero_std``).

    >>> zero_spread_groups([1., 1., 0., 1., 0.1, 0.1], num_generations=2).tolist()
    [True, False, True]
    """
    grouped = _grouped(rewards, num_generations)  # (B, G)
    return grouped.amax(dim=1) == grouped.amin(dim=1)


def group_std(grouped_rewards: torch.Tensor, std: str = "sample") -> torch.Tensor:
    """(B, G) -> (B, 1) standard deviation of each group.

    ``"sample"`` divides by G−1 (Bessel; ``torch.std``'s default and what TRL 1.16 uses via
    ``trl.trainer.utils.nanstd``); ``"population"`` divides by G (the form in which the closed forms
    Â⁺ = √((1−p)/p), Â⁻ = −√(p/(1−p)) hold). They differ by the factor √(G/(G−1)) on every group.

    >>> group_std(torch.tensor([[1., 0.]]), "population").item(), group_std(torch.tensor([[1., 0.]])).item()
    (0.5, 0.7071067690849304)
    """
    if std not in STD_KINDS:
        raise ValueError(f"std must be one of {STD_KINDS}; got {std!r}")
    return grouped_rewards.std(dim=1, keepdim=True, correction=1 if std == "sample" else 0)


def grpo_weights(grouped: torch.Tensor, *, eps_std: float, std: str) -> torch.Tensor:
    """Â_i = (R_i − mean R) / (std R + eps_std) within each group; (B, G) -> (B, G).

    Zero-spread groups get exactly 0 (in floats R − mean can be ~1e-17 there, and with eps_std=0 it is 0/0).
    """
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    spread = grouped.amax(dim=1, keepdim=True) > grouped.amin(dim=1, keepdim=True)  # (B, 1)
    scaled = centred / (group_std(grouped, std) + eps_std)
    return torch.where(spread, scaled, torch.zeros_like(scaled))


def dr_grpo_weights(grouped: torch.Tensor) -> torch.Tensor:
    """R_i − mean R, no division by the std (Liu et al. 2025; TRL ``scale_rewards="none"``); (B, G) -> (B, G)."""
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    spread = grouped.amax(dim=1, keepdim=True) > grouped.amin(dim=1, keepdim=True)
    return torch.where(spread, centred, torch.zeros_like(centred))


def fisft_plus_weights(grouped: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """1 for a correct sample (R ≥ threshold), 0 otherwise; (B, G) -> (B, G).

    Groups with no correct sample are thereby dropped; all-correct groups are kept (SFT on them is still
    SFT on correct samples), unlike the group-relative rules.
    """
    return (grouped >= threshold).to(grouped.dtype)


def _mixed(correct: torch.Tensor) -> torch.Tensor:
    """(B, G) bool -> (B, 1): groups that hold both a correct and a wrong sample."""
    return correct.any(dim=1, keepdim=True) & ~correct.all(dim=1, keepdim=True)


def fisft_pm_weights(grouped: torch.Tensor, *, threshold: float, lam: float) -> torch.Tensor:
    """+1 for a correct sample, −λ for a wrong one, in groups that hold both; 0 elsewhere; (B, G) -> (B, G)."""
    correct = grouped >= threshold  # (B, G)
    signed = torch.where(correct, torch.ones_like(grouped), torch.full_like(grouped, -lam))  # λ in the rewards' dtype
    return signed * _mixed(correct)


def fisft_minus_weights(grouped: torch.Tensor, *, threshold: float, lam: float) -> torch.Tensor:
    """−λ for a wrong sample in a group that also holds a correct one, 0 elsewhere: F-ISFT± without its positives;
    (B, G) -> (B, G)."""
    correct = grouped >= threshold  # (B, G)
    return torch.where(~correct & _mixed(correct), torch.full_like(grouped, -lam), torch.zeros_like(grouped))


def reinforce_weights(grouped: torch.Tensor, *, threshold: float, positive_weight: float) -> torch.Tensor:
    """``positive_weight`` for a correct sample, −1 for a wrong one, in every group (REINFORCE with rewards +1 / −1
    and no baseline, its positive part scaled: Zhu et al.'s W-REINFORCE; 0 is their NSR); (B, G) -> (B, G)."""
    correct = grouped >= threshold
    return torch.where(correct, torch.full_like(grouped, positive_weight), -torch.ones_like(grouped))


@dataclass(frozen=True)
class Algorithm:
    """One row of the algorithm table: how rewards become weights, and the default normaliser."""

    name: str
    weights: Callable[..., torch.Tensor]  # (B, G) rewards, **knobs -> (B, G) weights
    knobs: tuple[str, ...]  # the keyword arguments of `sample_weights` this rule reads
    normalizer: str  # default length normaliser for `policy_loss`
    rule: str  # w_i for correct / wrong samples, in words
    groups: str  # which groups get non-zero weight
    source: str  # where the rule comes from


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm(
            "grpo", grpo_weights, ("eps_std", "std"), "sequence",
            rule="Â⁺ / Â⁻: (R − mean R) / (std R + eps_std)",
            groups="reward spread > 0",
            source="Shao et al. 2024 (DeepSeekMath); TRL loss_type='grpo', scale_rewards='group'",
        ),
        Algorithm(
            "dr_grpo", dr_grpo_weights, (), "constant",
            rule="R − mean R (no std)",
            groups="reward spread > 0",
            source="Liu et al. 2025 (Dr. GRPO); TRL loss_type='dr_grpo', scale_rewards='none'",
        ),
        Algorithm(
            "fisft_plus", fisft_plus_weights, ("threshold",), "kept_token",
            rule="1 / 0",
            groups="at least one correct sample",
            source="F-ISFT+ (RL in Name Only?); rule as defined by this book",
        ),
        Algorithm(
            "fisft_pm", fisft_pm_weights, ("threshold", "lam"), "sequence",
            rule="+1 / −λ",
            groups="both correct and wrong samples",
            source="F-ISFT± (RL in Name Only?); rule as defined by this book",
        ),
    )
}


FOLLOW_UPS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm(
            "fisft_minus", fisft_minus_weights, ("threshold", "lam"), "sequence",
            rule="0 / −λ",
            groups="both correct and wrong samples",
            source="F-ISFT− (RL in Name Only?, arXiv 2505.13697): F-ISFT± without its positives; rule as defined by "
                   "this book",
        ),
        Algorithm(
            "nsr", functools.partial(reinforce_weights, positive_weight=0.0), ("threshold",), "token",
            rule="0 / −1",
            groups="every completion (no groups)",
            source="NSR, Zhu et al. 2025 (arXiv 2506.01347): only the −1 rewards of REINFORCE; token mean",
        ),
        Algorithm(
            "w_reinforce", reinforce_weights, ("threshold", "positive_weight"), "token",
            rule="+λ / −1 (λ = positive_weight, 0.1)",
            groups="every completion (no groups)",
            source="W-REINFORCE, Zhu et al. 2025 (arXiv 2506.01347): REINFORCE with the +1 rewards down-weighted",
        ),
    )
}
"""Rules of the papers that followed, which the book trains beside the four (chapter 6: negatives alone): F-ISFT−,
NSR and W-REINFORCE. Their weights are one per completion, as the four's; they are kept apart from
:data:`ALGORITHMS` because chapters 2 and 3 study exactly the four."""

WEIGHT_RULES: dict[str, Algorithm] = {**ALGORITHMS, **FOLLOW_UPS}
"""Every rule that turns rewards into one weight per completion (:func:`sample_weights`)."""


PPO = Algorithm(
    "ppo", None, (), "token",
    rule="Â_t per token: GAE(γ, λ) of the terminal reward on a learned value, whitened",
    groups="every completion (no groups)",
    source="Schulman et al. 2017 (PPO), GAE (Schulman et al. 2016); TRL's PPOTrainer",
)
"""PPO with a value head: the one rule here that breaks assumption A2 (the reward split uniformly over the tokens).
Its weights are per token (:func:`gae` on the value head's estimates, then :func:`whiten`), so it is not in
:data:`ALGORITHMS` (whose rules turn a group's rewards into one weight per completion, what chapters 2-3 study); the
trainer knows it (:data:`TRAINABLE`). Its default normaliser is the token mean, as in TRL's PPOTrainer."""

TRAINABLE: dict[str, Algorithm] = {**WEIGHT_RULES, PPO.name: PPO}
"""Every algorithm the trainer runs: the weight rules of :data:`WEIGHT_RULES`, and :data:`PPO`."""


def get_algorithm(algo: str) -> Algorithm:
    """The :data:`WEIGHT_RULES` entry for ``algo``, or a ValueError naming the known ones."""
    if algo not in WEIGHT_RULES:
        raise ValueError(f"unknown algo {algo!r}; known: {', '.join(WEIGHT_RULES)}")
    return WEIGHT_RULES[algo]


def resolve_normalizer(algo: str, normalizer: str = "") -> str:
    """The length normaliser a run uses: ``normalizer``, or ``algo``'s own when it is ``""`` (unset).

    >>> resolve_normalizer("fisft_plus"), resolve_normalizer("grpo", "constant")
    ('kept_token', 'constant')
    """
    if normalizer not in ("",) + NORMALIZERS:
        raise ValueError(f"normalizer must be one of {', '.join(NORMALIZERS)} (or '' for the algorithm's own), got "
                         f"{normalizer!r}")
    if algo not in TRAINABLE:
        raise ValueError(f"unknown algo {algo!r}; known: {', '.join(TRAINABLE)}")
    return normalizer or TRAINABLE[algo].normalizer


def algorithm_table(rules: dict[str, Algorithm] = ALGORITHMS) -> list[dict[str, str]]:
    """DESIGN.md §2's table, from the code: one record per algorithm of ``rules`` (:data:`FOLLOW_UPS` for the
    follow-ups' rules).

    >>> for row in algorithm_table():
    ...     print(f"{row['name']:<11}| {row['rule']:<44}| {row['groups']:<31}| {row['normalizer']}")
    grpo       | Â⁺ / Â⁻: (R − mean R) / (std R + eps_std)   | reward spread > 0              | sequence
    dr_grpo    | R − mean R (no std)                         | reward spread > 0              | constant
    fisft_plus | 1 / 0                                       | at least one correct sample    | kept_token
    fisft_pm   | +1 / −λ                                     | both correct and wrong samples | sequence
    """
    return [
        dict(name=a.name, rule=a.rule, groups=a.groups, normalizer=a.normalizer,
             knobs=", ".join(a.knobs) or "-", source=a.source)
        for a in rules.values()
    ]


def sample_weights(
    rewards,
    num_generations: int,
    *,
    algo: str,
    lam: float = 1.0,
    threshold: float = 1.0,
    eps_std: float = 1e-4,
    std: str = "sample",
    positive_weight: float = 0.1,
) -> torch.Tensor:
    """Per-sample weights w_i, shape (B*G,), for ``algo`` (a key of :data:`WEIGHT_RULES`).

    Args:
        rewards: (B*G,) verifier rewards, prompt-major (row ``b * G + g``); tensor or list.
        num_generations: G, completions per prompt.
        algo: ``"grpo"``, ``"dr_grpo"``, ``"fisft_plus"`` or ``"fisft_pm"``; or a follow-up's rule (``"fisft_minus"``,
            ``"nsr"``, ``"w_reinforce"``).
        lam: λ ≥ 0, the weight magnitude of a wrong sample in ``fisft_pm`` and ``fisft_minus``.
        threshold: a sample is *correct* when R ≥ threshold (``fisft_*`` only). The default 1.0 is the
            verifiers' full reward; the Countdown verifier gives 0.1 to a well-formed wrong answer, which
            must count as wrong.
        eps_std: added to the group std before dividing (``grpo`` only). 1e-4 is TRL's hard-coded value.
        std: ``"sample"`` (default; G−1 denominator, what TRL does, so our ``grpo`` is the GRPO people
            run) or ``"population"`` (G denominator, the closed forms of DESIGN.md §2). Only the
            overall scale changes, by √((G−1)/G).
        positive_weight: the weight of a correct sample in ``w_reinforce`` (0.1, Zhu et al.'s λ).

    Knobs an algorithm does not use are ignored (``ALGORITHMS[algo].knobs`` lists the ones it reads), so
    a trainer may pass its whole config. Groups listed by :func:`zero_spread_groups` get weight 0 under
    every rule except ``fisft_plus`` on an all-correct group.

    >>> w = sample_weights([1., 0., 0., 0.], 4, algo="grpo", std="population", eps_std=0.0)  # √3, −1/√3
    >>> [round(x, 4) for x in w.tolist()]
    [1.7321, -0.5774, -0.5774, -0.5774]
    >>> sample_weights([1., 0.1, 1., 1.], 2, algo="fisft_pm", lam=0.5).tolist()
    [1.0, -0.5, 0.0, 0.0]
    >>> sample_weights([1., 0.1, 1., 1.], 2, algo="fisft_plus").tolist()
    [1.0, 0.0, 1.0, 1.0]
    >>> sample_weights([1., 0.1, 0., 0.], 2, algo="fisft_minus").tolist(), sample_weights([1., 0.1, 0., 0.], 2, algo="nsr").tolist()
    ([0.0, -1.0, 0.0, 0.0], [0.0, -1.0, -1.0, -1.0])
    >>> [round(w, 2) for w in sample_weights([1., 0.1, 0., 0.], 2, algo="w_reinforce").tolist()]
    [0.1, -1.0, -1.0, -1.0]
    """
    spec = get_algorithm(algo)
    if lam < 0:
        raise ValueError(f"lam is the size of the penalty on wrong samples and must be >= 0; got {lam}")
    if eps_std < 0:
        raise ValueError(f"eps_std must be >= 0; got {eps_std}")
    grouped = _grouped(rewards, num_generations)  # (B, G)
    knobs = dict(lam=lam, threshold=threshold, eps_std=eps_std, std=std, positive_weight=positive_weight)
    weights = spec.weights(grouped, **{k: knobs[k] for k in spec.knobs})  # (B, G)
    return weights.reshape(-1)  # (B*G,)


# --------------------------------------------------------------------------------------------------
# Losses: per-token terms (B*G, T) -> scalar
# --------------------------------------------------------------------------------------------------


def aggregate(
    per_token_loss: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    normalizer: str = "sequence",
    weights: torch.Tensor | None = None,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """Average per-token terms (N, T) into one scalar with a length normaliser (see the module docstring).

    ``weights`` (N,) is needed by ``kept_token`` only (rows with w ≠ 0 are kept); ``max_completion_length``
    (L_max) by ``constant`` only. Empty denominators are clamped to 1, so a batch with nothing kept
    gives 0 (and no gradient) instead of NaN.

    >>> ell = torch.tensor([[1., 2., 3.], [4., 0., 0.]]); m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> [aggregate(ell, m, normalizer=n, weights=torch.tensor([1., 0.]), max_completion_length=4).item()
    ...  for n in NORMALIZERS]
    [3.0, 2.5, 1.25, 2.0]
    """
    _check_aggregate_inputs(per_token_loss, completion_mask, normalizer, weights, max_completion_length)
    mask = completion_mask.to(per_token_loss.dtype)  # (N, T)
    if normalizer == "sequence":
        per_row = (per_token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (N,)
        return per_row.mean()
    if normalizer == "token":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if normalizer == "constant":
        return (per_token_loss * mask).sum() / (mask.shape[0] * max_completion_length)
    kept = mask * weighted_rows(weights).to(mask.dtype).unsqueeze(1)  # (N, T): kept_token
    return (per_token_loss * kept).sum() / kept.sum().clamp(min=1.0)


def _check_aggregate_inputs(per_token_loss, completion_mask, normalizer, weights, max_completion_length):
    """The checks of :func:`aggregate`: a known normaliser, matching (N, T) shapes, and what the normaliser needs."""
    if normalizer not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {normalizer!r}; known: {', '.join(NORMALIZERS)}")
    if per_token_loss.dim() != 2 or completion_mask.shape != per_token_loss.shape:
        raise ValueError(
            f"per-token terms and completion_mask must both be (B*G, T); got {tuple(per_token_loss.shape)} "
            f"and {tuple(completion_mask.shape)}"
        )
    if normalizer == "constant":
        if max_completion_length is None:
            raise ValueError("normalizer='constant' divides by max_completion_length: pass it (the generation limit)")
        if completion_mask.shape[1] > max_completion_length:
            raise ValueError(
                f"completions are {completion_mask.shape[1]} tokens wide but "
                f"max_completion_length={max_completion_length}: "
                "pass the generation limit the completions were sampled with"
            )
    if normalizer == "kept_token" and weights is None:
        raise ValueError("normalizer='kept_token' keeps rows with non-zero weight: pass weights (B*G,)")


def weighted_rows(weights: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows with a non-zero weight, for one weight per row (N,) or per token (N, T)."""
    return weights != 0 if weights.dim() == 1 else (weights != 0).any(dim=1)


def rows_with_weight(weights: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """The rows a loss needs: without a KL term (β = 0) a zero-weight completion adds exactly 0 to the loss and to
    its gradient, so only the others; every row when β > 0. (N,) or (N, T) weights -> (n,) row indices.

    >>> rows_with_weight(torch.tensor([0.5, 0.0, -1.0])).tolist(), rows_with_weight(torch.zeros(2), 0.1).tolist()
    ([0, 2], [0, 1])
    """
    rows = torch.arange(len(weights), device=weights.device)
    return rows if beta > 0 else rows[weighted_rows(weights)]


def loss_denominators(normalizer: str, completion_mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """What each row adds to the denominator :func:`aggregate` divides by: 1 per row (``sequence``, ``constant``),
    its tokens (``token``), or its tokens if it has a weight (``kept_token``). (N, T), (N,) -> (N,) float64.

    Summed over a batch (and over data-parallel processes) it is the whole batch's denominator; a micro-batch's loss
    over its own rows, times its rows' sum over that total, is its exact part of the whole batch's loss.

    >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    >>> [loss_denominators(n, mask, torch.tensor([1., 0., -1.])).tolist() for n in ("sequence", "token", "kept_token")]
    [[1.0, 1.0, 1.0], [2.0, 1.0, 3.0], [2.0, 0.0, 3.0]]
    """
    if normalizer not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {normalizer!r}; known: {', '.join(NORMALIZERS)}")
    if normalizer in ("sequence", "constant"):
        return torch.ones(completion_mask.shape[0], dtype=torch.float64, device=completion_mask.device)
    tokens = completion_mask.sum(dim=1).to(torch.float64)  # (N,)
    return tokens if normalizer == "token" else tokens * weighted_rows(weights).to(torch.float64)


def _token_weights(weights: torch.Tensor, dtype) -> torch.Tensor:
    """Weights broadcastable over (N, T): a row's weight on every token (A2), or per-token weights as they are."""
    return weights.to(dtype).unsqueeze(1) if weights.dim() == 1 else weights.to(dtype)


def policy_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor | None,
    weights: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_per_token_logps: torch.Tensor | None = None,
    use_bias_correction_kl: bool = False,
    normalizer: str = "sequence",
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped-surrogate loss every algorithm minimises: −J of DESIGN.md §2, with per-sample weights w_i.

    Args:
        per_token_logps: (B*G, T) log π_θ of the completion tokens, with gradient.
        old_per_token_logps: (B*G, T) log π_old of the sampler; ``None``: on-policy (ρ = 1 in value, not in gradient).
        weights: (B*G,) w_i from :func:`sample_weights` (GRPO's advantages Â_i, F-ISFT's 1/0 or +1/−λ), or
            (B*G, T) per-token weights (PPO's advantages Â_t, :func:`gae`).
        completion_mask: (B*G, T) 1 on real completion tokens.
        epsilon, epsilon_high: the clip range [1 − epsilon, 1 + epsilon_high]; epsilon_high defaults to epsilon.
        beta, ref_per_token_logps: KL penalty weight and (B*G, T) log π_ref (the KL is measured whenever given).
        use_bias_correction_kl: k3·ρ, an unbiased reverse-KL gradient (TRL 1.16's default); the book's J has plain k3.
        normalizer, max_completion_length: how per-token terms become one number (:func:`aggregate`).

    Returns ``(loss, stats)``: the scalar to ``.backward()``, and floats over real tokens (TRL's names): ``ratio_mean``,
    ``clip_ratio/{low,high,region}_mean`` (fraction of tokens whose gradient the clip removes) and ``kl`` if measured.
    """
    # 0. inputs: one weight per completion, one mask entry per token; on-policy means old = current
    _check_loss_inputs(per_token_logps, old_per_token_logps, weights, completion_mask, epsilon=epsilon,
                       epsilon_high=epsilon_high, beta=beta, ref_per_token_logps=ref_per_token_logps)
    if old_per_token_logps is None:
        old_per_token_logps = per_token_logps.detach()
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    w = _token_weights(weights, per_token_logps.dtype)  # (B*G, 1): A2, every token its sample's weight; or (B*G, T)

    # 1. importance ratio ρ = π_θ / π_old per token
    ratio = torch.exp(per_token_logps - old_per_token_logps.detach())  # (B*G, T)

    # 2. PPO's pessimistic clipped surrogate, as a loss: −min(ρw, clip(ρ, 1−ε, 1+ε_high)w)
    clipped_ratio = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(ratio * w, clipped_ratio * w)  # (B*G, T)

    # 3. KL(π_θ ‖ π_ref) per token with the k3 estimator e^{ref−logp} − (ref−logp) − 1 (≥ 0, unbiased)
    per_token_kl = None
    if ref_per_token_logps is not None:
        delta = ref_per_token_logps.detach() - per_token_logps  # (B*G, T)
        per_token_kl = torch.exp(delta) - delta - 1
        per_token_kl = per_token_kl * ratio if use_bias_correction_kl else per_token_kl
        if beta > 0:
            per_token_loss = per_token_loss + beta * per_token_kl

    # 4. length normalisation: the one place the algorithms' losses differ beyond their weights
    loss = aggregate(per_token_loss, completion_mask, normalizer=normalizer, weights=weights,
                     max_completion_length=max_completion_length)

    # 5. diagnostics: how far from on-policy, how much the clip bit, how far from the reference
    return loss, _loss_stats(ratio, w, completion_mask, eps_low, eps_high, per_token_kl)


def _check_rows(per_token_logps: torch.Tensor, weights: torch.Tensor, completion_mask: torch.Tensor):
    """One weight per completion (or per token) and one mask entry per token, as :func:`policy_loss` and
    :func:`weighted_nll` need."""
    if per_token_logps.dim() != 2:
        raise ValueError(f"per_token_logps must be (B*G, T); got shape {tuple(per_token_logps.shape)}")
    if completion_mask.shape != per_token_logps.shape:
        raise ValueError(
            f"completion_mask {tuple(completion_mask.shape)} must match per_token_logps {tuple(per_token_logps.shape)}"
        )
    if weights.shape != per_token_logps.shape[:1] and weights.shape != per_token_logps.shape:
        raise ValueError(
            f"weights must be one per completion, shape ({per_token_logps.shape[0]},), or one per token, shape "
            f"{tuple(per_token_logps.shape)}; got {tuple(weights.shape)}"
        )


def _check_loss_inputs(per_token_logps, old_per_token_logps, weights, completion_mask, *,
                       epsilon, epsilon_high, beta, ref_per_token_logps):
    """The checks of :func:`policy_loss`, each error saying what to change."""
    _check_rows(per_token_logps, weights, completion_mask)
    if old_per_token_logps is not None and old_per_token_logps.shape != per_token_logps.shape:
        raise ValueError(
            f"old_per_token_logps {tuple(old_per_token_logps.shape)} must match per_token_logps "
            f"{tuple(per_token_logps.shape)}"
        )
    if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
        raise ValueError(f"clip ranges must be >= 0; got epsilon={epsilon}, epsilon_high={epsilon_high}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    if beta > 0 and ref_per_token_logps is None:
        raise ValueError("beta > 0 adds a KL penalty to the reference policy: pass ref_per_token_logps")


def _loss_stats(ratio, w, completion_mask, eps_low, eps_high, per_token_kl) -> dict[str, float]:
    """:func:`policy_loss`'s diagnostics, token means over real tokens (TRL's names): mean ρ, the fraction of
    tokens whose gradient the clip removes (below, above, either), and the mean per-token KL term if measured."""
    with torch.no_grad():
        mask = completion_mask.to(w.dtype)  # (B*G, T)
        n_tokens = mask.sum().clamp(min=1.0)

        def token_mean(x):
            return ((x.to(mask.dtype) * mask).sum() / n_tokens).item()

        low = (ratio < 1 - eps_low) & (w < 0)  # clip removes the push further down
        high = (ratio > 1 + eps_high) & (w > 0)  # clip removes the push further up
        stats = {
            "ratio_mean": token_mean(ratio),
            "clip_ratio/low_mean": token_mean(low),
            "clip_ratio/high_mean": token_mean(high),
            "clip_ratio/region_mean": token_mean(low | high),
        }
        if per_token_kl is not None:
            stats["kl"] = token_mean(per_token_kl)
    return stats


def weighted_nll(
    per_token_logps: torch.Tensor,
    weights: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    normalizer: str = "sequence",
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """The collapsed, SFT form: weighted negative log-likelihood of the model's own samples.

    With ``normalizer="sequence"`` this is −(1/N) Σ_i (w_i / |o_i|) Σ_t log π(o_{i,t}), N = B*G; its
    gradient equals that of :func:`policy_loss` on-policy with β = 0 (the collapse). With weights 1 on
    the correct samples and ``kept_token`` it is plain SFT cross-entropy on them (F-ISFT+).

    >>> logps = torch.log(torch.tensor([[0.5, 0.5], [0.25, 1.0]]))
    >>> round(weighted_nll(logps, torch.tensor([1., 0.]), torch.tensor([[1, 1], [1, 0]])).item(), 4)
    0.3466
    """
    _check_rows(per_token_logps, weights, completion_mask)
    per_token_loss = -_token_weights(weights, per_token_logps.dtype) * per_token_logps  # (B*G, T)
    return aggregate(per_token_loss, completion_mask, normalizer=normalizer, weights=weights,
                     max_completion_length=max_completion_length)
