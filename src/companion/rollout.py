"""Sampling G completions per prompt, and gathering per-token log-probs.

The shared plumbing of every trainer and of the pretraining eval: 1. encode the prompts once (left padded),
2. sample ``num_generations`` completions each, with the package's one decoding loop
(:func:`companion.decode.decode`: why our own loop, and why one, is said there), 3. mask every completion up to
and including its first EOS, 4. keep the log-prob and the entropy the sampling policy gave each of its own
tokens. The draw is ``model.generate``'s (temperature, top-k, top-p, the exponential race from one seeded
generator) and ``tests/test_rollout.py`` checks it against ``model.generate``: the same greedy tokens, and the
same sampled tokens for the same seed, rows dropped or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from companion.decode import check_context, decode, filter_logits  # noqa: F401 (filter_logits: re-exported)


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

    def model_inputs(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt ids and mask, completion ids and mask of ``rows`` (indices or a slice): what
        :func:`per_token_logps` reads."""
        return self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows], self.completion_mask[rows]


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


def _chunked_head_logps(model, hidden, targets, temperature: float, chunk: int):
    """log-probs of ``targets`` (N, T) from the final hidden states (N, T, h), ``chunk`` positions at a time, each
    chunk's logits recomputed in the backward pass instead of kept: the head's memory is one chunk's logits."""
    from torch.utils.checkpoint import checkpoint

    head = model.get_output_embeddings()

    def logps(h, t):  # (N, c, h), (N, c) -> (N, c)
        return selective_log_softmax(head(h).float() / temperature, t)

    parts = [checkpoint(logps, hidden[:, a:a + chunk], targets[:, a:a + chunk], use_reentrant=False)
             for a in range(0, targets.shape[1], chunk)]
    return torch.cat(parts, dim=1)


def per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *, temperature: float = 1.0,
                    share_prompts: bool = True, logit_chunk: int = 0):
    """log π(o_t | q, o_<t) of each completion token under ``model``, with gradient: (N, T).

    Logits are divided by ``temperature`` so the log-probs are those of the distribution that was sampled.
    With ``share_prompts``, consecutive rows that continue the same prompt (the G completions of a group) run
    that prompt through the model once and share its KV cache, gradients included: the same numbers as one
    forward over every (prompt, completion) row, up to float rounding, for G times less work on the prompt.
    With ``logit_chunk`` > 0 the head runs on that many completion positions at a time and their logits are
    recomputed in the backward pass (the same numbers): a large vocabulary's logits are never all held at once.
    """
    if not share_prompts:
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (N, P+T)
        T = completion_ids.shape[1]
        # Position ids follow the real tokens so left padding does not shift the positions the model sees.
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        if logit_chunk:
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                         position_ids=position_ids, use_cache=False).last_hidden_state
            return _chunked_head_logps(model, hidden[:, -(T + 1):-1], completion_ids, temperature, logit_chunk)
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
    first_logps = selective_log_softmax(first.repeat_interleave(repeats, dim=0).float() / temperature,
                                        completion_ids[:, 0])  # (N,)
    if logit_chunk:
        hidden = model.get_decoder()(input_ids=completion_ids, attention_mask=attention_mask, position_ids=positions,
                                     past_key_values=cache, use_cache=True).last_hidden_state  # (N, T, h)
        rest_logps = _chunked_head_logps(model, hidden[:, :-1], completion_ids[:, 1:], temperature, logit_chunk)
        return torch.cat([first_logps.unsqueeze(1), rest_logps], dim=1)
    rest = model(input_ids=completion_ids, attention_mask=attention_mask, position_ids=positions,
                 past_key_values=cache, use_cache=True, logits_to_keep=T).logits  # (N, T, V)
    rest_logps = selective_log_softmax(rest[:, :-1, :].float() / temperature, completion_ids[:, 1:])  # (N, T-1)
    return torch.cat([first_logps.unsqueeze(1), rest_logps], dim=1)


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
    seeds: list[int] | None = None,
    fast: bool = False,
    return_logps: bool = True,
) -> Rollout:
    """Sample ``num_generations`` completions for each prompt.

    ``temperature=0`` means greedy decoding. With ``seed`` the sampling is reproducible and the global RNG is
    left untouched; without it the global torch RNG is used (and advanced). ``seeds`` (one per prompt) draws each
    token by inverse CDF from the prompt's own uniforms instead, so a sample depends on its model, prompt and seed
    alone; ``fast`` is :func:`companion.decode.decode`'s fast path. ``return_logps`` also fills
    ``per_token_logps`` and ``entropies`` (both of the temperature-scaled distribution, before top-k/top-p).
    """
    if num_generations < 1 or max_completion_length < 1:
        raise ValueError("num_generations and max_completion_length must be at least 1")
    if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1 and top_k >= 0; got {temperature}, {top_p}, {top_k}")
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    # 1. encode each prompt once; 2. sample its G rows, all B*G in one batch
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, next(model.parameters()).device)  # (B, P)
    check_context(model, prompt_ids.shape[1], max_completion_length)
    stop_ids = stop_token_ids(model, tokenizer)
    (batch,) = decode(model, prompt_ids, prompt_mask, num_generations, max_completion_length=max_completion_length,
                      stop_ids=stop_ids, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, seeds=seeds,
                      fast=fast, return_logps=return_logps)
    # 3. keep tokens up to and including the first EOS; pad the rest
    completion_mask = completion_mask_from_ids(batch.tokens, stop_ids)  # (N, T), T = the longest completion
    completion_ids = batch.tokens.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(num_generations, dim=0),  # (N, P), row b*G + g
        prompt_mask=prompt_mask.repeat_interleave(num_generations, dim=0),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        per_token_logps=None if batch.logps is None else batch.logps * completion_mask,  # (N, T)
        texts=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        num_generations=num_generations,
        entropies=None if batch.entropies is None else batch.entropies * completion_mask,  # (N, T)
        truncated=~batch.finished,
    )


def teacher_rollout(tokenizer, task: str, problems: list[dict], prompts: list[str], *, num_generations: int,
                    max_completion_length: int, seed: int, device: torch.device | str = "cpu") -> Rollout:
    """A batch like :func:`generate`'s, written by the exact solver instead of sampled: ``num_generations`` clean
    traces (:func:`companion.traces.clean_trace`, each its own random solution path) of each problem of ``task``,
    ended with EOS, after ``prompts`` (one per problem, as the policy would be prompted). Training on it with weight 1 on every token is distillation from the stronger teacher.

    The traces depend on ``seed`` only (an interrupted run redraws the same). A trace longer than
    ``max_completion_length`` is cut there and marked truncated, as a sampled one would be. No log-probs: the
    teacher is not the policy.
    """
    import random

    from companion.traces import clean_trace

    rng = random.Random(seed)
    texts = [clean_trace(task, problem, rng) for problem in problems for _ in range(num_generations)]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)  # (B, P)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    truncated = torch.tensor([len(row) > max_completion_length for row in ids], device=device)
    ids = [row[:max_completion_length] for row in ids]
    width = max(len(row) for row in ids)
    completion_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        completion_ids[i, :len(row)], completion_mask[i, :len(row)] = torch.tensor(row), 1
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(num_generations, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(num_generations, dim=0),
        completion_ids=completion_ids.to(device),
        completion_mask=completion_mask.to(device),
        per_token_logps=None,
        texts=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        num_generations=num_generations,
        truncated=truncated,
    )
