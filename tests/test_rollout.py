"""Sampling and log-prob gathering (companion.rollout) against transformers' own generate and forward."""

from __future__ import annotations

import pytest
import torch

from companion.rollout import filter_logits, generate, per_token_logps

PROMPTS = ["3+5=", "Using the numbers [13, 14, 2], make 12", "x"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _hf_generate(model, tokenizer, prompts, num_generations, **kwargs):
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ids = enc["input_ids"].repeat_interleave(num_generations, 0)
    mask = enc["attention_mask"].repeat_interleave(num_generations, 0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **kwargs)
    return out[:, ids.shape[1]:]


def _pad_to(ids, width, pad):
    return torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad)


def test_greedy_matches_transformers_generate(tiny_policy):
    model, tok = tiny_policy
    ours = generate(model, tok, PROMPTS, num_generations=2, max_completion_length=24, temperature=0)
    theirs = _hf_generate(model, tok, PROMPTS, 2, max_new_tokens=24, do_sample=False)
    assert torch.equal(_pad_to(ours.completion_ids, theirs.shape[1], tok.pad_token_id), theirs)


@pytest.mark.parametrize("temperature, top_p, top_k", [(1.0, 1.0, 0), (0.7, 0.9, 20)])
def test_sampling_matches_transformers_generate_for_the_same_seed(tiny_policy, temperature, top_p, top_k):
    model, tok = tiny_policy
    ours = generate(model, tok, PROMPTS, num_generations=3, max_completion_length=24, temperature=temperature,
                    top_p=top_p, top_k=top_k, seed=7)
    torch.manual_seed(7)  # generate() draws from the global stream; ours from a generator seeded the same way
    theirs = _hf_generate(model, tok, PROMPTS, 3, max_new_tokens=24, do_sample=True, temperature=temperature,
                          top_p=top_p, top_k=top_k)
    assert torch.equal(_pad_to(ours.completion_ids, theirs.shape[1], tok.pad_token_id), theirs)


def test_sampling_still_matches_when_finished_rows_are_dropped_mid_way(tiny_policy):
    model, tok = tiny_policy
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 1.5  # ~4% a step: most completions end before the cap, some run to it
    batch_sizes = []
    hooks = [model.lm_head.register_forward_hook(lambda module, args, output: output + bias),
             model.register_forward_pre_hook(lambda module, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]),
                                             with_kwargs=True)]
    try:
        ours = generate(model, tok, PROMPTS, num_generations=4, max_completion_length=30, seed=11)
        assert min(batch_sizes) < len(PROMPTS) * 4 and ours.truncated.any()  # rows were dropped, some ran on
        torch.manual_seed(11)
        theirs = _hf_generate(model, tok, PROMPTS, 4, max_new_tokens=30, do_sample=True, top_k=0)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(_pad_to(ours.completion_ids, theirs.shape[1], tok.pad_token_id), theirs)


def test_filter_logits_matches_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0)) * 3
    for top_p in (0.3, 0.8, 0.95):
        theirs = TopPLogitsWarper(top_p)(None, logits.clone())
        assert torch.equal(torch.isinf(filter_logits(logits, top_p=top_p)), torch.isinf(theirs))
    assert torch.equal(filter_logits(logits, top_k=5), TopKLogitsWarper(5)(None, logits.clone()))


def test_sampling_logps_and_entropy_match_a_training_forward(tiny_policy):
    model, tok = tiny_policy
    rollout = generate(model, tok, PROMPTS, num_generations=2, max_completion_length=16, temperature=0.8, seed=1)
    mask = rollout.completion_mask.bool()
    model.eval()
    with torch.no_grad():
        forward = per_token_logps(model, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                  rollout.completion_mask, temperature=0.8, share_prompts=False)
    torch.testing.assert_close(rollout.per_token_logps[mask], forward[mask], atol=1e-4, rtol=0)
    assert (rollout.per_token_logps[~mask] == 0).all() and (rollout.entropies[~mask] == 0).all()
    assert (rollout.entropies[mask] > 0).all()  # a random model is far from deterministic


def test_sharing_the_prompt_forward_changes_neither_logps_nor_gradients(tiny_policy):
    model, tok = tiny_policy
    model = model.double()
    rollout = generate(model, tok, PROMPTS, num_generations=3, max_completion_length=12, seed=2)
    rows = torch.tensor([0, 1, 3, 6, 7, 8])  # uneven groups, as when zero-weight completions are left out
    args = [x[rows] for x in (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)]
    results = []
    for share in (False, True):
        model.zero_grad()
        logps = per_token_logps(model, *args, temperature=0.7, share_prompts=share)
        (logps * args[3]).sum().backward()
        results.append((logps.detach() * args[3], [p.grad.clone() for p in model.parameters()]))
    (full, full_grads), (shared, shared_grads) = results
    # Not bitwise: RMSNorm computes in float32 even for a float64 model, and the batch shapes differ.
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share", [False, True], ids=["own-prompt", "shared-prompt"])
def test_chunked_logits_change_neither_logps_nor_gradients(tiny_policy, share):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_policy
    model = get_peft_model(model.double(), LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                                      init_lora_weights=False))  # a wrapped model too
    rollout = generate(model, tok, PROMPTS, num_generations=3, max_completion_length=12, seed=2)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    results = []
    for chunk in (0, 5):  # 5 does not divide the completion length: a short last chunk
        model.zero_grad()
        logps = per_token_logps(model, *args, temperature=0.7, share_prompts=share, logit_chunk=chunk)
        (logps * args[3]).sum().backward()
        results.append((logps.detach() * args[3], [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (whole, whole_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    assert whole_grads and all(g.abs().sum() > 0 for g in whole_grads)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_masks_end_at_the_first_eos_and_finished_rows_are_padded(tiny_policy):
    model, tok = tiny_policy
    # Make EOS likely (~17% a step) so that some completions end early and some do not.
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 3.0
    handle = model.lm_head.register_forward_hook(lambda module, args, output: output + bias)
    try:
        rollout = generate(model, tok, PROMPTS, num_generations=4, max_completion_length=12, seed=3)
    finally:
        handle.remove()
    ids, mask = rollout.completion_ids, rollout.completion_mask
    for row, length in zip(ids, rollout.lengths.tolist()):
        eos_positions = (row == tok.eos_token_id).nonzero().squeeze(1).tolist()
        if eos_positions:
            assert eos_positions == [length - 1] and (row[length:] == tok.pad_token_id).all()
        else:
            assert length == ids.shape[1]
    assert rollout.truncated.tolist() == [tok.eos_token_id not in row.tolist() for row in ids]
    assert 0 < rollout.truncated.sum() < len(ids)
    assert (mask.sum(1) == rollout.lengths).all() and len(rollout.texts) == len(PROMPTS) * 4
    assert rollout.prompt_index.tolist() == [i // 4 for i in range(len(PROMPTS) * 4)]


def test_seed_makes_sampling_reproducible_and_leaves_the_global_stream_alone(tiny_policy):
    model, tok = tiny_policy
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = generate(model, tok, PROMPTS, num_generations=2, max_completion_length=10, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = generate(model, tok, PROMPTS, num_generations=2, max_completion_length=10, seed=5)
    assert torch.equal(a.completion_ids, b.completion_ids)
    generate(model, tok, PROMPTS, num_generations=2, max_completion_length=10)
    assert not torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("fast", [False, True])
def test_with_a_seed_per_prompt_a_sample_depends_on_its_prompt_and_seed_alone(tiny_policy, fast):
    """The trainer's sampler (seeds from the run's seed and each problem's place in the stream): the same prompt and
    seed give the same completions whatever else is in the batch, and the global stream is left alone."""
    model, tok = tiny_policy
    before = torch.get_rng_state()
    both = generate(model, tok, PROMPTS[:2], num_generations=3, max_completion_length=12, seeds=[11, 12], fast=fast)
    alone = generate(model, tok, PROMPTS[1:2], num_generations=3, max_completion_length=12, seeds=[12], fast=fast)
    assert both.texts[3:] == alone.texts and torch.equal(torch.get_rng_state(), before)
    other = generate(model, tok, PROMPTS[1:2], num_generations=3, max_completion_length=12, seeds=[13], fast=fast)
    assert other.texts != alone.texts


def test_generate_leaves_train_mode_as_it_found_it(tiny_policy):
    model, tok = tiny_policy
    model.train()
    generate(model, tok, PROMPTS[:1], num_generations=2, max_completion_length=4)
    assert model.training


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_completion_length=380), r"exceeds the model's context of 384 tokens: lower --max-completion-length to "
                                      r"at most 346 \(or shorten the prompt\)"),  # the longest prompt is 38 tokens
    (dict(num_generations=0), "at least 1"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature"),
])
def test_bad_requests_are_refused(tiny_policy, kwargs, match):
    model, tok = tiny_policy
    with pytest.raises(ValueError, match=match):
        generate(model, tok, PROMPTS, **{"max_completion_length": 8, **kwargs})


def test_a_stop_token_of_the_generation_config_ends_completions_too(tiny_policy):
    model, tok = tiny_policy
    stop = tok.convert_tokens_to_ids("!")
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]  # as an instruct model's <|im_end|>
    bias = torch.zeros(len(tok))
    bias[stop] = 4.0
    handle = model.lm_head.register_forward_hook(lambda module, args, output: output + bias)
    try:
        rollout = generate(model, tok, PROMPTS, num_generations=4, max_completion_length=12, seed=3)
    finally:
        handle.remove()
    ended = 0
    for row, length in zip(rollout.completion_ids.tolist(), rollout.lengths.tolist()):
        if stop in row:
            assert row.index(stop) == length - 1
            ended += 1
    assert ended > 0 and rollout.truncated.sum() < len(rollout.texts)
