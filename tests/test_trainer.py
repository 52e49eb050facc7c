"""The training loop: config checks, exact resume, a few real steps per algorithm, divergence, run directories."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from companion.objectives import ALGORITHMS, NORMALIZERS, TRAINABLE, loss_denominators, policy_loss
from companion.records import GAP_STATS, LOSS_STATS, TIMING_METRICS, read_metrics
from companion.runs import RunError
from companion.trainer import TrainConfig, TrainingDiverged, train

# Small enough for seconds per run on two shared cores, big enough that groups have a reward spread.
# One thread: a tiny model gains nothing from two, and loses a lot when the cores are shared.
SMALL = dict(steps=2, prompts_per_step=4, num_generations=4, max_completion_length=48, train_problems=32,
             eval_every=0, save_every=0, num_threads=1)


def _run_config(tmp_path, name="run", **overrides) -> TrainConfig:
    return TrainConfig(out=str(tmp_path / name), **{**SMALL, **overrides})


def _comparable(records):
    """Metric records without the wall-clock fields, the only ones that differ between identical runs."""
    return [{k: v for k, v in r.items() if k not in TIMING_METRICS} for r in records]


def _assert_finite_metrics(records):
    for record in records:
        for key, value in record.items():
            if value is None:  # a batch without a correct (or a wrong) answer has no length for it; see LOSS_STATS
                assert key in ("length_correct", "length_wrong", "frac_wrong_up", *LOSS_STATS), key
            else:
                assert math.isfinite(value), (key, value)


@pytest.fixture
def seven_reward(monkeypatch):
    """A reward the random policy can earn (a completion containing '7'), so its groups have a spread.

    Only for tests of the loop's mechanics on the random tiny policy; the real-steps tests use the real verifier.
    """
    from companion.tasks import CountdownTask

    monkeypatch.setattr(CountdownTask, "reward", lambda self, completion, problem: float("7" in completion))


# --- the config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, match", [
    (dict(algo="reinforce"), "unknown algo 'reinforce'"),
    (dict(task="chess"), "unknown task 'chess'"),
    (dict(num_generations=1), "num_generations must be >= 2"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(top_p=1.5), "top_p"),
    (dict(normalizer="median"), "normalizer must be one of"),
    (dict(beta=-0.1), "beta must be >= 0"),
    (dict(num_iterations=0), "num_iterations must be >= 1"),
    (dict(learning_rate=0.0), "learning_rate must be > 0"),
    (dict(warmup_steps=50, steps=10), "warmup_steps"),
    (dict(load_in_4bit=True), "add --lora"),
    (dict(train_problems=2, prompts_per_step=4), "train_problems"),
    (dict(device="tpu"), "device"),
    (dict(source="oracle"), "source must be one of"),
    (dict(source="teacher"), "use --algo fisft_plus"),
    (dict(source="teacher", algo="fisft_plus", task="gsm8k"), "needs a task with an exact solver"),
    (dict(policy_every=-1), "policy_every must be >= 0"),
    (dict(logit_chunk_size=-1), "logit_chunk_size must be >= 0"),
    (dict(refresh_every=0), "refresh_every must be >= 1"),
    (dict(refresh_every=5), "Use --algo fisft_plus or --refresh-every 1"),
    (dict(refresh_every=5, algo="fisft_plus", source="teacher"), "do not depend on the policy"),
    (dict(task="tinygsm", reward="graded"), "task 'tinygsm' has no 'graded' reward; its rewards: binary"),
    (dict(reward="shaped"), "its rewards: format, binary, graded"),
])
def test_invalid_configs_are_refused_with_a_message_saying_what_to_change(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**overrides)


def test_gsm8k_files_are_checked_before_anything_runs(tmp_path):
    from companion.shipped import data_dir

    sample = str(data_dir() / "verifier" / "gsm8k_sample.jsonl")
    other = tmp_path / "test.jsonl"
    other.write_text(Path(sample).read_text())
    for overrides, match in [
        (dict(task="countdown", data_file=sample), "--data-file reads GSM8K's problems from a file; countdown"),
        (dict(task="gsm8k", data_file=str(tmp_path / "none.jsonl")), "none.jsonl: no such file"),
        (dict(task="gsm8k", data_file=sample), "add --eval-data-file .* or --eval-every 0"),
        (dict(task="gsm8k", data_file=sample, eval_data_file=sample), "are the same file"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**overrides)
    TrainConfig(task="gsm8k", data_file=sample, eval_data_file=str(other))
    TrainConfig(task="gsm8k", data_file=sample, eval_every=0)


def test_gsm8k_from_local_files_trains_on_the_one_and_evaluates_on_the_other(tiny_policy_dir, tmp_path, monkeypatch):
    from companion.shipped import data_dir
    from companion.tasks import gsm8k

    lines = (data_dir() / "verifier" / "gsm8k_sample.jsonl").read_text().splitlines()
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train_file.write_text("\n".join(lines[:6]) + "\n")
    test_file.write_text("\n".join(lines[6:]) + "\n")
    monkeypatch.setattr("companion.runs.hub_reachable", lambda *a, **k: pytest.fail("the hub was asked"))
    seen = []
    real = gsm8k.generate
    monkeypatch.setattr(gsm8k, "generate", lambda *a, **k: seen.append(k.get("data_file")) or real(*a, **k))
    config = TrainConfig(task="gsm8k", model=str(tiny_policy_dir), data_file=str(train_file),
                         eval_data_file=str(test_file), train_problems=6, eval_problems=len(lines) - 6, eval_every=1,
                         eval_num_generations=1, prompts_per_step=2, num_generations=2, max_completion_length=8,
                         steps=1, save_every=0, device="cpu", out=str(tmp_path / "run"))
    run = train(config, progress=False)
    assert sorted(seen) == sorted([str(train_file), str(test_file)])
    assert [r["step"] for r in run.metrics] == [0, 1]


def test_without_the_hub_gsm8k_stops_the_run_before_it_writes_or_loads_anything(tmp_path, monkeypatch):
    from companion.tasks.gsm8k import GSM8KUnavailable

    monkeypatch.setattr("companion.runs.hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr("companion.train_setup.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(GSM8KUnavailable, match="--data-file"):
        train(TrainConfig(task="gsm8k", out=str(tmp_path / "run")), progress=False)
    assert not (tmp_path / "run").exists()


def test_every_field_has_a_help_string_and_the_defaults_are_valid():
    config = TrainConfig()
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))
    assert config.loss_normalizer == ALGORITHMS[config.algo].normalizer
    assert TrainConfig(algo="grpo", normalizer="constant").loss_normalizer == "constant"


# --- the loss of a subset of rows -------------------------------------------------------------------------


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_row_subsets_scaled_by_their_share_of_the_denominator_add_up_to_the_full_batch_loss_and_gradient(normalizer):
    gen = torch.Generator().manual_seed(0)
    N, T = 12, 7
    logps = (-torch.rand(N, T, generator=gen) * 3).requires_grad_()
    mask = (torch.arange(T) < torch.randint(1, T + 1, (N, 1), generator=gen)).long()
    weights = torch.randn(N, generator=gen)
    weights[[1, 4, 5, 9]] = 0.0  # zero-spread groups and filtered samples
    kwargs = dict(normalizer=normalizer, max_completion_length=T, epsilon=0.2)
    full, _ = policy_loss(logps, None, weights, mask, **kwargs)
    (full_grad,) = torch.autograd.grad(full, logps)
    kept = (weights != 0).nonzero().squeeze(1)
    parts = [kept[:3], kept[3:]]  # micro-batches of the weighted rows only
    counts = loss_denominators(normalizer, mask, weights)
    total = sum(policy_loss(logps[rows], None, weights[rows], mask[rows], **kwargs)[0] * (counts[rows].sum() / counts.sum()).item()
                for rows in parts)
    (grad,) = torch.autograd.grad(total, logps)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(grad, full_grad)


# --- the loop on the random tiny policy -------------------------------------------------------------------


def test_resume_is_exact_n_straight_equals_half_resume_half(tiny_policy_dir, tmp_path, seven_reward):
    from companion.models import load_policy, trainable_state_dict

    config = dict(steps=4, save_every=1, eval_every=2, eval_problems=4, eval_num_generations=2, model=str(tiny_policy_dir),
                  lr_scheduler="linear", warmup_steps=1, num_iterations=2, device="cpu")
    straight = train(_run_config(tmp_path, "straight", **config), progress=False)
    halves = _run_config(tmp_path, "halves", **config)
    first = train(halves, until_step=2, progress=False)
    assert [r["step"] for r in first.metrics] == [0, 1, 2]
    assert not (tmp_path / "halves" / "policy").exists()
    resumed = train(halves, resume=True, progress=False)
    # Bitwise on a CPU: every float is produced by the same operations on the same inputs in the same order.
    assert _comparable(resumed.metrics) == _comparable(straight.metrics)
    assert len(straight.metrics) == 5 and any(r.get("frac_weighted", 0) > 0 for r in straight.metrics)
    a, b = trainable_state_dict(straight.model), trainable_state_dict(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    reloaded, _ = load_policy(str(tmp_path / "halves" / "policy"), device="cpu")
    assert all(torch.equal(p, b[n]) for n, p in reloaded.named_parameters())


def test_kept_policies_are_the_policy_of_their_step_and_change_nothing_else(tiny_policy_dir, tmp_path, seven_reward):
    from companion.models import load_policy, trainable_state_dict

    config = dict(steps=3, save_every=1, model=str(tiny_policy_dir), device="cpu")
    plain = train(_run_config(tmp_path, "plain", **config), progress=False)
    kept = train(_run_config(tmp_path, "kept", policy_every=2, **config), progress=False)
    assert _comparable(kept.metrics) == _comparable(plain.metrics)  # saving a policy draws no random number
    assert sorted(p.name for p in (tmp_path / "kept").glob("policy*")) == ["policy", "policy-step2"]
    # The step-2 policy is what a run stopped after step 2 trained, not the final one.
    two = train(_run_config(tmp_path, "two", **dict(config, steps=2)), progress=False)
    snapshot, _ = load_policy(str(tmp_path / "kept" / "policy-step2"), device="cpu")
    expected, final = trainable_state_dict(two.model), trainable_state_dict(kept.model)
    assert all(torch.equal(p, expected[n]) for n, p in snapshot.named_parameters())
    assert not all(torch.equal(p, final[n]) for n, p in snapshot.named_parameters())
    # --overwrite replaces the kept policies with the run's.
    train(_run_config(tmp_path, "kept", **dict(config, steps=1)), overwrite=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "kept").glob("policy*")) == ["policy"]


@pytest.mark.parametrize("lora, in_4bit", [(False, False), (True, False), (True, True)],
                         ids=["full", "lora", "lora-4bit"])
def test_gradient_checkpointing_and_chunked_logits_change_memory_not_the_update(tiny_policy_dir, tmp_path, seven_reward, lora, in_4bit):
    from companion.models import trainable_state_dict

    config = dict(steps=1, model=str(tiny_policy_dir), device="cpu", lora=lora, load_in_4bit=in_4bit,
                  beta=0.04 if lora else 0.0, micro_batch_size=6)
    plain = train(_run_config(tmp_path, "plain", **config), progress=False)
    saved = train(_run_config(tmp_path, "checkpointed", gradient_checkpointing=True, logit_chunk_size=7, **config),
                  progress=False)
    (a,), (b,) = plain.metrics, saved.metrics
    assert a["frac_weighted"] > 0 and a["length"] == b["length"]  # the same samples
    assert (a["kl"] is not None) == lora  # the LoRA run also scores the reference (adapters off) under checkpointing
    for key in ("loss", "grad_norm", "kl") if lora else ("loss", "grad_norm"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key
    before, after = trainable_state_dict(plain.model), trainable_state_dict(saved.model)
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert saved.model.is_gradient_checkpointing


def test_a_run_started_before_a_config_field_existed_resumes(tiny_policy_dir, tmp_path, seven_reward):
    config = _run_config(tmp_path, steps=2, save_every=1, model=str(tiny_policy_dir), device="cpu")
    train(config, until_step=1, progress=False)
    saved = tmp_path / "run" / "config.json"
    older = {k: v for k, v in json.loads(saved.read_text()).items() if k not in ("dtype", "logit_chunk_size")}
    saved.write_text(json.dumps(older))  # as an earlier version wrote it
    assert [r["step"] for r in train(config, resume=True, progress=False).metrics] == [1, 2]
    saved.write_text(json.dumps({**older, "learning_rate": 1.0}))  # a real difference is still refused
    with pytest.raises(RunError, match="learning_rate"):
        train(config, resume=True, progress=False)


def test_a_config_written_before_the_fast_sampler_means_the_exact_one(tmp_path):
    from companion.config import load_config, save_config

    save_config(TrainConfig(out=str(tmp_path)), tmp_path / "config.json")
    assert TrainConfig().fast_sampler and load_config(TrainConfig, tmp_path / "config.json").fast_sampler
    older = {k: v for k, v in json.loads((tmp_path / "config.json").read_text()).items() if k != "fast_sampler"}
    (tmp_path / "config.json").write_text(json.dumps(older))  # as every committed run's config was written
    assert not load_config(TrainConfig, tmp_path / "config.json").fast_sampler


def test_a_dtype_the_device_cannot_take_is_refused_before_loading(monkeypatch):
    from companion import models

    assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="on a CPU the package computes in float32.*--lora --load-in-4bit"):
        models.resolve_dtype("bfloat16", torch.device("cpu"))
    # ...but a 4-bit model's layers may compute in half precision there (bitsandbytes has CPU kernels for it)
    assert models.resolve_dtype("float16", torch.device("cpu"), load_in_4bit=True) == torch.float16
    assert models.resolve_dtype("bfloat16", torch.device("cpu"), load_in_4bit=True) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ValueError, match=r"Tesla T4\) has no bfloat16.*--dtype float16"):
        models.resolve_dtype("bfloat16", torch.device("cuda"))
    assert models.resolve_dtype("float16", torch.device("cuda")) == torch.float16
    assert models.resolve_dtype("auto", torch.device("cuda")) == torch.float16  # what a T4 gets
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainConfig(dtype="fp8")


def test_on_a_t4_the_tiny_model_trains_its_weights_in_float32(tiny_policy_dir, tmp_path, monkeypatch):
    """A Colab T4 has no bf16, so ``auto`` meant fp16, and the tiny model trained in fp16 with AdamW gives NaN after
    one step. A run that trains the weights themselves keeps them float32 on any GPU; fp16 is for a frozen base."""
    from companion import models, train_setup

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # the T4's policy, on the CPU
    cuda = torch.device("cuda")
    assert models.resolve_dtype("auto", cuda, trains_weights=True) == torch.float32
    assert models.resolve_dtype("auto", cuda, load_in_4bit=True) == torch.float16  # adapters on an fp16 base
    with pytest.raises(ValueError, match="AdamW cannot do"):
        models.resolve_dtype("float16", cuda, trains_weights=True)
    monkeypatch.setattr(models, "resolve_device", lambda device: cuda)
    monkeypatch.setattr(models, "load_policy", lambda *a, dtype, **k: dtype)  # what the run would load it in
    assert train_setup.load_model(_run_config(tmp_path, model=str(tiny_policy_dir))) == torch.float32
    assert train_setup.load_model(_run_config(tmp_path, model=str(tiny_policy_dir), lora=True)) == torch.float16


def test_on_a_cpu_a_4bit_run_computes_in_the_half_dtype_it_asks_for(tmp_path):
    """The T4 policy in the tiny world: --dtype float16 with --lora --load-in-4bit reaches the 4-bit layers on the
    CPU, while every parameter stays float32; without 4-bit the same request stops before anything loads."""
    import bitsandbytes as bnb

    from companion.train_setup import load_model

    config = _run_config(tmp_path, lora=True, load_in_4bit=True, dtype="float16", device="cpu")
    model, _ = load_model(config)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.compute_dtype == torch.float16 for m in layers)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())
    with pytest.raises(ValueError, match="--lora --load-in-4bit"):
        train(_run_config(tmp_path, dtype="float16", device="cpu"), progress=False)


def test_resume_drops_records_written_after_the_checkpoint(tiny_policy_dir, tmp_path, seven_reward):
    config = _run_config(tmp_path, steps=3, save_every=2, model=str(tiny_policy_dir), device="cpu")
    train(config, until_step=2, progress=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines + [json.dumps({**json.loads(lines[-1]), "step": 3})]) + "\n")  # a crash after step 3
    result = train(config, resume=True, progress=False)
    assert [r["step"] for r in result.metrics] == [1, 2, 3]


def test_kl_to_the_reference_is_zero_before_the_first_update_and_logged(tiny_policy_dir, tmp_path, seven_reward):
    for lora in (False, True):
        result = train(_run_config(tmp_path, f"kl-{lora}", beta=0.1, lora=lora, lora_r=4, lora_alpha=8,
                                   model=str(tiny_policy_dir), device="cpu", learning_rate=1e-2), progress=False)
        kls = [r["kl"] for r in result.metrics]
        assert kls[0] == 0.0 and kls[1] > 0.0, (lora, kls)


@pytest.mark.parametrize("algo", ["dr_grpo", "ppo"])  # ppo: per-token weights and returns, cut with the pass
def test_micro_batches_change_memory_not_the_update(tiny_policy_dir, tmp_path, seven_reward, algo):
    runs = [train(_run_config(tmp_path, f"mb{size}", micro_batch_size=size, model=str(tiny_policy_dir), device="cpu",
                              algo=algo), progress=False)
            for size in (0, 3)]
    whole, micro = (_comparable(r.metrics) for r in runs)
    for a, b in zip(whole, micro):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == (b[key] if b[key] is None else pytest.approx(b[key], rel=1e-4, abs=1e-6)), key


def test_several_passes_group_rows_of_similar_length_and_cut_each_to_its_longest():
    from types import SimpleNamespace

    from companion.parallel import Processes
    from companion.rollout import Rollout
    from companion.trainer import micro_batches_of

    lengths = torch.tensor([9, 2, 7, 3, 0, 5])  # the fifth row has weight 0: it is not trained
    mask = (torch.arange(10)[None, :] < lengths[:, None]).long()  # (6, 10)
    rollout = Rollout(prompt_ids=torch.ones(6, 4, dtype=torch.long), prompt_mask=torch.ones(6, 4, dtype=torch.long),
                      completion_ids=torch.arange(60).view(6, 10), completion_mask=mask, per_token_logps=None,
                      texts=[""] * 6, num_generations=2)
    weights = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 2.0])
    batch = SimpleNamespace(rollout=rollout)

    def run(size):
        config = SimpleNamespace(beta=0.0, micro_batch_size=size, loss_normalizer="sequence")
        return SimpleNamespace(config=config, processes=Processes(), algorithm=SimpleNamespace(
            rows=lambda w, beta: (w != 0).nonzero().squeeze(1)))

    passes = micro_batches_of(run(2), batch, weights)
    assert [mb.rows.tolist() for mb in passes] == [[1, 3], [5, 2], [0]]  # by length: 2, 3 | 5, 7 | 9
    assert [mb.mask.shape[1] for mb in passes] == [3, 7, 9]
    assert all(torch.equal(mb.inputs[2], rollout.completion_ids[mb.rows, :mb.mask.shape[1]]) for mb in passes)
    whole = micro_batches_of(run(0), batch, weights)  # one pass: the rows and the width as they are
    assert len(whole) == 1 and whole[0].rows.tolist() == [0, 1, 2, 3, 5] and whole[0].mask.shape[1] == 10
    assert sum(mb.scale for mb in passes) == pytest.approx(whole[0].scale)  # one denominator, shared out


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_policy, tmp_path, seven_reward):
    model, tok = tiny_policy
    config = _run_config(tmp_path, steps=4, save_every=1)
    calls = {"training forwards": 0}

    def poison(module, args, output):  # from the third training forward on, the logits are NaN
        if torch.is_grad_enabled():
            calls["training forwards"] += 1
            if calls["training forwards"] > 2:
                return output * float("nan")
        return output

    train(config, model=model, tokenizer=tok, until_step=1, progress=False)
    good = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    model.lm_head.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"step \d: the loss is nan.*last good checkpoint.*--resume"):
        train(config, model=model, tokenizer=tok, resume=True, progress=False)
    kept = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    last_step = read_metrics(tmp_path / "run")[-1]["step"]
    assert kept["step"] == last_step >= good["step"]
    assert all(math.isfinite(v) for r in read_metrics(tmp_path / "run") for k, v in r.items()
               if k == "loss")


def test_a_run_directory_holding_another_run_is_refused(tiny_policy, tmp_path, seven_reward):
    model, tok = tiny_policy
    config = _run_config(tmp_path, steps=1)
    train(config, model=model, tokenizer=tok, progress=False)
    with pytest.raises(RunError, match="already holds a run.*--resume.*--overwrite"):
        train(config, model=model, tokenizer=tok, progress=False)
    with pytest.raises(RunError, match="different config.*learning_rate"):
        train(dataclasses.replace(config, learning_rate=1e-3, steps=2), model=model, tokenizer=tok, resume=True,
              progress=False)
    again = train(config, model=model, tokenizer=tok, overwrite=True, progress=False)
    assert [r["step"] for r in again.metrics] == [1]
    with pytest.raises(RunError, match="nothing to resume"):
        train(_run_config(tmp_path, "empty"), model=model, tokenizer=tok, resume=True, progress=False)


def test_a_prompt_longer_than_the_context_is_refused_before_training(tiny_policy, tmp_path):
    model, tok = tiny_policy
    with pytest.raises(ValueError, match="exceeds the model's context.*--max-completion-length"):
        train(_run_config(tmp_path, max_completion_length=370), model=model, tokenizer=tok, progress=False)



# --- a few real steps on the tiny base model --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["full", "lora", "4bit-lora"])
@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_a_few_real_steps_on_the_tiny_base_model_change_the_parameters(tmp_path, algo, variant):
    from companion.models import LoraSettings, load_policy, trainable_state_dict

    lora = variant != "full"
    model, tok = load_policy("tiny", load_in_4bit=variant == "4bit-lora", device="cpu",
                             lora=LoraSettings(r=8, alpha=16) if lora else None)
    before = trainable_state_dict(model)
    # Word problems, where the base model is sometimes right: 2 steps x 8 problems x 8 samples give the
    # F-ISFT rules, which need a correct sample, something to learn from.
    config = _run_config(tmp_path, algo=algo, task="tinygsm", lora=lora, lora_r=8, lora_alpha=16,
                         load_in_4bit=variant == "4bit-lora", prompts_per_step=8, num_generations=8,
                         max_completion_length=128, train_problems=64, learning_rate=1e-3 if lora else 1e-4)
    result = train(config, model=model, tokenizer=tok, progress=False)
    _assert_finite_metrics(result.metrics)
    assert any(r["frac_weighted"] > 0 for r in result.metrics), "no completion had a weight: nothing to learn from"
    after = trainable_state_dict(result.model)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and (not lora or all("lora_" in name for name in changed))
    if variant == "4bit-lora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules())


# --- the learning check: the loop raises a reward it can earn ---------------------------------------------

# The random tiny policy writes a '7' somewhere in about a tenth of its 24-character completions. Rewarded for
# it, every algorithm should make sevens common within a few steps; with the loss's sign flipped it should not.
# Ten steps were too few for the algorithms that learn mostly from wrong answers: measured with the seeded fast
# sampler, seeds 0-4, their gains at 10 steps ranged from -0.16 (w_reinforce) to 0.83, at 16 steps from 0.30
# (fisft_pm, seed 2) to 0.95.
LEARN = dict(steps=16, prompts_per_step=4, num_generations=8, max_completion_length=24, train_problems=32,
             learning_rate=1e-2, eval_every=0, save_every=0, num_threads=1)
LEARN_MARGIN = 0.2
"""How much the mean reward of the last two steps must exceed that of the first two (rewards are 0 or 1)."""


@pytest.mark.parametrize("task", ["countdown", "tinygsm"])
def test_distillation_trains_on_the_solvers_traces_and_learns_them(tiny_policy, tmp_path, task):
    """--source teacher: every completion is a clean trace the verifier accepts, each gets weight 1, and the
    policy's loss on them (the mean negative log-likelihood per token) falls; the traces are the same on resume."""
    from companion.rollout import teacher_rollout
    from companion.tasks import get_task

    model, tokenizer = tiny_policy
    config = _run_config(tmp_path, task=task, source="teacher", algo="fisft_plus", steps=12, learning_rate=3e-3,
                         max_completion_length=96)
    records = train(config, model=model, tokenizer=tokenizer, progress=False).metrics
    assert all(r["accuracy"] == 1.0 and r["frac_weighted"] == 1.0 and r["entropy"] is None for r in records)
    losses = [r["loss"] for r in records]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    problems = get_task(task).generate(3, seed=0, split="train")
    prompts = [get_task(task).prompt(p) for p in problems]
    first, again = (teacher_rollout(tokenizer, task, problems, prompts, num_generations=4, max_completion_length=96,
                                    seed=5) for _ in range(2))
    assert first.texts == again.texts  # seeded
    # Countdown's solver takes a random solution path; a word problem has one worked solution
    assert len(set(first.texts)) > 3 if task == "countdown" else len(set(first.texts)) == 3
    assert all(get_task(task).reward(text, problems[i // 4]) == 1.0 for i, text in enumerate(first.texts))
    assert (first.completion_ids[first.completion_mask.bool()] == tokenizer.eos_token_id).sum() == 12  # one EOS each


def _reward_gain(tmp_path, tiny_policy, algo: str) -> float:
    model, tok = tiny_policy
    records = train(TrainConfig(out=str(tmp_path / algo), algo=algo, **LEARN), model=model, tokenizer=tok,
                    progress=False).metrics
    rewards = [r["reward"] for r in records]
    return (rewards[-1] + rewards[-2]) / 2 - (rewards[0] + rewards[1]) / 2


@pytest.mark.parametrize("algo", list(TRAINABLE))
def test_every_algorithm_learns_a_reward_it_can_earn(tmp_path, tiny_policy, seven_reward, algo):
    gain = _reward_gain(tmp_path, tiny_policy, algo)
    assert gain >= LEARN_MARGIN, f"{algo}: mean reward rose by {gain:.3f} in {LEARN['steps']} steps"


@pytest.mark.parametrize("algo", ["grpo", "fisft_plus", "ppo"])
def test_the_learning_check_fails_when_the_loss_has_the_wrong_sign(tmp_path, tiny_policy, seven_reward, monkeypatch,
                                                                   algo):
    import companion.trainer

    def flipped(*args, **kwargs):
        loss, stats = policy_loss(*args, **kwargs)
        return -loss, stats

    monkeypatch.setattr(companion.trainer, "policy_loss", flipped)
    assert _reward_gain(tmp_path, tiny_policy, algo) < LEARN_MARGIN


def test_a_run_that_does_not_fit_the_gpu_stops_before_loading_and_says_what_to_change(tiny_policy_dir, tmp_path,
                                                                                       monkeypatch):
    from companion import models, train_setup

    config = _run_config(tmp_path, model=str(tiny_policy_dir), micro_batch_size=0)
    train_setup.check_gpu_memory(config, 16 * 2**30)  # a small model fits
    with pytest.raises(ValueError, match="lower --micro-batch-size"):
        train_setup.check_gpu_memory(config, 2**20)
    # free memory is read after the CUDA context exists: the plan's context is not asked for again
    from transformers import AutoConfig, AutoTokenizer

    from companion.planner import CONTEXT_BYTES
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    peak = train_setup.memory_plan(config, AutoConfig.from_pretrained(tiny_policy_dir),
                                   train_setup.longest_prompt(config, tokenizer)).peak
    train_setup.check_gpu_memory(config, peak - CONTEXT_BYTES)
    with pytest.raises(ValueError, match="lower --micro-batch-size"):
        train_setup.check_gpu_memory(config, peak - CONTEXT_BYTES - 2**20)
    # On a GPU, train() checks before anything loads: no weights are read, no config is written.
    monkeypatch.setattr(models, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(models, "load_policy", lambda *a, **k: pytest.fail("loaded the weights"))
    with pytest.raises(ValueError, match=r"Tesla T4 \(free memory\) has 0.00 GiB"):
        train(config, progress=False)
    assert not (tmp_path / "run" / "config.json").exists()
    # A model whose config cannot be read here is left to the loader and its own error.
    train_setup.check_gpu_memory(dataclasses.replace(config, model="Org/not-cached"), 2**20)


def test_the_gpu_check_counts_the_held_out_evaluation_and_its_batch(tiny_policy_dir, tmp_path):
    from companion import train_setup
    from companion.models import read_model_files
    from companion.planner import CONTEXT_BYTES

    config = _run_config(tmp_path, model=str(tiny_policy_dir), eval_every=5, eval_problems=100,
                         eval_num_generations=8, micro_batch_size=2, logit_chunk_size=8)
    files = read_model_files(config.model)
    prompt = train_setup.longest_prompt(config, files.tokenizer)
    heldout = train_setup.memory_plan(config, files.config, prompt)
    assert heldout.evaluation == max(heldout.parts.values())  # 800 completions, 512 at a time
    quiet = train_setup.memory_plan(dataclasses.replace(config, eval_every=0), files.config, prompt)
    assert quiet.evaluation == 0 and quiet.peak < heldout.peak
    free = heldout.peak - CONTEXT_BYTES - 1
    with pytest.raises(ValueError, match=r"the held-out evaluation, 512 completions at a time, is the largest part.*"
                                         r"use --eval-batch-size 256 \(the same samples"):
        train_setup.check_gpu_memory(config, free)
    train_setup.check_gpu_memory(dataclasses.replace(config, eval_batch_size=256), free)  # the batch it names fits
    # when no evaluation batch would be enough, the step's own advice
    step = dataclasses.replace(quiet, overhead=quiet.overhead - CONTEXT_BYTES, peak=quiet.peak - CONTEXT_BYTES)
    with pytest.raises(ValueError, match="lower --micro-batch-size|--prompts-per-step"):
        train_setup.check_gpu_memory(config, step.peak - 1)


def test_the_held_out_evaluation_decodes_its_batch_size_at_a_time_and_may_change_on_resume(tiny_policy_dir,
                                                                                            tmp_path, monkeypatch):
    from companion import evaluate

    batches = []
    score = evaluate.score_problems

    def recording(*args, **kwargs):
        batches.append(kwargs["batch_size"])
        return score(*args, **kwargs)

    monkeypatch.setattr(evaluate, "score_problems", recording)
    settings = dict(model=str(tiny_policy_dir), steps=1, eval_every=1, eval_problems=3, device="cpu")
    train(_run_config(tmp_path, **settings, eval_batch_size=5), progress=False)
    assert batches and set(batches) == {5}
    batches.clear()  # the batch changes memory and float rounding only: a resumed run may use another
    train(_run_config(tmp_path, **{**settings, "steps": 2}, eval_batch_size=7), resume=True, progress=False)
    assert batches and set(batches) == {7}
    with pytest.raises(ValueError, match="eval_batch_size must be >= 1"):
        _run_config(tmp_path, eval_batch_size=0)


# --- how far an update is from weighted SFT (sft_gap_every) --------------------------------------------------


def _without(records, keys):
    return [{k: v for k, v in r.items() if k not in keys} for r in _comparable(records)]


def test_measuring_the_sft_gap_changes_nothing_and_is_zero_on_policy_without_kl(tiny_policy_dir, tmp_path,
                                                                                 seven_reward):
    settings = dict(model=str(tiny_policy_dir), steps=3, learning_rate=1e-2, device="cpu")
    for algo in ("grpo", "fisft_pm"):  # the sequence and the kept-token normaliser... and their own weights
        measured = train(_run_config(tmp_path, f"{algo}-gap", algo=algo, sft_gap_every=1, **settings),
                         progress=False).metrics
        plain = train(_run_config(tmp_path, f"{algo}-plain", algo=algo, **settings), progress=False).metrics
        assert _without(measured, GAP_STATS) == _comparable(plain)  # the measurement leaves the run as it was
        assert not any(key in r for r in plain for key in GAP_STATS)
        gaps = [r for r in measured if r.get("sft_cosine") is not None]
        assert gaps, "no step had a weighted completion"
        for r in gaps:  # on-policy, β = 0: the update's gradient is the weighted-SFT gradient (chapter 2)
            assert r["sft_cosine"] == pytest.approx(1.0, abs=1e-5) and r["sft_rel_diff"] < 1e-3, (algo, r)


def test_the_sft_gap_opens_with_a_kl_term_after_the_first_step_and_with_a_second_update(tiny_policy_dir, tmp_path,
                                                                                         seven_reward):
    settings = dict(model=str(tiny_policy_dir), steps=3, learning_rate=1e-2, device="cpu", sft_gap_every=1)
    kl = train(_run_config(tmp_path, "kl", beta=0.5, **settings), progress=False).metrics
    by_step = {r["step"]: r for r in kl if r["step"] > 0}
    # at step 1 the policy is its reference: the KL term has no gradient yet; once the weights moved, it has
    assert by_step[1]["sft_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert by_step[3]["sft_cosine"] < 1 - 1e-4 and by_step[3]["sft_rel_diff"] > 1e-3
    mu = train(_run_config(tmp_path, "mu", num_iterations=2, epsilon=0.01, **settings), progress=False).metrics
    # the second update of a batch has ρ ≠ 1 and a clip: its gradient leaves the SFT one (the mean over 2 updates)
    assert all(r["sft_cosine"] < 1 - 1e-4 for r in mu if r["step"] > 0 and r.get("sft_cosine") is not None)
    with pytest.raises(ValueError, match="sft_gap_every must be >= 0"):
        TrainConfig(sft_gap_every=-1)


# --- samples refreshed every K steps (refresh_every), reward shapes ----------------------------------------------


def _recording_generate(monkeypatch):
    """Wrap the trainer's sampler to record, per call, a fingerprint of the weights that sampled."""
    import companion.batches

    calls, real = [], companion.batches.generate

    def recording(model, *args, **kwargs):
        calls.append(sum(p.double().sum().item() for p in model.parameters() if p.requires_grad))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(companion.batches, "generate", recording)
    return calls


def test_refreshing_every_k_steps_samples_k_batches_with_the_policy_of_that_moment(tiny_policy_dir, tmp_path,
                                                                                   seven_reward, monkeypatch):
    calls = _recording_generate(monkeypatch)
    settings = dict(model=str(tiny_policy_dir), algo="fisft_plus", steps=5, learning_rate=1e-2, device="cpu")
    records = [r for r in train(_run_config(tmp_path, "k2", refresh_every=2, **settings), progress=False).metrics
               if r["step"] > 0]
    assert len(calls) == 5  # every batch sampled once: steps 1-2 at step 1, 3-4 at step 3, 5 at step 5
    assert [r["sampled_at"] for r in records] == [1, 1, 3, 3, 5]
    assert calls[0] == calls[1] and calls[2] == calls[3] and calls[1] != calls[2]  # the weights of the moment
    assert [r["gen_tokens_per_s"] is None for r in records] == [False, True, False, True, False]
    _assert_finite_metrics([{k: v for k, v in r.items() if k != "gen_tokens_per_s"} for r in records])
    calls.clear()
    static = [r for r in train(_run_config(tmp_path, "static", refresh_every=5, **settings), progress=False).metrics]
    assert len(set(calls)) == 1 and len(calls) == 5  # one pool, by the initial policy: a static dataset
    assert {r["sampled_at"] for r in static} == {1} and any(r["frac_weighted"] > 0 for r in static)
    calls.clear()
    on_policy = train(_run_config(tmp_path, "k1", **settings), progress=False).metrics
    assert "sampled_at" not in on_policy[-1] and len(set(calls)) == 5  # every step its own policy


def test_a_run_refreshing_every_k_steps_resumes_exactly_mid_pool(tiny_policy_dir, tmp_path, seven_reward):
    config = dict(model=str(tiny_policy_dir), algo="fisft_plus", refresh_every=3, steps=5, save_every=1,
                  learning_rate=1e-2, device="cpu")
    straight = train(_run_config(tmp_path, "straight", **config), progress=False)
    halves = _run_config(tmp_path, "halves", **config)
    train(halves, until_step=2, progress=False)  # two batches of the first pool trained, one still to come
    resumed = train(halves, resume=True, progress=False)
    assert _comparable(resumed.metrics) == _comparable(straight.metrics)
    assert [r["sampled_at"] for r in resumed.metrics] == [1, 1, 1, 4, 4]


def test_a_graded_reward_pushes_up_wrong_answers_that_binary_and_fisft_leave_alone(tiny_policy_dir, tmp_path,
                                                                                     monkeypatch):
    from companion.tasks import CountdownTask

    def closeness(self, completion, problem):  # a graded stand-in the random policy earns: 1, or 0.5 per '7'
        return 1.0 if "77" in completion else min(0.5 * completion.count("7"), 0.9) if self.graded else 0.0

    monkeypatch.setattr(CountdownTask, "reward", closeness)
    settings = dict(model=str(tiny_policy_dir), steps=2, device="cpu")
    graded = train(_run_config(tmp_path, "graded", reward="graded", **settings), progress=False).metrics
    assert any(r["frac_wrong_up"] > 0 for r in graded)  # GRPO weighs a closer wrong answer above the mean
    fisft = train(_run_config(tmp_path, "fisft", algo="fisft_pm", reward="graded", **settings), progress=False).metrics
    assert all(r["frac_wrong_up"] in (0.0, None) for r in fisft)  # F-ISFT± reads right or wrong only
    binary = train(_run_config(tmp_path, "binary", reward="binary", **settings), progress=False).metrics
    assert all(r["frac_wrong_up"] in (0.0, None) for r in binary)  # every wrong answer earns 0: none above the mean
    assert json.loads((tmp_path / "graded" / "config.json").read_text())["reward"] == "graded"


def test_a_reference_reset_makes_the_kl_start_again_from_the_policy_and_resumes_exactly(tiny_policy_dir, tmp_path,
                                                                                         seven_reward):
    from companion.models import trainable_state_dict

    config = dict(model=str(tiny_policy_dir), beta=0.1, ref_reset_every=2, steps=4, save_every=1, learning_rate=1e-2,
                  device="cpu")
    straight = train(_run_config(tmp_path, "straight", **config), progress=False)
    kl = [r["kl"] for r in straight.metrics]
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[1] > 1e-6  # step 1 samples the reference itself; step 2 not
    assert kl[2] == pytest.approx(0.0, abs=1e-7) and kl[3] > 1e-6  # reset after step 2: step 3 starts at KL 0
    never = train(_run_config(tmp_path, "never", **dict(config, ref_reset_every=0)), progress=False)
    assert never.metrics[2]["kl"] > 1e-6  # without the reset the KL keeps its distance
    halves = _run_config(tmp_path, "halves", **config)
    train(halves, until_step=3, progress=False)  # after the reset, before the next: the checkpoint holds the reference
    resumed = train(halves, resume=True, progress=False)
    assert _comparable(resumed.metrics) == _comparable(straight.metrics)
    a, b = trainable_state_dict(straight.model), trainable_state_dict(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides, message", [
    (dict(ref_reset_every=10), "with --beta 0 there is none"),
    (dict(ref_reset_every=10, beta=0.1, lora=True), "needs full-parameter training"),
    (dict(ref_reset_every=-1, beta=0.1), "ref_reset_every must be >= 0"),
])
def test_a_reference_reset_says_what_it_needs(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)
