"""Tasks: problem generators, prompt templates and loaders, behind one task-agnostic interface.

A trainer asks for a task by name and never needs to know which one it got::

    task = get_task("countdown")
    problems = task.generate(64, seed=0, split="train")
    prompts = [task.prompt(p) for p in problems]
    rewards = [task.reward(c, p) for c, p in zip(completions, problems)]

>>> task = get_task("countdown")
>>> problem = task.generate(1, seed=0)[0]
>>> problem
{'numbers': [13, 14, 2], 'target': 12}
>>> task.reward("<think>13-14=-1</think><answer>(14-13)*2=2</answer>", problem)  # well-formed, wrong
0.1
>>> task.reward(f"<answer>{task.reference(problem)}</answer>", problem)
1.0
"""

from __future__ import annotations

from dataclasses import dataclass

from companion import verify
from companion.tasks import countdown, gsm8k, prompts, tinygsm


@dataclass(frozen=True)
class CountdownTask:
    """Countdown (:mod:`companion.tasks.countdown`), rewarded by :func:`companion.verify.countdown_reward`."""

    format_score: float = 0.1
    """Reward for a well-formed but wrong answer (0 turns the format bonus off)."""
    graded: bool = False
    """Add credit for a wrong answer's closeness to the target (:func:`companion.verify.countdown_reward`)."""
    tier: str = "default"
    """Which problems :meth:`generate` draws: a key of :data:`TIERS` ``["countdown"]``."""

    name = "countdown"

    def generate(self, n_problems: int, *, seed: int = 0, split: str | None = None, **options) -> list[dict]:
        """Problems ``{"numbers", "target"}`` of this task's tier; ``options`` go to :func:`countdown.generate`
        (over the tier's own)."""
        return countdown.generate(n_problems, seed=seed, split=split, **{**TIERS[self.name][self.tier], **options})

    def prompt(self, problem: dict, *, style: str = "base", tokenizer=None) -> str:
        """The prompt for one problem (see :func:`prompts.format_prompt`)."""
        return prompts.format_prompt(self.name, problem, style=style, tokenizer=tokenizer)

    def reward(self, completion: str, problem: dict) -> float:
        """The verifier's reward for one completion of ``problem``."""
        return verify.countdown_reward(completion, problem["numbers"], problem["target"], format_score=self.format_score,
                                       graded=self.graded)

    def reference(self, problem: dict) -> str:
        """A correct answer (the exact solver's expression), as it goes inside ``<answer>``."""
        return countdown.solve(problem["numbers"], problem["target"])

    def steps_right(self, completion: str) -> bool | None:
        """Whether every arithmetic step the completion writes holds (:func:`companion.verify.countdown_steps_right`):
        checked pass@k counts a right answer only with it."""
        return verify.countdown_steps_right(completion)


@dataclass(frozen=True)
class _WordProblemTask:
    """Shared by TinyGSM and GSM8K: ``{"question", "answer"}`` problems, rewarded by
    :func:`companion.verify.gsm8k_reward` against the gold after ``####``."""

    strict: bool = False
    """Only an explicit answer marker can score (no last-number fallback)."""

    name = ""

    def prompt(self, problem: dict, *, style: str = "base", tokenizer=None) -> str:
        """The prompt for one problem (see :func:`prompts.format_prompt`)."""
        return prompts.format_prompt(self.name, problem, style=style, tokenizer=tokenizer)

    def reward(self, completion: str, problem: dict) -> float:
        """1.0 when the completion's final number equals the gold answer, else 0.0."""
        return verify.gsm8k_reward(completion, gsm8k.extract_gold(problem["answer"]), strict=self.strict)

    def reference(self, problem: dict) -> str:
        """The gold answer, as it goes inside ``<answer>``."""
        return gsm8k.extract_gold(problem["answer"])

    def steps_right(self, completion: str) -> bool | None:
        """None: a word problem's written steps are not checked here (only Countdown's are)."""
        return None


@dataclass(frozen=True)
class TinyGSMTask(_WordProblemTask):
    """Templated word problems (:mod:`companion.tasks.tinygsm`)."""

    name = "tinygsm"

    def generate(self, n_problems: int, *, seed: int = 0, split: str | None = None, **options) -> list[dict]:
        """Problems ``{"question", "answer", "steps", ...}``; ``options`` go to :func:`tinygsm.generate`."""
        return tinygsm.generate(n_problems, seed=seed, split=split, **options)


@dataclass(frozen=True)
class GSM8KTask(_WordProblemTask):
    """GSM8K itself (:mod:`companion.tasks.gsm8k`): from the hub, or a local file via ``data_file=``."""

    name = "gsm8k"

    def generate(self, n_problems: int | None = None, *, seed: int = 0, split: str | None = "train", **options) -> list[dict]:
        """``n_problems`` shuffled records of GSM8K's ``split`` (``None`` means "train")."""
        return gsm8k.generate(n_problems, seed=seed, split=split or "train", **options)


_TASKS = {"countdown": CountdownTask, "tinygsm": TinyGSMTask, "gsm8k": GSM8KTask}

REWARDS = {
    "countdown": {"format": {}, "binary": {"format_score": 0.0}, "graded": {"graded": True}},
    "tinygsm": {"binary": {}},
    "gsm8k": {"binary": {}},
}
"""Per task, the reward shapes a trainer can ask for (``--reward``) and the task options that make each; the first
is the task's own. ``format`` is TinyZero's three values (1 right, 0.1 well-formed wrong, 0 malformed), ``binary``
right or not, ``graded`` the format values plus credit for a wrong answer's closeness to the target."""


TIERS = {"countdown": {"default": {}, "hard": {"high": 35}}}
"""Per task, its tiers of difficulty (``--tier``) and the generator options of each (:func:`countdown.generate`'s);
a task not listed has one tier, ``default``. Countdown's ``hard`` tier draws its numbers from 1..35 instead of 1..20
(targets 1..100 as before). The tiny base was pretrained on the default tier and solves almost every held-out problem
of it at k = 256, which leaves a trained model nothing to solve that the base never does. The bound 35 was chosen by
measuring the base at T = 1 (by bound 30 it still solved three quarters of 100 held-out problems at k = 128, at 40 it
solved under a third at k = 256), so that it misses about half: room to move either way. Chapter 7 reports the
committed measurement. Each tier has its own held-out split (:func:`countdown.split_of` hashes the problem itself, so
a problem both tiers can draw is held out in both or in neither)."""


def tier_options(task: str, tier: str = "default") -> dict:
    """The :func:`get_task` options that select ``tier`` of ``task``.

    >>> tier_options("countdown", "hard"), tier_options("tinygsm")
    ({'tier': 'hard'}, {})
    >>> tier_options("tinygsm", "hard")
    Traceback (most recent call last):
    ...
    ValueError: task 'tinygsm' has one tier, 'default': drop --tier (tiers exist for: countdown)
    """
    tiers = TIERS.get(task)
    if tiers is None:
        if tier in ("", "default"):
            return {}
        raise ValueError(f"task {task!r} has one tier, 'default': drop --tier (tiers exist for: {', '.join(TIERS)})")
    if tier not in tiers:
        raise ValueError(f"task {task!r} has no tier {tier!r}; its tiers: {', '.join(tiers)}")
    return {} if tier == "default" else {"tier": tier}


def reward_options(task: str, reward: str = "") -> dict:
    """The :func:`get_task` options of reward shape ``reward`` on ``task`` ('' is the task's own).

    >>> reward_options("countdown", "binary"), reward_options("tinygsm")
    ({'format_score': 0.0}, {})
    >>> reward_options("tinygsm", "graded")
    Traceback (most recent call last):
    ...
    ValueError: task 'tinygsm' has no 'graded' reward; its rewards: binary
    """
    if task not in REWARDS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(_TASKS)}")
    shapes = REWARDS[task]
    if reward and reward not in shapes:
        raise ValueError(f"task {task!r} has no {reward!r} reward; its rewards: {', '.join(shapes)}")
    return dict(shapes[reward or next(iter(shapes))])


def get_task(name: str, **options):
    """The task called ``name``; ``options`` set its fields (``format_score``, ``strict``).

    >>> get_task("tinygsm").name, get_task("countdown", format_score=0.0).format_score
    ('tinygsm', 0.0)
    >>> get_task("math")
    Traceback (most recent call last):
    ...
    ValueError: unknown task 'math'; known tasks: countdown, tinygsm, gsm8k
    """
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}")
    return _TASKS[name](**options)


__all__ = ["REWARDS", "TIERS", "CountdownTask", "GSM8KTask", "TinyGSMTask", "countdown", "get_task", "gsm8k", "prompts",
           "reward_options", "tier_options", "tinygsm"]
