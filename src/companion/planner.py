"""How much GPU memory a training run takes, before anything is loaded: the GPU world's planner.

:func:`plan` estimates the peak memory of a run of :func:`companion.trainer.train` (each step samples, then scores
and updates in micro-batches; every ``--eval-every`` steps it evaluates held-out problems) from the model's shapes
alone, so that a run that cannot fit stops before it downloads or loads anything (:func:`check_fits`), and chapter
8's table can say what fits on a T4, an L4 or an A100.

What it counts, as the package loads and trains a model (:func:`companion.models.load_policy`):

* **weights.** With ``load_in_4bit`` every projection of every block is nf4 with double quantisation (half a
  byte per weight, plus 1/64 byte of 8-bit absmax per 64-weight block and a float32 per 256 blocks: bitsandbytes'
  layout), and peft's ``prepare_model_for_kbit_training`` upcasts everything else (embeddings, an untied head,
  norms, biases) to float32. Without 4-bit, every weight is in the compute dtype.
* **trainable state.** LoRA adapters on :data:`companion.models.LORA_TARGET_MODULES` (``r * (in + out)`` weights
  per matrix), float32 (peft upcasts them), with their gradient and AdamW's two moments: 16 bytes per adapter
  weight. Full-parameter training counts each weight's gradient and two moments in the weights' dtype.
* **sampling.** The KV cache of every completion of the step decoded together (``prompts_per_step x G`` rows of
  ``prompt + completion`` tokens, in the compute dtype, beside the prefill's cache of each prompt once) and what
  one decoding step holds of its float32 logits at once (:data:`SAMPLING_LOGIT_COPIES`: the logits, the
  probabilities and the draw's noise; more with a top-p below 1, whose sort keeps the order as int64).
* **the held-out evaluation** (``--eval-every``): the same for the evaluation's batch, which decodes
  ``eval_problems x eval_num_generations`` completions together, up to ``--eval-batch-size``
  (:data:`EVAL_BATCH_ROWS` by default): at the trainer's defaults (100 x 4) six times a step's 64, so it, not the
  step, can be the peak.
* **the update.** One micro-batch of ``micro_batch_size`` completions through forward and backward: the
  activations kept for the backward pass (per token and block, the residual stream and the projections' inputs
  and outputs; with gradient checkpointing only each block's input, plus one block recomputed), and the logits of
  every completion token with the float32 copies that the log-softmax and its gradient make (16 bytes per logit;
  with ``--logit-chunk-size`` only one chunk's, the rest recomputed in the backward pass).
* **overhead.** The CUDA context and the allocator's slack: a fixed :data:`CONTEXT_BYTES` plus
  :data:`FRAGMENTATION` of the rest, so that the total is comparable with ``torch.cuda.max_memory_reserved``.

Sampling, the update and the evaluation do not overlap (each one's tensors are freed before the next), so the peak
is the largest of the three on top of what is always there. :func:`plan_eval` plans ``companion eval`` the same
way: the weights, and one batch of its sampler. These are estimates, checked where a check is possible: the weights against
``get_memory_footprint`` of a real quantised model, the adapters against peft's own count
(``tests/test_planner.py``), the tensors of whole steps, held-out evaluations and ``companion eval`` batches against
what they really allocate, measured on the CPU (``bench/bench_memory.py``, ``data/memory/cpu.json``), and the total
against published runs (chapter 8).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

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
worth), the sorted probabilities, their running sum and the masks (measured: 5.5). ``companion eval``'s sampler
draws by inverse CDF instead of the noise, and holds as many (measured: 3.4 and 5.4, on either path)."""

EVAL_BATCH_ROWS = 512
"""Completions the trainer's held-out evaluation decodes together at most, by default (``--eval-batch-size``)."""

SHARED_BLOCK = 16
"""``companion eval``'s fast path grows its completion cache this many tokens at a time
(:data:`companion.decode.SHARED_BLOCK`)."""


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
    evaluation: int = 0  # the held-out evaluation's sampling (0: none in the run)

    @property
    def parts(self) -> dict[str, int]:
        """The phases that take turns on top of the weights and the trainable state."""
        return {"sampling": self.sampling, "the update": self.update, "the held-out evaluation": self.evaluation}

    @property
    def allocated(self) -> int:
        """The peak without the overhead: what the tensors themselves hold."""
        return self.weights + self.trainable + max(self.parts.values())

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


def sampling_bytes(shape: ModelShape, *, rows: int, prompts: int, prompt_length: int, completion_length: int,
                   dtype_bytes: int = 2, top_p: float = 1.0, shared_prompt: bool = False) -> int:
    """What the decoder (:mod:`companion.decode`) holds while it samples ``rows`` completions of ``prompts`` prompts
    together: the prefill's cache of each prompt, every row's KV cache at full length, and the float32
    (rows, vocabulary) tensors of a step. ``shared_prompt``: ``companion eval``'s fast path, whose rows keep only
    their completion tokens (in blocks of :data:`SHARED_BLOCK`) beside one more copy of their prompts'."""
    per_token = 2 * shape.num_hidden_layers * shape.kv_size * dtype_bytes  # keys and values, every layer
    prefill = prompts * prompt_length * per_token
    if shared_prompt:
        cache = prefill + rows * -(-completion_length // SHARED_BLOCK) * SHARED_BLOCK * per_token
    else:
        cache = rows * (prompt_length + completion_length) * per_token
    copies = SAMPLING_LOGIT_COPIES if top_p >= 1 else NUCLEUS_LOGIT_COPIES
    return prefill + cache + copies * 4 * rows * shape.vocab_size


def plan(shape: ModelShape, *, prompts_per_step: int, num_generations: int, prompt_length: int,
         completion_length: int, micro_batch_size: int = 0, load_in_4bit: bool = True, lora_r: int | None = 16,
         gradient_checkpointing: bool = True, dtype_bytes: int = 2, upcast: bool = True,
         bytes_per_trainable: int = 16, logit_bytes: int = LOGIT_BYTES, logit_chunk: int = 0,
         top_p: float = 1.0, fast: bool = True, eval_problems: int = 0, eval_num_generations: int = 0,
         eval_batch_size: int = EVAL_BATCH_ROWS) -> Plan:
    """Estimate one training step's peak GPU memory (see the module docstring for what is counted).

    ``micro_batch_size`` 0 means every completion of the step in one pass, as :class:`companion.train_config.TrainConfig`
    does; ``lora_r`` None is full-parameter training; ``dtype_bytes`` is the compute dtype's (2 for bf16 or fp16);
    ``logit_chunk`` is ``--logit-chunk-size`` (completion positions whose logits are held at once; 0 = all);
    ``top_p`` is the sampler's (below 1 its nucleus filter holds more copies of the logits); ``fast`` is
    ``--fast-sampler`` (each prompt's keys and values kept once, in the step's sampling and the held-out evaluation);
    ``eval_problems`` x ``eval_num_generations`` completions are the held-out evaluation's (0: the run does not
    evaluate), decoded ``eval_batch_size`` at a time.
    ``upcast``, ``bytes_per_trainable`` and ``logit_bytes`` describe other trainers than this package's, to check the planner against their published runs:
    ``upcast`` False keeps the unquantised weights in the compute dtype (no ``prepare_model_for_kbit_training``);
    ``bytes_per_trainable`` is an adapter weight's bytes with its gradient and optimizer state (16: float32 and
    AdamW; 6: bf16 adapters and an 8-bit AdamW); ``logit_bytes`` 0 is a fused head-and-loss kernel (Liger) that
    never holds the logits.
    """
    _check_plan(prompts_per_step=prompts_per_step, num_generations=num_generations, prompt_length=prompt_length,
                completion_length=completion_length, micro_batch_size=micro_batch_size, logit_chunk=logit_chunk,
                dtype_bytes=dtype_bytes, top_p=top_p, eval_problems=eval_problems,
                eval_num_generations=eval_num_generations, eval_batch_size=eval_batch_size,
                full_parameters_in_4bit=load_in_4bit and lora_r is None)
    rows = prompts_per_step * num_generations
    micro = min(micro_batch_size or rows, rows)
    tokens = prompt_length + completion_length

    weights = weight_bytes(shape, load_in_4bit=load_in_4bit, dtype_bytes=dtype_bytes, upcast=upcast)
    if lora_r is None:  # every weight: its gradient and AdamW's two moments, in the weights' own dtype
        trainable_parameters = shape.parameters
        trainable = 3 * dtype_bytes * trainable_parameters
    else:
        trainable_parameters = lora_parameters(shape, lora_r)
        trainable = bytes_per_trainable * trainable_parameters

    # 1. sampling: every row's KV cache, and the float32 (rows, vocabulary) tensors of a step
    decoding = dict(prompt_length=prompt_length, completion_length=completion_length, dtype_bytes=dtype_bytes,
                    top_p=top_p, shared_prompt=fast)
    sampling = sampling_bytes(shape, rows=rows, prompts=prompts_per_step, **decoding)
    evaluation = 0
    if eval_problems and eval_num_generations:  # the same decoder, on the evaluation's batch
        eval_rows = min(eval_problems * eval_num_generations, eval_batch_size)
        prompts = min(eval_problems, -(-eval_rows // eval_num_generations) + 1)  # a batch may cut a prompt's rows
        evaluation = sampling_bytes(shape, rows=eval_rows, prompts=prompts, **decoding)

    # 2. the update, one micro-batch
    update = update_bytes(shape, rows=micro, tokens=tokens, completion_length=completion_length,
                          residual=4 if load_in_4bit and upcast else dtype_bytes, dtype_bytes=dtype_bytes,
                          gradient_checkpointing=gradient_checkpointing, logit_bytes=logit_bytes,
                          logit_chunk=logit_chunk)

    return _with_overhead(Plan(weights=weights, trainable=trainable, sampling=sampling, update=update, overhead=0,
                               peak=0, trainable_parameters=trainable_parameters, tokens_per_step=rows * tokens,
                               evaluation=evaluation))


def update_bytes(shape: ModelShape, *, rows: int, tokens: int, completion_length: int, residual: int, dtype_bytes: int,
                 gradient_checkpointing: bool, logit_bytes: int, logit_chunk: int) -> int:
    """What one micro-batch of ``rows`` sequences of ``tokens`` holds for its backward pass: activations per token
    and block (the residual stream in ``residual`` bytes, float32 where 4-bit's upcast embeddings carry it; the
    projections' inputs and outputs in the compute dtype), and the logits of its completion positions."""
    h, layers = shape.hidden_size, shape.num_hidden_layers
    per_block_token = (4 * h * residual  # residual stream, two norms' inputs and outputs
                       + (2 * h + 2 * shape.kv_size + 4 * shape.intermediate_size) * dtype_bytes)  # projections
    kept = rows * tokens
    if gradient_checkpointing:
        activations = layers * kept * h * residual + kept * per_block_token  # block inputs, one block recomputed
    else:
        activations = layers * kept * per_block_token
    return activations + logit_bytes * rows * min(logit_chunk or completion_length, completion_length) * shape.vocab_size


def _check_plan(*, prompts_per_step: int, num_generations: int, prompt_length: int, completion_length: int,
                micro_batch_size: int, logit_chunk: int, dtype_bytes: int, top_p: float, eval_problems: int,
                eval_num_generations: int, eval_batch_size: int, full_parameters_in_4bit: bool) -> None:
    """The checks of :func:`plan`'s arguments, each error naming the argument."""
    for name, value in (("prompts_per_step", prompts_per_step), ("num_generations", num_generations),
                        ("prompt_length", prompt_length), ("completion_length", completion_length)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if micro_batch_size < 0 or logit_chunk < 0 or dtype_bytes not in (2, 4) or not 0 < top_p <= 1:
        raise ValueError(f"need micro_batch_size >= 0, logit_chunk >= 0, dtype_bytes 2 or 4 and 0 < top_p <= 1, got "
                         f"{micro_batch_size}, {logit_chunk}, {dtype_bytes}, {top_p}")
    if min(eval_problems, eval_num_generations) < 0 or eval_batch_size < 1:
        raise ValueError(f"need eval_problems and eval_num_generations >= 0 and eval_batch_size >= 1, got "
                         f"{eval_problems}, {eval_num_generations}, {eval_batch_size}")
    if full_parameters_in_4bit:
        raise ValueError("4-bit weights cannot be trained: plan with a LoRA rank (lora_r)")


def _with_overhead(estimate: Plan) -> Plan:
    overhead = CONTEXT_BYTES + int(FRAGMENTATION * estimate.allocated)
    return replace(estimate, overhead=overhead, peak=estimate.allocated + overhead)


def plan_eval(shape: ModelShape, *, batch_size: int, num_generations: int, prompt_length: int,
              completion_length: int, load_in_4bit: bool = False, lora_r: int | None = None, dtype_bytes: int = 2,
              fast: bool = True, top_p: float = 1.0) -> Plan:
    """Estimate ``companion eval``'s peak memory: the weights (a saved LoRA policy's adapters, float32, as
    ``trainable``, with no gradient or optimizer state) and one batch of its sampler (``sampling``).

    The batch is ``batch_size`` rows of whole prompts (``batch_size // num_generations`` of them, at least one) as
    :func:`companion.evaluate.evaluate` groups them; ``fast`` is ``--fast-sampler`` (each prompt's keys and values
    kept once). ``tokens_per_step`` is the batch's prompt and completion tokens.
    """
    for name, value in (("batch_size", batch_size), ("num_generations", num_generations),
                        ("prompt_length", prompt_length), ("completion_length", completion_length)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    prompts = max(1, batch_size // num_generations)
    rows = min(batch_size, prompts * num_generations)
    adapters = 0 if lora_r is None else lora_parameters(shape, lora_r)
    sampling = sampling_bytes(shape, rows=rows, prompts=-(-rows // num_generations), prompt_length=prompt_length,
                              completion_length=completion_length, dtype_bytes=dtype_bytes, top_p=top_p,
                              shared_prompt=fast)
    return _with_overhead(Plan(weights=weight_bytes(shape, load_in_4bit=load_in_4bit, dtype_bytes=dtype_bytes),
                               trainable=4 * adapters, sampling=sampling, update=0, overhead=0, peak=0,
                               trainable_parameters=adapters, tokens_per_step=rows * (prompt_length
                                                                                      + completion_length)))


def largest_fitting_batch(fits, *, start: int) -> int:
    """The largest of ``start``, ``start // 2``, ..., 1 for which ``fits(batch)``; 0 when none does."""
    batch = start
    while batch >= 1 and not fits(batch):
        batch //= 2
    return batch


def check_fits(estimate: Plan, memory_bytes: int, *, what: str = "this run", gpu: str = "the GPU",
               in_4bit: bool = False) -> None:
    """Raise a ValueError that says what to change when ``estimate`` does not fit in ``memory_bytes``."""
    if estimate.peak <= memory_bytes:
        return
    biggest, size = max(estimate.parts.items(), key=lambda kv: kv[1])
    advice = {"sampling": "sample fewer completions at once (--prompts-per-step or --num-generations) or shorten "
                          "--max-completion-length",
              "the update": "lower --micro-batch-size (completions per forward/backward pass) or set "
                            "--logit-chunk-size (e.g. 64)",
              "the held-out evaluation": "decode fewer held-out completions at once (--eval-batch-size, e.g. "
                                         "64: the same samples, less memory), or evaluate fewer "
                                         "(--eval-problems, --eval-num-generations)"}[biggest]
    raise ValueError(f"{what} needs about {estimate.peak / GIB:.2f} GiB at its peak ({biggest} is the largest "
                     f"part: {size / GIB:.2f} GiB) and {gpu} has "
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
