"""Input checks that run before any merge arithmetic, each failing with one line that names the file or tensor."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import Checkpoint

_FLOAT = {"F16", "BF16", "F32", "F64"}


def _arch(ckpt: Checkpoint) -> tuple:
    cfg = ckpt.config
    return (cfg.get("model_type"), tuple(cfg.get("architectures") or ()))


def check_compatible(base: str | Path, models: list[str | Path], check_values: bool = False) -> list[Checkpoint]:
    """Checks that every model has the base's architecture, tensor names and shapes (and, with
    ``check_values``, finite weights). Returns the opened checkpoints, base first. Raises ValueError."""
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
            if meta[name][0] != ref_meta[name][0]:
                raise ValueError(f"{c.path}: tensor {name} has shape {list(meta[name][0])}, "
                                 f"the base has {list(ref_meta[name][0])}")
    if check_values:
        for c in ckpts:
            check_finite(c)
    return ckpts


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
