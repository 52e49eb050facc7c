"""One loader for every policy the book trains: the tiny local model, a local directory, or a hub model.

The CPU world trains the shipped tiny model (``"tiny"``) in full precision. The GPU world loads
``Qwen/Qwen2.5-0.5B`` (or any causal LM on the hub) quantised to 4 bits (``BitsAndBytesConfig``, nf4) and
trains LoRA adapters (peft ``LoraConfig``) on its attention and MLP projections. Both go through
:func:`load_policy`, so the trainer never knows which world it is in.

Decisions, and why:

* **No silent downloads, no hangs.** A hub name is tried only when the hub answers within a few seconds
  (or the model is already in the local cache); otherwise :func:`load_policy` fails at once and says how to
  pass a local directory instead.
* **4-bit needs LoRA.** Quantised weights cannot take gradient steps, so ``load_in_4bit`` without ``lora``
  is refused rather than training nothing.
* **4-bit weights stay in their training layout on every CPU.** bitsandbytes repacks them for a bf16
  inference kernel on CPUs with AVX-512 BF16, which breaks the next update; see :func:`_keep_4bit_trainable`.
* **The reference policy of LoRA is free.** With adapters, π_ref is the base with adapters disabled
  (``model.disable_adapter()``, see :func:`is_lora`), so a KL penalty needs no second copy of the model.
* **A trained policy reloads by path.** :func:`save_policy` writes the full model, or only the adapters
  plus a note of the base they sit on; :func:`load_policy` on that directory rebuilds the same policy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from companion.named_models import NAMED, converted, is_named
from companion.runs import quiet_progress

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The Qwen2 / Llama projection layers that receive adapters: all attention and MLP matrices."""

POLICY_FILE = "companion_policy.json"
"""Written next to saved adapters: which base model (and quantisation) they were trained on."""

class HubUnreachableError(OSError):
    """A hub model was asked for, but the hub cannot be reached and the model is not cached locally."""


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters on every projection (the QLoRA recipe). Defaults follow common Qwen2.5 LoRA recipes."""

    r: int = field(default=16, metadata={"help": "rank of each adapter"})
    alpha: int = field(default=32, metadata={"help": "scaling numerator: the update is (alpha / r) * B @ A"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: tuple[str, ...] = field(default=LORA_TARGET_MODULES, metadata={"help": "modules that get adapters"})

    def __post_init__(self):
        if self.r < 1 or self.alpha <= 0:
            raise ValueError(f"LoRA needs r >= 1 and alpha > 0; got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1); got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module, e.g. q_proj")

    def peft_config(self):
        """These settings as peft's ``LoraConfig`` for a causal LM (no bias adapters)."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when there is a GPU, else CPU; anything else is passed to ``torch.device``.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no GPU is visible: use device='cpu' (or 'auto')")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are slow there); bf16 on a GPU that has it, else fp16 (a Colab T4)."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The compute dtypes a run may ask for (``--dtype``); ``auto`` is :func:`default_dtype`."""


def resolve_dtype(name: str, device: torch.device, *, load_in_4bit: bool = False,
                  trains_weights: bool = False) -> torch.dtype:
    """The dtype ``--dtype name`` means on ``device``, or a ValueError that says what to ask for instead.

    On a CPU a half-precision dtype is taken only with ``load_in_4bit``: there it is the compute dtype of the 4-bit
    layers alone (bitsandbytes has CPU kernels for it; adapters, norms and embeddings stay float32), which is how
    the book runs a T4's fp16 policy in the tiny world. Whole models in half precision are for GPUs, and when the
    run ``trains_weights`` (full-parameter training, not adapters) ``auto`` keeps them float32 there too: AdamW's
    small updates round away in half precision, and fp16's range overflows (the tiny model trained in fp16 gives NaN
    after one step); fp16 is refused for them, bf16 taken only when asked for.

    >>> resolve_dtype("auto", torch.device("cpu"))
    torch.float32
    >>> resolve_dtype("float16", torch.device("cpu"), load_in_4bit=True)
    torch.float16
    """
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.float32 if trains_weights else default_dtype(device)
    dtype = getattr(torch, name)
    if device.type != "cuda" and dtype != torch.float32:
        if load_in_4bit:
            return dtype
        raise ValueError(f"--dtype {name} is for GPUs: on a CPU the package computes in float32 (half-precision "
                         "matmuls are slow there), except in 4-bit layers; use --dtype float32 or auto, or add "
                         "--lora --load-in-4bit to compute only those in it")
    if trains_weights and dtype == torch.float16:
        raise ValueError("--dtype float16 would train the model's own weights in fp16, which AdamW cannot do (small "
                         "updates round away, and the range overflows to NaN): use --dtype float32 (auto picks it), "
                         "bfloat16 on a GPU that has it, or --lora (adapters train in float32 on an fp16 base)")
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 (a T4 has none): use "
                         "--dtype float16, float32, or auto (which picks float16 there)")
    return dtype


def _load_pretrained(source: str, *, local_only: bool, quantization_config, dtype: torch.dtype, device: torch.device):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(local_files_only=local_only, dtype=dtype)
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": str(device)})
    try:
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except SafetensorError as error:
        raise OSError(f"cannot read the weights of {source} ({error}): the file is damaged or cut short (a copy or a "
                      "download that did not finish); copy, download or save it again") from error
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    if quantization_config is None:
        model = model.to(device)
    return model, tokenizer


def _tiny_dir() -> Path:
    from companion.tiny import tiny_dir

    return tiny_dir()


ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
"""The two files peft's ``save_pretrained`` writes for LoRA adapters."""


def store_half_precision(source: str | Path, target: str | Path) -> Path:
    """Copy the policy that :func:`save_policy` wrote in ``source`` to ``target`` with its weights in half precision,
    for committing: a full model through transformers (with its tokenizer); adapters as their weights file converted
    tensor by tensor, with their config and base record (the tokenizer is the base's, loaded with it).
    :func:`load_policy` loads either back in float32 on a CPU."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if (source / POLICY_FILE).is_file():
        from safetensors.torch import load_file, save_file

        meta = json.loads((source / POLICY_FILE).read_text())
        config = json.loads((source / ADAPTER_CONFIG).read_text())
        # the base by the name it loads from, not the path of one machine's cache
        (target / ADAPTER_CONFIG).write_text(json.dumps(dict(config, base_model_name_or_path=meta["base"]),
                                                        indent=2, sort_keys=True) + "\n")
        (target / POLICY_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        tensors = load_file(source / ADAPTER_WEIGHTS)
        save_file({name: t.to(torch.float16) for name, t in tensors.items()}, target / ADAPTER_WEIGHTS)
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        model.to(torch.float16).save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def load_policy(
    name_or_path: str = "tiny",
    *,
    load_in_4bit: bool = False,
    lora: LoraSettings | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    hub_timeout: float = 5.0,
):
    """Load a causal LM and its tokenizer as a trainable policy. Returns ``(model, tokenizer)``.

    Args:
        name_or_path: ``"tiny"`` (the shipped tiny base model), a model known by name (``"smollm2-135m"``:
            :mod:`companion.named_models`), a local directory (a ``save_pretrained`` model, or one written by
            :func:`save_policy`), or a hub name such as ``"Qwen/Qwen2.5-0.5B"``.
        load_in_4bit: quantise the linear layers to 4-bit nf4 with bitsandbytes (needs ``lora``).
        lora: train LoRA adapters with these settings instead of every parameter.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        dtype: weight (and 4-bit compute) dtype; default float32 on CPU, bf16/fp16 on a GPU.
        hub_timeout: seconds to wait for the hub before failing (hub names only).
    """
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    saved = Path(name_or_path).expanduser() / POLICY_FILE
    if saved.is_file():  # adapters written by save_policy: rebuild their base, then put them back on
        if lora is not None:
            raise ValueError(f"{saved.parent} already holds LoRA adapters: load it without lora (they stay trainable)")
        from peft import PeftModel

        meta = json.loads(saved.read_text())
        load_in_4bit = load_in_4bit or meta.get("load_in_4bit", False)
        model, tokenizer = _load_base(meta["base"], load_in_4bit=load_in_4bit, device=device, dtype=dtype,
                                      hub_timeout=hub_timeout)
        if load_in_4bit:
            model = _prepare_4bit(model)
        model = PeftModel.from_pretrained(model, str(saved.parent), is_trainable=True)
        return model, tokenizer
    if load_in_4bit and lora is None:
        raise ValueError("4-bit weights cannot be trained: pass lora=LoraSettings() (--lora) with load_in_4bit")
    model, tokenizer = _load_base(name_or_path, load_in_4bit=load_in_4bit, device=device, dtype=dtype,
                                  hub_timeout=hub_timeout)
    if lora is not None:
        from peft import get_peft_model

        if load_in_4bit:
            model = _prepare_4bit(model)
        model = get_peft_model(model, lora.peft_config())
    return model, tokenizer


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def weight_files_digest(name_or_path: str) -> str | None:
    """A sha256 over the weight files :func:`load_policy` reads for ``name_or_path`` (for saved adapters, their base's
    too), to tell whether the weights on disk changed; None when they are not local files (a hub name).

    >>> weight_files_digest("tiny") == weight_files_digest("tiny") != weight_files_digest("Org/not-a-local-dir")
    True
    """
    import hashlib

    path = Path(name_or_path).expanduser()
    if not path.is_dir() and name_or_path == "tiny":
        path = _tiny_dir()
    elif not path.is_dir() and is_named(name_or_path):
        path = converted(name_or_path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    if (path / POLICY_FILE).is_file():  # adapters: their base's weights count too
        base = json.loads((path / POLICY_FILE).read_text()).get("base", "")
        digest.update((weight_files_digest(base) or base).encode())
    for file in sorted(f for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES):
        digest.update(file.name.encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelFiles:
    """What :func:`load_policy` would load, read without the weights: the (base) model's transformers config, its
    tokenizer, and for a directory of saved adapters their base's 4-bit flag and their LoRA rank."""

    config: object
    tokenizer: object
    load_in_4bit: bool = False
    lora_r: int | None = None


def read_model_files(name_or_path: str = "tiny", *, hub_timeout: float = 5.0) -> ModelFiles | None:
    """The config and tokenizer ``load_policy(name_or_path)`` would load, for planning memory before the weights
    load; None when they cannot be read (the loader's own error then says why). A hub name is read from the hub
    when it answers within ``hub_timeout`` seconds (two small files), else from the local cache."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(name_or_path).expanduser()
    saved = path / POLICY_FILE
    meta, r, source = {}, None, name_or_path
    if saved.is_file():  # adapters: the shapes are their base's, the rank is theirs
        try:
            meta = json.loads(saved.read_text())
            r, source = int(json.loads((path / ADAPTER_CONFIG).read_text())["r"]), meta["base"]
        except (OSError, KeyError, ValueError):
            return None
    if source == "tiny" and not Path(source).is_dir():
        source = str(_tiny_dir())
    elif is_named(source) and not Path(source).is_dir():
        source = str(converted(source))
    local_only = True
    if not Path(source).expanduser().is_dir() and _HUB_NAME.match(source):
        from companion.runs import hub_reachable

        local_only = not hub_reachable(hub_timeout)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(str(path) if saved.is_file() else source,
                                                  local_files_only=local_only)
    except (OSError, ValueError):
        return None
    return ModelFiles(config=config, tokenizer=tokenizer, load_in_4bit=bool(meta.get("load_in_4bit", False)),
                      lora_r=r)


@dataclass(frozen=True)
class GpuBudget:
    """What planning a run's memory needs before its weights load: the model's files and the GPU's free memory."""

    files: ModelFiles
    free_bytes: int  # torch.cuda.mem_get_info's, read after this process's CUDA context exists
    gpu: str  # the GPU's name, for messages


def gpu_budget(name_or_path: str, device: torch.device) -> GpuBudget | None:
    """On a CUDA ``device``, the files of the model ``name_or_path`` (:func:`read_model_files`) and the free memory
    to fit it in; None on any other device, or when the files cannot be read without loading the model (the loader's
    own error then says why). The one entry of ``companion train``'s and ``companion eval``'s GPU checks."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    files = read_model_files(name_or_path)
    if files is None:
        return None
    return GpuBudget(files, free, f"{torch.cuda.get_device_name(device)} (free memory)")


def _prepare_4bit(model):
    from peft import prepare_model_for_kbit_training

    # Freezes the base, upcasts norms to float32 and makes the input embeddings carry gradients, so the
    # adapters of the first layer get them too. Gradient checkpointing stays off: it fights generate's cache.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _load_base(name_or_path: str, *, load_in_4bit: bool, device: torch.device, dtype: torch.dtype, hub_timeout: float):
    """The base model and tokenizer, before any adapters."""
    quantization_config = None
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
    path = Path(name_or_path).expanduser()
    if is_named(name_or_path) and not path.is_dir():
        path = converted(name_or_path)  # a model known by name: its float32 conversion, made once
    if name_or_path == "tiny" and not path.is_dir():
        if load_in_4bit:  # quantisation happens while loading, so go through the shipped directory
            model, tokenizer = _load_pretrained(str(_tiny_dir()), local_only=True,
                                                quantization_config=quantization_config, dtype=dtype, device=device)
        else:
            from companion.tiny import load_tiny

            model, tokenizer = load_tiny()
            model = model.to(device=device, dtype=dtype)
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is a directory but holds no model (no config.json): pass a save_pretrained "
                             "directory, 'tiny', or a hub name like Qwen/Qwen2.5-0.5B")
        model, tokenizer = _load_pretrained(str(path), local_only=True, quantization_config=quantization_config,
                                            dtype=dtype, device=device)
    elif _HUB_NAME.match(name_or_path):
        from companion.runs import hub_reachable

        reachable = hub_reachable(hub_timeout)
        try:
            model, tokenizer = _load_pretrained(name_or_path, local_only=not reachable,
                                                quantization_config=quantization_config, dtype=dtype, device=device)
        except OSError as err:
            if reachable:
                raise
            raise HubUnreachableError(
                f"cannot load {name_or_path!r}: the Hugging Face hub is unreachable from here (or HF_HUB_OFFLINE is "
                "set) and the model is not in the local cache. Download it where there is a network "
                f"(`huggingface-cli download {name_or_path} --local-dir DIR`) and pass DIR instead, or use 'tiny'."
            ) from err
    else:
        raise ValueError(f"{name_or_path!r} is neither 'tiny', an existing directory, a model known by name "
                         f"({', '.join(NAMED)}), nor a hub name like 'Qwen/Qwen2.5-0.5B'")
    if load_in_4bit:
        _keep_4bit_trainable(model)
    if tokenizer.pad_token_id is None:  # Llama-style tokenizers ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _keep_4bit_trainable(model):
    """Turn off bitsandbytes' packed CPU format, so every CPU computes 4-bit layers the same trainable way.

    On a CPU with AVX-512 BF16 (bitsandbytes' ``has_avx512bf16()``), a ``Linear4bit`` repacks its weight at its
    first eval-mode forward without gradients (a rollout) into the layout of a bf16 inference kernel
    (bitsandbytes 0.50). That layout stays, and the rollout-then-update loop cannot live with it: a
    training forward through it raises (layers with a bias) or silently sends no gradient to the layer's input
    (layers without one); the repacking needs every in_features to be a multiple of 64 (the first tiny base's 96
    is not); and rollouts in bf16 would not sample the policy the float32 update trains. Switched off, the
    layers dequantise and multiply in the compute dtype, as they always do on AVX2 CPUs. No effect on CUDA.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False  # set in __init__ from has_avx512bf16(); read by forward


def largest_activation(model, tokenizer, texts: list[str]) -> float:
    """The largest absolute value that enters or leaves any linear layer of ``model`` in one forward pass over
    ``texts`` (padded into one batch): how near its activations come to the largest number fp16 holds (65,504),
    past which a T4's fp16 compute overflows."""
    largest = [0.0]

    def hook(module, inputs, output):
        largest[0] = max(largest[0], inputs[0].abs().max().item(), output.abs().max().item())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            model(**tokenizer(texts, return_tensors="pt", padding=True).to(model.device))
    finally:
        for handle in hooks:
            handle.remove()
    return largest[0]


def is_lora(model) -> bool:
    """Whether ``model`` carries peft adapters (so its reference policy is the base with them disabled)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """The parameters that training changes (all of them, or only the adapters), by name, detached."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_policy(model, tokenizer, path: str | Path, *, base: str | None = None, load_in_4bit: bool = False) -> Path:
    """Save a policy so :func:`load_policy` can rebuild it: the full model, or adapters plus their base."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    if is_lora(model):
        if base is None:
            raise ValueError("saving adapters needs base= (the name or path load_policy loaded the base from)")
        (path / POLICY_FILE).write_text(json.dumps({"base": base, "load_in_4bit": load_in_4bit}, indent=2) + "\n")
    return path
