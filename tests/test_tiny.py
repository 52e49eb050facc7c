"""The tiny base model: tokenizer, config, pretraining pipeline, shipped checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from companion.tiny import ALPHABET, build_tokenizer, model_config


def test_tokenizer_is_one_token_per_character_and_round_trips(tmp_path):
    tok = build_tokenizer()
    text = "Numbers: 13 2 1\nTarget: 28\n<think>\n13*2=26 26+1=27 no\n</think>\n<answer>13*2+1</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert (loaded.pad_token, loaded.eos_token, loaded.padding_side) == ("<|pad|>", "<|endoftext|>", "left")
    assert loaded.pad_token_id != loaded.eos_token_id


def test_tokenizer_covers_alphabet_pads_left_and_skips_specials():
    tok = build_tokenizer()
    assert tok.unk_token_id not in tok(ALPHABET)["input_ids"]
    assert tok("é")["input_ids"] == [tok.unk_token_id]
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2 and batch["attention_mask"][0] == [0, 0, 1, 1]
    assert tok.decode([tok.convert_tokens_to_ids("a"), tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == "a"


def test_model_config_rejects_shapes_that_cannot_work():
    tok = build_tokenizer()
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        model_config(tok, hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        model_config(tok, num_attention_heads=4, num_key_value_heads=3)


def test_random_tiny_policy_fixture_generates_with_left_padding(tiny_policy):
    from companion.rollout import generate

    model, tok = tiny_policy
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000
    rollout = generate(model, tok, ["3+5=", "12*13="], num_generations=2, max_completion_length=8, seed=0)
    assert rollout.completion_ids.shape == (4, 8) and len(rollout.texts) == 4
    again = generate(model, tok, ["3+5=", "12*13="], num_generations=2, max_completion_length=8, seed=0)
    assert torch.equal(rollout.completion_ids, again.completion_ids)


def test_fixture_directory_loads_with_auto_classes(tiny_policy_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    assert model.config.model_type == "qwen2" and model.config.eos_token_id == AutoTokenizer.from_pretrained(tiny_policy_dir).eos_token_id
