"""The decoding loop behind both samplers: :func:`companion.rollout.generate` (the trainers, the pretraining
eval, chapter 2) and :func:`companion.sampler.sample_completions` (``companion eval``).

Why our own loop rather than ``model.generate``: on a model of a few million parameters a decoding step is a
handful of small matrix products, and ``generate`` spends as much again around them (logits processors,
stopping criteria, input preparation, and a KV cache re-concatenated at every step, which alone was half the
decoding time on the tiny model); and ``generate(output_logits=True)`` keeps every step's full (N, V) logits,
gigabytes for a 151k-token vocabulary. So the loop runs each prompt once and copies its KV cache to every row
that samples from it, writes the cache in place, and reduces each step's logits to a token (and, if asked, its
log-prob and the entropy) before moving on. It runs as long as the longest completion, and most finish long
before it, so finished rows are gathered out of the batch once a quarter of it has finished: on the tiny model
that halves the rows decoded, and gathering at every finish would copy the cache more often than it saves.

Why one loop with options: the two samplers differ only in how a token is drawn and how rows are batched. Two
copies of the cache, the positions under left padding and the row dropping had already drifted apart (two
cache classes, two compaction thresholds). The options:

- **the draw**, from softmax(logits / temperature) cut to the top-k and the top-p nucleus (:func:`filter_logits`,
  the rule of ``transformers``' warpers); ``temperature=0`` is greedy. With ``seed``: the exponential race
  ``argmax p / E``, E ~ Exp(1) drawn for every row of the batch at every step from one generator, which is
  what ``model.generate(do_sample=True)`` draws, bit for bit for the same seed, rows dropped or not. With
  ``seeds`` (one per prompt): sample ``i`` draws its ``t``-th token by inverse CDF with ``u[i, t]`` of
  :func:`uniforms_for`, so it depends on the model, its prompt and its seed only, never on the batching.
- **the batches**: the (prompt, sample) rows are laid end to end, prompt-major, and cut into batches of
  ``batch_size`` rows; a prefill is reused while its prompts last. ``generate`` decodes all its rows at once.
- **log-probs**: ``return_logps`` also keeps each token's log-prob and the entropy of its distribution
  (temperature-scaled, before top-k/top-p): π_old for the trainers.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator, NamedTuple

import torch

COMPACT_FRACTION = 0.25
"""Gather the surviving rows into a smaller batch once this share of the batch has finished."""


class Batch(NamedTuple):
    """One decoded batch: row ``j * num_generations + i`` of the request is sample ``i`` of prompt ``j``."""

    rows: torch.Tensor  # (R,) the request's rows in this batch
    tokens: torch.Tensor  # (R, T) sampled tokens, valid up to each length; T = the batch's longest completion
    lengths: torch.Tensor  # (R,) tokens sampled, the stop token included
    finished: torch.Tensor  # (R,) ended with a stop token (False: cut at max_completion_length)
    logps: torch.Tensor | None  # (R, T) log-prob of each token under the sampling distribution, or None
    entropies: torch.Tensor | None  # (R, T) entropy of that distribution at each token, or None


def check_context(model, longest_prompt_tokens: int, max_completion_length: int) -> None:
    """Refuse a request that does not fit in the model's context, saying how to make it fit. ``model`` may
    also be the context length itself, in tokens (to check before there is a model).

    >>> check_context(448, 130, 400)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the longest prompt (130 tokens) + ... of 448 tokens: lower --max-completion-length to at most 318 ...
    """
    limit = model if isinstance(model, int) else getattr(model.config, "max_position_embeddings", None)
    if limit is not None and longest_prompt_tokens + max_completion_length > limit:
        room = limit - longest_prompt_tokens
        raise ValueError(f"the longest prompt ({longest_prompt_tokens} tokens) + max_completion_length "
                         f"({max_completion_length}) exceeds the model's context of {limit} tokens: "
                         + (f"lower --max-completion-length to at most {room} (or shorten the prompt)" if room > 0
                            else "shorten the prompt"))


def check_prompts_fit(model, tokenizer, prompts: list[str], max_completion_length: int) -> None:
    """:func:`check_context` for the longest of ``prompts``, encoded as the samplers encode them."""
    longest = max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    check_context(model, longest, max_completion_length)


# --- the draw -----------------------------------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to −inf every logit outside the top-k and outside the smallest set holding top-p of the mass.

    Same rule as ``transformers``' TopK and TopP warpers: the most likely token always survives, and a token
    is dropped once the probability mass *before* it reaches ``top_p``. (N, V) -> (N, V).

    >>> filter_logits(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), top_p=0.7).isinf().tolist()
    [[False, False, True]]
    >>> filter_logits(torch.tensor([[1., 3., 2.]]), top_k=1).tolist()
    [[-inf, 3.0, -inf]]
    """
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        del sorted_logits  # (N, V) each: a 151k vocabulary makes every copy count
        drop_sorted = sorted_probs.cumsum(dim=-1).sub_(sorted_probs) >= top_p  # mass strictly before the token
        del sorted_probs
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


NUCLEUS_CANDIDATES = 64
""":func:`nucleus_probs` looks for the top-p nucleus among this many most likely tokens first."""


def nucleus_probs(logits: torch.Tensor, *, top_p: float) -> torch.Tensor:
    """softmax(logits) with every token outside the top-p nucleus set to 0 (not renormalised): the distribution of
    :func:`filter_logits`, up to float rounding, without sorting the whole vocabulary.

    The nucleus is looked for among the ``NUCLEUS_CANDIDATES`` most likely tokens (``topk``, cheap next to a sort of
    151k Qwen logits); a row whose nucleus holds more (a flat distribution) goes through :func:`filter_logits`.
    (N, V) -> (N, V).

    >>> nucleus_probs(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), top_p=0.7).tolist()  # doctest: +ELLIPSIS
    [[0.5..., 0.3..., 0.0]]
    """
    probs = logits.softmax(dim=-1)
    if top_p >= 1.0:
        return probs
    top, index = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)  # (N, k), most likely first
    before = top.cumsum(dim=-1) - top  # mass strictly before each candidate
    wide = before[:, -1] + top[:, -1] < top_p  # (N,) the candidates do not reach top_p
    # (N, V) tensors are freed before the fallback sorts: a 151k vocabulary makes every copy count
    if wide.all():  # every row (a flat model: a random one's), with no copy of the rows to pick them
        del probs
        return filter_logits(logits, top_p=top_p).softmax(dim=-1)
    out = torch.zeros_like(probs).scatter_(-1, index, torch.where(before < top_p, top, 0.0))
    del probs
    if wide.any():
        out[wide] = filter_logits(logits[wide], top_p=top_p).softmax(dim=-1)
    return out


def problem_seed(seed: int, index: int) -> int:
    """The sampling seed of problem ``index``: a hash of ``(seed, index)``, the same on every machine.

    >>> problem_seed(0, 0) == problem_seed(0, 0) != problem_seed(0, 1)
    True
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def uniforms_for(seed: int, num_generations: int, max_completion_length: int) -> torch.Tensor:
    """The (num_generations, max_completion_length) uniforms that fix every token a prompt's samples draw."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(num_generations, max_completion_length, generator=generator, dtype=torch.float64)


def sample_next_token(logits: torch.Tensor, uniforms: torch.Tensor, *, temperature: float,
                      top_p: float) -> torch.Tensor:
    """Inverse-CDF sampling from softmax(logits / temperature) restricted to the top-p nucleus.

    ``logits`` (R, V), ``uniforms`` (R,) in [0, 1); returns (R,) token ids: the first token, in vocabulary
    order, at which the cumulative probability passes ``u``. The nucleus is :func:`filter_logits`'s.
    ``temperature=0`` returns the argmax.

    >>> logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    >>> [sample_next_token(logits, torch.tensor([u]), temperature=1.0, top_p=1.0).item() for u in (0.1, 0.6, 0.9)]
    [0, 1, 2]
    >>> [sample_next_token(logits, torch.tensor([u]), temperature=1.0, top_p=0.7).item() for u in (0.1, 0.6, 0.9)]
    [0, 0, 1]
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    return _inverse_cdf(filter_logits(logits.float() / temperature, top_p=top_p).softmax(dim=-1), uniforms)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(R, V) probabilities, (R,) uniforms -> (R,) the first token at which the cumulative probability passes u."""
    # A zero-probability token never passes the threshold (its CDF step is flat); float rounding at the top of
    # the CDF must not step past the last token that has probability. Found first, on one-byte masks (argmax
    # takes no bool), so that no (R, V) mask is alive beside the CDF.
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.uint8).argmax(dim=-1)  # (R,)
    cdf = probs.cumsum(dim=-1)  # (R, V)
    threshold = uniforms.to(cdf)[:, None] * cdf[:, -1:]  # (R, 1)
    return torch.minimum((cdf <= threshold).sum(dim=-1), last)


# --- the in-place KV cache ------------------------------------------------------------------------------------


@functools.cache
def _buffer_layer_class():
    """The in-place cache layer class (made on first use, so that importing this module does not import
    ``transformers``)."""
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        """One layer's KV cache in buffers sized for the whole sequence: a step writes one column in place, where
        ``DynamicLayer.update`` concatenates, copying the whole cache at every step."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
            super().__init__()
            self.lazy_initialization(keys, values)
            rows, heads, _, head_dim = keys.shape  # (R, H, L, D)
            self._keys = keys.new_empty(rows, heads, capacity, head_dim)  # (R, H, capacity, D)
            self._values = values.new_empty(rows, heads, capacity, values.shape[-1])
            self.length = 0
            self.update(keys, values)

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            start, self.length = self.length, self.length + key_states.shape[-2]
            self._keys[:, :, start:self.length], self._values[:, :, start:self.length] = key_states, value_states
            self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]  # views
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            # Copy only the filled part: the rest of the buffer is never read before it is written.
            for name in ("_keys", "_values"):
                old = getattr(self, name)
                new = old.new_empty(len(indices), *old.shape[1:])
                new[:, :, :self.length] = old[indices, :, :self.length]
                setattr(self, name, new)
            self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]

    return BufferLayer


SHARED_BLOCK = 16
"""The shared-prompt path's completion cache grows by this many tokens at a time (:func:`_shared_layer_class`)."""

SHARED_PROMPT_ATTENTION = "companion_shared_prompt"
"""The name under which :func:`_shared_prompt_attention` is registered in ``transformers``' AttentionInterface."""


class SharedPrompt:
    """What the shared-prompt attention needs beyond a layer's own keys: each layer's prompt keys and values, once
    per prompt, and which prompt each live row continues, grouped (rows of one prompt are contiguous)."""

    def __init__(self, layers, prompt_mask: torch.Tensor):
        self.layers = layers  # per layer: the prefill's (J, H_kv, P, D) keys and values
        self.prompt_mask = prompt_mask.bool()  # (J, P)
        self.length = 0  # completion tokens in the cache once this step's are written: later slots are masked
        self.rows(torch.zeros(0, dtype=torch.long))

    def rows(self, prompt_of: torch.Tensor) -> None:
        """Set the live rows' prompts (A,), sorted: rows are prompt-major and dropping rows keeps their order. The
        rows are laid out as a (prompts, width) grid, ``slot`` and ``rank`` a row's place in it; ``dense``: the
        rows fill the grid, in order."""
        self.prompt_of = prompt_of
        self.prompts, counts = torch.unique_consecutive(prompt_of, return_counts=True)  # (J_b,) each
        starts = counts.cumsum(0) - counts
        self.slot = torch.repeat_interleave(torch.arange(len(counts), device=prompt_of.device), counts)  # (A,)
        self.rank = torch.arange(len(prompt_of), device=prompt_of.device) - starts[self.slot]  # (A,) within its prompt
        self.width = int(counts.max()) if len(counts) else 0
        self.dense = bool((counts == self.width).all())
        self.batch_layers = [(keys[self.prompts], values[self.prompts]) for keys, values in self.layers]
        padding = ~self.prompt_mask[self.prompts]  # (J_b, P)
        dtype = self.layers[0][0].dtype if self.layers else torch.float32  # the keys' (bf16 models: bf16)
        self.padding = torch.zeros(padding.shape, device=padding.device, dtype=dtype).masked_fill_(
            padding, float("-inf"))[:, None, None, :] if padding.any() else None  # (J_b, 1, 1, P): 0 or -inf


def _shared_prompt_attention(module, query, key, value, attention_mask, *, scaling, dropout=0.0, shared=None,
                             **kwargs):
    """One decoding step's attention, with the prompt's keys and values stored once per prompt, not once per row.

    ``query`` (A, H, 1, D); ``key``/``value`` (A, H_kv, capacity, D) hold only the completion tokens, the first
    ``shared.length`` of them written (the :func:`_shared_layer_class` cache); the prompt part comes from
    ``shared`` (:class:`SharedPrompt`). The rows of one prompt are stacked into one matrix product against that
    prompt's keys, instead of a row at a time against a copy, and the two parts share one softmax. Anything else
    (the prefill, a model outside the decoding loop) goes to ``transformers``' SDPA attention.
    """
    if shared is None or query.shape[2] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads  # query heads per key/value head, as transformers' repeat_kv pairs them
    q = query.reshape(rows, kv_heads, group, dim) * scaling  # (A, H_kv, g, D)
    keys, values = shared.batch_layers[module.layer_idx]  # (J_b, H_kv, P, D): the prompts of the live rows
    prompts, width = len(shared.prompts), shared.width
    # prompt part: for each prompt, all its rows' queries at once, (J_b, H_kv, width * g, D) x (J_b, H_kv, D, P)
    if shared.dense:  # every prompt has ``width`` live rows: the rows are the grid already
        stacked = q.view(prompts, width, kv_heads, group, dim)
    else:
        stacked = q.new_zeros(prompts, width, kv_heads, group, dim)
        stacked[shared.slot, shared.rank] = q
    stacked = stacked.permute(0, 2, 1, 3, 4).reshape(prompts, kv_heads, width * group, dim)
    if shared.padding is None:
        prompt_scores = torch.matmul(stacked, keys.transpose(-1, -2))  # (J_b, H_kv, width * g, P)
    else:  # -inf at the left padding, added in the same product
        prompt_scores = torch.baddbmm(shared.padding.expand(-1, kv_heads, width * group, -1).flatten(0, 1),
                                      stacked.flatten(0, 1), keys.transpose(-1, -2).flatten(0, 1)).view(
            prompts, kv_heads, width * group, -1)
    # completion part: each row against its own tokens, (A, H_kv, g, D) x (A, H_kv, D, capacity)
    completion_scores = torch.matmul(q, key.transpose(-1, -2))  # (A, H_kv, g, capacity)
    if key.shape[2] > shared.length:  # slots not written yet
        completion_scores[..., shared.length:] = float("-inf")
    # one softmax over both parts: each part's own, joined by their maxima and sums (as flash attention joins blocks)
    prompt_max = prompt_scores.amax(dim=-1, keepdim=True)  # (J_b, H_kv, width * g, 1)
    prompt_weights = (prompt_scores - prompt_max).exp_()
    prompt_sum = prompt_weights.sum(dim=-1, keepdim=True)
    prompt_out = torch.cat([torch.matmul(prompt_weights, values), prompt_max, prompt_sum], dim=-1)  # (.., D + 2)
    prompt_out = prompt_out.view(prompts, kv_heads, width, group, dim + 2).permute(0, 2, 1, 3, 4)
    prompt_out = prompt_out.reshape(rows, kv_heads, group, dim + 2) if shared.dense else prompt_out[
        shared.slot, shared.rank]  # (A, H_kv, g, D + 2): back to the rows
    from_prompt, prompt_max, prompt_sum = prompt_out.split([dim, 1, 1], dim=-1)
    completion_max = completion_scores.amax(dim=-1, keepdim=True)  # (A, H_kv, g, 1)
    top = torch.maximum(prompt_max, completion_max)
    completion_weights = (completion_scores - top).exp_()
    prompt_scale = (prompt_max - top).exp_()
    total = prompt_sum * prompt_scale + completion_weights.sum(dim=-1, keepdim=True)
    out = (from_prompt * prompt_scale + torch.matmul(completion_weights, value)) / total  # (A, H_kv, g, D)
    return out.reshape(rows, 1, heads, dim), None  # (A, 1, H, D), as transformers' attention functions return


@functools.cache
def _shared_layer_class():
    """The cache layer of the shared-prompt path: like :func:`_buffer_layer_class`'s, but holding only the
    completion tokens (the prompt's keys and values stay in :class:`SharedPrompt`, once per prompt)."""
    from transformers import AttentionInterface
    from transformers.cache_utils import DynamicLayer

    AttentionInterface.register(SHARED_PROMPT_ATTENTION, _shared_prompt_attention)

    class SharedLayer(DynamicLayer):
        """Keys and values of the completion tokens only, in a buffer that grows ``SHARED_BLOCK`` tokens at a time
        and is handed to the attention whole: a contiguous buffer multiplies several times faster than a slice of
        a bigger one (torch copies a strided batch of matrices first). The ``SHARED_BLOCK - 1`` slots at most that
        are not written yet hold zeros, and the attention masks them (``SharedPrompt.length``)."""

        def __init__(self, rows: int, like: torch.Tensor):
            super().__init__()
            _, heads, _, dim = like.shape
            self.lazy_initialization(like[:0], like[:0])
            self.keys = self.values = like.new_zeros(rows, heads, 0, dim)  # (R, H_kv, capacity, D)
            self.length = 0

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            start, self.length = self.length, self.length + key_states.shape[-2]
            if self.length > self.keys.shape[2]:
                grown = -(-self.length // SHARED_BLOCK) * SHARED_BLOCK
                self.keys, self.values = (torch.cat([x, x.new_zeros(*x.shape[:2], grown - x.shape[2], x.shape[3])],
                                                    dim=2) for x in (self.keys, self.values))
            self.keys[:, :, start:self.length], self.values[:, :, start:self.length] = key_states, value_states
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.keys, self.values = self.keys[indices], self.values[indices]

    return SharedLayer


def supports_shared_prompt(model) -> bool:
    """Whether ``model``'s attention goes through ``transformers``' AttentionInterface (most decoder-only models
    do), so that the shared-prompt attention can stand in for it."""
    check = getattr(model, "_can_set_attn_implementation", None)
    return bool(check and check())


def _prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """Run the prompts (B, P) through the model once: their cache, the logits of each first completion token
    (B, V), and their mask with the columns that are padding in every row cut off (B, P')."""
    from transformers import DynamicCache

    first_real = int((prompt_mask.sum(dim=0) > 0).nonzero()[0])
    prompt_ids, prompt_mask = prompt_ids[:, first_real:], prompt_mask[:, first_real:]
    position_ids = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding does not shift positions
    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    return cache, out.logits[:, -1].float(), prompt_mask


# --- the loop -------------------------------------------------------------------------------------------------


@torch.no_grad()
def decode(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_generations: int, *, max_completion_length: int,
           stop_ids: list[int], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
           seeds: list[int] | None = None, batch_size: int | None = None, return_logps: bool = False,
           fast: bool = False, on_progress: Callable[[int, int], None] | None = None) -> Iterator[Batch]:
    """``num_generations`` completions of each of the J prompts ``prompt_ids`` (J, P), left padded, batch by batch.

    ``seeds`` (one per prompt) draws by inverse CDF; without them the exponential race draws from a generator
    seeded with ``seed`` (None: the global torch RNG, advanced). ``batch_size`` rows are decoded together (all
    by default). ``on_progress(samples, tokens)`` is called after every decoding step with the samples that ended
    in it and the tokens it decoded (one per row still running), for progress bars that show the decoding rate. Callers
    check the context first (:func:`check_context`). ``fast`` keeps each prompt's keys and values once instead of
    once per row (:func:`_shared_prompt_attention`, for models where :func:`supports_shared_prompt`) and finds the
    top-p nucleus without sorting the vocabulary (:func:`nucleus_probs`): the same distributions up to float
    rounding, about 1.8 times the samples/s of the tiny model on one CPU thread at n = 256 (bench/bench_eval.py).
    """
    device = prompt_ids.device
    stop_ids = torch.tensor(stop_ids, device=device)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    num_rows = len(prompt_ids) * num_generations
    was_training = model.training
    shared_prompt = fast and supports_shared_prompt(model)
    model.eval()
    try:
        prefilled = None  # (prompt indices, their uniforms, cache, logits, mask) of the last prefill
        for rows in torch.arange(num_rows).split(batch_size or num_rows):
            prompt_of, sample_of = rows // num_generations, rows % num_generations  # (R,) each
            needed = prompt_of.unique()  # sorted
            if prefilled is None or not torch.equal(prefilled[0], needed):
                # 1. prefill the batch's prompts once each (and draw their samples' uniforms)
                draws = None if seeds is None else {
                    j: uniforms_for(seeds[j], num_generations, max_completion_length) for j in needed.tolist()}
                prefilled = (needed, draws, *_prefill(model, prompt_ids[needed], prompt_mask[needed]))
            _, draws, prompt_cache, prompt_logits, mask = prefilled
            uniforms = None if draws is None else torch.stack(
                [draws[j][i] for j, i in zip(prompt_of.tolist(), sample_of.tolist())]).to(device)  # (R, T)
            yield Batch(rows, *_decode_batch(
                model, prompt_cache, prompt_logits, mask, torch.searchsorted(needed, prompt_of).to(device),
                max_completion_length, stop_ids, uniforms=uniforms, generator=generator, temperature=temperature,
                top_k=top_k, top_p=top_p, return_logps=return_logps, shared_prompt=shared_prompt,
                on_progress=on_progress))
    finally:
        model.train(was_training)


def _decode_batch(model, prompt_cache, prompt_logits, prompt_mask, prompt_of, max_len, stop_ids, *, uniforms, generator,
                  temperature, top_k, top_p, return_logps, on_progress, shared_prompt=False):
    """Sample R rows to the end, row r continuing prompt ``prompt_of[r]`` of the prefill. Returns tokens,
    lengths, finished, logps and entropies, as :class:`Batch`."""
    from transformers.cache_utils import Cache

    num_rows, prompt_len = len(prompt_of), prompt_mask.shape[1]
    if shared_prompt:  # the prompt once per prompt (in ``shared``), the completion tokens per row (in the cache)
        shared = SharedPrompt([(layer.keys, layer.values) for layer in prompt_cache.layers], prompt_mask)
        shared.rows(prompt_of)
        cache = Cache(layers=[_shared_layer_class()(num_rows, layer.keys) for layer in prompt_cache.layers])
        previous_attention = model.config._attn_implementation
        model.set_attn_implementation(SHARED_PROMPT_ATTENTION)
    else:
        buffer_layer = _buffer_layer_class()
        cache = Cache(layers=[buffer_layer(layer.keys[prompt_of], layer.values[prompt_of], prompt_len + max_len)
                              for layer in prompt_cache.layers])
    try:
        return _decode_loop(model, cache, prompt_logits, prompt_mask, prompt_of, max_len, stop_ids, uniforms=uniforms,
                            generator=generator, temperature=temperature, top_k=top_k, top_p=top_p,
                            return_logps=return_logps, on_progress=on_progress,
                            shared=shared if shared_prompt else None)
    finally:
        if shared_prompt:
            model.set_attn_implementation(previous_attention)


def _draw(logits: torch.Tensor, live: torch.Tensor, uniforms: torch.Tensor | None, *, temperature: float, top_k: int,
          top_p: float, fast_nucleus: bool, generator, num_rows: int) -> torch.Tensor:
    """A token for each live row of ``logits`` (A, V), already divided by the temperature: greedy, by the row's own
    uniform (``uniforms``, (A,)), or by the exponential race. The (A, V) tensors of a step are the sampler's memory
    beside the cache (a 151k vocabulary: 0.6 MB a row in float32), so each is freed as soon as it is used."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # (A,)
    if fast_nucleus:  # the fast path's nucleus
        probs = nucleus_probs(logits, top_p=top_p)  # (A, V), unnormalised: the draw scales by its sum
    else:
        probs = filter_logits(logits, top_k=top_k, top_p=top_p).softmax(dim=-1)  # (A, V)
    if uniforms is not None:
        return _inverse_cdf(probs, uniforms)
    # argmax p / E with E ~ Exp(1) draws from p, as torch.multinomial does for one sample. Noise for every row of
    # the batch each step: a row's draw does not depend on which rows were dropped.
    noise = torch.empty(num_rows, probs.shape[1], device=logits.device).exponential_(generator=generator)
    return probs.div_(noise if len(live) == num_rows else noise[live]).argmax(dim=-1)


def _logp_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A,) log-prob of each row's token under softmax(``logits``) (A, V), and (A,) that distribution's entropy."""
    logp = torch.log_softmax(logits, dim=-1)  # (A, V)
    return logp.gather(1, tokens.unsqueeze(1)).squeeze(1), -logp.exp().mul_(logp).sum(dim=-1)


def _decode_loop(model, cache, prompt_logits, prompt_mask, prompt_of, max_len, stop_ids, *, uniforms, generator,
                 temperature, top_k, top_p, return_logps, on_progress, shared):
    """The steps of :func:`_decode_batch`, on a cache made for them (``shared``: the shared-prompt path's)."""
    num_rows, prompt_len, device = len(prompt_of), prompt_mask.shape[1], prompt_of.device
    tokens = torch.zeros(num_rows, max_len, dtype=torch.long, device=device)  # (R, T) valid up to each length
    logps = torch.zeros(num_rows, max_len, device=device) if return_logps else None  # (R, T)
    entropies = torch.zeros(num_rows, max_len, device=device) if return_logps else None  # (R, T)
    lengths = torch.full((num_rows,), max_len, dtype=torch.long, device=device)  # (R,)
    finished = torch.zeros(num_rows, dtype=torch.bool, device=device)  # (R,)
    # The physical batch: which rows are still decoded, and their attention masks and next positions.
    live = torch.arange(num_rows, device=device)  # (A,)
    # One code path with or without left padding: transformers drops an all-ones mask by itself. The shared-prompt
    # path needs none: its cache holds completion tokens only, and ``shared`` masks the prompts' padding.
    mask = None
    if shared is None:
        mask = torch.ones(num_rows, prompt_len + max_len, dtype=torch.long, device=device)  # (A, P + T)
        mask[:, :prompt_len] = prompt_mask[prompt_of]
    positions = prompt_mask.sum(dim=1)[prompt_of]  # (A,) position of the next token: the prompt's real length
    logits = prompt_logits[prompt_of]  # (A, V)
    running = torch.ones(num_rows, dtype=torch.bool, device=device)  # (A,) not yet finished, among the live rows
    for t in range(max_len):
        # 2. a token for every live row: greedy, by its own uniform, or by the exponential race (in-place arithmetic
        #    on the (A, V) tensors gives the same bits with fewer copies)
        logits = logits.float().div_(temperature or 1.0)  # (A, V) of the sampling distribution (greedy: unscaled)
        next_tokens = _draw(logits, live, None if uniforms is None else uniforms[live, t], temperature=temperature,
                            top_k=top_k, top_p=top_p, fast_nucleus=shared is not None and not top_k,
                            generator=generator, num_rows=num_rows)
        tokens[live, t] = next_tokens
        if return_logps:  # the sampling policy's log-prob of its token, and its entropy
            logps[live, t], entropies[live, t] = _logp_and_entropy(logits, next_tokens)
        ends = running & torch.isin(next_tokens, stop_ids)  # (A,)
        if on_progress is not None:  # the samples that ended, and a token for every row still running (EOS too)
            on_progress(int(ends.sum()), int(running.sum()))
        if ends.any():
            ended = live[ends]
            lengths[ended], finished[ended] = t + 1, True
            running &= ~ends
        if t == max_len - 1 or not running.any():
            break
        # 3. drop finished rows once enough of the batch is dead weight
        if (~running).sum() >= COMPACT_FRACTION * len(live):
            keep = running.nonzero().squeeze(1)  # (A',)
            cache.batch_select_indices(keep)
            live, positions, running, next_tokens = live[keep], positions[keep], running[keep], next_tokens[keep]
            if shared is None:
                mask = mask[keep]
            else:
                shared.rows(shared.prompt_of[keep])
        # 4. one step of the model on the last token of every live row
        if shared is not None:
            shared.length = t + 1  # the step writes completion token t
        step = dict(shared=shared, attention_mask=None) if shared is not None else dict(
            attention_mask=mask[:, :prompt_len + t + 1])
        logits = model(input_ids=next_tokens[:, None], position_ids=(positions + t)[:, None], past_key_values=cache,
                       use_cache=True, logits_to_keep=1, **step).logits[:, -1]  # (A, V)
    if on_progress is not None and not finished.all():  # the rows cut at the cap: their tokens are counted already
        on_progress(int((~finished).sum()), 0)
    steps = t + 1
    return (tokens[:, :steps], lengths, finished, None if logps is None else logps[:, :steps],
            None if entropies is None else entropies[:, :steps])
