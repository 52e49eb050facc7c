"""Chapter 3's simulation: why splitting the reward over tokens makes wrong answers longer.

A policy small enough to train in a fraction of a second, with just enough of an LLM's structure for
the length effect to appear: it writes tokens and ends its response by choosing the end-of-sequence
token. It is trained with the package's own weights (:func:`companion.objectives.sample_weights`) and
length normalisers (:func:`companion.objectives.weighted_nll`).

**The model.** There are ``num_prompts`` prompts. A response to prompt m is a sequence of tokens:

1. token 1 picks an *approach*, ``sound`` with probability σ(φ_m), else ``flawed``. The preference
   φ_m is learnt per prompt: which approach works is knowledge about a problem;
2. the next tokens are words, until the policy emits EOS. At position t it does so with probability
   σ(θ_{k,t}), which depends on the approach k and the position t but not on the prompt: how long to
   write is a habit shared across problems. EOS is impossible before ``min_length`` (the tokens every
   answer needs) and certain at ``max_completion_length``;
3. the verifier accepts a response of approach k and length l with probability
   a(k, l) = σ(logit(``approach_accuracy[k]``) + κ (l − μ₀)/σ₀), where κ is ``length_accuracy``
   (κ > 0: longer responses are right more often; κ < 0: less often), in log-odds per standard
   deviation σ₀ of the initial lengths, whose mean is μ₀.

The approach token lets the policy "know", while it writes, whether it is on a good path: its state
(approach, position) predicts the outcome. The length effect needs that. When both approaches are
equally accurate, right and wrong responses pass through the same states, and no update can lengthen
one without the other (chapter 3, exercise 2).

**Training.** Each step samples ``samples_per_step`` responses, ``num_generations`` for each of
``samples_per_step / num_generations`` prompts drawn at random, scores them (reward 1 or 0), turns the
rewards into weights with :func:`~companion.objectives.sample_weights` and takes a gradient step on
:func:`~companion.objectives.weighted_nll` with the run's normaliser. It uses ``weighted_nll`` rather than
``policy_loss`` because the simulation is on-policy, with β = 0 and one update per batch, which is where
chapter 2 proves their gradients are equal. :func:`simulate` says how the step size is set.

**What it predicts** (derived in chapter 3). On-policy, the expected update climbs ∇ E_o[r̃(o)], the
policy gradient of an *effective reward* r̃(o) = E[w | o] / n(o): the sample's expected weight divided
by its normaliser n(o) (|o| for ``sequence``, L_max for ``constant``). For a wrong path (w < 0),
``sequence`` gives r̃ = −|w|/|o|, which rises with length, so wrong paths grow. For a right path it falls,
so right answers shrink. With ``constant``, r̃ is flat in length, and a zero weight (F-ISFT+ on a wrong
sample) gives r̃ = 0. :func:`effective_reward` computes r̃, :func:`expected_gradient` the exact expected
update, and :func:`sampled_gradient` estimates the same update by Monte Carlo, which checks it.

Many runs train in lockstep (:func:`simulate` takes a list of configs), so a whole grid of settings costs
little more than one run. Each run has its own random generator, so its curve does not depend on which
other runs share the batch.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, fields, replace

import torch
from torch.nn.functional import logsigmoid
from tqdm.auto import tqdm

from companion import objectives
from companion.objectives import ALGORITHMS, NORMALIZERS, policy_loss, resolve_normalizer, weighted_nll
from companion.runs import torch_threads

APPROACHES = ("sound", "flawed")
ROW_MEAN_NORMALIZERS = ("sequence", "constant")
"""Normalisers that average over rows: a batch of k runs' stacked rows gives the mean of the k losses."""


@dataclass(frozen=True)
class LengthSimConfig:
    """One simulated training run. The fields a grid varies are the sliders of chapter 3's figure."""

    algo: str = field(default="grpo", metadata={"help": "weight rule", "choices": tuple(ALGORITHMS)})
    normalizer: str = field(default="", metadata={
        "help": "length normaliser; '' takes the algorithm's own", "choices": ("",) + NORMALIZERS})
    num_generations: int = field(default=8, metadata={"help": "G, responses per prompt"})
    base_accuracy: float = field(default=0.5, metadata={"help": "the policy's accuracy before training"})
    length_accuracy: float = field(default=0.0, metadata={
        "help": "κ: change in the log-odds of being right per initial standard deviation of length"})
    approach_accuracy: tuple[float, float] = field(default=(0.99, 0.01), metadata={
        "help": "accuracy of the sound and of the flawed approach (at the initial mean length)"})
    min_length: int = field(default=6, metadata={
        "help": "responses have at least this many tokens (EOS is impossible earlier)"})
    max_completion_length: int = field(default=48, metadata={"help": "L_max: every response ends here"})
    initial_mean_length: float = field(default=16.0, metadata={"help": "mean length before training"})
    initial_length_shape: float = field(default=4.0, metadata={
        "help": "negative-binomial shape of the initial lengths (larger: narrower)"})
    num_prompts: int = field(default=32, metadata={"help": "distinct prompts, each with its own approach preference"})
    samples_per_step: int = field(default=128, metadata={"help": "responses per step (a multiple of G)"})
    steps: int = field(default=150, metadata={"help": "gradient steps"})
    learning_rate: float = field(default=0.05, metadata={
        "help": "step size, in units of the run's initial gradient size (see simulate)"})
    calibration_batches: int = field(default=8, metadata={
        "help": "batches whose mean gradient sets the step size (see simulate)"})
    lam: float = field(default=1.0, metadata={"help": "λ, F-ISFT±'s weight on wrong samples"})
    record_every: int = field(default=5, metadata={"help": "record the policy's statistics every this many steps"})
    seed: int = field(default=0, metadata={"help": "seed of the run's random generator"})

    def __post_init__(self):
        if self.algo not in ALGORITHMS:  # the weight rules; ppo's per-token credit has no place in this model
            raise ValueError(f"unknown algo {self.algo!r} for the length simulator; known: {', '.join(ALGORITHMS)}")
        resolve_normalizer(self.algo, self.normalizer)  # raises on an unknown normaliser
        if self.num_generations < 2 or self.samples_per_step % self.num_generations:
            raise ValueError(f"samples_per_step ({self.samples_per_step}) must be a multiple of num_generations "
                             f"({self.num_generations}), which must be at least 2")
        if len(self.approach_accuracy) != 2 or not all(0 < a < 1 for a in self.approach_accuracy):
            raise ValueError(f"approach_accuracy must be two probabilities strictly between 0 and 1; "
                             f"got {self.approach_accuracy}")
        if not 2 <= self.min_length < self.max_completion_length:
            raise ValueError(f"min_length must lie in [2, max_completion_length); got {self.min_length}")
        if not self.min_length < self.initial_mean_length < self.max_completion_length:
            raise ValueError("initial_mean_length must lie strictly between min_length and max_completion_length")
        for name in ("initial_length_shape", "learning_rate", "steps", "record_every", "num_prompts",
                     "calibration_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if not 0 < self.base_accuracy < 1:
            raise ValueError(f"base_accuracy must lie strictly between 0 and 1; got {self.base_accuracy}")

    @property
    def resolved_normalizer(self) -> str:
        return resolve_normalizer(self.algo, self.normalizer)

    @property
    def prompts_per_step(self) -> int:
        return self.samples_per_step // self.num_generations


# --------------------------------------------------------------------------------------------------
# Credit per token, read off the package's loss
# --------------------------------------------------------------------------------------------------


def token_credit(lengths: list[int], correct: list[bool], *, algo: str = "grpo", normalizer: str = "",
                 max_completion_length: int | None = None, **weight_knobs) -> list[dict]:
    """The credit each token of each response of one group gets: −∂loss/∂log π(o_{i,t}) of ``policy_loss``.

    The gradient step raises log π(o_{i,t}) in proportion to this number, so it is the share of the update
    that token receives. ``normalizer`` '' takes the algorithm's own; ``weight_knobs`` go to
    :func:`objectives.sample_weights`. One record per response: its ``length``, ``correct``, ``weight`` w_i,
    ``credit`` per token (the same for every token of a response: assumption A2) and ``total`` = credit × |o|.

    >>> rows = token_credit([10, 40, 10, 40], [True, True, False, False], std="population", eps_std=0.0)
    >>> [(r["length"], r["correct"], round(r["credit"], 4), round(r["total"], 3)) for r in rows]
    [(10, True, 0.025, 0.25), (40, True, 0.0063, 0.25), (10, False, -0.025, -0.25), (40, False, -0.0063, -0.25)]
    """
    if len(lengths) != len(correct) or len(lengths) < 2:
        raise ValueError("give one length and one correct flag per response, at least two responses (one group)")
    if min(lengths) < 1:
        raise ValueError(f"lengths must be at least 1 token; got {lengths}")
    normalizer = resolve_normalizer(algo, normalizer)
    T = max(lengths)
    L_max = max_completion_length or T
    G = len(lengths)
    rewards = torch.tensor([1.0 if c else 0.0 for c in correct])
    weights = objectives.sample_weights(rewards, G, algo=algo, **weight_knobs)  # (G,)
    mask = (torch.arange(T) < torch.tensor(lengths)[:, None]).long()  # (G, T)
    logps = torch.zeros(G, T, dtype=torch.float64, requires_grad=True)  # the value does not matter on-policy
    loss, _ = policy_loss(logps, None, weights, mask, normalizer=normalizer, max_completion_length=L_max)
    (grad,) = torch.autograd.grad(loss, logps)
    credit = -grad[:, 0]  # (G,) every real token of a row gets the same
    return [dict(algo=algo, normalizer=normalizer, sample=i, length=n, correct=bool(c), weight=w,
                 credit=g, total=g * n)
            for i, (n, c, w, g) in enumerate(zip(lengths, correct, weights.tolist(), credit.tolist()))]


# --------------------------------------------------------------------------------------------------
# The environment: initial lengths and the verifier
# --------------------------------------------------------------------------------------------------


def lengths(cfg: LengthSimConfig) -> torch.Tensor:
    """(L,) float64 response lengths 1..L_max; length l is column l-1 of every per-length table."""
    return torch.arange(1, cfg.max_completion_length + 1, dtype=torch.float64)


@functools.lru_cache(maxsize=64)
def initial_length_pmf(cfg: LengthSimConfig) -> torch.Tensor:
    """(L,) float64: ``min_length`` + a negative binomial with the configured mean and shape, truncated at
    L_max (the tail piles up at L_max, where every response ends). Cached: treat it as read-only.

    >>> cfg = LengthSimConfig()
    >>> pmf = initial_length_pmf(cfg)
    >>> round(pmf.sum().item(), 6), pmf[:cfg.min_length - 1].sum().item(), round((pmf * lengths(cfg)).sum().item(), 2)
    (1.0, 0.0, 16.0)
    """
    x = (lengths(cfg) - cfg.min_length).clamp(min=0)  # words beyond the minimum
    r, mean = cfg.initial_length_shape, cfg.initial_mean_length - cfg.min_length
    p = r / (r + mean)
    log_pmf = torch.lgamma(x + r) - math.lgamma(r) - torch.lgamma(x + 1) + r * math.log(p) + x * math.log(1 - p)
    pmf = torch.where(lengths(cfg) >= cfg.min_length, log_pmf.exp(), torch.zeros_like(x))
    pmf[-1] += 1 - pmf.sum()
    return pmf


def correct_probability(cfg: LengthSimConfig) -> torch.Tensor:
    """(2, L) float64: a(k, l), the chance that the verifier accepts a response of approach k, length l.

    >>> a = correct_probability(LengthSimConfig(length_accuracy=0.0))
    >>> [round(x, 2) for x in a[:, 20].tolist()]  # length 21, either approach
    [0.99, 0.01]
    >>> a = correct_probability(LengthSimConfig(length_accuracy=1.0))
    >>> bool((a[:, 1:] > a[:, :-1]).all())  # κ > 0: longer is right more often
    True
    """
    pmf, l = initial_length_pmf(cfg), lengths(cfg)
    mu0 = (pmf * l).sum()
    sd0 = (pmf * (l - mu0) ** 2).sum().sqrt()
    base = torch.logit(torch.tensor(cfg.approach_accuracy, dtype=torch.float64))  # (2,)
    return torch.sigmoid(base[:, None] + cfg.length_accuracy * (l - mu0)[None] / sd0)  # (2, L)


# --------------------------------------------------------------------------------------------------
# Runs trained together, and their policy
# --------------------------------------------------------------------------------------------------

_SHARED = ("max_completion_length", "min_length", "initial_mean_length", "initial_length_shape", "samples_per_step",
           "steps", "record_every", "num_prompts", "learning_rate", "calibration_batches")


class Runs:
    """R configs trained together, with the per-run constants every step reads."""

    def __init__(self, configs: list[LengthSimConfig]):
        if not configs:
            raise ValueError("at least one LengthSimConfig is needed")
        for name in _SHARED:
            values = {getattr(c, name) for c in configs}
            if len(values) > 1:
                raise ValueError(f"runs simulated together must share {name}; got {sorted(values)}: split the list")
        self.configs = list(configs)
        self.first = configs[0]
        self.correct = torch.stack([correct_probability(c) for c in configs])  # (R, 2, L) a(k, l)
        self.num_generations = torch.tensor([c.num_generations for c in configs])  # (R,)
        # runs weighted by one call of `objectives.sample_weights`: same rule, same G (their groups are disjoint rows)
        self.rules: dict[tuple, list[int]] = {}
        self.by_group_size: dict[int, list[int]] = {}
        for r, c in enumerate(configs):
            self.rules.setdefault((c.algo, c.num_generations, c.lam), []).append(r)
            self.by_group_size.setdefault(c.num_generations, []).append(r)
        # maximal stretches of consecutive runs with the same normaliser, as (normaliser, start, stop)
        self.blocks: list[tuple[str, int, int]] = []
        for r, c in enumerate(configs):
            if self.blocks and self.blocks[-1][0] == c.resolved_normalizer:
                self.blocks[-1] = (c.resolved_normalizer, self.blocks[-1][1], r + 1)
            else:
                self.blocks.append((c.resolved_normalizer, r, r + 1))

    def __len__(self) -> int:
        return len(self.configs)


@dataclass
class LengthPolicy:
    """The parameters of R runs side by side (each run trains only its own slice)."""

    approach_logits: torch.Tensor  # (R, M) φ: log-odds of the sound approach, per prompt
    stop_logits: torch.Tensor  # (R, 2, L) θ: log-odds of EOS at position t (column t-1), per approach
    min_length: int  # EOS is impossible before this position

    def parameters(self) -> list[torch.Tensor]:
        return [self.approach_logits, self.stop_logits]

    def token_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log P(EOS at t), log P(no EOS at t)), each (R, 2, L).

        Before ``min_length`` (the approach token included) EOS is impossible, and at L_max it is certain:
        those entries are constants, so their logits get no gradient. The EOS entries before ``min_length``
        are never read (no response ends there) and are left at 0.
        """
        theta = self.stop_logits
        L, m = theta.shape[-1], self.min_length
        free = theta[..., m - 1:L - 1]  # positions min_length..L_max-1, where the policy chooses
        before, end = theta.new_zeros(theta.shape[:-1] + (m - 1,)), theta.new_zeros(theta.shape[:-1] + (1,))
        log_stop = torch.cat([before, logsigmoid(free), end], dim=-1)
        log_continue = torch.cat([before, logsigmoid(-free), end], dim=-1)
        return log_stop, log_continue

    def log_length_pmf(self) -> torch.Tensor:
        """(R, 2, L) log P(|o| = l | approach k): no EOS before l, then EOS at l (garbage below ``min_length``)."""
        log_stop, log_continue = self.token_tables()
        return torch.cumsum(log_continue, dim=-1) - log_continue + log_stop

    def length_pmf(self) -> torch.Tensor:
        """(R, 2, L) P(|o| = l | approach k), exactly 0 below ``min_length``."""
        allowed = torch.arange(1, self.stop_logits.shape[-1] + 1) >= self.min_length
        return self.log_length_pmf().exp() * allowed


def initial_policy(runs: Runs) -> LengthPolicy:
    """Every run starts from the same length habit (the initial pmf) and an approach preference that gives
    its ``base_accuracy``. The float32 parameters require grad."""
    pmf = initial_length_pmf(runs.first)  # (L,)
    survival = pmf.flip(0).cumsum(0).flip(0)  # P(|o| >= l)
    hazard = (pmf / survival.clamp(min=1e-300)).clamp(1e-6, 1 - 1e-6)
    phis = []
    for cfg, a in zip(runs.configs, runs.correct):
        # accuracy = σ(φ) m_sound + (1 − σ(φ)) m_flawed is linear in σ(φ): solve for it
        m = (a * pmf).sum(dim=1)  # (2,) accuracy of each approach
        share = (cfg.base_accuracy - m[1]) / (m[0] - m[1])
        if not 0 < share < 1:
            raise ValueError(
                f"base_accuracy={cfg.base_accuracy} is out of reach: at these lengths the flawed approach is right "
                f"{m[1]:.3f} of the time and the sound one {m[0]:.3f}; choose a base_accuracy in between")
        phis.append(torch.logit(share).float().expand(cfg.num_prompts))
    return LengthPolicy(
        approach_logits=torch.stack(phis).clone().requires_grad_(),
        stop_logits=torch.logit(hazard).float().expand(len(runs), 2, -1).clone().requires_grad_(),
        min_length=runs.first.min_length,
    )


def policy_stats(policy: LengthPolicy, runs: Runs) -> list[dict]:
    """Exact statistics of each run's policy (no sampling), averaged over prompts.

    ``mean_length_correct`` is E[|o| | right], ``mean_length_wrong`` E[|o| | wrong]; ``mean_length_sound``
    and ``mean_length_flawed`` are the two approaches' mean lengths, and ``share_sound`` is P(sound).
    """
    l = lengths(runs.first)
    with torch.no_grad():
        pmf = policy.length_pmf().double()  # (R, 2, L)
        share = torch.sigmoid(policy.approach_logits.double()).mean(dim=1)  # (R,)
        joint = torch.stack([share, 1 - share], dim=1)[:, :, None] * pmf  # (R, 2, L) P(k, l)
        a = runs.correct
        right, wrong = (joint * a).sum(dim=(1, 2)), (joint * (1 - a)).sum(dim=(1, 2))
        out = dict(
            accuracy=right,
            mean_length=(joint * l).sum(dim=(1, 2)),
            mean_length_correct=(joint * a * l).sum(dim=(1, 2)) / right,
            mean_length_wrong=(joint * (1 - a) * l).sum(dim=(1, 2)) / wrong,
            mean_length_sound=(pmf[:, 0] * l).sum(dim=1),
            mean_length_flawed=(pmf[:, 1] * l).sum(dim=1),
            share_sound=share,
        )
    return [{k: v[r].item() for k, v in out.items()} for r in range(len(runs))]


# --------------------------------------------------------------------------------------------------
# One step for all runs: 1. sample, 2. verify, 3. weight, 4. update
# --------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """R runs' sampled batches, each in the trainer's layout (prompt-major rows ``b * G + g``)."""

    prompts: torch.Tensor  # (R, N) prompt of each response
    approach: torch.Tensor  # (R, N) 0 sound, 1 flawed
    length: torch.Tensor  # (R, N) |o_i| in tokens, EOS included
    rewards: torch.Tensor  # (R, N) 1.0 right, 0.0 wrong


def sample_batch(policy: LengthPolicy, runs: Runs, generators: list[torch.Generator]) -> Batch:
    """1.-2. Draw one step's responses for every run, and score them.

    Run r draws its random numbers from ``generators[r]`` alone.
    """
    N, M, L = runs.first.samples_per_step, runs.first.num_prompts, runs.first.max_completion_length
    uniform = torch.stack([torch.rand(4 * N, generator=g, dtype=torch.float64) for g in generators])  # (R, 4N)
    prompt_draws = (uniform[:, 3 * N:] * M).long().clamp(max=M - 1)  # (R, N) uniform over the M prompts
    prompts = prompt_draws.gather(1, torch.arange(N) // runs.num_generations[:, None])  # (R, N): group b gets draw b
    with torch.no_grad():
        p_sound = torch.sigmoid(policy.approach_logits.gather(1, prompts).double())  # (R, N)
        approach = (uniform[:, :N] >= p_sound).long()  # (R, N)
        # inverse-cdf draw of a length under each approach, then keep the one of the sample's approach
        cdf = policy.length_pmf().double().cumsum(dim=-1)  # (R, 2, L)
        u = uniform[:, None, N:2 * N].expand(-1, 2, -1).contiguous()  # (R, 2, N)
        both = torch.searchsorted(cdf, u).clamp(max=L - 1)  # (R, 2, N); the clamp guards round-off at the top
        length = both.gather(1, approach[:, None]).squeeze(1) + 1  # (R, N)
        p_correct = runs.correct[torch.arange(len(runs))[:, None], approach, length - 1]  # (R, N)
    return Batch(prompts, approach, length, (uniform[:, 2 * N:3 * N] < p_correct).double())


def sample_weights(rewards: torch.Tensor, runs: Runs) -> torch.Tensor:
    """3. (R, N) per-sample weights, each run by its own rule (:func:`objectives.sample_weights`)."""
    weights = torch.empty_like(rewards)
    for (algo, G, lam), members in runs.rules.items():
        w = objectives.sample_weights(rewards[members].reshape(-1), G, algo=algo, lam=lam)  # (len(members) * N,)
        weights[members] = w.view(len(members), -1).to(weights.dtype)
    return weights


def log_approach(policy: LengthPolicy, batch: Batch) -> torch.Tensor:
    """(R, N) log π(approach | prompt) of every response's first token."""
    phi = policy.approach_logits.gather(1, batch.prompts)  # (R, N)
    return torch.where(batch.approach == 0, logsigmoid(phi), logsigmoid(-phi))


def response_logps(policy: LengthPolicy, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, N, L) log-prob of every token of every response, and the (R, N, L) completion mask.

    Token 1 is the approach, tokens 2..|o|-1 are "not EOS", and token |o| is EOS.
    """
    log_stop, log_continue = policy.token_tables()  # (R, 2, L)
    pos = torch.arange(log_stop.shape[-1])  # column t-1 for position t
    # each sample's approach row, as a blend of the two (elementwise ops backpropagate faster than gather)
    flawed = batch.approach[:, :, None].to(log_stop.dtype)  # (R, N, 1)
    stop = log_stop[:, :1] + flawed * (log_stop[:, 1:] - log_stop[:, :1])  # (R, N, L)
    cont = log_continue[:, :1] + flawed * (log_continue[:, 1:] - log_continue[:, :1])  # (R, N, L)
    last = (batch.length - 1)[:, :, None]  # (R, N, 1) column of the EOS
    logps = torch.where(pos == last, stop, cont)
    logps = torch.where(pos == 0, log_approach(policy, batch)[:, :, None], logps)
    return logps, (pos <= last).long()


def packed_token_logps(policy: LengthPolicy, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A cheaper stand-in for :func:`response_logps`, with the same loss and gradient under every normaliser.

    Every normaliser of :func:`objectives.aggregate` is linear in the per-token terms and weighs all tokens
    of a row alike, so a row's log-probs enter the loss only through their sum, log π(o_i). This puts that
    sum in the first token's slot and zeros in the others; the mask still counts all |o_i| tokens.
    ``tests/test_lengthsim.py`` checks that both give the same gradient.
    """
    flat = policy.log_length_pmf().flatten(1)  # (R, 2L): approach k, length l at column k*L + l-1
    L = policy.stop_logits.shape[-1]
    log_length = flat.gather(1, batch.approach * L + batch.length - 1)  # (R, N)
    pos = torch.arange(int(batch.length.max()))  # as wide as the longest response: the padding adds nothing
    logps = torch.where(pos == 0, (log_approach(policy, batch) + log_length)[:, :, None], 0.0)  # (R, N, T)
    return logps, (pos < batch.length[:, :, None]).to(logps.dtype)  # a float mask spares the loss a conversion


def total_loss(policy: LengthPolicy, batch: Batch, weights: torch.Tensor, runs: Runs, scale: torch.Tensor,
               *, packed: bool = True) -> torch.Tensor:
    """4. Σ_r loss_r / scale_r, where loss_r is the weighted NLL of run r's own samples, with its normaliser.

    Runs train disjoint parameters, so the gradient of the sum gives each run its own gradient. Dividing a
    run's weights by ``scale`` (R,) divides its loss: the NLL is linear in the weights, and the rows that
    ``kept_token`` keeps (w ≠ 0) stay the same. A block of runs with a row-mean normaliser is one call over
    its stacked rows (the mean of the block's losses); ``token`` and ``kept_token`` divide by a token
    count, so their runs are aggregated one by one. ``packed`` uses :func:`packed_token_logps` in place of
    :func:`response_logps` (same gradient, less work).
    """
    logps, mask = (packed_token_logps if packed else response_logps)(policy, batch)  # (R, N, T)
    weights = (weights / scale[:, None]).to(logps.dtype)  # (R, N)
    L_max = runs.first.max_completion_length
    total = logps.new_zeros(())
    for normalizer, start, stop in runs.blocks:
        block, k = slice(start, stop), stop - start
        if normalizer in ROW_MEAN_NORMALIZERS:
            total = total + k * weighted_nll(
                logps[block].flatten(0, 1), weights[block].flatten(), mask[block].flatten(0, 1),
                normalizer=normalizer, max_completion_length=L_max)
        elif normalizer == "token":
            # Σ_{i,t} ℓ / Σ_i |o_i| over one run is the sequence normaliser over the run's tokens laid out as
            # one row; each token term then carries its own sample's weight, and the row weight is 1
            terms = (weights[block, :, None] * logps[block]).flatten(1)  # (k, N*T)
            total = total + k * weighted_nll(terms, torch.ones(k, dtype=terms.dtype), mask[block].flatten(1),
                                             normalizer="sequence")
        else:  # kept_token: which rows count depends on each run's weights, so one run at a time
            for run_logps, run_weights, run_mask in zip(logps[block].unbind(0), weights[block].unbind(0),
                                                        mask[block].unbind(0)):
                total = total + weighted_nll(run_logps, run_weights, run_mask, normalizer=normalizer,
                                             max_completion_length=L_max)
    return total


def _calibration(policy, loss, batches: int) -> torch.Tensor:
    """Each run's scale: the size (RMS over prompts) of its mean gradient on the approach choice, the direction
    that learns the task, over ``batches`` calls of ``loss`` (a new sampled batch's summed loss each; run r's slice
    of the gradient is its own gradient). (R,)"""
    approach = torch.zeros_like(policy.approach_logits, dtype=torch.float64)  # (R, M)
    for _ in range(batches):
        approach += torch.autograd.grad(loss(), policy.approach_logits)[0].double()
    rms = (approach / batches).pow(2).mean(dim=1).sqrt()  # (R,)
    return rms.clamp(min=1e-12).float()


def simulate(configs: LengthSimConfig | list[LengthSimConfig], *, progress: bool = True) -> list[dict]:
    """Train every config's policy in lockstep. Returns tidy records, one per run per recorded step.

    Each record holds the run's varying config fields (``algo``, the resolved ``normalizer``, ...), the
    ``step``, the :func:`policy_stats` of the policy, and ``filtered``: the fraction of groups whose
    weights were all zero, over the steps since the previous record. Runs must agree on the fields in
    ``_SHARED`` (lengths, batch size, steps, learning rate); anything else may differ.

    The update is plain gradient descent on each run's loss divided by the size (RMS over prompts) of its
    mean gradient on the approach logits over the first ``calibration_batches`` batches (sampled, not
    applied): the part of the gradient that learns the task. The losses differ by constant factors (1/L_max
    against 1/|o|, the division by the std) that a tuned learning rate would absorb; dividing them out makes
    every run start learning the task at the same speed, whatever its loss does to lengths. Adam would also
    remove the factors, but it rescales each parameter separately, which turns the sparse, noisy gradients of
    rarely visited positions into full-size steps that move the lengths on their own.
    """
    configs = [configs] if isinstance(configs, LengthSimConfig) else list(configs)
    # runs with one normaliser next to each other: fewer blocks in total_loss
    order = sorted(range(len(configs)), key=lambda r: NORMALIZERS.index(configs[r].resolved_normalizer))
    runs = Runs([configs[r] for r in order])
    first, R = runs.first, len(runs)
    policy = initial_policy(runs)
    params = policy.parameters()
    generators = [torch.Generator().manual_seed(c.seed) for c in runs.configs]
    labels = [_labels(c) for c in runs.configs]
    records: list[list[dict]] = [[] for _ in range(R)]
    filtered = torch.zeros(R, dtype=torch.float64)

    def loss_and_weights(scale: torch.Tensor):
        batch = sample_batch(policy, runs, generators)
        weights = sample_weights(batch.rewards, runs)
        return total_loss(policy, batch, weights, runs, scale), weights

    with torch_threads(1):  # the simulation's ops are small and many: a second thread costs more than the op
        # 0. calibration: divide out each loss's constant factors (the docstring says why)
        scale = _calibration(policy, lambda: loss_and_weights(torch.ones(R))[0], first.calibration_batches)
        optimizer = torch.optim.SGD(params, lr=first.learning_rate)

        for step in tqdm(range(first.steps + 1), desc="length simulation", disable=not progress):
            if step % first.record_every == 0 or step == first.steps:
                since = step % first.record_every or first.record_every
                for r, stats in enumerate(policy_stats(policy, runs)):
                    records[r].append(dict(labels[r], step=step, **stats,
                                           filtered=filtered[r].item() / since if step else 0.0))
                filtered.zero_()
            if step == first.steps:
                break
            loss, weights = loss_and_weights(scale)
            for G, members in runs.by_group_size.items():
                zero = (weights[members].view(len(members), -1, G) == 0).all(dim=2)  # (runs, B)
                filtered[members] += zero.double().mean(dim=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    by_run = [None] * R
    for position, r in enumerate(order):
        by_run[r] = records[position]
    return [record for run in by_run for record in run]


def _labels(cfg: LengthSimConfig) -> dict:
    """The config fields a grid varies, with the normaliser resolved, as record columns."""
    return dict(algo=cfg.algo, normalizer=cfg.resolved_normalizer, num_generations=cfg.num_generations,
                base_accuracy=cfg.base_accuracy, length_accuracy=cfg.length_accuracy,
                approach_accuracy=cfg.approach_accuracy, seed=cfg.seed)


def grid_configs(base: LengthSimConfig | None = None, **axes) -> list[LengthSimConfig]:
    """The product of ``axes`` (field name -> list of values) over ``base``.

    >>> [(c.algo, c.num_generations) for c in grid_configs(algo=["grpo", "dr_grpo"], num_generations=[4, 8])]
    [('grpo', 4), ('grpo', 8), ('dr_grpo', 4), ('dr_grpo', 8)]
    """
    base = base or LengthSimConfig()
    names = {f.name for f in fields(LengthSimConfig)}
    unknown = sorted(set(axes) - names)
    if unknown:
        raise ValueError(f"unknown LengthSimConfig fields {unknown}; known: {sorted(names)}")
    return [replace(base, **dict(zip(axes, values))) for values in itertools.product(*axes.values())]


# --------------------------------------------------------------------------------------------------
# The prediction: effective reward and the exact expected update
# --------------------------------------------------------------------------------------------------


def outcome_weights(cfg: LengthSimConfig, accuracy: float) -> torch.Tensor:
    """(2,) E[w_i | sample i wrong], E[w_i | sample i right], when each of the other G−1 samples of its group
    is right with probability ``accuracy``. Every group is weighted by :func:`objectives.sample_weights`.

    >>> [round(x, 4) for x in outcome_weights(LengthSimConfig(algo="fisft_pm", num_generations=2), 0.5).tolist()]
    [-0.5, 0.5]
    """
    G = cfg.num_generations
    others = torch.arange(G, dtype=torch.float64)  # right answers among the other G-1 samples
    # one group per (own outcome y, c others right): rewards [y, 1 x c, 0 x (G-1-c)]
    groups = torch.tensor([[y] + [1.0] * c + [0.0] * (G - 1 - c) for y in (0.0, 1.0) for c in range(G)])
    w = objectives.sample_weights(groups.reshape(-1), G, algo=cfg.algo, lam=cfg.lam)  # (2 * G * G,)
    w_first = w.view(2, G, G)[:, :, 0].double()
    log_binom = math.lgamma(G) - torch.lgamma(others + 1) - torch.lgamma(G - others)
    p = torch.tensor(accuracy, dtype=torch.float64)
    prob = (log_binom + others * p.log() + (G - 1 - others) * torch.log1p(-p)).exp()  # (G,) Binomial(G-1, p)
    return (w_first * prob).sum(dim=1)


def effective_reward(policy: LengthPolicy, cfg: LengthSimConfig) -> torch.Tensor:
    """(M, 2, L) r̃_m(k, l) = E[w | prompt m, approach k, length l] / n(l), for a one-run ``policy``.

    Exact for the ``sequence`` (n = l) and ``constant`` (n = L_max) normalisers, where a sample's
    normaliser depends on its own length only. ``token`` and ``kept_token`` divide by the batch's token
    count, which couples the samples; measure those with :func:`sampled_gradient`.
    """
    normalizer = cfg.resolved_normalizer
    if normalizer not in ROW_MEAN_NORMALIZERS:
        raise ValueError(f"the effective reward is exact for the sequence and constant normalisers only, not "
                         f"{normalizer!r}; use sampled_gradient() to measure the expected update instead")
    a = correct_probability(cfg)  # (2, L)
    with torch.no_grad():
        pmf = policy.length_pmf()[0].double()  # (2, L)
        share = torch.sigmoid(policy.approach_logits[0].double())  # (M,)
        accuracy = share * (pmf[0] * a[0]).sum() + (1 - share) * (pmf[1] * a[1]).sum()  # (M,)
    omega = torch.stack([outcome_weights(cfg, p) for p in accuracy.tolist()])  # (M, 2): wrong, right
    expected_w = omega[:, 1, None, None] * a + omega[:, 0, None, None] * (1 - a)  # (M, 2, L)
    n = lengths(cfg) if normalizer == "sequence" else torch.full_like(lengths(cfg), cfg.max_completion_length)
    return expected_w / n


def effective_reward_records(cfg: LengthSimConfig, normalizers: tuple[str, ...] = ROW_MEAN_NORMALIZERS) -> list[dict]:
    """Tidy records of the initial policy's effective reward, averaged over prompts, for each normaliser:
    ``normalizer``, ``approach``, ``length`` (from ``min_length``) and ``reward``."""
    policy = initial_policy(Runs([cfg]))
    out = []
    for normalizer in normalizers:
        r_tilde = effective_reward(policy, replace(cfg, normalizer=normalizer)).mean(dim=0)  # (2, L)
        out += [dict(normalizer=normalizer, approach=APPROACHES[k], length=l, reward=r_tilde[k, l - 1].item())
                for k in range(2) for l in range(cfg.min_length, cfg.max_completion_length + 1)]
    return out


def expected_gradient(policy: LengthPolicy, cfg: LengthSimConfig) -> list[torch.Tensor]:
    """The exact expected gradient of one step's loss w.r.t. (φ, θ) of a one-run ``policy``: −∇ E[r̃(o)].

    A sample's expected contribution to the gradient of the loss is −r̃(o) ∇log π(o), so the expectation
    over the batch is −∇ Σ_o π(o) r̃(o) with r̃ held fixed (the score-function identity). Prompts are
    drawn uniformly, so each one carries weight 1/M.
    """
    r_tilde = effective_reward(policy, cfg)  # (M, 2, L)
    pmf = policy.length_pmf()[0].to(r_tilde.dtype)  # (2, L)
    share = torch.sigmoid(policy.approach_logits[0].to(r_tilde.dtype))  # (M,)
    p_approach = torch.stack([share, 1 - share], dim=1)  # (M, 2)
    surrogate = (p_approach[:, :, None] * pmf[None] * r_tilde).sum() / cfg.num_prompts
    return list(torch.autograd.grad(-surrogate, policy.parameters()))


def sampled_gradient(policy: LengthPolicy, cfg: LengthSimConfig, *, batches: int, seed: int = 0) -> list[torch.Tensor]:
    """The gradient of one step's loss for a one-run ``policy``, averaged over ``batches`` sampled batches,
    with the explicit per-token log-probs (:func:`response_logps`)."""
    runs = Runs([cfg])
    generator = torch.Generator().manual_seed(seed)
    total = [torch.zeros_like(p) for p in policy.parameters()]
    with torch_threads(1):
        for _ in range(batches):
            batch = sample_batch(policy, runs, [generator])
            loss = total_loss(policy, batch, sample_weights(batch.rewards, runs), runs, torch.ones(1), packed=False)
            for t, g in zip(total, torch.autograd.grad(loss, policy.parameters())):
                t += g
    return [t / batches for t in total]


def predicted_drift(cfg: LengthSimConfig, *, batches: int = 0, seed: int = 0) -> dict:
    """How a first gradient step moves the policy, per unit of step size (plain gradient descent).

    Returns d/dη of ``mean_length_correct``, ``mean_length_wrong``, ``mean_length_sound``,
    ``mean_length_flawed`` and ``accuracy`` at the initial policy moved by η against the expected gradient.
    With ``batches=0`` the gradient is the exact :func:`expected_gradient` (``sequence`` and ``constant``
    only); otherwise it is :func:`sampled_gradient` over that many batches.
    """
    start = initial_policy(Runs([cfg]))
    policy = replace(start, approach_logits=start.approach_logits.detach().double().requires_grad_(),
                     stop_logits=start.stop_logits.detach().double().requires_grad_())
    grads = (expected_gradient(policy, cfg) if batches == 0
             else sampled_gradient(policy, cfg, batches=batches, seed=seed))
    keys = ("mean_length_correct", "mean_length_wrong", "mean_length_sound", "mean_length_flawed", "accuracy")
    size = max(g.abs().max().item() for g in grads)
    if size == 0.0:  # no sample carries any weight: nothing moves
        return dict.fromkeys(keys, 0.0)
    eta = 1e-4 / size  # central differences in float64: linear at this size, far above round-off

    def stats_at(step: float) -> dict:
        moved = replace(policy, approach_logits=(policy.approach_logits - step * grads[0]).detach(),
                        stop_logits=(policy.stop_logits - step * grads[1]).detach())
        return policy_stats(moved, Runs([cfg]))[0]

    plus, minus = stats_at(eta), stats_at(-eta)
    return {k: (plus[k] - minus[k]) / (2 * eta) for k in keys}
