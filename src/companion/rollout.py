"""Sampling G completions per prompt, and gathering per-token log-probs.

The shared plumbing of every trainer and of evaluation: 1. encode the prompts once (left padded),
2. sample ``num_generations`` completions each with the KV cache (``model.generate``), 3. mask every
completion up to and including its first EOS, 4. keep the log-probs the sampling policy gave its own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """A batch of B prompts × G completions, flattened prompt-major: row ``b * G + g``."""

    prompt_ids: torch.Tensor  # (B*G, P) left padded
    prompt_mask: torch.Tensor  # (B*G, P) 1 on real prompt tokens
    completion_ids: torch.Tensor  # (B*G, T) right padded with the pad token
    completion_mask: torch.Tensor  # (B*G, T) 1 up to and including the first EOS
    per_token_logps: torch.Tensor | None  # (B*G, T) log π_old(o_t | q, o_<t) of the sampled tokens, or None
    texts: list[str]  # B*G decoded completions, special tokens removed
    num_generations: int

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


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[index] without materialising the full (N, T, V) log-prob tensor twice."""
    # (N, T, V), (N, T) -> (N, T)
    picked = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *, temperature: float = 1.0):
    """log π(o_t | q, o_<t) of each completion token under ``model``: one forward pass, (N, T).

    Logits are divided by ``temperature`` so the log-probs are those of the distribution that was sampled.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (N, P+T)
    T = completion_ids.shape[1]
    # Position ids follow the real tokens so left padding does not shift the positions the model sees.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=T + 1).logits  # (N, T+1, V)
    logits = logits[:, :-1, :] / temperature  # the logit at position t predicts token t+1
    return selective_log_softmax(logits.float(), completion_ids)


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
    left untouched; without it the global torch RNG is used (and advanced).
    """
    if num_generations < 1 or max_completion_length < 1:
        raise ValueError("num_generations and max_completion_length must be at least 1")
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    device = next(model.parameters()).device
    # 1. encode each prompt once; generate() repeats the rows for the G samples
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)  # (B, P)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and prompt_ids.shape[1] + max_completion_length > limit:
        raise ValueError(
            f"prompt ({prompt_ids.shape[1]} tokens) + max_completion_length ({max_completion_length}) exceeds the "
            f"model's context of {limit} tokens: shorten the prompt or lower max_completion_length"
        )
    greedy = temperature == 0
    eos = tokenizer.eos_token_id
    gen_kwargs = dict(
        max_new_tokens=max_completion_length,
        do_sample=not greedy,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        output_logits=return_logps,
        return_dict_in_generate=True,
    )
    if greedy:  # greedy decoding refuses num_return_sequences > 1: repeat the rows instead
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        gen_ids, gen_mask = prompt_ids.repeat_interleave(num_generations, 0), prompt_mask.repeat_interleave(num_generations, 0)
    else:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k, num_return_sequences=num_generations)
        gen_ids, gen_mask = prompt_ids, prompt_mask
    was_training = model.training
    model.eval()
    # 2. sample with the KV cache
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(input_ids=gen_ids, attention_mask=gen_mask, **gen_kwargs)
    model.train(was_training)
    P = prompt_ids.shape[1]
    completion_ids = out.sequences[:, P:]  # (B*G, T)
    # 3. keep tokens up to and including the first EOS; pad the rest
    completion_mask = completion_mask_from_ids(completion_ids, eos)  # (B*G, T)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    # 4. the sampling policy's log-probs of its own tokens (temperature-scaled, as sampled)
    logps = None
    if return_logps:
        logits = torch.stack(out.logits, dim=1).float()  # (B*G, T, V) raw logits
        logps = selective_log_softmax(logits / (temperature if not greedy else 1.0), completion_ids)
        logps = logps * completion_mask
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(num_generations, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(num_generations, dim=0),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        per_token_logps=logps,
        texts=texts,
        num_generations=num_generations,
    )
