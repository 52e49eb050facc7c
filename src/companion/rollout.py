"""Sampling G completions per prompt, and gathering per-token log-probs.

The shared plumbing of every trainer and of evaluation: 1. encode the prompts once (left padded),
2. sample ``num_generations`` completions each, one token at a time with the KV cache, 3. mask every
completion up to and including its first EOS, 4. keep the log-prob and the entropy the sampling policy gave
each of its own tokens.

Why our own decoding loop rather than ``model.generate``: on a model of a few million parameters a decoding
step is a handful of small matrix products, and ``generate`` spends as much again around them (logits
processors, stopping criteria, input preparation, and a KV cache re-concatenated at every step, which alone
was half the decoding time on the tiny model); and ``generate(output_logits=True)`` keeps every step's full
(N, V) logits, gigabytes for a 151k-token vocabulary. The loop below does what ``generate`` does for plain
sampling (temperature, top-k, top-p, stop at EOS), but runs each prompt once for its G rows, writes the cache
in place, drops finished rows from the batch (the loop runs as long as the longest completion; on the tiny
model that halves the rows decoded), and reduces each step's logits to one log-prob and one entropy per row
before moving on. ``tests/test_rollout.py`` checks it against ``model.generate``: the same greedy tokens, and
the same sampled tokens for the same seed, rows dropped or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """A batch of B prompts × G completions, flattened prompt-major: row ``b * G + g``."""

    prompt_ids: torch.Tensor  # (B*G, P) left padded
    prompt_mask: torch.Tensor  # (B*G, P) 1 on real prompt tokens
    completion_ids: torch.Tensor  # (B*G, T) right padded with the pad token; T = longest completion
    completion_mask: torch.Tensor  # (B*G, T) 1 up to and including the first EOS
    per_token_logps: torch.Tensor | None  # (B*G, T) log π_old(o_t | q, o_<t) of the sampled tokens, or None
    texts: list[str]  # B*G decoded completions, special tokens removed
    num_generations: int
    entropies: torch.Tensor | None = None  # (B*G, T) entropy of the sampling distribution at each token, or None
    truncated: torch.Tensor | None = None  # (B*G,) bool: stopped by max_completion_length before any EOS

    @property
    def lengths(self) -> torch.Tensor:  # (B*G,) |o_i|, EOS included
        return self.completion_mask.sum(dim=1)

    @property
    def prompt_index(self) -> torch.Tensor:  # (B*G,) which prompt each row answers
        return torch.arange(len(self.texts)) // self.num_generations


def encode_prompts(tokenizer, prompts: list[str], device: torch.device | str = "cpu"):
    """Tokenize prompts left padded (generation appends on the right). Returns (ids, mask), each (B, P)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """1 on every token up to and including the first EOS (all ones when there is none).

    >>> completion_mask_from_ids(torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8]]), eos_token_id=2).tolist()
    [[1, 1, 1, 0], [1, 1, 1, 1]]
    """
    eos_ids = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    is_eos = torch.isin(completion_ids, eos_ids.to(completion_ids.device))  # (N, T)
    # Count the EOS tokens strictly before each position; a token is kept while none has appeared yet.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end a completion: the tokenizer's EOS and any the model's generation config adds
    (an instruct Qwen2.5 stops at ``<|im_end|>`` and at ``<|endoftext|>``), as ``model.generate`` would."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return sorted({tokenizer.eos_token_id, *configured})


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[index] without materialising the full (N, T, V) log-prob tensor.

    >>> round(selective_log_softmax(torch.zeros(1, 4), torch.tensor([2])).item(), 4)  # log(1/4)
    -1.3863
    """
    # (..., V), (...) -> (...)
    picked = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy −Σ p log p of softmax(logits) over the last dimension, (..., V) -> (...).

    >>> round(entropy_from_logits(torch.zeros(4)).item(), 4)  # uniform over 4: log 4
    1.3863
    """
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *, temperature: float = 1.0,
                    share_prompts: bool = True):
    """log π(o_t | q, o_<t) of each completion token under ``model``, with gradient: (N, T).

    Logits are divided by ``temperature`` so the log-probs are those of the distribution that was sampled.
    With ``share_prompts``, consecutive rows that continue the same prompt (the G completions of a group) run
    that prompt through the model once and share its KV cache, gradients included: the same numbers as one
    forward over every (prompt, completion) row, up to float rounding, for G times less work on the prompt.
    """
    if not share_prompts:
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (N, P+T)
        T = completion_ids.shape[1]
        # Position ids follow the real tokens so left padding does not shift the positions the model sees.
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=T + 1, use_cache=False).logits  # (N, T+1, V)
        logits = logits[:, :-1, :] / temperature  # the logit at position t predicts token t+1
        return selective_log_softmax(logits.float(), completion_ids)

    from transformers import DynamicCache

    # 1. the distinct prompts: a new run starts wherever a row's prompt differs from the previous row's
    starts = torch.ones(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)  # (N,)
    starts[1:] = (prompt_ids[1:] != prompt_ids[:-1]).any(dim=1) | (prompt_mask[1:] != prompt_mask[:-1]).any(dim=1)
    repeats = torch.diff(torch.cat([starts.nonzero().squeeze(1), starts.new_tensor([len(starts)], dtype=torch.long)]))
    unique_ids, unique_mask = prompt_ids[starts], prompt_mask[starts]  # (U, P)
    # 2. each prompt once; its cache and its last logit (which predicts the first completion token) fan out
    position_ids = (unique_mask.cumsum(dim=1) - 1).clamp(min=0)  # (U, P)
    cache = DynamicCache(config=model.config)
    first = model(input_ids=unique_ids, attention_mask=unique_mask, position_ids=position_ids,
                  past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]  # (U, V)
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(repeats, dim=0)  # (N, H, P, D)
        layer.values = layer.values.repeat_interleave(repeats, dim=0)
    # 3. every completion on top of its prompt's cache
    T = completion_ids.shape[1]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (N, P+T)
    positions = prompt_mask.sum(dim=1, keepdim=True) + torch.arange(T, device=prompt_mask.device)  # (N, T)
    rest = model(input_ids=completion_ids, attention_mask=attention_mask, position_ids=positions,
                 past_key_values=cache, use_cache=True, logits_to_keep=T).logits  # (N, T, V)
    first_logps = selective_log_softmax(first.repeat_interleave(repeats, dim=0).float() / temperature,
                                        completion_ids[:, 0])  # (N,)
    rest_logps = selective_log_softmax(rest[:, :-1, :].float() / temperature, completion_ids[:, 1:])  # (N, T-1)
    return torch.cat([first_logps.unsqueeze(1), rest_logps], dim=1)


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
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p  # mass strictly before the token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _in_place_layer_class():
    from transformers.cache_utils import DynamicLayer

    class InPlaceLayer(DynamicLayer):
        """A growing cache layer whose keys and values are views into buffers of the final length.

        ``DynamicLayer.update`` concatenates, copying the whole cache at every step (on the tiny model that copy
        was half of the decoding time); here a step writes one column in place.
        """

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, max_len: int):
            super().__init__()
            self.lazy_initialization(keys, values)
            n, h, length, _ = keys.shape
            self._keys = keys.new_empty(n, h, max_len, keys.shape[-1])
            self._values = values.new_empty(n, h, max_len, values.shape[-1])
            self._keys[:, :, :length], self._values[:, :, :length] = keys, values
            self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            start, end = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
            self._keys[:, :, start:end], self._values[:, :, start:end] = key_states, value_states
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

        def keep(self, rows: torch.Tensor) -> None:
            """Drop every batch row not in ``rows`` (finished completions stop costing compute)."""
            end = self.keys.shape[-2]
            self._keys, self._values = self._keys[rows], self._values[rows]
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]

    return InPlaceLayer


def _prefill(model, prompt_ids, prompt_mask, num_generations: int, max_len: int):
    """Run the B distinct prompts once and give each of their G rows a copy of the KV cache.

    Returns the logits at the last prompt position, (B*G, V), and the cache, now B*G rows with room for
    ``max_len`` positions.
    """
    from transformers import DynamicCache

    position_ids = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, P)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    layer_class = _in_place_layer_class()
    cache.layers = [
        layer_class(layer.keys.repeat_interleave(num_generations, dim=0),
                    layer.values.repeat_interleave(num_generations, dim=0), max_len)
        for layer in cache.layers
    ]
    return out.logits[:, -1, :].repeat_interleave(num_generations, dim=0), cache


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    num_generations: int = 8,
    max_completion_length: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    return_logps: bool = True,
) -> Rollout:
    """Sample ``num_generations`` completions for each prompt.

    ``temperature=0`` means greedy decoding. With ``seed`` the sampling is reproducible and the global RNG is
    left untouched; without it the global torch RNG is used (and advanced). ``return_logps`` also fills
    ``per_token_logps`` and ``entropies`` (both of the temperature-scaled distribution, before top-k/top-p).
    """
    if num_generations < 1 or max_completion_length < 1:
        raise ValueError("num_generations and max_completion_length must be at least 1")
    if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1 and top_k >= 0; got {temperature}, {top_p}, {top_k}")
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    device = next(model.parameters()).device
    # 1. encode each prompt once, then repeat its row for the G samples
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)  # (B, P)
    P = prompt_ids.shape[1]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and P + max_completion_length > limit:
        raise ValueError(
            f"prompt ({P} tokens) + max_completion_length ({max_completion_length}) exceeds the "
            f"model's context of {limit} tokens: shorten the prompt or lower max_completion_length"
        )
    B = prompt_ids.shape[0]
    N = B * num_generations
    eos_ids = torch.tensor(stop_token_ids(model, tokenizer), device=device)
    pad = tokenizer.pad_token_id
    greedy = temperature == 0

    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:  # a private generator: reproducible, and the caller's RNG stream is left alone
        generator = torch.Generator(device=device).manual_seed(seed)

    # 2. sample token by token with the KV cache. Rows that finish are dropped from the batch once they are a
    # quarter of it: the loop runs as long as the longest completion, and most finish long before it.
    logits, cache = _prefill(model, prompt_ids, prompt_mask, num_generations, P + max_completion_length)
    prompt_ids = prompt_ids.repeat_interleave(num_generations, dim=0)  # (N, P), row b*G + g
    prompt_mask = prompt_mask.repeat_interleave(num_generations, dim=0)
    completion_ids = prompt_ids.new_full((N, max_completion_length), pad)  # (N, T)
    logps = torch.zeros(N, max_completion_length, device=device) if return_logps else None
    entropies = torch.zeros(N, max_completion_length, device=device) if return_logps else None
    rows = torch.arange(N, device=device)  # (n,) the batch rows still decoding, as rows of the output
    attention_mask = prompt_mask  # (n, P + t): grows by one column per step
    next_position = prompt_mask.sum(dim=1, keepdim=True)  # (n, 1): positions count real tokens only
    finished = torch.zeros(N, dtype=torch.bool, device=device)  # (N,)
    for t in range(max_completion_length):
        logits = logits.float()  # (n, V)
        if greedy:
            token = logits.argmax(dim=-1)  # (n,)
        else:
            logits = logits / temperature
            probs = filter_logits(logits, top_k=top_k, top_p=top_p).softmax(dim=-1)
            # argmax p / E with E ~ Exp(1) draws from p (what torch.multinomial does for one sample). Noise is
            # drawn for all N rows every step, so a row's sample does not depend on which rows were dropped.
            noise = torch.empty(N, probs.shape[1], device=device).exponential_(generator=generator)  # (N, V)
            token = (probs / noise[rows]).argmax(dim=-1)  # (n,)
        if return_logps:
            # 4. (per step) the sampling policy's log-prob of its token, and its entropy
            logp = torch.log_softmax(logits, dim=-1)  # (n, V)
            logps[rows, t] = logp.gather(1, token.unsqueeze(1)).squeeze(1)
            entropies[rows, t] = -(logp.exp() * logp).sum(dim=-1)
        token = token.masked_fill(finished[rows], pad)
        completion_ids[rows, t] = token
        finished[rows] |= torch.isin(token, eos_ids)
        if finished.all() or t == max_completion_length - 1:
            break
        done = finished[rows]
        if done.sum() >= max(1, len(rows) // 4):
            keep = (~done).nonzero().squeeze(1)
            rows, token, attention_mask, next_position = rows[keep], token[keep], attention_mask[keep], next_position[keep]
            for layer in cache.layers:
                layer.keep(keep)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        logits = model(input_ids=token.unsqueeze(1), attention_mask=attention_mask, position_ids=next_position,
                       past_key_values=cache, use_cache=True).logits[:, -1, :]
        next_position = next_position + 1
    model.train(was_training)

    # 3. keep tokens up to and including the first EOS; pad the rest; trim to the longest completion
    completion_ids = completion_ids[:, :t + 1]  # (N, T)
    completion_mask = completion_mask_from_ids(completion_ids, eos_ids.tolist())  # (N, T)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, pad)
    per_token, entropy = None, None
    if return_logps:
        per_token = logps[:, :t + 1] * completion_mask  # (N, T)
        entropy = entropies[:, :t + 1] * completion_mask  # (N, T)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        per_token_logps=per_token,
        texts=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        num_generations=num_generations,
        entropies=entropy,
        truncated=~finished,
    )
