"""The CPU world's base model: a character-level tokenizer and a tiny Qwen2, pretrained from scratch.

No GPU and no model hub here, so the project builds its own "Qwen2.5-base": the same ``transformers``
Qwen2 architecture a real Qwen2.5 uses, a few million parameters, pretrained on traces of a *noisy*
solver (:mod:`companion.traces`) so that it is right sometimes, wrong often, with traces of varied length.

The shipped checkpoint is rebuilt, bit for bit, by one command::

    companion pretrain --out data/tiny-base --overwrite
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import string
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer, decoders, models
from tqdm.auto import tqdm

from companion.config import MAX_COMPLETION_LENGTH, add_dataclass_arguments, config_from_args, save_config
from companion.traces import TASKS, Noise

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN)
ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"
"""The characters every prompt template, trace line, tag (<think>, <answer>) and word problem is written in.
Each is one token; so is every other byte (a rarer character is its UTF-8 bytes, one token each)."""
DEFAULT_CONTEXT = 448


def build_tokenizer(model_max_length: int = DEFAULT_CONTEXT):
    """A byte-level tokenizer with no merges as a ``PreTrainedTokenizerFast``: one token per byte, so one
    token per character of the ASCII the tasks are written in.

    It is Qwen2's own tokenizer pipeline (NFC normaliser, ByteLevel pre-tokenizer and decoder, BPE) with
    an empty merge list and a 258-token vocabulary (pad, EOS, the 256 bytes). That matters: next to a
    Qwen2 ``config.json``, ``AutoTokenizer.from_pretrained`` always builds a ``Qwen2Tokenizer`` from the
    saved vocabulary, whatever ``tokenizer_config.json`` says; a tokenizer of another kind (say, raw
    characters with no ByteLevel step) would silently reload as a different one, dropping spaces and
    newlines. This one reloads token for token.

    Pad and EOS are distinct tokens, so masking the padding never masks the EOS a completion ends with.
    Padding is on the left, as generation needs.

    >>> tok = build_tokenizer()
    >>> ids = tok("3+5=8\\n<answer>")["input_ids"]
    >>> len(ids), tok.decode(ids)
    (14, '3+5=8\\n<answer>')
    >>> tok.pad_token, tok.eos_token, tok.padding_side, len(tok)
    ('<|pad|>', '<|endoftext|>', 'left', 258)
    """
    from tokenizers import normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbol = bytes_to_unicode()  # byte -> the printable character ByteLevel writes for it (GPT-2's table)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(symbol[b] for b in range(256)))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=None,
        padding_side="left",
        model_max_length=model_max_length,
    )


def model_config(
    tokenizer,
    *,
    hidden_size: int = 256,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 768,
    max_position_embeddings: int = DEFAULT_CONTEXT,
    rope_theta: float = 10_000.0,
):
    """The Qwen2 config of a tiny model over ``tokenizer``'s vocabulary (grouped-query attention,
    tied embeddings, as in the small Qwen2.5 models).

    >>> cfg = model_config(build_tokenizer(), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                    num_key_value_heads=1, intermediate_size=64)
    >>> cfg.model_type, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, cfg.tie_word_embeddings
    ('qwen2', 258, 0, 1, True)
    """
    from transformers import Qwen2Config

    if hidden_size % num_attention_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})")
    if num_attention_heads % num_key_value_heads:
        raise ValueError(f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                         f"num_key_value_heads ({num_key_value_heads})")
    if (hidden_size // num_attention_heads) % 2:
        raise ValueError(f"the head size hidden_size/num_attention_heads = {hidden_size // num_attention_heads} "
                         "must be even for rotary embeddings; change hidden_size or num_attention_heads")
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        use_sliding_window=False,
    )


def random_model(tokenizer, *, seed: int = 0, **sizes):
    """A freshly initialised (untrained) tiny Qwen2 for ``tokenizer``; deterministic for a seed."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(model_config(tokenizer, **sizes), attn_implementation="sdpa")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


# --- where the shipped checkpoint lives -------------------------------------------------------------------

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "data" / "tiny-base"
"""The shipped checkpoint in a source checkout (the package is installed editable from the repository)."""
TINY_ENV = "COMPANION_TINY_BASE"
"""Environment variable naming another checkpoint directory for :func:`load_tiny` (e.g. outside a checkout)."""
METRICS_FILE = "metrics.json"
CONFIG_FILE = "pretrain_config.json"
_WRITTEN = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", METRICS_FILE, CONFIG_FILE)


# --- the run config ---------------------------------------------------------------------------------------

PRETRAIN_NOISE = Noise(max_attempts=7, guided=0.1, aim=1.0, slip=0.02)
"""The noisy solver the shipped model imitates: up to 7 attempts; 10% of them follow a known solution (the
solver's "intuition", which a model cannot see in the prompt), the others aim their last step at the target
(which it can); 2% of steps miscalculated."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything ``companion pretrain`` does, resolved; saved next to the checkpoint it produced."""

    out: str = field(default="data/tiny-base", metadata={"help": "directory to write the checkpoint and metrics.json to"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing run in --out made with another config"})
    seed: int = field(default=0, metadata={"help": "seeds the corpus, the initial weights, the batch order and the eval"})
    num_threads: int = field(default=2, metadata={"help": "torch threads: fixed, since the weights depend on it; two "
                                                "use both cores of the 2-core CPU (bench/bench_pretrain.py); on a "
                                                "busy machine one thread per run wastes less"})
    # model
    hidden_size: int = field(default=96, metadata={"help": "width of the residual stream"})
    num_hidden_layers: int = field(default=3, metadata={"help": "transformer blocks"})
    num_attention_heads: int = field(default=4, metadata={"help": "query heads per block"})
    num_key_value_heads: int = field(default=2, metadata={"help": "key/value heads (grouped-query attention, as in Qwen2)"})
    intermediate_size: int = field(default=384, metadata={"help": "width of each block's SwiGLU MLP"})
    context: int = field(default=DEFAULT_CONTEXT, metadata={"help": "context length in characters (prompt + completion)"})
    # corpus
    tasks: tuple[str, ...] = field(default=TASKS, metadata={"help": "tasks of the corpus and the eval"})
    task_weights: tuple[float, ...] = field(default=(0.7, 0.3), metadata={"help": "share of each task in the corpus"})
    num_examples: int = field(default=41_600, metadata={"help": "pretraining examples (prompt + noisy trace)"})
    drill_fraction: float = field(default=0.3, metadata={"help": "share of the examples that are arithmetic drills "
                                                                 "(companion.traces.arithmetic_drill)"})
    traces_per_problem: int = field(default=1, metadata={"help": "noisy traces of each problem, trained in one batch "
                                                               "(its prompt runs once for all of them)"})
    noise: Noise = field(default=PRETRAIN_NOISE, metadata={"help": "the noisy solver's knobs (see companion.traces.Noise)"})
    # optimisation
    batch_size: int = field(default=8, metadata={"help": "examples (traces) per optimizer step; small batches, "
                                                           "many steps: what a 15-minute budget learns most from"})
    learning_rate: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate (linear warmup, cosine decay to 10%)"})
    warmup_steps: int = field(default=200, metadata={"help": "steps of linear learning-rate warmup"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on matrices (not norms)"})
    # evaluation
    eval_problems: int = field(default=200, metadata={"help": "held-out (test-split) problems per task"})
    eval_samples: int = field(default=64, metadata={"help": "samples per problem, n of pass@k"})
    eval_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the eval"})
    max_completion_length: int = field(default=MAX_COMPLETION_LENGTH, metadata={"help": "longest completion sampled in the eval, in tokens"})
    eval_batch_rows: int = field(default=512, metadata={"help": "completions sampled at once in the eval (memory vs speed)"})

    def __post_init__(self):
        if isinstance(self.noise, dict):  # read back from pretrain_config.json
            object.__setattr__(self, "noise", Noise(**self.noise))
        positive = ("num_threads", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "context", "num_examples", "batch_size", "eval_samples",
                    "max_completion_length", "eval_batch_rows")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_problems"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) < len(self.tasks):
            raise ValueError(f"--tasks {' '.join(self.tasks)}: the tiny model is pretrained on distinct tasks among "
                             f"{', '.join(TASKS)} (gsm8k has no solver traces: it is the GPU world's task)")
        if not 0.0 <= self.drill_fraction < 1.0:
            raise ValueError(f"--drill-fraction is a share in [0, 1), got {self.drill_fraction}")
        if len(self.task_weights) != len(self.tasks) or min(self.task_weights) <= 0:
            raise ValueError(f"--task-weights needs one positive weight per task in --tasks {' '.join(self.tasks)}, "
                             f"got {self.task_weights}")
        if self.learning_rate <= 0 or self.eval_temperature <= 0:
            raise ValueError("--learning-rate and --eval-temperature must be positive")
        if self.num_examples < self.batch_size:
            raise ValueError(f"--num-examples ({self.num_examples}) must be at least --batch-size ({self.batch_size})")
        if self.traces_per_problem < 1 or self.batch_size % self.traces_per_problem:
            raise ValueError(f"--batch-size ({self.batch_size}) must be a multiple of --traces-per-problem "
                             f"({self.traces_per_problem})")
        # The shortest prompt is ~50 characters; a completion budget that leaves less cannot fit any prompt.
        if self.max_completion_length > self.context - 50:
            raise ValueError(f"--max-completion-length ({self.max_completion_length}) leaves no room for a prompt in a "
                             f"context of {self.context}: lower it or raise --context")
        sizes = self.model_sizes
        model_config(build_tokenizer(self.context), **sizes)  # raises on a shape that cannot work

    @property
    def model_sizes(self) -> dict:
        return dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                    num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
                    intermediate_size=self.intermediate_size, max_position_embeddings=self.context)


# --- 1. the corpus ----------------------------------------------------------------------------------------


def _train_problems(task: str, n: int, seed: int) -> list[dict]:
    """``n`` training-split problems: all distinct while the split lasts, then the same ones again (the
    traces differ, and Countdown numbers are reshuffled, so a repeat is not a copy)."""
    from companion.tasks import countdown, get_task

    if n == 0:
        return []
    if task != "countdown":
        return get_task(task).generate(n, seed=seed, split="train")
    distinct = countdown.generate(min(n, _countdown_train_size()), seed=seed, split="train")
    rng = random.Random(seed)
    problems = list(distinct)
    while len(problems) < n:
        for p in rng.sample(distinct, min(len(distinct), n - len(problems))):
            problems.append({"numbers": rng.sample(p["numbers"], len(p["numbers"])), "target": p["target"]})
    return problems


@lru_cache(maxsize=1)
def _countdown_train_size() -> int:
    from companion.tasks import countdown

    return len(countdown.enumerate_problems(split="train"))


class Group(NamedTuple):
    """One training-split problem with several noisy traces of it: the unit of the corpus."""

    task: str
    problem: dict
    prompt: str
    completions: tuple[str, ...]


def build_corpus(config: PretrainConfig) -> list[Group]:
    """Groups of ``config.traces_per_problem`` noisy-solver traces per training-split problem, and arithmetic
    drills (task ``"arithmetic"``), shuffled: ``config.num_examples`` examples in all, a ``drill_fraction``
    of them drills, the rest shared among the tasks by ``config.task_weights``."""
    from companion import traces

    k = config.traces_per_problem
    total = config.num_examples // k
    drills = round(total * config.drill_fraction)
    shares = np.asarray(config.task_weights) / sum(config.task_weights)
    groups = np.floor(shares * (total - drills)).astype(int)
    groups[0] += total - drills - groups.sum()  # the rounding remainder goes to the first task
    rng = random.Random(config.seed)
    corpus = [Group("arithmetic", {}, traces.DRILL_PROMPT, tuple(traces.arithmetic_drill(rng) for _ in range(k)))
              for _ in range(drills)]
    for t, (task, n) in enumerate(zip(config.tasks, groups.tolist())):
        problems = _train_problems(task, n, config.seed + t)
        # Each problem k times in a row: consecutive calls of the seeded solver give k different traces.
        pairs = traces.examples(task, [p for p in problems for _ in range(k)], seed=config.seed + t, noise=config.noise)
        for i, problem in enumerate(problems):
            chunk = pairs[i * k:(i + 1) * k]
            corpus.append(Group(task, problem, chunk[0][0], tuple(c for _, c in chunk)))
    random.Random(config.seed).shuffle(corpus)
    return corpus


def encode_corpus(tokenizer, corpus: list[Group], context: int) -> list[tuple[list[int], list[list[int]]]]:
    """Per group: the prompt's token ids and each completion's ids with EOS appended.

    Raises ``ValueError`` showing the longest example when one does not fit ``context``.
    """
    prompts = tokenizer([g.prompt for g in corpus], add_special_tokens=False)["input_ids"]
    flat = tokenizer([c for g in corpus for c in g.completions], add_special_tokens=False)["input_ids"]
    encoded, i = [], 0
    for prompt, group in zip(prompts, corpus):
        encoded.append((prompt, [ids + [tokenizer.eos_token_id] for ids in flat[i:i + len(group.completions)]]))
        i += len(group.completions)
    size = [len(p) + max(map(len, cs)) for p, cs in encoded]
    longest = int(np.argmax(size))
    if size[longest] > context:
        group = corpus[longest]
        completion = max(group.completions, key=len)
        raise ValueError(
            f"a {group.task} example of {size[longest]} tokens does not fit the context of {context}: raise "
            f"--context or shorten the traces (lower --max-attempts). The example:\n{group.prompt}{completion}")
    return encoded


def _batches(encoded, groups_per_batch: int, rng: random.Random) -> list[list[int]]:
    """Batches of group indices with similar lengths (less padding), in random order: shuffle, sort within
    windows of 64 batches by length, cut into batches, shuffle the batches."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    window = 64 * groups_per_batch
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: (len(encoded[i][0]), max(map(len, encoded[i][1]))))
        batches += [chunk[b:b + groups_per_batch] for b in range(0, len(chunk) - groups_per_batch + 1, groups_per_batch)]
    rng.shuffle(batches)
    return batches


def _collate(encoded, indices, pad_id: int):
    """``(prompt_ids, prompt_mask, completion_ids, completion_mask)`` for the groups ``indices``: each
    prompt repeated once per completion (left padded, (N, P)), completions right padded ((N, T))."""
    import torch

    rows = [(encoded[i][0], c) for i in indices for c in encoded[i][1]]
    P, T = max(len(p) for p, _ in rows), max(len(c) for _, c in rows)
    prompt_ids, prompt_mask = torch.full((len(rows), P), pad_id), torch.zeros((len(rows), P), dtype=torch.long)
    completion_ids, completion_mask = torch.full((len(rows), T), pad_id), torch.zeros((len(rows), T), dtype=torch.long)
    for r, (p, c) in enumerate(rows):
        prompt_ids[r, P - len(p):], prompt_mask[r, P - len(p):] = torch.tensor(p), 1
        completion_ids[r, :len(c)], completion_mask[r, :len(c)] = torch.tensor(c), 1
    return prompt_ids, prompt_mask, completion_ids, completion_mask


# --- 2. training ------------------------------------------------------------------------------------------


@contextmanager
def deterministic(seed: int, num_threads: int):
    """Seed torch, fix the thread count and turn on deterministic algorithms; restore them afterwards."""
    import torch

    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


def train(model, tokenizer, corpus: list[Group], config: PretrainConfig, *, progress: bool = True) -> list[float]:
    """Pretrain ``model`` on ``corpus``: one pass, ``config.batch_size`` traces per AdamW step, the loss on
    the completions only (the prompts' numbers are random and cannot be predicted). Returns the loss per step.

    Run inside :func:`deterministic` for reproducible weights.
    """
    import math

    import torch

    from companion.rollout import per_token_logps

    encoded = encode_corpus(tokenizer, corpus, config.context)
    batches = _batches(encoded, config.batch_size // config.traces_per_problem, random.Random(config.seed))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.learning_rate, betas=(0.9, 0.95))

    def lr_factor(step: int) -> float:  # linear warmup, then cosine decay to 10% of the peak
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_ = (step - config.warmup_steps) / max(1, len(batches) - config.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    losses = []
    bar = tqdm(batches, desc="pretraining", disable=not progress, dynamic_ncols=True)
    for indices in bar:
        prompt_ids, prompt_mask, completion_ids, completion_mask = _collate(encoded, indices, tokenizer.pad_token_id)
        # The same per-token log-probs the RL trainers use; each prompt runs once for its group of traces.
        logps = per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask)  # (N, T)
        loss = -(logps * completion_mask).sum() / completion_mask.sum()  # token-mean NLL of the completions
        if not torch.isfinite(loss):
            raise RuntimeError(f"pretraining diverged at step {len(losses)} (loss {loss.item()}): "
                               "lower --learning-rate or raise --warmup-steps")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    bar.close()
    return losses


# --- 3. evaluation ----------------------------------------------------------------------------------------


def evaluate_base(model, tokenizer, task: str, problems: list[dict], *, n: int = 64, max_completion_length: int = MAX_COMPLETION_LENGTH,
                  temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_rows: int = 512,
                  progress: bool = True) -> list[dict]:
    """Sample ``n`` completions per problem and score them with the task's verifier.

    Returns one record per problem: ``correct`` (how many of the n were right), ``completions`` (their
    text), ``lengths`` (each completion's length in tokens, EOS included), ``rewards`` and ``finished``
    (whether each ended with EOS within ``max_completion_length``). Pass the counts to :func:`companion.passk.pass_at_k_curve`.
    Deterministic for a seed (each batch of prompts is sampled with its own seed).
    """
    from companion.rollout import generate
    from companion.tasks import get_task

    spec = get_task(task)
    per_batch = max(1, batch_rows // n)
    records = []
    bar = tqdm(total=len(problems) * n, desc=f"sampling {task}", unit="sample", disable=not progress,
               dynamic_ncols=True)
    for b, start in enumerate(range(0, len(problems), per_batch)):
        chunk = problems[start:start + per_batch]
        rollout = generate(model, tokenizer, [spec.prompt(p) for p in chunk], num_generations=n,
                           max_completion_length=max_completion_length, temperature=temperature, top_p=top_p,
                           seed=seed + b, return_logps=False)
        lengths = rollout.lengths.tolist()
        finished = (~rollout.truncated).tolist()
        for k, problem in enumerate(chunk):
            rows = range(k * n, (k + 1) * n)
            rewards = [spec.reward(rollout.texts[r], problem) for r in rows]
            records.append({"problem": problem, "correct": sum(r == 1.0 for r in rewards), "rewards": rewards,
                            "completions": [rollout.texts[r] for r in rows],
                            "lengths": [lengths[r] for r in rows], "finished": [finished[r] for r in rows]})
        bar.update(len(chunk) * n)
    bar.close()
    return records


def _length_summary(lengths) -> dict:
    if not lengths:
        return {"count": 0}
    a = np.asarray(lengths)
    q = np.percentile(a, [5, 25, 50, 75, 95])
    return {"count": int(a.size), "mean": round(float(a.mean()), 2), "std": round(float(a.std()), 2),
            "min": int(a.min()), "p5": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p95": float(q[4]), "max": int(a.max())}


def summarize(records: list[dict], n: int) -> dict:
    """pass@k (k = 1, 2, 4, ..., n; bootstrap 95% intervals over problems), coverage, and the completion
    length distributions of correct and of wrong samples."""
    from companion.passk import pass_at_k_curve

    counts = [r["correct"] for r in records]
    curve = pass_at_k_curve(counts, n)
    right = [length for r in records for length, w in zip(r["lengths"], r["rewards"]) if w == 1.0]
    wrong = [length for r in records for length, w in zip(r["lengths"], r["rewards"]) if w != 1.0]
    samples = len(records) * n
    return {
        "problems": len(records),
        "samples_per_problem": n,
        "pass_at_k": {str(k): {"estimate": p.estimate, "low": p.low, "high": p.high} for k, p in curve.items()},
        "pass@1": curve[1].estimate,
        f"pass@{n}": curve[n].estimate,
        "coverage": sum(c > 0 for c in counts) / len(counts),
        "well_formed_wrong": sum(w > 0 and w != 1.0 for r in records for w in r["rewards"]) / samples,
        "unfinished": sum(not f for r in records for f in r["finished"]) / samples,
        "length_correct": _length_summary(right),
        "length_wrong": _length_summary(wrong),
    }


EVAL_PROBLEM_SEED = 2025
"""Seed of the held-out problem sets, fixed so every model (and every pretraining seed) meets the same ones."""
TARGETS = {"pass@1": (0.10, 0.50), "pass@64": 0.80, "pretrain_minutes": 15.0}
"""What the base model must do (the issue's targets), checked on the shipped checkpoint's metrics."""


def heldout_problems(task: str, n: int = 200, *, seed: int = EVAL_PROBLEM_SEED) -> list[dict]:
    """``n`` test-split problems of ``task``: never in any pretraining corpus (which uses the train split)."""
    from companion.tasks import get_task

    return get_task(task).generate(n, seed=seed, split="test")


# --- 4. the command ---------------------------------------------------------------------------------------


def _comparable(config: dict) -> dict:
    """A run's config without the options that do not change its result."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in ("out", "overwrite")}


def _prepare_out(config: PretrainConfig) -> Path:
    """The output directory, emptied of a previous run's files; refuses to replace a different run without
    ``--overwrite``, and never deletes files that a run did not write."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory: choose another --out")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not present:
        return out
    saved = out / CONFIG_FILE
    same = saved.is_file() and _comparable(json.loads(saved.read_text())) == _comparable(dataclasses.asdict(config))
    if not (same or config.overwrite):
        what = "a run with a different config" if saved.is_file() else f"files ({', '.join(present[:4])})"
        raise FileExistsError(f"{out} already holds {what}: pass --overwrite to replace it, or choose another --out")
    foreign = [name for name in present if name not in _WRITTEN]
    if foreign:
        raise FileExistsError(f"{out} holds files no pretraining run writes ({', '.join(foreign[:4])}); refusing to "
                              "write there: move them or choose another --out")
    for name in present:
        (out / name).unlink()
    return out


def _check_eval_fits(config: PretrainConfig) -> None:
    """Raise unless every held-out prompt of the eval leaves room for ``max_completion_length`` in the context."""
    tokenizer = build_tokenizer(config.context)
    for task in config.tasks if config.eval_problems else ():
        longest = max(len(tokenizer(task_prompt(task, p))["input_ids"])
                      for p in heldout_problems(task, config.eval_problems))
        if longest + config.max_completion_length > config.context:
            raise ValueError(f"a {task} prompt of {longest} tokens + --max-completion-length "
                             f"{config.max_completion_length} exceeds the context of {config.context}: lower "
                             "--max-completion-length or raise --context")


def pretrain(config: PretrainConfig = PretrainConfig(), *, progress: bool = True) -> dict:
    """Build the tokenizer, corpus and model, pretrain, save, reload and evaluate. Returns the metrics, which
    are also written to ``config.out/metrics.json`` (next to the resolved config and the checkpoint)."""
    import torch
    import transformers

    _check_eval_fits(config)  # before the training it would waste
    out = _prepare_out(config)
    start, cpu_start = time.perf_counter(), time.process_time()
    with deterministic(config.seed, config.num_threads):
        tokenizer = build_tokenizer(config.context)
        corpus = build_corpus(config)
        model = random_model(tokenizer, seed=config.seed, **config.model_sizes)
        losses = train(model, tokenizer, corpus, config, progress=progress)
    pretrain_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_config(config, out / CONFIG_FILE)

    metrics = {
        "model": {"parameters": sum(p.numel() for p in model.parameters()), **config.model_sizes,
                  "vocab_size": len(tokenizer)},
        "pretrain": {"seconds": round(pretrain_seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "steps": len(losses),
                     "examples": len(losses) * config.batch_size,
                     "tokens_computed": sum(len(g.prompt) + sum(len(c) + 1 for c in g.completions) for g in corpus),
                     "loss_first_10": float(np.mean(losses[:10])), "loss_last_100": float(np.mean(losses[-100:])),
                     "loss_every_50": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, len(losses), 50)]},
        "corpus": _corpus_summary(corpus),
        "eval": {},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "num_threads": config.num_threads,
                        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count()},
        "config": _comparable(dataclasses.asdict(config)),
    }
    # Evaluate what was written, reloaded: the numbers describe the shipped files, not the in-memory model.
    model, tokenizer = load_tiny(out)
    for k, task in enumerate(config.tasks if config.eval_problems else ()):
        problems = heldout_problems(task, config.eval_problems)
        start = time.perf_counter()
        with deterministic(config.seed, config.num_threads):
            records = evaluate_base(model, tokenizer, task, problems, n=config.eval_samples,
                                    max_completion_length=config.max_completion_length,
                                    temperature=config.eval_temperature, seed=config.seed + 1000 * k,
                                    batch_rows=config.eval_batch_rows, progress=progress)
        metrics["eval"][task] = {**summarize(records, config.eval_samples),
                                 "seconds": round(time.perf_counter() - start, 1),
                                 "temperature": config.eval_temperature, "problem_seed": EVAL_PROBLEM_SEED}
    metrics["targets"] = check_targets(metrics)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def task_prompt(task: str, problem: dict) -> str:
    """The base-template prompt the tiny model is pretrained and evaluated with."""
    from companion.tasks import prompts

    return prompts.format_prompt(task, problem, style="base")


def _corpus_summary(corpus) -> dict:
    """Per task: examples, the noisy solver's own accuracy (what the model imitates), prompt and completion
    lengths in characters (of correct and of wrong traces)."""
    from companion.tasks import get_task

    summary = {}
    for task in sorted({g.task for g in corpus} - {"arithmetic"}):
        rows = [(g.problem, g.prompt, c) for g in corpus if g.task == task for c in g.completions]
        correct = [get_task(task).reward(c, problem) == 1.0 for problem, _, c in rows]
        summary[task] = {"examples": len(rows), "solver_accuracy": round(float(np.mean(correct)), 4),
                         "prompt_chars": _length_summary([len(p) for _, p, _ in rows]),
                         "completion_chars_correct": _length_summary([len(c) for (_, _, c), ok in zip(rows, correct) if ok]),
                         "completion_chars_wrong": _length_summary([len(c) for (_, _, c), ok in zip(rows, correct) if not ok])}
    return summary


def check_targets(metrics: dict) -> dict:
    """Which of :data:`TARGETS` the metrics meet, per task (``None`` where the eval did not run)."""
    low, high = TARGETS["pass@1"]
    result = {"pretrain_minutes": {"value": metrics["pretrain"]["seconds"] / 60,
                                   "met": metrics["pretrain"]["seconds"] / 60 <= TARGETS["pretrain_minutes"]}}
    for task, ev in metrics["eval"].items():
        n = ev["samples_per_problem"]
        result[task] = {"pass@1": ev["pass@1"], "pass@1_met": low <= ev["pass@1"] <= high,
                        f"pass@{n}": ev[f"pass@{n}"],
                        "pass@64_met": ev["pass_at_k"]["64"]["estimate"] >= TARGETS["pass@64"] if "64" in ev["pass_at_k"] else None}
    return result


# --- loading ----------------------------------------------------------------------------------------------


def tiny_dir(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint directory :func:`load_tiny` uses: ``path``, else ``$COMPANION_TINY_BASE``, else the shipped one."""
    return Path(path or os.environ.get(TINY_ENV) or SHIPPED_DIR).expanduser()


def load_tiny(path: str | os.PathLike | None = None):
    """The tiny base model (float32, eval mode) and its tokenizer: ``(model, tokenizer)``.

    ``path`` defaults to ``$COMPANION_TINY_BASE`` or the shipped ``data/tiny-base``. A missing, incomplete or
    corrupt directory raises an error that says how to rebuild it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_dir(path)
    rebuild = f"rebuild it with `companion pretrain --out {path} --overwrite` (minutes on a CPU)"
    if not path.is_dir():
        raise FileNotFoundError(f"no tiny base checkpoint at {path}: {rebuild}, set ${TINY_ENV}, or pass the "
                                "directory of one")
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
               if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete tiny checkpoint (missing {', '.join(missing)}): {rebuild}")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # transformers, safetensors and json each raise their own kind
        raise ValueError(f"{path} holds a corrupt checkpoint ({type(error).__name__}: {error}): {rebuild}") from error
    broken = info.get("missing_keys") or info.get("mismatched_keys")
    if broken or model.config.vocab_size != len(tokenizer) or tokenizer.eos_token_id is None:
        raise ValueError(f"{path} holds an inconsistent checkpoint (missing or mismatched weights: "
                         f"{list(broken)[:3]}; vocab {model.config.vocab_size} vs tokenizer {len(tokenizer)}): {rebuild}")
    if tokenizer.decode(tokenizer(ALPHABET, add_special_tokens=False)["input_ids"]) != ALPHABET:
        # e.g. a character tokenizer saved by an older version: next to a Qwen2 config it reloads as a
        # Qwen2Tokenizer that drops spaces and newlines, so the model would read text it was never trained on
        raise ValueError(f"{path} holds a tokenizer that does not reload to one token per character (spaces or "
                         f"newlines are lost): {rebuild}")
    model.eval()
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    """``companion pretrain``: build, pretrain, evaluate and save the tiny base model."""
    parser = argparse.ArgumentParser(
        prog="companion pretrain",
        description="Pretrain the tiny Qwen2 base model on noisy solver traces, evaluate pass@k on held-out "
                    "problems, and write a save_pretrained checkpoint with metrics.json. The defaults rebuild "
                    "the shipped data/tiny-base.")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and stop")
    add_dataclass_arguments(parser, PretrainConfig, skip=("noise",))
    add_dataclass_arguments(parser.add_argument_group("noisy solver (companion.traces.Noise)"), Noise,
                            defaults=PretrainConfig().noise)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(PretrainConfig, args, noise=config_from_args(Noise, args))
    except ValueError as error:
        parser.error(str(error))
    if args.dry_run:
        print(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True))
        return 0
    try:
        metrics = pretrain(config)
    except (FileExistsError, ValueError) as error:
        print(f"companion pretrain: error: {error}", file=sys.stderr)
        return 2
    print(f"pretrained {metrics['model']['parameters']:,} parameters in {metrics['pretrain']['seconds'] / 60:.1f} min;"
          f" wrote {config.out}")
    for task, ev in metrics["eval"].items():
        n = ev["samples_per_problem"]
        print(f"{task}: pass@1 {ev['pass@1']:.3f}  pass@{n} {ev[f'pass@{n}']:.3f}  "
              f"median length correct {ev['length_correct'].get('median')} / wrong {ev['length_wrong'].get('median')}")
    return 0
