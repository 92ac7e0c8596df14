"""Bit-for-bit comparison of float tensors: torch.equal calls -0.0 and +0.0 equal, and the merge kernels promise
the same bits, signed zeros included."""

from __future__ import annotations

import torch

_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """t's bit patterns (an integer view; non-float tensors as they are)."""
    return t.view(_INT[t.element_size()]) if t.is_floating_point() else t


def differing(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many entries of two same-shaped tensors differ in their bits."""
    return int((bits(a) != bits(b)).sum())
