"""The CPU world's base model: a character-level tokenizer and a tiny Qwen2, pretrained from scratch.

No GPU and no model hub here, so the project builds its own "Qwen2.5-base": the same ``transformers``
Qwen2 architecture a real Qwen2.5 uses, a few million parameters, pretrained on traces of a *noisy*
solver (:mod:`companion.traces`) so that it is right sometimes, wrong often, with traces of varied length.

The shipped checkpoint is rebuilt, bit for bit, by one command::

    companion pretrain --out data/tiny-base --overwrite
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Printable ASCII plus newline: every prompt template, trace line, tag (<think>, <answer>) and word problem
# is written in it. Tab and the rarer whitespace characters are left out; anything else becomes UNK.
ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"
DEFAULT_CONTEXT = 384


def build_tokenizer(model_max_length: int = DEFAULT_CONTEXT):
    """A character-level tokenizer as a ``PreTrainedTokenizerFast``: one token per character.

    Pad and EOS are distinct tokens, so masking the padding never masks the EOS a completion ends with.
    Padding is on the left, as generation needs. Save it with ``save_pretrained(dir)`` and load it back
    with ``AutoTokenizer.from_pretrained(dir)``.

    >>> tok = build_tokenizer()
    >>> ids = tok("3+5=8\\n<answer>")["input_ids"]
    >>> len(ids), tok.decode(ids)
    (14, '3+5=8\\n<answer>')
    >>> tok.pad_token, tok.eos_token, tok.padding_side, len(tok)
    ('<|pad|>', '<|endoftext|>', 'left', 99)
    """
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(ALPHABET))}
    # A BPE model with no merges is exactly a character tokenizer, and needs no pre-tokenizer, so spaces
    # and newlines are ordinary tokens; the Fuse decoder joins characters back without separators.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
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
    ('qwen2', 99, 0, 1, True)
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
