"""The policy loader: local directories, LoRA, 4-bit + LoRA on CPU, saving and reloading, hub failures."""

from __future__ import annotations

import time

import pytest
import torch

from companion.models import HubUnreachableError, LoraSettings, is_lora, load_policy, save_policy

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model gains nothing from a second thread and loses a lot when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_full_parameter_policy_trains_every_parameter(tiny_policy_dir):
    model, tok = load_policy(str(tiny_policy_dir), device="cpu")
    assert not is_lora(model)
    assert all(p.requires_grad for p in model.parameters())
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


def test_lora_trains_only_adapters_and_disabling_them_gives_the_base(tiny_policy_dir):
    base, _ = load_policy(str(tiny_policy_dir), device="cpu")
    model, _ = load_policy(str(tiny_policy_dir), lora=LoraSettings(r=4, alpha=8), device="cpu")
    assert is_lora(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    targets = {name.split(".")[-4] for name in trainable}  # ...q_proj.lora_A.default.weight
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # Perturb the adapters so they matter, then check the reference (adapters off) is the base model.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    assert not torch.allclose(_logits(model), _logits(base))
    with model.disable_adapter():
        torch.testing.assert_close(_logits(model), _logits(base))


def test_4bit_lora_loads_quantised_and_trains_the_adapters_on_cpu(tiny_policy_dir):
    import bitsandbytes as bnb

    model, _ = load_policy(str(tiny_policy_dir), load_in_4bit=True, lora=LoraSettings(r=4, alpha=8), device="cpu")
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == 2 * 7  # two layers, seven projections each
    assert quantised[0].weight.quant_type == "nf4"
    model.train()
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in name for name in grads)
    assert any(g is not None and g.abs().sum() > 0 for name, g in grads.items() if "lora_B" in name)


def test_4bit_without_lora_is_refused(tiny_policy_dir):
    with pytest.raises(ValueError, match="--lora"):
        load_policy(str(tiny_policy_dir), load_in_4bit=True, device="cpu")


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)])
def test_save_and_reload_gives_the_same_policy(tiny_policy_dir, tmp_path, lora):
    model, tok = load_policy(str(tiny_policy_dir), lora=lora, device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    save_policy(model, tok, tmp_path / "policy", base=str(tiny_policy_dir))
    again, tok2 = load_policy(str(tmp_path / "policy"), device="cpu")
    assert is_lora(again) == (lora is not None)
    torch.testing.assert_close(_logits(again), _logits(model))
    assert tok2("3+5=8")["input_ids"] == tok("3+5=8")["input_ids"]


def test_an_unreachable_hub_fails_fast_and_says_what_to_do(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="--local-dir DIR"):
        load_policy("companion-tests/no-such-model", device="cpu")
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("name, match", [
    ("not a model name", "neither 'tiny'"),
    ("{tmp}", "holds no model"),
])
def test_names_that_are_not_models_are_refused(tmp_path, name, match):
    with pytest.raises(ValueError, match=match):
        load_policy(name.format(tmp=tmp_path), device="cpu")


def test_bad_lora_settings_are_refused():
    with pytest.raises(ValueError, match="r >= 1"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraSettings(dropout=1.0)
