"""Prompt templates: a short base-model prompt in the TinyZero style, and a chat variant.

Every prompt ends with the assistant's turn opened by ``<think>``, so a completion is the model's
thinking, ``</think>``, then ``<answer>...</answer>``, which is what the verifiers read
(:mod:`companion.verify`). The base template is kept short on purpose: the tiny character-level
model sees prompt and completion in a context of a few hundred characters.

>>> print(format_prompt("countdown", {"numbers": [3, 5, 2], "target": 16}))
Using the numbers [3, 5, 2], make 16 with + - * /, each number once. Answer in <answer></answer>.
<think>
"""

from __future__ import annotations

from companion.config import PROMPT_STYLES as STYLES

TASKS = ("countdown", "tinygsm", "gsm8k")

THINK = "<think>"
"""Opens the assistant's turn in both styles, so completions look the same to the verifier."""

_INSTRUCTIONS = {
    "countdown": "Using the numbers {numbers}, make {target} with + - * /, each number once. Answer in <answer></answer>.",
    "tinygsm": "{question}\nAnswer with a number in <answer></answer>.",
    "gsm8k": "{question}\nThink step by step, then give the final number in <answer></answer>.",
}


def instruction(task: str, problem: dict) -> str:
    """The task statement for one problem, without any turn markers.

    >>> instruction("tinygsm", {"question": "Ann has 3 cards and gets 4 more. How many cards does Ann have?"})
    'Ann has 3 cards and gets 4 more. How many cards does Ann have?\\nAnswer with a number in <answer></answer>.'
    """
    if task not in _INSTRUCTIONS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    if task == "countdown":
        return _INSTRUCTIONS[task].format(numbers=list(problem["numbers"]), target=problem["target"])
    return _INSTRUCTIONS[task].format(question=problem["question"].strip())


def format_prompt(task: str, problem: dict, *, style: str = "base", tokenizer=None) -> str:
    """The prompt string for ``problem``: ``style="base"`` for base models (plain text ending in
    ``<think>``), ``style="chat"`` for instruct models (the tokenizer's chat template with the
    instruction as the user turn, then ``<think>`` opening the assistant's reply).

    >>> format_prompt("tinygsm", {"question": "Ben has 2 pens and buys 5 more. How many pens?"})
    'Ben has 2 pens and buys 5 more. How many pens?\\nAnswer with a number in <answer></answer>.\\n<think>'
    >>> class Toy:  # any tokenizer with a chat template
    ...     chat_template = "toy"
    ...     def apply_chat_template(self, messages, tokenize, add_generation_prompt):
    ...         return "".join(f"<{m['role']}>{m['content']}\\n" for m in messages) + "<assistant>"
    >>> print(format_prompt("countdown", {"numbers": [3, 5, 2], "target": 16}, style="chat", tokenizer=Toy()))
    <user>Using the numbers [3, 5, 2], make 16 with + - * /, each number once. Answer in <answer></answer>.
    <assistant><think>
    """
    text = instruction(task, problem)
    if style == "base":
        return f"{text}\n{THINK}"
    if style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                'style="chat" needs a tokenizer with a chat template (an instruct model\'s tokenizer); '
                'use style="base" for base models'
            )
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + THINK
    raise ValueError(f"unknown style {style!r}; use one of {', '.join(STYLES)}")
