"""Tokenizer and training for the tiny world's Llama models (CPU-friendly, deterministic)."""

from __future__ import annotations

import math
import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def make_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer: one token per whitespace-separated word."""
    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(set(words) - set(SPECIALS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>", model_max_length=256)


def new_model(spec, vocab_size: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def pack(tokenizer, docs: list[str], block: int) -> torch.Tensor:
    """Concatenates documents (each ended by <eos>) and cuts the stream into blocks of ``block`` tokens."""
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += enc + [tokenizer.eos_token_id]
    n = len(ids) // block
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def train_model(model, tokenizer, docs: list[str], spec, steps: int, lr: float, seed: int, bar=None, label: str = "",
                weight_decay: float = 0.01, frozen: tuple[str, ...] = (), rows: list[int] | None = None) -> float:
    """Trains ``model`` in place for ``steps`` AdamW steps (warm-up, cosine decay); returns the last loss.
    Fine-tunes use ``weight_decay=0``: decay would move every parameter, also the rows of words the
    fine-tune never sees, and blur which endpoint owns which weights."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = pack(tokenizer, docs, spec.block)
    order: list[int] = []
    for name, p in model.named_parameters():
        p.requires_grad_(not any(f in name for f in frozen))
    params = [p for p in model.parameters() if p.requires_grad]
    hooks = []
    if rows is not None:  # only these vocabulary rows of the embeddings and the output head learn
        mask = torch.zeros(model.config.vocab_size, 1)
        mask[list(rows)] = 1.0
        hooks = [w.register_hook(lambda g: g * mask) for w in (model.model.embed_tokens.weight, model.lm_head.weight)
                 if w.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        if len(order) < spec.batch:
            fresh = list(range(len(data)))
            rng.shuffle(fresh)
            order += fresh
        batch = data[order[: spec.batch]]
        del order[: spec.batch]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if bar is not None:
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix_str(f"{label} loss {loss_value:.3f}")
    model.eval()
    for h in hooks:
        h.remove()
    for p in model.parameters():
        p.requires_grad_(True)
    return loss_value
