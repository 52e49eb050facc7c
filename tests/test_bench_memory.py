"""bench/bench_memory.py: the planner's memory model against the tensors a training step really allocates.

The counter itself is checked on tensors whose sizes are known; then two configs of the bench run end to end
(one where the update is the peak, one where sampling is) and the planner must be near what they allocated, so
a change to the trainer, the decoder or the planner that moves either apart fails here, not on a reader's GPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_memory")


@pytest.fixture(scope="module")
def model_dir(bench, tmp_path_factory):
    return str(bench.write_shape(tmp_path_factory.mktemp("memory") / "model"))


def test_the_counter_counts_each_storage_once_while_it_lives(bench):
    memory = bench.TensorMemory()
    outside = torch.zeros(100)  # 400 bytes, made before: counted once tracked
    memory.track(outside, outside[:10])
    assert memory.current == 400
    with memory:
        a = torch.ones(1000)  # 4000 bytes
        view = a[:500]  # a view: no new storage
        assert memory.current == 4400
        memory.phase("double")
        b = a * 2
        assert memory.current == 8400
        del b
        memory.phase(None)
        c = torch.ones(10, dtype=torch.float64)
    assert memory.current == 4480 and memory.peak == 8400 and memory.phases == {"double": 8400}
    del a, view, c
    assert memory.current == 400


def test_unknown_configs_are_refused(bench, tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        bench.settings_of("fp64-huge")
    with pytest.raises(SystemExit):
        bench.main(["--only", "nope", "--out", str(tmp_path / "m.json")])


@pytest.mark.parametrize("name, phase", [("fp32-checkpointing", "update"), ("fp32-sampling", "sampling"),
                                         ("fp32-heldout", "evaluation"), ("eval-fast", "sampling")])
def test_the_planner_is_near_what_a_step_allocates(bench, model_dir, name, phase, one_thread):
    entry = bench.measure(model_dir, name, steps=2)
    measured, planned = entry["measured"], entry["planned"]
    assert entry["mean_length"] == entry["settings"]["max_completion_length"]  # as long as the planner assumes
    assert measured["weights"] == pytest.approx(planned["weights"], rel=0.02)
    assert measured[phase] == measured["peak"]  # the phase the config is built to peak in
    assert entry["ratio"] == pytest.approx(1.0, abs=0.15)
    # the phase's own part, over what is there throughout (weights, adapters and AdamW), within a fifth
    part = measured[phase] - measured["weights"]
    assert part == pytest.approx(planned[phase] + planned["trainable"], rel=0.2)
    json.dumps(entry)  # what the bench writes


def test_the_committed_measurement_is_this_bench_s_and_the_planner_is_near_it(bench):
    from companion.planner import ModelShape
    from companion.viz.gpu import memory_report

    report = memory_report()
    assert [r["config"] for r in report["runs"]] == bench.ALL_CONFIGS
    assert report["base"] == bench.BASE and report["eval_base"] == bench.EVAL_BASE
    assert report["shape"] == bench.SHAPE
    for run in report["runs"]:
        assert run["settings"] == bench.settings_of(run["config"])
        # the planner as it is now, for the committed run's config: within 15% of what it allocated
        allocated = bench.planned(run["settings"], ModelShape(**bench.SHAPE), run["longest_prompt"])["allocated"]
        assert run["measured"]["peak"] / allocated == pytest.approx(1.0, abs=0.15), run["config"]


@pytest.mark.parametrize("sampler, top_p", [("trainer", 1.0), ("trainer", 0.9), ("eval", 1.0), ("eval", 0.95),
                                             ("eval-fast", 1.0), ("eval-fast", 0.95)])
def test_a_decoding_step_holds_no_more_logit_copies_than_the_planner_counts(bench, tmp_path, sampler, top_p,
                                                                            one_thread):
    """Both samplers (the trainers' exponential race, companion eval's inverse CDF on its plain and fast paths),
    on a random model, whose flat distributions send the fast path's top-p through its sorting fallback."""
    from companion import planner
    from companion.models import load_policy
    from companion.rollout import generate
    from companion.sampler import sample_completions

    shape = planner.ModelShape(name="wide-vocab", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=32768,
                               tie_word_embeddings=True)
    model, tokenizer = load_policy(str(bench.write_model(shape, tmp_path / "model")), device="cpu")
    prompts = ["Using 3, 5 and 7, make 22."] * 2
    prompt_length = len(tokenizer(prompts[0], add_special_tokens=False)["input_ids"])
    memory = bench.TensorMemory()
    memory.track(*model.parameters(), *model.buffers())
    before = memory.current
    rows, length = 16, 8
    with memory, torch.no_grad():
        if sampler == "trainer":
            generate(model, tokenizer, prompts, num_generations=8, max_completion_length=length, top_p=top_p)
        else:
            sample_completions(model, tokenizer, prompts, 8, seeds=[1, 2], max_completion_length=length,
                               top_p=top_p, batch_size=rows, fast=sampler == "eval-fast")
    planned = planner.sampling_bytes(shape, rows=rows, prompts=2, prompt_length=prompt_length,
                                     completion_length=length, dtype_bytes=4, top_p=top_p,
                                     shared_prompt=sampler == "eval-fast")
    copies = planner.SAMPLING_LOGIT_COPIES if top_p == 1 else planner.NUCLEUS_LOGIT_COPIES
    one = rows * shape.vocab_size * 4  # one (rows, V) float32 tensor
    held = (memory.peak - before - (planned - copies * one)) / one  # such tensors alive at once, beside the cache
    assert copies - 1.5 < held <= copies
