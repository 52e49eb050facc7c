"""How much GPU memory a training step takes, before anything is loaded: the GPU world's planner.

:func:`plan` estimates the peak memory of one step of :func:`companion.trainer.train` (sample, then score and
update in micro-batches) from the model's shapes alone, so that a run that cannot fit stops before it downloads
or loads anything (:func:`check_fits`), and chapter 8's table can say what fits on a T4, an L4 or an A100.

What it counts, as the package loads and trains a model (:func:`companion.models.load_policy`):

* **weights.** With ``load_in_4bit`` every projection of every block is nf4 with double quantisation (half a
  byte per weight, plus 1/64 byte of 8-bit absmax per 64-weight block and a float32 per 256 blocks: bitsandbytes'
  layout), and peft's ``prepare_model_for_kbit_training`` upcasts everything else (embeddings, an untied head,
  norms, biases) to float32. Without 4-bit, every weight is in the compute dtype.
* **trainable state.** LoRA adapters on :data:`companion.models.LORA_TARGET_MODULES` (``r * (in + out)`` weights
  per matrix), float32 (peft upcasts them), with their gradient and AdamW's two moments: 16 bytes per adapter
  weight. Full-parameter training counts each weight's gradient and two moments in the weights' dtype.
* **sampling.** The KV cache of every completion of the step decoded together (``prompts_per_step x G`` rows of
  ``prompt + completion`` tokens, in the compute dtype) and what one decoding step holds of its float32 logits
  at once (:data:`SAMPLING_LOGIT_COPIES`: the logits, the probabilities and the draw's noise; more with a top-p
  below 1, whose sort keeps the order as int64).
* **the update.** One micro-batch of ``micro_batch_size`` completions through forward and backward: the
  activations kept for the backward pass (per token and block, the residual stream and the projections' inputs
  and outputs; with gradient checkpointing only each block's input, plus one block recomputed), and the logits of
  every completion token with the float32 copies that the log-softmax and its gradient make (16 bytes per logit;
  with ``--logit-chunk-size`` only one chunk's, the rest recomputed in the backward pass).
* **overhead.** The CUDA context and the allocator's slack: a fixed :data:`CONTEXT_BYTES` plus
  :data:`FRAGMENTATION` of the rest, so that the total is comparable with ``torch.cuda.max_memory_reserved``.

Sampling and the update do not overlap (the cache is freed before the update), so the peak is the larger of the
two on top of what is always there. These are estimates, checked where a check is possible: the weights against
``get_memory_footprint`` of a real quantised model, the adapters against peft's own count
(``tests/test_planner.py``), the tensors of whole steps against what the trainer really allocates, measured on
the CPU (``bench/bench_memory.py``, ``data/memory/cpu.json``), and the total against published runs (chapter 8).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 2**30

CONTEXT_BYTES = int(0.5 * GIB)
"""The CUDA context, cuBLAS workspaces and kernels: memory a process holds before its first tensor."""

FRAGMENTATION = 0.10
"""The caching allocator reserves more than it hands out; peak reserved runs this share above peak allocated."""

LOGIT_BYTES = 16
"""Bytes per training logit: the compute-dtype logits, their float32 copy for the log-softmax, the exp it takes,
and the float32 gradient of the backward pass."""

SAMPLING_LOGIT_COPIES = 4
"""(rows, vocabulary) float32 tensors a decoding step of :func:`companion.decode.decode` holds at its peak with
top-p 1: the logits, the probabilities, the exponential noise of every row and, once finished rows have been
dropped, the noise of the rows left (measured on the CPU: 3.2 before any row is dropped)."""

NUCLEUS_LOGIT_COPIES = 6
"""The same with top-p below 1, at the nucleus filter's peak: the logits, the sort's order (int64, two copies'
worth), the sorted probabilities, their running sum and the masks (measured: 5.5)."""


@dataclass(frozen=True)
class ModelShape:
    """The shapes that decide memory: a decoder-only transformer of the Qwen2 / Llama kind."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = True  # Qwen2's q, k and v projections have biases

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of one block."""
        h, kv, i = self.hidden_size, self.kv_size, self.intermediate_size
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def block_linear_parameters(self) -> int:
        return sum(a * b for a, b in self.projections().values())

    @property
    def other_parameters(self) -> int:
        """Everything outside the blocks' projection matrices: embeddings, an untied head, norms, biases."""
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        norms = (2 * self.num_hidden_layers + 1) * self.hidden_size
        biases = self.num_hidden_layers * (self.hidden_size + 2 * self.kv_size) if self.attention_bias else 0
        return embeddings + norms + biases

    @property
    def parameters(self) -> int:
        return self.num_hidden_layers * self.block_linear_parameters + self.other_parameters

    @classmethod
    def from_config(cls, config, name: str = "") -> "ModelShape":
        """The shape of a transformers config (``AutoConfig.from_pretrained(...)``, or a model's ``.config``)."""
        return cls(name=name or getattr(config, "_name_or_path", "") or config.model_type,
                   hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                   num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                   num_key_value_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                   vocab_size=config.vocab_size, tie_word_embeddings=bool(config.tie_word_embeddings),
                   attention_bias=bool(getattr(config, "attention_bias", config.model_type == "qwen2")))


MODELS = {
    "Qwen/Qwen2.5-0.5B": ModelShape("Qwen/Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B": ModelShape("Qwen/Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, True),
    "Qwen/Qwen2-7B-Instruct": ModelShape("Qwen/Qwen2-7B-Instruct", 3584, 18944, 28, 28, 4, 152064, False),
}
"""The shapes of the models chapter 8 plans for, from their ``config.json`` on the hub."""


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    bf16: bool


GPUS = {
    "T4": GPU("T4 (16 GB)", 15 * GIB, False),  # 16 GB card, ~15 GiB visible to torch
    "L4": GPU("L4 (24 GB)", 22 * GIB, True),
    "A100-40GB": GPU("A100 (40 GB)", 39 * GIB, True),
    "A100-80GB": GPU("A100 (80 GB)", 79 * GIB, True),
}
"""The GPUs readers rent or get on Colab, with the memory torch can use on them."""


@dataclass(frozen=True)
class Plan:
    """A step's memory, in bytes, by what holds it; ``peak`` is the estimate of peak reserved memory."""

    weights: int
    trainable: int
    sampling: int
    update: int
    overhead: int
    peak: int
    trainable_parameters: int
    tokens_per_step: int

    def gib(self) -> dict[str, float]:
        return {k: v / GIB for k, v in asdict(self).items() if k not in ("trainable_parameters", "tokens_per_step")}


def lora_parameters(shape: ModelShape, r: int, targets=None) -> int:
    """Adapter weights of LoRA rank ``r`` on ``targets`` (default: every projection) of every block."""
    from companion.models import LORA_TARGET_MODULES

    targets = LORA_TARGET_MODULES if targets is None else targets
    unknown = sorted(set(targets) - set(shape.projections()))
    if unknown:
        raise ValueError(f"unknown LoRA target modules {unknown}; a block has {sorted(shape.projections())}")
    per_block = sum(r * (a + b) for name, (a, b) in shape.projections().items() if name in targets)
    return shape.num_hidden_layers * per_block


def weight_bytes(shape: ModelShape, *, load_in_4bit: bool, dtype_bytes: int, upcast: bool = True) -> int:
    """Bytes of the loaded weights (see the module docstring for the 4-bit layout). ``upcast``: the weights that
    stay unquantised are float32, as peft's ``prepare_model_for_kbit_training`` leaves them (the package calls it);
    without it they stay in the compute dtype."""
    if not load_in_4bit:
        return shape.parameters * dtype_bytes
    blocks = shape.num_hidden_layers * shape.block_linear_parameters
    nf4 = blocks // 2 + blocks // 64 + 4 * (blocks // (64 * 256) + 1)  # weights, 8-bit absmax, their fp32 scales
    return nf4 + (4 if upcast else dtype_bytes) * shape.other_parameters


def plan(shape: ModelShape, *, prompts_per_step: int, num_generations: int, prompt_length: int,
         completion_length: int, micro_batch_size: int = 0, load_in_4bit: bool = True, lora_r: int | None = 16,
         gradient_checkpointing: bool = True, dtype_bytes: int = 2, upcast: bool = True,
         bytes_per_trainable: int = 16, logit_bytes: int = LOGIT_BYTES, logit_chunk: int = 0,
         top_p: float = 1.0) -> Plan:
    """Estimate one training step's peak GPU memory (see the module docstring for what is counted).

    ``micro_batch_size`` 0 means every completion of the step in one pass, as :class:`companion.trainer.TrainConfig`
    does; ``lora_r`` None is full-parameter training; ``dtype_bytes`` is the compute dtype's (2 for bf16 or fp16);
    ``logit_chunk`` is ``--logit-chunk-size`` (completion positions whose logits are held at once; 0 = all);
    ``top_p`` is the sampler's (below 1 its nucleus filter holds more copies of the logits).
    ``upcast``, ``bytes_per_trainable`` and ``logit_bytes`` describe other trainers than this package's, to check the planner against their published runs:
    ``upcast`` False keeps the unquantised weights in the compute dtype (no ``prepare_model_for_kbit_training``);
    ``bytes_per_trainable`` is an adapter weight's bytes with its gradient and optimizer state (16: float32 and
    AdamW; 6: bf16 adapters and an 8-bit AdamW); ``logit_bytes`` 0 is a fused head-and-loss kernel (Liger) that
    never holds the logits.
    """
    for name, value in (("prompts_per_step", prompts_per_step), ("num_generations", num_generations),
                        ("prompt_length", prompt_length), ("completion_length", completion_length)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if micro_batch_size < 0 or logit_chunk < 0 or dtype_bytes not in (2, 4) or not 0 < top_p <= 1:
        raise ValueError(f"need micro_batch_size >= 0, logit_chunk >= 0, dtype_bytes 2 or 4 and 0 < top_p <= 1, got "
                         f"{micro_batch_size}, {logit_chunk}, {dtype_bytes}, {top_p}")
    if load_in_4bit and lora_r is None:
        raise ValueError("4-bit weights cannot be trained: plan with a LoRA rank (lora_r)")
    rows = prompts_per_step * num_generations
    micro = min(micro_batch_size or rows, rows)
    tokens = prompt_length + completion_length
    h, layers = shape.hidden_size, shape.num_hidden_layers

    weights = weight_bytes(shape, load_in_4bit=load_in_4bit, dtype_bytes=dtype_bytes, upcast=upcast)
    if lora_r is None:  # every weight: its gradient and AdamW's two moments, in the weights' own dtype
        trainable_parameters = shape.parameters
        trainable = 3 * dtype_bytes * trainable_parameters
    else:
        trainable_parameters = lora_parameters(shape, lora_r)
        trainable = bytes_per_trainable * trainable_parameters

    # 1. sampling: every row's KV cache at full length, and the float32 (rows, vocabulary) tensors of a step
    kv_cache = 2 * layers * shape.kv_size * rows * tokens * dtype_bytes
    copies = SAMPLING_LOGIT_COPIES if top_p >= 1 else NUCLEUS_LOGIT_COPIES
    sampling = kv_cache + copies * 4 * rows * shape.vocab_size

    # 2. the update, one micro-batch: activations per token and block (float32 residual stream where 4-bit's
    #    upcast embeddings carry it, the projections' inputs and outputs in the compute dtype), and the logits
    residual = 4 if load_in_4bit and upcast else dtype_bytes
    per_block_token = (4 * h * residual  # residual stream, two norms' inputs and outputs
                       + (2 * h + 2 * shape.kv_size + 4 * shape.intermediate_size) * dtype_bytes)  # projections
    kept = micro * tokens
    if gradient_checkpointing:
        activations = layers * kept * h * residual + kept * per_block_token  # block inputs, one block recomputed
    else:
        activations = layers * kept * per_block_token
    logits = logit_bytes * micro * min(logit_chunk or completion_length, completion_length) * shape.vocab_size
    update = activations + logits

    allocated = weights + trainable + max(sampling, update)
    overhead = CONTEXT_BYTES + int(FRAGMENTATION * allocated)
    return Plan(weights=weights, trainable=trainable, sampling=sampling, update=update, overhead=overhead,
                peak=allocated + overhead, trainable_parameters=trainable_parameters,
                tokens_per_step=rows * tokens)


def check_fits(estimate: Plan, memory_bytes: int, *, what: str = "this run", gpu: str = "the GPU",
               in_4bit: bool = False) -> None:
    """Raise a ValueError that says what to change when ``estimate`` does not fit in ``memory_bytes``."""
    if estimate.peak <= memory_bytes:
        return
    biggest = max(("sampling", estimate.sampling), ("the update", estimate.update), key=lambda kv: kv[1])[0]
    advice = {"sampling": "sample fewer completions at once (--prompts-per-step or --num-generations) or shorten "
                          "--max-completion-length",
              "the update": "lower --micro-batch-size (completions per forward/backward pass) or set "
                            "--logit-chunk-size (e.g. 64)"}[biggest]
    raise ValueError(f"{what} needs about {estimate.peak / GIB:.2f} GiB at its peak ({biggest} is the largest "
                     f"part: {max(estimate.sampling, estimate.update) / GIB:.2f} GiB) and {gpu} has "
                     f"{memory_bytes / GIB:.2f} GiB: {advice}"
                     + ("" if in_4bit else ", or load the model in 4-bit with LoRA (--lora --load-in-4bit)"))


def table(models=None, gpus=None, **settings) -> list[dict]:
    """One row per model: the plan's parts (GiB), its peak, and whether it fits on each of ``gpus``."""
    rows = []
    for name in models or MODELS:
        estimate = plan(MODELS[name], **settings)
        rows.append({"model": name, **{k: round(v, 2) for k, v in estimate.gib().items()},
                     "tokens_per_step": estimate.tokens_per_step,
                     "trainable_parameters": estimate.trainable_parameters,
                     **{g: estimate.peak <= GPUS[g].memory_bytes for g in (gpus or GPUS)}})
    return rows
