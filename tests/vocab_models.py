"""Endpoints whose vocabularies differ from their base's, for the tokenizer_source tests: a base, then
fine-tune stand-ins (the base's weights plus noise) of which some add tokens with ``resize_token_embeddings``."""

from __future__ import annotations

from pathlib import Path

import torch

# Per endpoint: the tokens it adds. "<think>" is added by two of them (union: the mean of their rows fills the
# others' gap), "<tool>" and "<x>" by one each (its row is taken by every model).
ADDED = (("<tool>", "<think>"), (), ("<think>", "<x>"))


def tiny_base(out: Path) -> Path:
    """A tiny Llama with tied embeddings and a byte-level BPE tokenizer trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20
                            + ["merging models by their task vectors"] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def endpoint(base: Path, out: Path, added: tuple[str, ...], seed: int, scale: float, dtype=None) -> Path:
    """The base plus Gaussian noise of ``scale``; ``added`` tokens get rows through resize_token_embeddings."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base)
    if added:
        tok.add_tokens(list(added))
        model.resize_token_embeddings(len(tok), mean_resizing=False)  # rows set below
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a tied head is the embedding: perturbed once
            p.add_(torch.randn(p.shape, generator=g) * scale)
        if added:  # distinct rows for the new tokens (resizing samples them around the mean)
            emb = model.get_input_embeddings().weight
            emb[-len(added):] = torch.randn(len(added), emb.shape[1], generator=g) * emb.std()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def as_dtype(src: Path, out: Path, dtype) -> Path:
    """A copy of a folder with its weights in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(src, dtype=dtype).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def family(root: Path, base: Path, scale: float, dtype=None, added=ADDED) -> tuple[str, list[str]]:
    """(base, endpoints) as absolute paths (mergekit needs them), one endpoint per entry of ``added``."""
    eps = [endpoint(base, root / f"ep{i}", a, seed=i + 1, scale=scale, dtype=dtype) for i, a in enumerate(added)]
    return str(base.resolve()), [str(e.resolve()) for e in eps]
