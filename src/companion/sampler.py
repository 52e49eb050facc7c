"""Many samples per prompt, fast, and each prompt's samples fixed by its own seed: the sampler behind
``companion eval``.

pass@k needs hundreds of completions per problem (Yue et al. use n = 256), so evaluation is mostly
sampling. Like :func:`companion.rollout.generate` (the trainers' sampler), this one runs each prompt through
the model once and copies its KV cache to every row that samples from it, writes the cache in place
(``transformers``' default cache re-concatenates itself at every step, which on the tiny model costs more
than the model), and drops finished rows from the batch (with n = 256 some sample nearly always runs to the
length cap while most stopped long before). Two things differ, and are why evaluation has its own:

1. **One uniform per token, fixed in advance.** Sample ``i`` of a prompt draws its ``t``-th token by
   inverse-CDF sampling with ``u[i, t]``, where ``u`` comes from that prompt's own seed. A sample therefore
   depends on the model, its prompt and its seed only: not on which other prompts share its batch, on the
   batch size, or on when rows were dropped. That is what lets an interrupted evaluation resume, with any
   batch size, to the uninterrupted result. (``rollout.generate`` draws from one generator per call, so a
   sample there depends on what else is in the call.)
2. **Batches of a fixed size.** The (prompt, sample) rows are laid end to end and cut into batches of
   ``batch_size`` rows: several prompts share a batch when n is small, and n = 1024 samples of one prompt
   do not all decode at once.

Finished rows are gathered out of the batch once a quarter of it has finished (gathering at every finish
would copy the cache more often than it saves). The distribution is the one
``model.generate(do_sample=True, temperature=..., top_p=..., top_k=0)`` samples: temperature, then the
smallest set of most likely tokens whose probability reaches ``top_p``. ``temperature=0`` is greedy.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from companion.config import MAX_COMPLETION_LENGTH
from companion.rollout import filter_logits, stop_token_ids

COMPACT_FRACTION = 0.25
"""Gather the surviving rows into a smaller batch once this share of the batch has finished."""


class Completion(NamedTuple):
    """One sampled completion."""

    text: str  # decoded, special tokens removed
    token_ids: tuple[int, ...]  # the sampled tokens, EOS included
    length: int  # completion tokens, EOS included (|o_i| in the book's notation)
    finished: bool  # ended with EOS (False: cut at max_completion_length)


# --- the in-place KV cache -----------------------------------------------------------------------------------


class _BufferLayer(DynamicLayer):
    """One layer's KV cache in a buffer sized for the whole sequence; :meth:`update` writes in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        rows, heads, length, head_dim = keys.shape  # (R, H, L, D)
        self._keys = keys.new_empty(rows, heads, capacity, head_dim)  # (R, H, capacity, D)
        self._values = values.new_empty(rows, heads, capacity, head_dim)
        self._keys[:, :, :length] = keys
        self._values[:, :, :length] = values
        self.length, self.capacity = length, capacity
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._keys[:, :, : self.length]  # (R, H, L, D) views, no copy
        self.values = self._values[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self.length + new > self.capacity:
            raise RuntimeError(f"KV buffer of {self.capacity} positions is full; this is a bug in companion.sampler")
        self._keys[:, :, self.length : self.length + new] = key_states
        self._values[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        # Copy only the filled part: the rest of the buffer is never read before it is written.
        for name in ("_keys", "_values"):
            old = getattr(self, name)
            new = old.new_empty(len(indices), *old.shape[1:])
            new[:, :, : self.length] = old[indices, :, : self.length]
            setattr(self, name, new)
        self._expose()


def _buffer_cache(prompt_cache: DynamicCache, rows: torch.Tensor, capacity: int) -> Cache:
    """A cache whose row r holds the prompt cache's row ``rows[r]``, with room for ``capacity`` positions."""
    return Cache(layers=[_BufferLayer(layer.keys[rows], layer.values[rows], capacity) for layer in prompt_cache.layers])


# --- one token ---------------------------------------------------------------------------------------------


def sample_next_token(logits: torch.Tensor, uniforms: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """Inverse-CDF sampling from softmax(logits / temperature) restricted to the top-p nucleus.

    ``logits`` (R, V), ``uniforms`` (R,) in [0, 1); returns (R,) token ids: the first token, in vocabulary
    order, at which the cumulative probability passes ``u``. The nucleus is :func:`companion.rollout.filter_logits`'
    (the rule of ``transformers``' top-p warper). ``temperature=0`` returns the argmax.

    >>> logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    >>> [sample_next_token(logits, torch.tensor([u]), temperature=1.0, top_p=1.0).item() for u in (0.1, 0.6, 0.9)]
    [0, 1, 2]
    >>> [sample_next_token(logits, torch.tensor([u]), temperature=1.0, top_p=0.7).item() for u in (0.1, 0.6, 0.9)]
    [0, 0, 1]
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_p=top_p).softmax(dim=-1)  # (R, V) 0 outside the nucleus
    cdf = probs.cumsum(dim=-1)  # (R, V)
    threshold = uniforms.to(cdf)[:, None] * cdf[:, -1:]  # (R, 1)
    # A zero-probability token never passes the threshold (its CDF step is flat); float rounding at the top of
    # the CDF must not step past the last token that has probability.
    last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).long().argmax(dim=-1)  # (R,)
    return torch.minimum((cdf <= threshold).sum(dim=-1), last)


# --- many samples per prompt ---------------------------------------------------------------------------------


def uniforms_for(seed: int, num_samples: int, max_completion_length: int) -> torch.Tensor:
    """The (num_samples, max_completion_length) uniforms that fix every token a prompt's samples draw."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(num_samples, max_completion_length, generator=generator, dtype=torch.float64)


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: list[str],
    num_samples: int,
    *,
    seeds: list[int],
    max_completion_length: int = MAX_COMPLETION_LENGTH,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 256,
    on_finished: Callable[[int, int], None] | None = None,
) -> list[list[Completion]]:
    """``num_samples`` completions of each prompt; ``result[j][i]`` is sample ``i`` of ``prompts[j]``.

    Args:
        model, tokenizer: a causal LM and its tokenizer (with an EOS token and a pad token).
        prompts: the prompts, encoded without special tokens (the task's templates carry their own).
        num_samples: completions per prompt.
        seeds: one seed per prompt; sample ``i`` of prompt ``j`` depends only on the model, the prompt and
            ``seeds[j]``, never on the batching.
        max_completion_length: tokens per completion at most (EOS included).
        temperature, top_p: the sampling distribution; ``temperature=0`` is greedy.
        batch_size: rows (samples) decoded together. The rows of all prompts are laid end to end and cut
            into batches of this size, so a batch can hold several prompts, or part of one.
        on_finished: called as ``on_finished(samples, tokens)`` whenever samples finish, for progress bars.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
    if num_samples < 1 or max_completion_length < 1 or batch_size < 1:
        raise ValueError("num_samples, max_completion_length and batch_size must all be at least 1")
    if not prompts:
        return []
    device = next(model.parameters()).device
    eos_ids = torch.tensor(stop_token_ids(model, tokenizer), device=device)
    was_training = model.training
    model.eval()
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        all_ids, all_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # (J, P) left padded
        limit = getattr(model.config, "max_position_embeddings", None)
        longest = int(all_mask.sum(dim=1).max())
        if limit is not None and longest + max_completion_length > limit:
            raise ValueError(f"the longest prompt ({longest} tokens) + max_completion_length ({max_completion_length}) "
                             f"exceeds the model's context of {limit} tokens: lower max_completion_length")
        results: list[list[Completion | None]] = [[None] * num_samples for _ in prompts]
        prefilled = None  # (prompt indices, their cache, logits, mask) of the last prefill, reused while they last
        # The (prompt, sample) rows laid end to end, decoded batch by batch.
        for batch in torch.arange(len(prompts) * num_samples).split(batch_size):
            prompt_of, sample_of = batch // num_samples, batch % num_samples  # (R,) each
            needed = prompt_of.unique()  # sorted
            if prefilled is None or not torch.equal(prefilled[0], needed):
                # 1. prefill the batch's prompts once each, and draw their samples' uniforms
                draws = {j: uniforms_for(seeds[j], num_samples, max_completion_length) for j in needed.tolist()}
                prefilled = (needed, draws, *_prefill(model, all_ids[needed], all_mask[needed]))
            _, draws, prompt_cache, prompt_logits, prompt_mask = prefilled
            uniforms = torch.stack([draws[j][i] for j, i in zip(prompt_of.tolist(), sample_of.tolist())])  # (R, T)
            tokens, lengths, finished = _decode_batch(
                model, prompt_cache, prompt_logits, prompt_mask, torch.searchsorted(needed, prompt_of).to(device),
                uniforms.to(device), eos_ids, temperature=temperature, top_p=top_p, on_finished=on_finished,
            )
            token_ids = [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())]
            texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
            for j, i, text, ids, done in zip(prompt_of.tolist(), sample_of.tolist(), texts, token_ids, finished.tolist()):
                results[j][i] = Completion(text, tuple(ids), len(ids), done)
        return results  # type: ignore[return-value]
    finally:
        model.train(was_training)


def _prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """Run the prompts (B, P) through the model once: their cache, the logits of each first completion token
    (B, V), and their mask with the columns that are padding in every row cut off (B, P')."""
    first_real = int((prompt_mask.sum(dim=0) > 0).nonzero()[0])
    prompt_ids, prompt_mask = prompt_ids[:, first_real:], prompt_mask[:, first_real:]
    position_ids = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding does not shift positions
    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    return cache, out.logits[:, -1].float(), prompt_mask


def _decode_batch(model, prompt_cache, prompt_logits, prompt_mask, prompt_of, uniforms, eos_ids, *, temperature, top_p,
                  on_finished):
    """Sample one batch of rows to the end. Returns tokens (R, T), lengths (R,), finished (R,)."""
    num_rows, max_len = uniforms.shape  # (R, T)
    device = uniforms.device
    prompt_len = prompt_mask.shape[1]
    cache = _buffer_cache(prompt_cache, prompt_of, capacity=prompt_len + max_len)
    tokens = torch.zeros(num_rows, max_len, dtype=torch.long, device=device)  # (R, T) valid up to each length
    lengths = torch.full((num_rows,), max_len, dtype=torch.long, device=device)
    finished = torch.zeros(num_rows, dtype=torch.bool, device=device)
    # The physical batch: which original rows are still decoded, and their attention masks and next positions.
    live = torch.arange(num_rows, device=device)  # (A,)
    # One code path with or without left padding: transformers drops an all-ones mask by itself.
    mask = torch.ones(num_rows, prompt_len + max_len, dtype=torch.long, device=device)  # (A, P + T)
    mask[:, :prompt_len] = prompt_mask[prompt_of]
    positions = prompt_mask.sum(dim=1)[prompt_of]  # (A,) position of the next token: the prompt's real length
    logits = prompt_logits[prompt_of]  # (A, V)
    running = torch.ones(num_rows, dtype=torch.bool, device=device)  # (A,) not yet finished, among the live rows
    for t in range(max_len):
        # 2. a token for every live row, from its own uniform
        next_tokens = sample_next_token(logits, uniforms[live, t], temperature=temperature, top_p=top_p)  # (A,)
        tokens[live, t] = next_tokens
        ends = running & torch.isin(next_tokens, eos_ids)  # (A,)
        if ends.any():
            ended = live[ends]
            lengths[ended], finished[ended] = t + 1, True
            running &= ~ends
            if on_finished is not None:
                on_finished(int(ends.sum()), int(lengths[ended].sum()))
        if t == max_len - 1 or not running.any():
            break
        # 3. drop finished rows once enough of the batch is dead weight
        if (~running).sum() >= COMPACT_FRACTION * len(live):
            keep = running.nonzero().squeeze(1)  # (A',)
            cache.batch_select_indices(keep)
            live, positions, running, next_tokens = live[keep], positions[keep], running[keep], next_tokens[keep]
            mask = mask[keep]
        # 4. one step of the model on the last token of every live row
        logits = model(input_ids=next_tokens[:, None], attention_mask=mask[:, : prompt_len + t + 1],
                       position_ids=(positions + t)[:, None], past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]  # (A, V)
    unfinished = ~finished
    if on_finished is not None and unfinished.any():
        on_finished(int(unfinished.sum()), int(lengths[unfinished].sum()))
    return tokens, lengths, finished
