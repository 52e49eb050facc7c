"""Many samples per prompt, fast, and each prompt's samples fixed by its own seed: the sampler behind
``companion eval``.

pass@k needs hundreds of completions per problem (Yue et al. use n = 256), so evaluation is mostly
sampling. It runs on the package's one decoding loop (:mod:`companion.decode`: each prompt prefilled once, the
cache written in place, finished rows dropped, which matters here: with n = 256 some sample nearly always runs
to the length cap while most stopped long before), with the two options :func:`companion.rollout.generate`
does not take:

1. **One uniform per token, fixed in advance.** Sample ``i`` of a prompt draws its ``t``-th token by
   inverse-CDF sampling with ``u[i, t]``, where ``u`` comes from that prompt's own seed. A sample therefore
   depends on the model, its prompt and its seed only: not on which other prompts share its batch, on the
   batch size, or on when rows were dropped. That is what lets an interrupted evaluation resume, with any
   batch size, to the uninterrupted result. (``rollout.generate`` draws from one generator per call, so a
   sample there depends on what else is in the call.)
2. **Batches of a fixed size.** The (prompt, sample) rows are laid end to end and cut into batches of
   ``batch_size`` rows: several prompts share a batch when n is small, and n = 1024 samples of one prompt
   do not all decode at once.

The distribution is the one ``model.generate(do_sample=True, temperature=..., top_p=..., top_k=0)`` samples:
temperature, then the smallest set of most likely tokens whose probability reaches ``top_p``.
``temperature=0`` is greedy.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from companion.config import MAX_COMPLETION_LENGTH
from companion.decode import check_context, decode, sample_next_token, uniforms_for  # noqa: F401 (re-exported)
from companion.rollout import encode_prompts, stop_token_ids


class Completion(NamedTuple):
    """One sampled completion."""

    text: str  # decoded, special tokens removed
    token_ids: tuple[int, ...]  # the sampled tokens, EOS included
    length: int  # completion tokens, EOS included (|o_i| in the book's notation)
    finished: bool  # ended with EOS (False: cut at max_completion_length)


def sample_completions(
    model,
    tokenizer,
    prompts: list[str],
    num_generations: int,
    *,
    seeds: list[int],
    max_completion_length: int = MAX_COMPLETION_LENGTH,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 256,
    fast: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[list[Completion]]:
    """``num_generations`` completions of each prompt; ``result[j][i]`` is sample ``i`` of ``prompts[j]``.

    Args:
        model, tokenizer: a causal LM and its tokenizer (with an EOS token and a pad token).
        prompts: the prompts, encoded without special tokens (the task's templates carry their own).
        num_generations: completions per prompt.
        seeds: one seed per prompt; sample ``i`` of prompt ``j`` depends only on the model, the prompt and
            ``seeds[j]``, never on the batching.
        max_completion_length: tokens per completion at most (EOS included).
        temperature, top_p: the sampling distribution; ``temperature=0`` is greedy.
        batch_size: rows (samples) decoded together. The rows of all prompts are laid end to end and cut
            into batches of this size, so a batch can hold several prompts, or part of one.
        fast: the fast path of :func:`companion.decode.decode` (each prompt's keys and values kept once, not
            once per sample; the nucleus found without a sort): the same distributions up to float rounding, so
            not bit for bit the samples of the default path, which the trainers use.
        on_progress: called as ``on_progress(samples, tokens)`` after every decoding step, with the samples that
            ended in it and the tokens it decoded, for progress bars.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
    if num_generations < 1 or max_completion_length < 1 or batch_size < 1:
        raise ValueError("num_generations, max_completion_length and batch_size must all be at least 1")
    if not prompts:
        return []
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, next(model.parameters()).device)  # (J, P)
    check_context(model, int(prompt_mask.sum(dim=1).max()), max_completion_length)
    results: list[list[Completion | None]] = [[None] * num_generations for _ in prompts]
    for batch in decode(model, prompt_ids, prompt_mask, num_generations, max_completion_length=max_completion_length,
                        stop_ids=stop_token_ids(model, tokenizer), temperature=temperature, top_p=top_p, seeds=seeds,
                        batch_size=batch_size, fast=fast, on_progress=on_progress):
        token_ids = [row[:n] for row, n in zip(batch.tokens.tolist(), batch.lengths.tolist())]
        texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        for row, text, ids, done in zip(batch.rows.tolist(), texts, token_ids, batch.finished.tolist()):
            results[row // num_generations][row % num_generations] = Completion(text, tuple(ids), len(ids), done)
    return results  # type: ignore[return-value]
