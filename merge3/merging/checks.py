"""Input checks that run before any merge arithmetic, each failing with one line that names the file or tensor."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import Checkpoint

_FLOAT = {"F16", "BF16", "F32", "F64"}


def _arch(ckpt: Checkpoint) -> tuple:
    cfg = ckpt.config
    return (cfg.get("model_type"), tuple(cfg.get("architectures") or ()))


def check_compatible(base: str | Path, models: list[str | Path], check_values: bool = False,
                     vocab_tensors: set[str] = frozenset()) -> list[Checkpoint]:
    """Checks that every model has the base's architecture, tensor names and shapes (and, with
    ``check_values``, finite weights). Returns the opened checkpoints, base first. Raises ValueError.

    ``vocab_tensors`` (with a tokenizer_source): token-indexed tensors, whose number of rows may differ."""
    ckpts = [Checkpoint(base)] + [Checkpoint(m) for m in models if Path(m) != Path(base)]
    ref = ckpts[0]
    ref_meta = ref.meta
    for c in ckpts[1:]:
        if _arch(c) != _arch(ref):
            raise ValueError(f"{c.path}: architecture {_arch(c)} differs from the base's {_arch(ref)} ({ref.path})")
        meta = c.meta
        for name in ref_meta:
            if name not in meta:
                raise ValueError(f"{c.path}: tensor {name} is missing (present in the base {ref.path})")
        for name in meta:
            if name not in ref_meta:
                raise ValueError(f"{c.path}: tensor {name} is not in the base {ref.path}")
            shape, want = meta[name][0], ref_meta[name][0]
            if name in vocab_tensors and len(shape) == len(want) and shape[1:] == want[1:]:
                continue  # rows follow the vocabulary: aligned by token (vocab.py)
            if shape != want:
                hint = ""
                if not vocab_tensors and shape[1:] == want[1:] and _vocab_rows(c) != _vocab_rows(ref):
                    hint = " (the vocabularies differ: set tokenizer_source to base or union to align them)"
                raise ValueError(f"{c.path}: tensor {name} has shape {list(shape)}, the base has {list(want)}{hint}")
    if check_values:
        for c in ckpts:
            check_finite(c)
    return ckpts


def _vocab_rows(ckpt: Checkpoint):
    cfg = ckpt.config
    return (cfg if "vocab_size" in cfg else cfg.get("text_config", {})).get("vocab_size")


def check_finite(ckpt: Checkpoint | str | Path) -> None:
    """Raises ValueError naming the first tensor holding NaN or infinity (reads every tensor once)."""
    ckpt = ckpt if isinstance(ckpt, Checkpoint) else Checkpoint(ckpt)
    for name, (_shape, dtype) in ckpt.meta.items():
        if dtype in _FLOAT:
            assert_finite(ckpt.get(name), f"{ckpt.path}: tensor {name}")


def assert_finite(t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} has {bad} non-finite value(s)")
