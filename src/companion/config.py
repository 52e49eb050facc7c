"""Frozen config dataclasses become command-line parsers.

Every run config in the package is a frozen dataclass whose fields carry a default and a help string
(``field(default=..., metadata={"help": "..."})``). :func:`add_dataclass_arguments` turns such a class into
argparse options, so ``--help`` and the config can never drift apart, and :func:`config_from_args` builds
the config back from the parsed namespace (``__post_init__`` then checks the values).

>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class Demo:
...     steps: int = field(default=3, metadata={"help": "optimizer steps"})
...     algo: str = field(default="grpo", metadata={"help": "which loss", "choices": ("grpo", "dr_grpo")})
...     lora: bool = field(default=False, metadata={"help": "train LoRA adapters"})
>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_dataclass_arguments(parser, Demo)
>>> config_from_args(Demo, parser.parse_args(["--steps", "5", "--lora"]))
Demo(steps=5, algo='grpo', lora=True)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_COMPLETION_LENGTH = 256
"""Default completion budget, in tokens, of every sampler that a run config drives (RL training, ``companion eval``,
the tiny base model's pretraining eval): one number, so a model is trained and judged with the same room. The tiny
base model's Countdown searches reach ~250 tokens (p95 218 in data/tiny-base/metrics.json); at 200, 2-3% of them
were cut off before their answer, and a cut-off completion scores 0."""

PROMPT_STYLES = ("base", "chat")
"""How a problem becomes a prompt (:func:`companion.tasks.prompts.format_prompt`): plain text for a base model, or
the tokenizer's chat template for an instruct model."""


def need(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``: the one-line check of every config's ``__post_init__``."""
    if not ok:
        raise ValueError(message)


def need_finite(config) -> None:
    """Every float field of the dataclass ``config`` is a finite number (``--learning-rate inf`` or ``nan`` would
    otherwise reach the optimizer, and ``config.json`` could not be read back as JSON)."""
    import math

    bad = [f"--{f.name.replace('_', '-')} {getattr(config, f.name)}" for f in dataclasses.fields(config)
           if isinstance(getattr(config, f.name), float) and not math.isfinite(getattr(config, f.name))]
    need(not bad, f"{', '.join(bad)}: must be a finite number")


@dataclass(frozen=True)
class SamplingOptions:
    """How completions are drawn: the fields a training run and an evaluation share, with one meaning and one check.
    A config that samples inherits them (:class:`companion.train_config.TrainConfig`,
    :class:`companion.evaluate.EvalConfig`, which samples at Yue et al.'s T = 0.6, top-p 0.95 by default)."""

    prompt_style: str = field(default="base", metadata={"help": "'base' for base models, 'chat' for instruct "
                                                                "models (their chat template)",
                                                        "choices": PROMPT_STYLES})
    max_completion_length: int = field(default=MAX_COMPLETION_LENGTH, metadata={
        "help": "tokens per completion at most (EOS included); the same default in training, evaluation and "
                "pretraining, so a model is trained and judged with the same room"})
    temperature: float = field(default=1.0, metadata={
        "help": "sampling temperature (0 is greedy: an evaluation takes it with one sample per problem; training "
                "needs > 0)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling: keep the most likely tokens up to this "
                                                        "probability mass (1 = off)"})

    fast_sampler: bool = field(default=True, metadata={
        "help": "sample with each prompt's keys and values kept once, not once per sample, each token drawn with "
                "one seeded uniform (not a vocabulary of exponentials), and the top-p nucleus found without sorting "
                "the vocabulary: the same distribution up to float rounding, faster, and each sample a function of "
                "the model, its prompt and its seed alone. --no-fast-sampler: transformers' attention and the "
                "exponential race of model.generate, bit for bit, which every run committed before it existed used"})

    def check(self) -> None:
        need(self.prompt_style in PROMPT_STYLES, f"prompt_style must be one of {', '.join(PROMPT_STYLES)}, got "
                                                 f"{self.prompt_style!r}")
        need(self.max_completion_length >= 1, f"max_completion_length must be at least 1, got "
                                              f"{self.max_completion_length}")
        need(self.temperature >= 0, f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1] (1 turns nucleus sampling off), got {self.top_p}")


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    tp = hints.get(f.name, str)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else str
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                            defaults: Any = None) -> None:
    """Add one ``--field-name`` option per dataclass field, with its help string and default.

    ``defaults``, an instance of ``cls``, supplies the defaults instead of the class (for a nested config
    whose owner sets other defaults than the nested class does); ``argparse.SUPPRESS`` leaves every option unset
    unless given (see :func:`explicit_options`).
    """
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        if defaults is argparse.SUPPRESS:
            default = argparse.SUPPRESS
        elif defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        tp = _field_type(cls, f)
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{help_text} (default: {default})")
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": f"{help_text} (default: {default})"}
        if tp in (int, float, str):
            kwargs["type"] = tp
        elif typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            kwargs.update(type=inner, nargs="+")
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def explicit_options(cls: type, argv: list[str]) -> set[str]:
    """The fields of ``cls`` that ``argv`` sets (the rest are left at their defaults); other options are ignored.

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     steps: int = field(default=3, metadata={"help": "optimizer steps"})
    ...     lora: bool = field(default=False, metadata={"help": "train LoRA adapters"})
    >>> sorted(explicit_options(Demo, ["--steps", "3", "--resume", "runs/a"]))
    ['steps']
    """
    parser = argparse.ArgumentParser(add_help=False)
    add_dataclass_arguments(parser, cls, defaults=argparse.SUPPRESS)
    known, _ = parser.parse_known_args(argv)
    return set(vars(known))


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Build ``cls`` from the parsed options (plus ``overrides``); lists become tuples."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.init and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    values.update(overrides)
    return cls(**values)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as JSON next to a run's outputs."""
    Path(path).write_text(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True) + "\n")


def load_config(cls: type, path: str | Path):
    """Read a config written by :func:`save_config` (JSON lists become tuples). A field the file lacks takes its
    default, or, when ``cls.LEGACY`` names it, the value every config written before the field existed meant (a
    new default must not change what an old run was)."""
    raw = json.loads(Path(path).read_text())
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{path}: unknown config fields {unknown}; was it written by another version of companion?")
    raw = {**legacy(cls), **raw}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def legacy(cls: type) -> dict:
    """The values the fields of ``cls`` added later had, in effect, in configs written before them."""
    return dict(getattr(cls, "LEGACY", {}))
