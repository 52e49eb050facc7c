"""The GPU memory planner, checked where a CPU can check it: parameter counts against transformers, adapter
counts against peft, 4-bit weight bytes against a model bitsandbytes really quantised; the rest by its shape."""

import pytest
import torch

from companion import planner
from companion.planner import GIB, MODELS, ModelShape

SETTINGS = dict(prompts_per_step=8, num_generations=8, prompt_length=128, completion_length=256,
                micro_batch_size=8)


@pytest.fixture(scope="module")
def small_qwen(tmp_path_factory):
    """A random Qwen2 with the real models' structure (GQA, q/k/v biases, tied embeddings, widths multiples of 64),
    saved where from_pretrained can quantise it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True,
                         max_position_embeddings=512)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("small-qwen")
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path, config


def test_shapes_count_the_parameters_transformers_builds(small_qwen):
    from transformers import AutoModelForCausalLM

    path, config = small_qwen
    model = AutoModelForCausalLM.from_pretrained(path)
    shape = ModelShape.from_config(config)
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    untied = config.to_dict() | {"tie_word_embeddings": False}
    from transformers import Qwen2Config, Qwen2ForCausalLM
    other = Qwen2ForCausalLM(Qwen2Config(**untied))
    assert ModelShape.from_config(other.config).parameters == sum(p.numel() for p in other.parameters())


def test_the_published_shapes_give_the_published_sizes():
    # Qwen2.5's model cards: 0.49B and 1.54B parameters; Qwen2-7B: 7.6B.
    assert MODELS["Qwen/Qwen2.5-0.5B"].parameters / 1e9 == pytest.approx(0.494, abs=0.005)
    assert MODELS["Qwen/Qwen2.5-1.5B"].parameters / 1e9 == pytest.approx(1.54, abs=0.01)
    assert MODELS["Qwen/Qwen2-7B-Instruct"].parameters / 1e9 == pytest.approx(7.62, abs=0.02)


def test_lora_parameters_equal_peft_s_count(small_qwen):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from companion.models import LORA_TARGET_MODULES

    path, config = small_qwen
    shape = ModelShape.from_config(config)
    for r, targets in ((16, LORA_TARGET_MODULES), (8, ("q_proj", "v_proj"))):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                               LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert planner.lora_parameters(shape, r, targets) == trainable
    with pytest.raises(ValueError, match="unknown LoRA target modules"):
        planner.lora_parameters(shape, 8, ("c_attn",))


def test_4bit_weight_bytes_match_a_model_bitsandbytes_quantised(small_qwen):
    from companion.models import LoraSettings, load_policy

    path, config = small_qwen
    # nf4 with double quantisation, the rest upcast to float32, as a 4-bit run loads it (adapters left out below)
    model, _ = load_policy(str(path), load_in_4bit=True, lora=LoraSettings(r=8), device="cpu")
    measured = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)
    measured += sum(q.absmax.numel() * q.absmax.element_size() + q.state2.absmax.numel() * 4
                    for q in (getattr(p, "quant_state", None) for p in model.parameters()) if q is not None)
    estimate = planner.weight_bytes(ModelShape.from_config(config), load_in_4bit=True, dtype_bytes=4)
    assert estimate == pytest.approx(measured, rel=0.02)


def test_the_plan_grows_with_what_it_should_and_not_with_what_it_should_not():
    shape = MODELS["Qwen/Qwen2.5-0.5B"]
    base = planner.plan(shape, **SETTINGS)
    assert base.peak == base.weights + base.trainable + max(base.sampling, base.update) + base.overhead
    assert base.tokens_per_step == 8 * 8 * (128 + 256)
    bigger_micro = planner.plan(shape, **{**SETTINGS, "micro_batch_size": 32})
    assert bigger_micro.update > base.update and bigger_micro.sampling == base.sampling
    more_samples = planner.plan(shape, **{**SETTINGS, "num_generations": 16})
    assert more_samples.sampling > base.sampling and more_samples.update == base.update
    no_checkpointing = planner.plan(shape, **SETTINGS, gradient_checkpointing=False)
    assert no_checkpointing.update > base.update
    rank = planner.plan(shape, **SETTINGS, lora_r=64)
    assert rank.trainable == 4 * base.trainable
    full = planner.plan(shape, **SETTINGS, load_in_4bit=False, lora_r=None)
    assert full.weights > base.weights and full.trainable > 10 * base.trainable
    chunked = planner.plan(shape, **SETTINGS, logit_chunk=64)
    assert chunked.update < base.update / 2  # logits are most of the update with Qwen's vocabulary
    assert planner.plan(shape, **SETTINGS, logit_chunk=1024).update == base.update  # a chunk past the length: all
    # micro_batch_size 0 is the whole step in one pass, as the trainer does
    whole = planner.plan(shape, **{**SETTINGS, "micro_batch_size": 0})
    assert whole.update == planner.plan(shape, **{**SETTINGS, "micro_batch_size": 64}).update


def test_bad_plans_are_refused_with_what_to_change():
    shape = MODELS["Qwen/Qwen2.5-1.5B"]
    with pytest.raises(ValueError, match="plan with a LoRA rank"):
        planner.plan(shape, **SETTINGS, lora_r=None)
    with pytest.raises(ValueError, match="completion_length must be >= 1"):
        planner.plan(shape, **{**SETTINGS, "completion_length": 0})
    huge = planner.plan(shape, **{**SETTINGS, "micro_batch_size": 64})
    with pytest.raises(ValueError, match="lower --micro-batch-size"):
        planner.check_fits(huge, planner.GPUS["T4"].memory_bytes, gpu="a T4")
    long = planner.plan(shape, **{**SETTINGS, "prompts_per_step": 64, "num_generations": 16,
                                  "completion_length": 1024, "micro_batch_size": 1})
    with pytest.raises(ValueError, match="--max-completion-length"):
        planner.check_fits(long, planner.GPUS["T4"].memory_bytes)
    planner.check_fits(planner.plan(shape, **SETTINGS), 80 * GIB)  # fits: no error


def test_the_table_has_a_row_per_model_and_a_verdict_per_gpu():
    rows = planner.table(**SETTINGS)
    assert [r["model"] for r in rows] == list(MODELS)
    assert all(set(planner.GPUS) <= set(r) for r in rows)
    assert rows[0]["peak"] < rows[1]["peak"] < rows[2]["peak"]


# TRL's QLoRA GRPO notebook (huggingface/trl, examples/notebooks/grpo_trl_lora_qlora.ipynb, run on a free Colab T4):
# Qwen2-7B-Instruct, nf4 with double quantisation, fp16 compute, LoRA r = 32 on all seven projections in bf16,
# 8 completions of one prompt per step, 256 completion tokens, gradient checkpointing, paged 8-bit AdamW, Liger's
# fused loss, no prepare_model_for_kbit_training; it printed "Peak reserved memory = 8.832 GB" (GiB). Its prompts
# (NuminaMath-TIR with a system prompt) are not truncated; 256 tokens is our assumption for them.
TRL_T4 = dict(prompts_per_step=1, num_generations=8, prompt_length=256, completion_length=256, micro_batch_size=8,
              lora_r=32, gradient_checkpointing=True, dtype_bytes=2, upcast=False, bytes_per_trainable=6,
              logit_bytes=0, fast=False)  # TRL samples with model.generate: every row its own cache


def test_the_plan_of_trl_s_t4_notebook_is_near_its_published_peak():
    estimate = planner.plan(MODELS["Qwen/Qwen2-7B-Instruct"], **TRL_T4)
    assert estimate.peak / GIB == pytest.approx(8.832, rel=0.15)
    # the same run as this package would do it (float32 upcast, float32 adapters and AdamW, logits held) needs more
    ours = planner.plan(MODELS["Qwen/Qwen2-7B-Instruct"], **{**TRL_T4, "upcast": True, "bytes_per_trainable": 16,
                                                            "logit_bytes": planner.LOGIT_BYTES})
    assert ours.peak > estimate.peak + 2 * GIB


# --- the decoder's memory, the held-out evaluation, and companion eval ----------------------------------------


def test_sampling_counts_every_row_s_cache_the_prefill_and_the_shared_prompt_path():
    from companion import decode

    shape = MODELS["Qwen/Qwen2.5-0.5B"]
    per_token = 2 * shape.num_hidden_layers * shape.kv_size * 2  # keys and values of every layer, bf16
    logits = planner.SAMPLING_LOGIT_COPIES * 4 * 64 * shape.vocab_size
    plain = planner.sampling_bytes(shape, rows=64, prompts=8, prompt_length=100, completion_length=200)
    assert plain == 8 * 100 * per_token + 64 * 300 * per_token + logits
    # the fast path: the prompts twice (the prefill's cache and the rows' view of it), each row's completion only,
    # in blocks of the decoder's SHARED_BLOCK
    assert planner.SHARED_BLOCK == decode.SHARED_BLOCK
    shared = planner.sampling_bytes(shape, rows=64, prompts=8, prompt_length=100, completion_length=200,
                                    shared_prompt=True)
    assert shared == 2 * 8 * 100 * per_token + 64 * 208 * per_token + logits
    nucleus = planner.sampling_bytes(shape, rows=64, prompts=8, prompt_length=100, completion_length=200, top_p=0.9)
    assert nucleus - plain == (planner.NUCLEUS_LOGIT_COPIES - planner.SAMPLING_LOGIT_COPIES) * 4 * 64 * shape.vocab_size


def test_the_held_out_evaluation_is_planned_and_can_be_the_peak():
    shape = MODELS["Qwen/Qwen2.5-1.5B"]
    settings = {**SETTINGS, "micro_batch_size": 4, "logit_chunk": 64}  # chapter 8's small update
    step = planner.plan(shape, **settings)
    assert step.evaluation == 0 and step.peak == planner.plan(shape, **settings, eval_problems=0,
                                                               eval_num_generations=4).peak
    # the trainer's defaults: 100 problems x 4, decoded together: six times the step's 64 rows
    heldout = planner.plan(shape, **settings, eval_problems=100, eval_num_generations=4)
    assert heldout.evaluation == planner.sampling_bytes(shape, rows=400, prompts=100, prompt_length=128,
                                                        completion_length=256, shared_prompt=True)
    exact = planner.plan(shape, **settings, eval_problems=100, eval_num_generations=4, fast=False)
    assert exact.evaluation == planner.sampling_bytes(shape, rows=400, prompts=100, prompt_length=128,
                                                      completion_length=256) > heldout.evaluation
    assert heldout.evaluation > 5 * step.sampling and heldout.peak > step.peak
    assert heldout.allocated == heldout.weights + heldout.trainable + heldout.evaluation
    assert heldout.peak == heldout.allocated + heldout.overhead
    # more completions than a batch: the batch is the part that counts
    assert planner.plan(shape, **settings, eval_problems=1000, eval_num_generations=4).evaluation == \
        planner.sampling_bytes(shape, rows=512, prompts=129, prompt_length=128, completion_length=256,
                               shared_prompt=True)
    smaller = planner.plan(shape, **settings, eval_problems=100, eval_num_generations=4, eval_batch_size=64)
    assert smaller.evaluation < heldout.evaluation / 5
    with pytest.raises(ValueError, match="--eval-batch-size"):
        planner.check_fits(heldout, heldout.peak - 1, gpu="a T4")
    with pytest.raises(ValueError, match="eval_batch_size >= 1"):
        planner.plan(shape, **settings, eval_problems=10, eval_num_generations=4, eval_batch_size=0)


def test_companion_eval_is_planned_as_weights_and_one_batch_of_its_sampler():
    shape = MODELS["Qwen/Qwen2.5-1.5B"]
    options = dict(num_generations=16, prompt_length=200, completion_length=512, top_p=0.95)
    plan = planner.plan_eval(shape, batch_size=512, **options)
    assert plan.weights == shape.parameters * 2 and plan.trainable == plan.update == plan.evaluation == 0
    assert plan.sampling == planner.sampling_bytes(shape, rows=512, prompts=32, prompt_length=200,
                                                   completion_length=512, top_p=0.95, shared_prompt=True)
    assert plan.tokens_per_step == 512 * 712
    # the batch holds whole prompts: 512 // 48 = 10 prompts, 480 rows
    assert planner.plan_eval(shape, batch_size=512, **{**options, "num_generations": 48}).sampling == \
        planner.sampling_bytes(shape, rows=480, prompts=10, prompt_length=200, completion_length=512, top_p=0.95,
                               shared_prompt=True)
    # more samples than a batch: one prompt's samples, a batch at a time
    assert planner.plan_eval(shape, batch_size=256, **{**options, "num_generations": 1024}).sampling == \
        planner.sampling_bytes(shape, rows=256, prompts=1, prompt_length=200, completion_length=512, top_p=0.95,
                               shared_prompt=True)
    slow = planner.plan_eval(shape, batch_size=512, **options, fast=False)
    assert slow.sampling > plan.sampling  # every row holds its prompt's keys and values
    adapters = planner.plan_eval(shape, batch_size=512, **options, load_in_4bit=True, lora_r=16)
    assert adapters.weights == planner.weight_bytes(shape, load_in_4bit=True, dtype_bytes=2) < plan.weights
    assert adapters.trainable == 4 * planner.lora_parameters(shape, 16)
    assert planner.plan_eval(shape, batch_size=256, **options).peak < plan.peak
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        planner.plan_eval(shape, batch_size=0, **options)


@pytest.mark.parametrize("limit, largest", [(1000, 512), (300, 256), (5, 4), (1, 1), (0, 0)])
def test_the_largest_fitting_batch_halves_from_the_start(limit, largest):
    assert planner.largest_fitting_batch(lambda b: b <= limit, start=512) == largest


def test_the_readme_s_planner_table_is_what_its_script_prints(capsys):
    """README's table and the sentence after it are scripts/plan_table.py's output, so they change with the planner."""
    import runpy

    from conftest import CHECKOUT, script_tables_in_readme

    assert len(script_tables_in_readme("plan_table", capsys)) == 2 + len(MODELS)
    readme = (CHECKOUT / "README.md").read_text()
    whole = planner.table(**{**runpy.run_path(str(CHECKOUT / "scripts" / "plan_table.py"))["SETTINGS"],
                             "eval_batch_size": planner.EVAL_BATCH_ROWS})
    assert f"{whole[0]['evaluation']:.2f} GiB for 0.5B (peak {whole[0]['peak']:.1f})" in readme
    assert f"{whole[1]['evaluation']:.2f} GiB for 1.5B (peak {whole[1]['peak']:.1f})" in readme
