"""`companion eval` and its sampler: the sampling distribution against transformers' own warpers and a
teacher-forced forward pass, end-to-end runs on the tiny random policy, resume, refusal, and the CLI."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from companion.evaluate import ROWS_FILE, EvalConfig, evaluate, load_results, main, problem_seed
from companion.runs import RunError
from companion.passk import pass_at_k_curve
from companion.sampler import sample_completions, sample_next_token, uniforms_for
from companion.tasks import get_task
from companion.shipped import data_dir

PROMPTS = ["Using the numbers [1, 2], make 3.\n<think>", "Hi\n<think>", "abc"]  # three lengths: left padding


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def chatty_policy(tiny_policy):
    """The random tiny policy with its weights scaled up: peaked, prompt-dependent next-token distributions,
    and two ordinary characters made EOS tokens, so completions end at many different lengths."""
    model, tokenizer = tiny_policy
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id] + tokenizer.convert_tokens_to_ids(["e", "7"])
    return model, tokenizer


# --- the sampler ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.6, 0.95), (1.3, 0.5), (0.3, 0.8)])
def test_next_token_distribution_equals_transformers_warpers(temperature, top_p):
    """Inverse-CDF sampling over an even grid of uniforms hits each token as often as its warped probability."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(int(10 * temperature + 100 * top_p))) * 2
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    expected = torch.softmax(warped, dim=-1)[0]  # (V,) what model.generate(do_sample=True) samples from
    grid = 20_000
    uniforms = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    picks = sample_next_token(logits.expand(grid, -1), uniforms, temperature=temperature, top_p=top_p)
    frequencies = torch.bincount(picks, minlength=12).double() / grid
    assert torch.allclose(frequencies, expected.double(), atol=1.5 / grid)


def test_the_fast_nucleus_equals_the_sorted_one(monkeypatch):
    """nucleus_probs keeps the tokens filter_logits keeps, with the same probabilities up to normalisation: for peaked
    rows (the nucleus among the top-k candidates) and for flat ones (more than the candidates: the sort path)."""
    from companion import decode

    monkeypatch.setattr(decode, "NUCLEUS_CANDIDATES", 8)
    generator = torch.Generator().manual_seed(0)
    peaked = torch.randn(50, 40, generator=generator) * 4
    flat = torch.randn(50, 40, generator=generator) * 0.1
    for logits in (peaked, flat):
        for top_p in (0.5, 0.9, 0.99):
            expected = decode.filter_logits(logits, top_p=top_p).softmax(dim=-1)
            got = decode.nucleus_probs(logits, top_p=top_p)
            assert torch.equal(got > 0, expected > 0)
            assert torch.allclose(got / got.sum(dim=-1, keepdim=True), expected, atol=1e-6)
    kept = (decode.nucleus_probs(flat, top_p=0.9) > 0).sum(dim=-1)
    assert (kept > 8).all()  # the flat rows really went past the candidates
    assert torch.equal(decode.nucleus_probs(peaked, top_p=1.0), peaked.softmax(dim=-1))


def test_greedy_matches_rollout_generate(chatty_policy):
    from companion.rollout import generate

    model, tokenizer = chatty_policy
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # rollout.generate stops on the tokenizer's EOS
    reference = generate(model, tokenizer, PROMPTS, num_generations=2, max_completion_length=40, temperature=0,
                         return_logps=False)
    ours = sample_completions(model, tokenizer, PROMPTS, 2, seeds=[0, 1, 2], max_completion_length=40, temperature=0,
                              batch_size=4)
    assert [c.text for samples in ours for c in samples] == reference.texts
    assert len(set(reference.texts)) == 3  # the three prompts really are continued differently


@pytest.mark.parametrize("fast", [False, True])
def test_every_token_is_the_draw_a_full_forward_pass_gives(chatty_policy, fast):
    """The in-place cache, the positions under left padding, the dropping of finished rows, batches that span
    prompts and the fast path (shared-prompt attention, nucleus by top-k) change nothing: each token equals inverse-CDF sampling, with the
    same uniform, from the logits of one uncached forward pass over prompt + completion."""
    model, tokenizer = chatty_policy
    seeds, num_generations, max_len = [11, 12, 13], 12, 40
    results = sample_completions(model, tokenizer, PROMPTS, num_generations, seeds=seeds, max_completion_length=max_len,
                                 temperature=0.7, top_p=0.9, batch_size=7, fast=fast)
    assert model.config._attn_implementation == "sdpa"  # the shared-prompt attention is set only while decoding
    lengths = [c.length for samples in results for c in samples]
    assert min(lengths) < max_len // 2 and max(lengths) == max_len and len(set(lengths)) > 8  # rows were dropped
    model.eval()
    for prompt, seed, samples in zip(PROMPTS, seeds, results):
        uniforms = uniforms_for(seed, num_generations, max_len)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for i, completion in enumerate(samples):
            ids = list(completion.token_ids)
            assert len(ids) == completion.length
            eos = model.generation_config.eos_token_id
            assert completion.finished == (ids[-1] in eos) and not any(t in eos for t in ids[:-1])
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1: -1]
            redrawn = sample_next_token(logits, uniforms[i, : len(ids)], temperature=0.7, top_p=0.9)
            assert redrawn.tolist() == ids


@pytest.mark.parametrize("fast", [False, True])
def test_samples_do_not_depend_on_batching(chatty_policy, fast):
    model, tokenizer = chatty_policy
    kwargs = dict(max_completion_length=30, temperature=1.0, top_p=0.95, fast=fast)
    together = sample_completions(model, tokenizer, PROMPTS, 5, seeds=[1, 2, 3], batch_size=64, **kwargs)
    small_batches = sample_completions(model, tokenizer, PROMPTS, 5, seeds=[1, 2, 3], batch_size=2, **kwargs)
    alone = sample_completions(model, tokenizer, PROMPTS[1:2], 5, seeds=[2], batch_size=5, **kwargs)
    assert together == small_batches
    assert together[1] == alone[0]
    other_seed = sample_completions(model, tokenizer, PROMPTS[1:2], 5, seeds=[4], batch_size=5, **kwargs)
    assert other_seed != alone


def test_shared_prompt_attention_equals_the_standard_path_on_another_model_family(monkeypatch):
    """A Llama (no q/k/v biases, other head counts: 6 query heads on 3 key/value heads) with an unequal share of
    rows per prompt after finished rows are dropped: the shared-prompt attention gives the same logits, so the
    same samples, as transformers' own attention over a per-row cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from companion import decode
    from companion.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                         num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                                         max_position_embeddings=256, attn_implementation="sdpa",
                                         eos_token_id=tokenizer.convert_tokens_to_ids(["e", "7"]),
                                         pad_token_id=tokenizer.pad_token_id))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4)
    assert decode.supports_shared_prompt(model)
    kwargs = dict(max_completion_length=40, temperature=0.8, top_p=0.9, batch_size=10)
    standard = sample_completions(model, tokenizer, PROMPTS, 6, seeds=[5, 6, 7], **kwargs)
    made, original = [], decode.SharedPrompt
    monkeypatch.setattr(decode, "SharedPrompt", lambda *args: made.append(args) or original(*args))
    shared = sample_completions(model, tokenizer, PROMPTS, 6, seeds=[5, 6, 7], fast=True, **kwargs)
    assert len(made) == 2  # the path was taken: one per batch of 10 of the 18 rows
    lengths = [c.length for samples in standard for c in samples]
    assert min(lengths) < 20 and max(lengths) == 40  # rows finished at different steps and were dropped
    assert shared == standard


@pytest.mark.parametrize("fast", [False, True])
def test_progress_counts_every_decoded_token_as_it_is_decoded(chatty_policy, fast):
    """The progress callback hears of each decoding step's tokens when they are decoded, not when their sample
    ends: over the run they add up to the samples' lengths, and samples to their number."""
    model, tokenizer = chatty_policy
    calls = []
    results = sample_completions(model, tokenizer, PROMPTS, 4, seeds=[1, 2, 3], max_completion_length=20,
                                 batch_size=5, fast=fast, on_progress=lambda n, tokens: calls.append((n, tokens)))
    lengths = [c.length for samples in results for c in samples]
    assert sum(n for n, _ in calls) == 12 and sum(t for _, t in calls) == sum(lengths)
    assert max(lengths) == 20 and len(calls) > 20  # a call per step of each batch, not one per finished sample
    assert calls[0][1] == 5  # the first step of the first batch: a token for each of its 5 rows


def test_the_fast_path_samples_a_bfloat16_model_under_left_padding(chatty_policy, monkeypatch):
    """A model in bfloat16 (a GPU's compute dtype, or --dtype bfloat16): the prompts' padding mask is added in the
    keys' dtype (it was float32, and the product refused the mix); each row starts with the exact path's token (the
    prefill is the same), after which bf16 rounds the two attentions differently."""
    from companion import decode

    model, tokenizer = chatty_policy
    model.to(torch.bfloat16)
    made, original = [], decode.SharedPrompt
    monkeypatch.setattr(decode, "SharedPrompt", lambda *args: made.append(original(*args)) or made[-1])
    kwargs = dict(max_completion_length=12, temperature=1.0, top_p=1.0, batch_size=6)
    fast = sample_completions(model, tokenizer, PROMPTS, 2, seeds=[1, 2, 3], fast=True, **kwargs)
    exact = sample_completions(model, tokenizer, PROMPTS, 2, seeds=[1, 2, 3], **kwargs)
    assert made and made[0].padding is not None and made[0].padding.dtype == torch.bfloat16
    assert [len(samples) for samples in fast] == [2, 2, 2]
    assert [a.token_ids[0] for x in fast for a in x] == [b.token_ids[0] for y in exact for b in y]


def test_shared_prompt_falls_back_where_attention_is_not_pluggable(chatty_policy, monkeypatch):
    from companion import decode

    model, tokenizer = chatty_policy
    kwargs = dict(max_completion_length=20, temperature=1.0, top_p=1.0, batch_size=8)
    expected = sample_completions(model, tokenizer, PROMPTS, 3, seeds=[1, 2, 3], **kwargs)
    monkeypatch.setattr(type(model), "_can_set_attn_implementation", lambda self: False)
    monkeypatch.setattr(decode, "SharedPrompt", None)  # the shared path would fail at once
    assert sample_completions(model, tokenizer, PROMPTS, 3, seeds=[1, 2, 3], fast=True, **kwargs) == expected


def test_sampler_refuses_a_completion_past_the_context(tiny_policy):
    model, tokenizer = tiny_policy
    context = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"exceeds the model's context of {context} tokens"):
        sample_completions(model, tokenizer, PROMPTS, 1, seeds=[0, 0, 0], max_completion_length=context - 4)


# --- evaluate(): end to end -------------------------------------------------------------------------------------


def small_config(out: Path, **overrides) -> EvalConfig:
    values = dict(model="random", problems=4, num_generations=4, temperature=1.0, top_p=0.95, max_completion_length=24,
                  batch_size=8, num_threads=1, out=str(out))
    return EvalConfig(**(values | overrides))


def rows_without_timing(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in load_results(out).rows]


def test_countdown_rows_count_the_right_answers_whose_written_steps_hold(tmp_path):
    from companion import verify
    from companion.models import load_policy

    model, tokenizer = load_policy("tiny", device="cpu")  # the base writes traces, and sometimes slips in them
    config = small_config(tmp_path / "run", model="tiny", problems=12, num_generations=16, max_completion_length=256,
                          temperature=1.0, top_p=1.0, save_completions=True)
    summary = evaluate(config, model=model, tokenizer=tokenizer, progress=False)
    rows = load_results(tmp_path / "run").rows
    task = get_task("countdown")
    for row in rows:
        expected = sum(task.reward(text, row["problem"]) == 1.0 and verify.countdown_steps_right(text)
                       for text in row["completions"])
        assert row["num_checked"] == expected <= row["num_correct"]
    checked = {p["k"]: p["estimate"] for p in summary["pass_at_k_checked"]}
    plain = {p["k"]: p["estimate"] for p in summary["pass_at_k"]}
    assert checked.keys() == plain.keys() and all(checked[k] <= plain[k] for k in plain)
    assert sum(row["num_correct"] for row in rows) > 0  # the check had right answers to look at
    words = small_config(tmp_path / "words", model="tiny", task="tinygsm", problems=2, num_generations=2)
    assert "pass_at_k_checked" not in evaluate(words, model=model, tokenizer=tokenizer, progress=False)
    assert all("num_checked" not in row for row in load_results(tmp_path / "words").rows)  # not checked there


def test_a_tier_is_evaluated_on_its_own_problems_and_the_trainer_draws_the_same_tier(tiny_policy, tmp_path):
    from companion.train_config import TrainConfig
    from companion.train_setup import run_problems

    model, tokenizer = tiny_policy
    config = small_config(tmp_path / "hard", problems=20, num_generations=1, tier="hard")
    evaluate(config, model=model, tokenizer=tokenizer, progress=False)
    expected = get_task("countdown", tier="hard").generate(20, seed=0, split="test")
    assert [row["problem"] for row in load_results(tmp_path / "hard").rows] == expected
    assert max(max(p["numbers"]) for p in expected) > 20  # not the default tier's
    _, pool, held_out = run_problems(TrainConfig(tier="hard", train_problems=50, eval_every=1, eval_problems=20))
    assert held_out == expected and max(max(p["numbers"]) for p in pool) > 20


def test_evaluate_end_to_end_on_the_tiny_random_policy(tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    config = small_config(tmp_path / "run", problems=3, num_generations=8, save_completions=True)
    summary = evaluate(config, model=model, tokenizer=tokenizer, progress=False)

    results = load_results(tmp_path / "run")
    assert results.config == config and results.summary == summary
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    task, problems = get_task("countdown"), get_task("countdown").generate(3, seed=0, split="test")
    assert [row["index"] for row in results.rows] == [0, 1, 2]
    for row, problem in zip(results.rows, problems):
        assert row["problem"] == problem
        assert row["rewards"] == [task.reward(text, problem) for text in row["completions"]]
        assert row["num_correct"] == sum(r == 1.0 for r in row["rewards"])
        assert len(row["lengths"]) == len(row["finished"]) == 8
        assert all(1 <= n <= 24 for n in row["lengths"])
        assert all(n == 24 for n, done in zip(row["lengths"], row["finished"]) if not done)
    curve = pass_at_k_curve([row["num_correct"] for row in results.rows], 8, n_bootstrap=1000, seed=0)
    assert summary["pass_at_k"] == [point._asdict() for point in curve.values()]
    assert [p["k"] for p in summary["pass_at_k"]] == [1, 2, 4, 8]
    assert summary["samples"] == 24 and summary["num_problems"] == 3
    assert summary["tokens"] == sum(sum(row["lengths"]) for row in results.rows)
    assert summary["samples_per_s"] > 0 and summary["tokens_per_s"] > 0
    assert model.training  # evaluation leaves the policy in the mode it found it in


def test_evaluate_scores_real_solutions_as_correct(tiny_policy, tmp_path, monkeypatch):
    """The scoring path on completions we control: a sampler that answers problem i right in sample 0 only."""
    import companion.sampler
    from companion.sampler import Completion

    task = get_task("countdown")

    def fake_sampler(model, tokenizer, prompts, num_generations, **kwargs):
        problems = task.generate(4, seed=0, split="test")
        by_prompt = {task.prompt(p): p for p in problems}
        answers = []
        for prompt in prompts:
            right = f"</think><answer>{task.reference(by_prompt[prompt])}</answer>"
            texts = [right] + ["</think><answer>1+1</answer>"] * (num_generations - 1)
            answers.append([Completion(text, (), len(text) + 1, True) for text in texts])
        return answers

    monkeypatch.setattr(companion.sampler, "sample_completions", fake_sampler)
    model, tokenizer = tiny_policy
    summary = evaluate(small_config(tmp_path / "run"), model=model, tokenizer=tokenizer, progress=False)
    assert summary["coverage"] == 1.0 and summary["accuracy"] == 0.25
    assert [p["estimate"] for p in summary["pass_at_k"]] == [0.25, 0.5, 1.0]
    assert summary["mean_reward"] == pytest.approx(0.25 + 0.75 * 0.1)  # wrong but well-formed: format score
    assert summary["length_wrong"]["mean"] == len("</think><answer>1+1</answer>") + 1


@pytest.mark.parametrize("task, options", [
    ("tinygsm", {}),
    ("gsm8k", {"data_file": str(data_dir() / "verifier" / "gsm8k_sample.jsonl"), "split": "train"}),
])
def test_word_problem_tasks_run_and_resume(tiny_policy, tmp_path, task, options):
    model, tokenizer = tiny_policy
    config = small_config(tmp_path / task, task=task, problems=2, num_generations=2, max_completion_length=8, **options)
    summary = evaluate(config, model=model, tokenizer=tokenizer, progress=False)
    assert summary["task"] == task and summary["samples"] == 4
    # The rows' problems (TinyGSM's steps are tuples, JSON lists) match a fresh draw, so a rerun resumes.
    assert evaluate(config, progress=False) == summary


def test_resumed_runs_equal_an_uninterrupted_run(tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    evaluate(small_config(tmp_path / "straight"), model=model, tokenizer=tokenizer, progress=False)
    expected = rows_without_timing(tmp_path / "straight")

    # Stopped after two problems, then rerun with all four (groups of 8 // 4 = 2 problems).
    evaluate(small_config(tmp_path / "resumed", problems=2), model=model, tokenizer=tokenizer, progress=False)
    summary = evaluate(small_config(tmp_path / "resumed"), model=model, tokenizer=tokenizer, progress=False)
    assert rows_without_timing(tmp_path / "resumed") == expected
    assert summary["num_problems"] == 4

    # A crash in the middle of writing problem 3's row: the half line is dropped and problem 3 redone.
    rows_file = tmp_path / "resumed" / ROWS_FILE
    data = rows_file.read_bytes()
    last_line_start = data.rstrip(b"\n").rfind(b"\n") + 1
    rows_file.write_bytes(data[: last_line_start + 40])
    assert len(load_results(tmp_path / "resumed").rows) == 3  # read-only loading skips the partial line
    evaluate(small_config(tmp_path / "resumed"), model=model, tokenizer=tokenizer, progress=False)
    assert rows_without_timing(tmp_path / "resumed") == expected
    assert rows_file.read_bytes().count(b"\n") == 4 and rows_file.read_bytes().endswith(b"\n")


def test_rerunning_a_finished_run_samples_nothing(tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    first = evaluate(small_config(tmp_path / "run"), model=model, tokenizer=tokenizer, progress=False)
    # No model at all: a finished run must not need one (config.model "random" is not even loadable).
    assert evaluate(small_config(tmp_path / "run"), progress=False) == first


def test_a_different_config_is_refused_unless_overwrite(tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    evaluate(small_config(tmp_path / "run"), model=model, tokenizer=tokenizer, progress=False)
    with pytest.raises(RunError, match=r"different config \(num_generations: 4 there, 8 now\).*--overwrite"):
        evaluate(small_config(tmp_path / "run", num_generations=8), model=model, tokenizer=tokenizer, progress=False)
    with pytest.raises(RunError, match="temperature: 1.0 there, 0.7 now"):
        evaluate(small_config(tmp_path / "run", temperature=0.7), model=model, tokenizer=tokenizer, progress=False)
    summary = evaluate(small_config(tmp_path / "run", num_generations=8, overwrite=True), model=model, tokenizer=tokenizer,
                       progress=False)
    assert summary["num_generations"] == 8
    assert all(len(row["rewards"]) == 8 for row in load_results(tmp_path / "run").rows)


def test_corrupt_rows_are_reported_not_guessed(tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    evaluate(small_config(tmp_path / "run"), model=model, tokenizer=tokenizer, progress=False)
    rows_file = tmp_path / "run" / ROWS_FILE
    lines = rows_file.read_text().splitlines(keepends=True)
    rows_file.write_text(lines[0] + "{not json\n" + "".join(lines[2:]))
    with pytest.raises(RunError, match="line 2, is not valid JSON"):
        evaluate(small_config(tmp_path / "run"), model=model, tokenizer=tokenizer, progress=False)
    rows_file.write_text(lines[0] + lines[0])
    with pytest.raises(RunError, match="two rows for problem 0"):
        evaluate(small_config(tmp_path / "run"), model=model, tokenizer=tokenizer, progress=False)


def test_a_directory_of_other_files_is_not_taken_over(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ROWS_FILE).write_text("{}\n")
    with pytest.raises(RunError, match="no config.json"):
        evaluate(small_config(tmp_path / "run"), progress=False)
    with pytest.raises(RunError, match="holds no evaluation"):
        load_results(tmp_path / "run")


def test_problem_seeds_are_distinct_and_stable():
    seeds = [problem_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert problem_seed(0, 7) == problem_seed(0, 7) != problem_seed(1, 7)


@pytest.mark.parametrize("overrides, message", [
    (dict(num_generations=0), "num_generations \\(samples per problem\\) must be at least 1"),
    (dict(temperature=0.0), "use --num-generations 1 for greedy"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(problems=0), "problems must be at least 1"),
    (dict(data_file="x.jsonl"), "data_file is for --task gsm8k only"),
    (dict(task="tinygsm", tier="hard"), "has one tier, 'default': drop --tier"),
    (dict(tier="harder"), "no tier 'harder'; its tiers: default, hard"),
])
def test_config_errors_say_what_to_change(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        small_config(tmp_path, **overrides)


# --- loading models by name, and the command line ------------------------------------------------------------


def test_eval_loads_a_model_directory_and_refuses_a_too_long_completion(tiny_policy_dir, tmp_path):
    summary = evaluate(small_config(tmp_path / "run", model=str(tiny_policy_dir), problems=2), progress=False)
    assert summary["samples"] == 8
    with pytest.raises(RunError, match="lower --max-completion-length to at most 2"):
        evaluate(small_config(tmp_path / "long", model=str(tiny_policy_dir), max_completion_length=300), progress=False)
    with pytest.raises(RunError, match="cannot load the model"):
        evaluate(small_config(tmp_path / "missing", model=str(tmp_path / "no-such-model")), progress=False)


def test_a_start_that_fails_leaves_nothing_that_refuses_the_corrected_command(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunError, match="lower --max-completion-length"):
        evaluate(small_config(out, model=str(tiny_policy_dir), max_completion_length=300), progress=False)
    with pytest.raises(RunError, match="cannot load the model"):
        evaluate(small_config(out, model=str(tmp_path / "no-such-model")), progress=False)
    assert not any(out.iterdir())
    summary = evaluate(small_config(out, model=str(tiny_policy_dir), problems=2), progress=False)
    assert summary["samples"] == 8


def test_eval_of_saved_lora_adapters_equals_the_model_that_saved_them(tiny_policy_dir, tmp_path):
    """`companion train` saves LoRA adapters with a note of their base; --model on that directory rebuilds the
    policy, and samples through peft's forward exactly as the in-memory model does."""
    from companion.models import LoraSettings, load_policy, save_policy

    model, tokenizer = load_policy(str(tiny_policy_dir), lora=LoraSettings(r=2), device="cpu")
    with torch.no_grad():  # fresh adapters are a no-op (B = 0); make them change the policy
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(generator=torch.Generator().manual_seed(0))
    save_policy(model, tokenizer, tmp_path / "adapters", base=str(tiny_policy_dir))
    # Completions saved: a random policy's rewards and lengths alone rarely tell two policies apart.
    from_disk = evaluate(small_config(tmp_path / "disk", model=str(tmp_path / "adapters"), save_completions=True),
                         progress=False)
    in_memory = evaluate(small_config(tmp_path / "memory", model=str(tmp_path / "adapters"), save_completions=True),
                         model=model, tokenizer=tokenizer, progress=False)
    base = evaluate(small_config(tmp_path / "base", model=str(tiny_policy_dir), save_completions=True), progress=False)
    assert rows_without_timing(tmp_path / "disk") == rows_without_timing(tmp_path / "memory")
    assert rows_without_timing(tmp_path / "disk") != rows_without_timing(tmp_path / "base")
    assert from_disk["pass_at_k"] == in_memory["pass_at_k"] and base["samples"] == from_disk["samples"]


def _companion() -> str:
    script = Path(sys.executable).parent / "companion"
    if not script.exists():
        pytest.skip(f"no console script at {script}: install the package (pip install -e .)")
    return str(script)


@pytest.mark.slow  # a subprocess that imports torch and transformers: 10-25 s on the shared cores
def test_cli_runs_resumes_and_refuses(tiny_policy_dir, tmp_path, capsys):
    out = tmp_path / "cli-run"
    options = ["--model", str(tiny_policy_dir), "--task", "countdown", "--problems", "2", "--num-generations", "4",
               "--max-completion-length", "16", "--num-threads", "1", "--out", str(out)]
    done = subprocess.run([_companion(), "eval", *options], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "pass@1" in done.stdout and "pass@4" in done.stdout
    assert (out / "summary.json").exists() and len(load_results(out).rows) == 2

    # The same command in process: nothing left to sample, the same summary printed.
    assert main(options) == 0
    assert capsys.readouterr().out == done.stdout
    assert main(options + ["--num-generations", "8"]) == 2
    assert "different config (num_generations: 4 there, 8 now)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--num-generations", "0"])
    assert exit_info.value.code == 2 and "num_generations (samples per problem) must be at least 1" in \
        capsys.readouterr().err


@pytest.mark.slow  # a subprocess that imports torch and transformers: 10-25 s on the shared cores
def test_a_killed_run_keeps_its_finished_problems_and_resumes_to_the_uninterrupted_result(tiny_policy_dir, tmp_path):
    import signal
    import time

    # One problem per batch (--batch-size = --num-generations), so rows land one by one and the kill falls mid-run.
    options = ["--model", str(tiny_policy_dir), "--problems", "30", "--num-generations", "4", "--batch-size", "4",
               "--max-completion-length", "32", "--temperature", "1.0", "--num-threads", "1",
               "--out", str(tmp_path / "killed")]
    rows_file = tmp_path / "killed" / ROWS_FILE
    process = subprocess.Popen([_companion(), "eval", *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if rows_file.exists() and rows_file.read_bytes().count(b"\n") >= 2:
            process.send_signal(signal.SIGKILL)  # no handler runs: only what was fsynced survives
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    survivors = load_results(tmp_path / "killed").rows
    assert 2 <= len(survivors) < 30

    assert main(options) == 0
    straight = small_config(tmp_path / "straight", model=str(tiny_policy_dir), problems=30, batch_size=4,
                            max_completion_length=32)
    evaluate(straight, progress=False)
    assert rows_without_timing(tmp_path / "killed") == rows_without_timing(tmp_path / "straight")
    assert rows_without_timing(tmp_path / "killed")[: len(survivors)] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in survivors]


def test_main_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--task", "--problems", "--num-generations", "--temperature", "--top-p", "--max-completion-length",
                 "--batch-size", "--seed", "--save-completions", "--out", "--overwrite"):
        assert flag in text


def _tiny_checkpoint() -> Path | None:
    """The tiny base checkpoint "tiny" loads ($COMPANION_TINY_BASE or the shipped data/tiny-base), if built."""
    from companion.tiny import tiny_dir

    return tiny_dir() if (tiny_dir() / "config.json").exists() else None


@pytest.mark.skipif(_tiny_checkpoint() is None, reason="no tiny base checkpoint yet (data/tiny-base, or "
                                                       "$COMPANION_TINY_BASE): build it with `companion pretrain`")
def test_small_run_on_the_shipped_tiny_base_model(tmp_path):
    summary = evaluate(EvalConfig(model="tiny", problems=4, num_generations=8, max_completion_length=128, num_threads=1,
                                  out=str(tmp_path / "run")), progress=False)
    rows = load_results(tmp_path / "run").rows
    assert summary["samples"] == 32
    assert all(len(row["rewards"]) == 8 for row in rows)


@pytest.mark.skipif(_tiny_checkpoint() is None, reason="no tiny base checkpoint yet")
def test_shipped_tiny_base_mostly_writes_well_formed_answers(tmp_path):
    summary = evaluate(EvalConfig(model="tiny", problems=4, num_generations=8, max_completion_length=128, num_threads=1,
                                  out=str(tmp_path / "run")), progress=False)
    # A base model pretrained on solver traces should at least close the answer tag most of the time.
    assert summary["mean_reward"] > 0.05, summary
    assert summary["truncated_fraction"] < 0.5, summary


def test_room_for_rl_counts_zero_spread_groups_as_every_group_of_g_would():
    import itertools

    from companion.evaluate import room_for_rl

    # Two problems of n = 6 samples: 2 right, and 0 right. Enumerate every group of G = 3 distinct samples.
    rows = [{"num_correct": 2, "rewards": [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]}, {"num_correct": 0, "rewards": [0.0] * 6}]
    flat = [len({r["rewards"][i] for i in group}) == 1 for r in rows for group in itertools.combinations(range(6), 3)]
    room = room_for_rl(rows, group_size=3, rare=0.5)
    assert room["zero_spread_groups"] == pytest.approx(sum(flat) / len(flat))  # (4/20 + 1) / 2
    assert room["rarely_solved"] == 0.5 and room["rarely_solved_share_of_coverage"] == 1.0  # 2 of 6 < half
    with pytest.raises(ValueError, match="groups of 8 cannot be drawn from 6 samples"):
        room_for_rl(rows)


# --- perplexity under another model (chapter 7) -----------------------------------------------------------------


def test_perplexity_under_a_model_scores_its_own_samples_as_the_sampler_drew_them(chatty_policy, tiny_policy_dir):
    from transformers import AutoModelForCausalLM

    from companion.evaluate import perplexity_under
    from companion.passk import perplexity
    from companion.rollout import generate

    model, tokenizer = chatty_policy
    model.eval()
    task = get_task("countdown")
    problems = task.generate(3, seed=0, split="test")
    rows = perplexity_under(model, model, tokenizer, task, problems, num_generations=4, seed=5,
                            max_completion_length=24, prompts_per_batch=2)
    assert [r["index"] for r in rows] == [0, 1, 2] and all(len(r["perplexity"]) == 4 for r in rows)
    # Reference: the sampler's own log-probs of the same draws (T = 1, no nucleus: the scored distribution).
    prompts = [task.prompt(p, tokenizer=tokenizer) for p in problems[:2]]
    with torch.no_grad():
        reference = generate(model, tokenizer, prompts, num_generations=4, max_completion_length=24, seed=5)
    expected = perplexity(reference.per_token_logps, reference.completion_mask).tolist()
    got = [p for r in rows[:2] for p in r["perplexity"]]
    assert got == pytest.approx(expected, rel=1e-4)
    assert [n for r in rows[:2] for n in r["lengths"]] == reference.lengths.tolist()
    # Under another model the same samples score differently: the scorer is what is measured.
    other = AutoModelForCausalLM.from_pretrained(tiny_policy_dir).eval()
    again = perplexity_under(other, model, tokenizer, task, problems, num_generations=4, seed=5,
                             max_completion_length=24, prompts_per_batch=2)
    assert [r["lengths"] for r in again] == [r["lengths"] for r in rows]
    mine, theirs = ([p for r in rs for p in r["perplexity"]] for rs in (rows, again))
    assert all(abs(a - b) > 1e-2 * b for a, b in zip(theirs, mine))


# --- on a GPU: the batch that fits, before the weights load ----------------------------------------------------


def test_on_a_gpu_the_batch_is_what_the_planner_fits(tiny_policy_dir, tmp_path):
    from companion.evaluate import batch_plan, gpu_batch_size
    from companion.models import read_model_files
    from companion.planner import CONTEXT_BYTES

    files = read_model_files(str(tiny_policy_dir))
    config = small_config(tmp_path / "run", model=str(tiny_policy_dir), num_generations=16, batch_size=0,
                          max_completion_length=256)

    def needs(batch):  # what a batch needs once the CUDA context exists
        return batch_plan(config, files, 40, batch).peak - CONTEXT_BYTES

    assert gpu_batch_size(config, files, 40, needs(512)) == 512  # the default, when it fits
    assert gpu_batch_size(config, files, 40, needs(256) + 1) == 256  # else the largest power of two that does
    asked = dataclasses.replace(config, batch_size=96)
    assert gpu_batch_size(asked, files, 40, needs(96)) == 96
    with pytest.raises(RunError, match=r"--batch-size 96 needs about .* use --batch-size 48 \(or 0"):
        gpu_batch_size(asked, files, 40, needs(96) - 1)
    with pytest.raises(RunError, match="even one sample per batch"):
        gpu_batch_size(config, files, 40, needs(1) - 1)


def test_on_the_cpu_the_default_batch_is_what_the_planner_fits_in_half_the_free_memory(tiny_policy_dir, tmp_path):
    from transformers import LlamaConfig

    from companion.evaluate import CPU_BATCH_SIZE, CPU_MEMORY_SHARE, batch_plan, cpu_batch_size
    from companion.models import ModelFiles, read_model_files
    from companion.planner import CONTEXT_BYTES

    config = small_config(tmp_path / "run", num_generations=64, batch_size=0, max_completion_length=256)
    tiny = read_model_files(str(tiny_policy_dir))
    assert cpu_batch_size(config, tiny, 80, 2**30) == CPU_BATCH_SIZE  # the tiny model: 1024 fits in 1 GiB's half
    # SmolLM2-135M's shape (30 layers, 3 key-value heads of 64, vocabulary 49,152): its caches need ~15 GiB at 1024
    smollm = ModelFiles(config=LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                           num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                           tie_word_embeddings=True), tokenizer=None)

    def needs(batch):
        return (batch_plan(config, smollm, 80, batch, dtype_bytes=4).peak - CONTEXT_BYTES) / CPU_MEMORY_SHARE

    assert needs(1024) > 20 * 2**30
    assert cpu_batch_size(config, smollm, 80, 22 * 2**30) == 512  # this 24 GiB machine, idle
    assert cpu_batch_size(config, smollm, 80, int(needs(128))) == 128
    assert cpu_batch_size(config, smollm, 80, int(needs(128)) - 1) == 64
    assert cpu_batch_size(config, smollm, 80, 0) == 1  # nothing fits: one at a time, and the machine's own limit


def test_a_cpu_evaluation_with_little_memory_free_samples_in_smaller_batches_and_says_so(tiny_policy_dir, tmp_path,
                                                                                         monkeypatch, capsys):
    from companion import evaluate as evaluation

    monkeypatch.setattr(evaluation, "available_memory", lambda: 2**20)  # 1 MiB: less than the weights
    out = tmp_path / "run"
    planned = small_config(out, model=str(tiny_policy_dir), batch_size=0, problems=2, num_generations=2)
    summary = evaluate(planned, progress=False)
    assert "eval: 1 samples per batch" in capsys.readouterr().err
    again = evaluate(small_config(tmp_path / "again", model=str(tiny_policy_dir), batch_size=4, problems=2,
                                  num_generations=2), progress=False)
    assert summary["pass_at_k"] == again["pass_at_k"]  # the batch does not change the samples


def test_on_a_gpu_a_model_that_does_not_fit_stops_before_loading_and_leaves_no_run(tiny_policy_dir, tmp_path,
                                                                                    monkeypatch):
    from companion import models

    monkeypatch.setattr(models, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 2**30))  # the tiny model is < 1 MiB
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(models, "load_policy", lambda *a, **k: pytest.fail("loaded the weights"))
    out = tmp_path / "run"
    with pytest.raises(RunError, match=r"Tesla T4 \(free memory\) has 0.00 GiB"):
        evaluate(small_config(out, model=str(tiny_policy_dir), batch_size=0), progress=False)
    assert not (out / "config.json").exists()


def test_the_shipped_base_redraws_chapter_7_s_committed_samples(tmp_path, one_thread):
    """The first problems of a committed evaluation (the tiny base at T = 0.6, top-p 0.95, n = 256, the fast
    sampler), drawn again: a change to the sampler that moved its draws moves nearly every sample's length. Another
    CPU family's float rounding may flip the odd token, so a few samples may differ; on the machine that committed
    it, none do."""
    committed = load_results(data_dir() / "experiments" / "boundary" / "countdown-base-T0.6" / "eval")
    config = dataclasses.replace(committed.config, problems=2, out=str(tmp_path / "again"), num_threads=1)
    evaluate(config, progress=False)
    for row, again in zip(committed.rows[:2], load_results(tmp_path / "again").rows, strict=True):
        same = sum(pair == redrawn for pair, redrawn in zip(zip(row["lengths"], row["rewards"]),
                                                            zip(again["lengths"], again["rewards"])))
        assert same >= 0.9 * len(row["lengths"]), (row["index"], same)
        assert abs(row["num_correct"] - again["num_correct"]) <= 0.05 * len(row["lengths"])


def test_on_a_gpu_a_smaller_default_batch_is_said_before_the_weights_load(tiny_policy_dir, tmp_path, monkeypatch,
                                                                          capsys):
    from companion import models
    from companion.evaluate import batch_plan, longest_prompt
    from companion.models import read_model_files
    from companion.planner import CONTEXT_BYTES

    config = small_config(tmp_path / "run", model=str(tiny_policy_dir), num_generations=64, batch_size=0,
                          max_completion_length=256)
    files = read_model_files(config.model)
    task = get_task(config.task)
    problems = task.generate(config.problems, seed=config.problem_seed, split=config.split)
    longest = longest_prompt(config, task, problems, files.tokenizer)
    free = batch_plan(config, files, longest, 256).peak - CONTEXT_BYTES  # room for 256 samples, not 512
    monkeypatch.setattr(models, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")

    def stop(*args, **kwargs):
        raise RuntimeError("no CUDA here")

    monkeypatch.setattr(models, "load_policy", stop)
    with pytest.raises(RunError, match="no CUDA here"):
        evaluate(config, progress=False)
    assert "eval: 256 samples per batch" in capsys.readouterr().err
