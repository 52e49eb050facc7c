"""The policy loader: local directories, LoRA, 4-bit + LoRA on CPU, saving and reloading, hub failures."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from transformers import AutoConfig

from companion.models import HubUnreachableError, LoraSettings, is_lora, load_policy, save_policy

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


pytestmark = pytest.mark.usefixtures("one_thread")


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


def _packed(layer) -> bool:
    return getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


@pytest.mark.parametrize("avx512bf16", [False, True], ids=["avx2-cpu", "avx512bf16-cpu"])
def test_4bit_lora_trains_after_a_rollout_on_either_kind_of_cpu(tiny_policy_dir, monkeypatch, avx512bf16):
    import bitsandbytes as bnb

    # Linear4bit.__init__ asks the probe as imported into bitsandbytes.nn.modules, and its forward repacks the
    # weight (plain torch) when the answer was True: patched, this CPU passes for either kind.
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: avx512bf16)
    bare = bnb.nn.Linear4bit(64, 32, quant_type="nf4").to("cpu").eval()  # quantised by .to()
    with torch.no_grad():
        bare(torch.randn(2, 64))
    assert _packed(bare) == avx512bf16  # the patch reaches bitsandbytes' branch, so the checks below can fail

    model, _ = load_policy(str(tiny_policy_dir), load_in_4bit=True, lora=LoraSettings(r=4, alpha=8), device="cpu")

    def lora_grads():
        model.train()
        model.zero_grad()
        model(input_ids=IDS, labels=IDS).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    before = lora_grads()
    _logits(model)  # a rollout: eval mode, no gradients
    assert not any(_packed(m) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    after = lora_grads()
    assert before.keys() == after.keys() and any(g.abs().sum() > 0 for g in after.values())
    for name in before:
        torch.testing.assert_close(after[name], before[name], msg=name)


def _bnb_packed_cpu_layer(monkeypatch, in_features):
    """A 4-bit layer (nf4, double quant, as load_policy quantises) that repacks at its first eval no-grad forward."""
    import bitsandbytes as bnb

    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)  # see the test above
    torch.manual_seed(0)
    return bnb.nn.Linear4bit(in_features, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to("cpu")


def test_bitsandbytes_packed_cpu_path_takes_64_wide_layers_but_cannot_train_them(monkeypatch):
    """Why load_policy turns the packed layout off (see companion.models._keep_4bit_trainable)."""
    import bitsandbytes as bnb

    # bitsandbytes registered its fused bf16 kernel (AVX-512 BF16 machine code) at import iff this CPU has it.
    fused_kernel = bnb.functional.has_avx512bf16()
    layer = _bnb_packed_cpu_layer(monkeypatch, 64)
    x = torch.randn(3, 64)  # (batch, in_features)
    with torch.no_grad():
        unpacked = layer(x)  # training mode: bitsandbytes never repacks there; (3, 64)
        packed = layer.eval()(x)
    assert _packed(layer)  # the repacking (plain torch) ran on any CPU
    if fused_kernel:  # elsewhere the packed weight goes to the generic kernel, which reads it as unpacked
        torch.testing.assert_close(packed, unpacked, rtol=0.05, atol=0.05)  # bf16 activations
        inputs = x.clone().requires_grad_()
        with warnings.catch_warnings():  # torch says so once per process, if at all: not something to test
            warnings.filterwarnings("ignore", "bitsandbytes::gemv_4bit: an autograd kernel was not registered")
            layer.train()(inputs).sum().backward()
        assert inputs.grad is None  # the packed layer silently passes no gradient back


def test_bitsandbytes_packed_cpu_path_refuses_widths_that_are_not_multiples_of_64(monkeypatch):
    layer = _bnb_packed_cpu_layer(monkeypatch, 96).eval()  # the first tiny base's width: one and a half blocks
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"shape '\[64, 1\]' is invalid for input of size 96"):
        layer(torch.randn(3, 96))


@pytest.mark.parametrize("avx512bf16", [False, True], ids=["avx2-cpu", "avx512bf16-cpu"])
def test_the_shipped_base_model_in_4bit_trains_after_a_rollout_on_either_kind_of_cpu(monkeypatch, avx512bf16):
    import bitsandbytes as bnb

    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: avx512bf16)  # see the test above
    model, _ = load_policy("tiny", load_in_4bit=True, lora=LoraSettings(r=4, alpha=8), device="cpu")
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # Every quantised layer is a whole number of 64-wide blocks each way, as in Qwen2.5 (896, 1536, 4864, ...),
    # so bitsandbytes' packed layout could take it too (it trains with that layout off: see above).
    assert quantised and all(m.in_features % 64 == 0 and m.out_features % 64 == 0 for m in quantised), \
        [(m.in_features, m.out_features) for m in quantised]
    _logits(model)
    assert not any(_packed(m) for m in quantised)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    assert any(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if "lora_B" in name)


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


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_fp16_compute_in_4bit_with_lora_the_t4_policy_matches_float32_on_the_cpu(tiny_policy_dir, checkpointing):
    """A T4 has no bf16, so there the 4-bit layers dequantise and multiply in fp16 while the adapters, norms and the
    upcast (tied) embeddings stay float32. Mixing the two is where "expected scalar type Half but found Float" comes
    from (trl #4634). bitsandbytes has fp16 kernels on the CPU too, so the mix is run here: forward and backward, with
    and without checkpointing, and its log-probabilities and adapter gradients are float32's up to fp16 rounding."""
    import bitsandbytes as bnb
    import torch.nn.functional as F

    from companion.rollout import per_token_logps

    prompt = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]] * 2)
    completion = torch.tensor([[20, 21, 22, 23, 1, 0], [30, 31, 32, 33, 34, 35]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    seen = {}
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(0)  # the same adapters' initialisation for both
        model, _ = load_policy(str(tiny_policy_dir), load_in_4bit=True, lora=LoraSettings(r=4, alpha=8), device="cpu",
                               dtype=dtype)
        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert layers and all(m.compute_dtype == dtype for m in layers)
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())
        generator = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # off zero, so the gradients reach the A matrices too
                p.data = 0.05 * torch.randn(p.shape, generator=generator)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        logps = per_token_logps(model, prompt, torch.ones_like(prompt), completion, mask, share_prompts=not checkpointing)
        assert logps.dtype == torch.float32  # the loss reads float32 log-probabilities
        (logps * mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for n, p in sorted(model.named_parameters()) if p.requires_grad])
        seen[dtype] = logps.detach(), grads
    (lp32, g32), (lp16, g16) = seen[torch.float32], seen[torch.float16]
    assert torch.isfinite(lp16).all() and torch.isfinite(g16).all()
    assert (lp16 - lp32).abs().max() < 2e-2 and (lp16 - lp32).abs().max() > 0  # fp16 did run, and stayed close
    assert F.cosine_similarity(g16, g32, dim=0) > 0.999


def test_the_files_a_load_would_read_are_read_without_the_weights(tiny_policy_dir, tmp_path, monkeypatch):
    """What the memory planner reads before a GPU run loads anything: the config and tokenizer of a directory, of
    the shipped tiny model, and of saved adapters (their base's, with the adapters' rank and 4-bit flag)."""
    from huggingface_hub import constants

    from companion.models import read_model_files

    files = read_model_files(str(tiny_policy_dir))
    assert files.config.hidden_size == AutoConfig.from_pretrained(tiny_policy_dir).hidden_size
    assert files.lora_r is None and not files.load_in_4bit and files.tokenizer("3+5")["input_ids"]
    assert read_model_files("tiny").config.model_type == "qwen2"
    model, tok = load_policy(str(tiny_policy_dir), lora=LoraSettings(r=4, alpha=8), device="cpu")
    save_policy(model, tok, tmp_path / "adapters", base=str(tiny_policy_dir), load_in_4bit=True)
    saved = read_model_files(str(tmp_path / "adapters"))
    assert (saved.lora_r, saved.load_in_4bit) == (4, True)
    assert saved.config.num_hidden_layers == files.config.num_hidden_layers
    # nothing to read here: None, and the loader's own error says what to do
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert read_model_files("companion-tests/no-such-model") is None
    assert time.perf_counter() - start < 10
    assert read_model_files(str(tmp_path / "nothing-here")) is None


def test_the_largest_activation_is_read_from_every_linear_layer_and_the_hooks_go(tiny_policy):
    """Chapter 8's check of how near a model's activations come to fp16's range: at least any one projection's
    largest output, rising with that projection's weights, and the hooks are gone afterwards."""
    from companion.models import largest_activation

    model, tokenizer = tiny_policy
    texts = ["12+7=", "a longer prompt, padded with the short one"]
    layer = model.model.layers[0].mlp.down_proj
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.abs().max().item()))
    before = largest_activation(model, tokenizer, texts)
    handle.remove()
    assert 0 < seen[0] <= before < 1e3 and all(not m._forward_hooks for m in model.modules())
    original = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.mul_(1e6)
    try:
        assert largest_activation(model, tokenizer, texts) >= 0.99e6 * seen[0] > before
    finally:
        with torch.no_grad():
            layer.weight.copy_(original)
    assert largest_activation(model, tokenizer, texts) == before
