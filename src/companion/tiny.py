"""The CPU world's base model: a byte-level tokenizer, a tiny Qwen2, and the loader of the shipped checkpoint.

No GPU and no model hub here, so the project builds its own "Qwen2.5-base": the same ``transformers``
Qwen2 architecture a real Qwen2.5 uses, a few hundred thousand parameters, pretrained by
:mod:`companion.pretrain` on traces of a *noisy* solver (:mod:`companion.traces`) so that it is right
sometimes, wrong often, with traces of varied length. This module is what every chapter needs to use it:
:func:`build_tokenizer`, :func:`random_model` and :func:`load_tiny`.

The shipped checkpoint is rebuilt, bit for bit, by one command::

    companion pretrain --out data/tiny-base --overwrite
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models

from companion.shipped import data_dir

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN)
ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"
"""The characters every prompt template, trace line, tag (<think>, <answer>) and word problem is written in.
Each is one token; so is every other byte (a rarer character is its UTF-8 bytes, one token each)."""
DEFAULT_CONTEXT = 448


def build_tokenizer(model_max_length: int = DEFAULT_CONTEXT, *, vocab_size: int | None = None):
    """A byte-level tokenizer with no merges as a ``PreTrainedTokenizerFast``: one token per byte, so one
    token per character of the ASCII the tasks are written in.

    It is Qwen2's own tokenizer pipeline (NFC normaliser, ByteLevel pre-tokenizer and decoder, BPE) with
    an empty merge list and a 258-token vocabulary (pad, EOS, the 256 bytes). That matters: next to a
    Qwen2 ``config.json``, ``AutoTokenizer.from_pretrained`` always builds a ``Qwen2Tokenizer`` from the
    saved vocabulary, whatever ``tokenizer_config.json`` says; a tokenizer of another kind (say, raw
    characters with no ByteLevel step) would silently reload as a different one, dropping spaces and
    newlines. This one reloads token for token.

    Pad and EOS are distinct tokens, so masking the padding never masks the EOS a completion ends with.
    Padding is on the left, as generation needs.

    >>> tok = build_tokenizer()
    >>> ids = tok("3+5=8\\n<answer>")["input_ids"]
    >>> len(ids), tok.decode(ids)
    (14, '3+5=8\\n<answer>')
    >>> tok.pad_token, tok.eos_token, tok.padding_side, len(tok)
    ('<|pad|>', '<|endoftext|>', 'left', 258)

    ``vocab_size`` pads the vocabulary with tokens ``<258>``, ``<259>``, ... that no text encodes to (there are no
    merges) but that decode to their name: a tokenizer for a random model with a real model's vocabulary (say
    Qwen2.5's 151,936 rows, whose logits dominate a step's memory), where every sampled id must decode.

    >>> big = build_tokenizer(vocab_size=300)
    >>> len(big), big.decode([258, 299]), big("<258>")["input_ids"] == tok("<258>")["input_ids"]
    (300, '<258><299>', True)
    """
    from tokenizers import normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbol = bytes_to_unicode()  # byte -> the printable character ByteLevel writes for it (GPT-2's table)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(symbol[b] for b in range(256)))}
    if vocab_size is not None and vocab_size < len(vocab):
        raise ValueError(f"vocab_size must be at least {len(vocab)} (the special tokens and the 256 bytes)")
    vocab.update({f"<{i}>": i for i in range(len(vocab), vocab_size or 0)})  # '<', '>' and digits: their own bytes
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=None,
        padding_side="left",
        model_max_length=model_max_length,
    )


def model_config(
    tokenizer,
    *,
    hidden_size: int = 256,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 768,
    max_position_embeddings: int = DEFAULT_CONTEXT,
    rope_theta: float = 10_000.0,
):
    """The Qwen2 config of a tiny model over ``tokenizer``'s vocabulary (grouped-query attention,
    tied embeddings, as in the small Qwen2.5 models).

    >>> cfg = model_config(build_tokenizer(), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                    num_key_value_heads=1, intermediate_size=64)
    >>> cfg.model_type, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, cfg.tie_word_embeddings
    ('qwen2', 258, 0, 1, True)
    """
    from transformers import Qwen2Config

    if hidden_size % num_attention_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})")
    if num_attention_heads % num_key_value_heads:
        raise ValueError(f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                         f"num_key_value_heads ({num_key_value_heads})")
    if (hidden_size // num_attention_heads) % 2:
        raise ValueError(f"the head size hidden_size/num_attention_heads = {hidden_size // num_attention_heads} "
                         "must be even for rotary embeddings; change hidden_size or num_attention_heads")
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        use_sliding_window=False,
    )


def random_model(tokenizer, *, seed: int = 0, **sizes):
    """A freshly initialised (untrained) tiny Qwen2 for ``tokenizer``; deterministic for a seed."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(model_config(tokenizer, **sizes), attn_implementation="sdpa")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


# --- where the shipped checkpoint lives -------------------------------------------------------------------

SHIPPED_DIR = data_dir() / "tiny-base"
"""The shipped checkpoint in a source checkout (the package is installed editable from the repository)."""
TINY_ENV = "COMPANION_TINY_BASE"
"""Environment variable naming another checkpoint directory for :func:`load_tiny` (e.g. outside a checkout)."""


def tiny_dir(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint directory :func:`load_tiny` uses: ``path``, else ``$COMPANION_TINY_BASE``, else the shipped one."""
    return Path(path or os.environ.get(TINY_ENV) or SHIPPED_DIR).expanduser()


def load_tiny(path: str | os.PathLike | None = None):
    """The tiny base model (float32, eval mode) and its tokenizer: ``(model, tokenizer)``.

    ``path`` defaults to ``$COMPANION_TINY_BASE`` or the shipped ``data/tiny-base``. A missing, incomplete or
    corrupt directory raises an error that says how to rebuild it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_dir(path)
    rebuild = (f"rebuild it with `companion pretrain --out {path} --overwrite` (minutes on a CPU)"
               if os.access(path.parent, os.W_OK) and "site-packages" not in path.parts else
               f"reinstall the package, or rebuild the model with `companion pretrain --out DIR` into a directory of "
               f"yours and point ${TINY_ENV} at it")
    if not path.is_dir():
        raise FileNotFoundError(f"no tiny base checkpoint at {path}: {rebuild}, set ${TINY_ENV}, or pass the "
                                "directory of one")
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
               if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete tiny checkpoint (missing {', '.join(missing)}): {rebuild}")
    from safetensors import SafetensorError

    from companion.runs import quiet_progress

    try:
        with quiet_progress():
            model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, SafetensorError) as error:  # a damaged file (json's errors are ValueErrors)
        raise ValueError(f"{path} holds a corrupt checkpoint ({type(error).__name__}: {error}): {rebuild}") from error
    broken = info.get("missing_keys") or info.get("mismatched_keys")
    if broken or model.config.vocab_size != len(tokenizer) or tokenizer.eos_token_id is None:
        raise ValueError(f"{path} holds an inconsistent checkpoint (missing or mismatched weights: "
                         f"{list(broken)[:3]}; vocab {model.config.vocab_size} vs tokenizer {len(tokenizer)}): {rebuild}")
    if tokenizer.decode(tokenizer(ALPHABET, add_special_tokens=False)["input_ids"]) != ALPHABET:
        # e.g. a character tokenizer saved by an older version: next to a Qwen2 config it reloads as a
        # Qwen2Tokenizer that drops spaces and newlines, so the model would read text it was never trained on
        raise ValueError(f"{path} holds a tokenizer that does not reload to one token per character (spaces or "
                         f"newlines are lost): {rebuild}")
    model.eval()
    return model, tokenizer
