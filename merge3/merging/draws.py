"""The random draws of DARE and DELLA: uniform numbers computed from (seed, tensor, model, entry index).

Draw j of a key (k0, k1) is a 32-bit integer hash of j, mixed with k0 and then k1; its top 24 bits over 2**24
are the uniform number (as ``torch.rand`` makes a float32 from 24 random bits). A counter-based draw is a pure
function of its index, so:
- the fused kernels compute it inside their one pass (no stream of draws written and read back), on every
  thread at once; a sequential generator (torch's mt19937 on CPU) made them one core's 1.6 ns per entry and
  endpoint, several times the cost of the rest of a DARE merge;
- the same key gives the same masks on every device (a CPU generator and a CUDA generator draw different
  streams), so a merge exported on a CPU is the one a GPU worker scored.
Every step is integer arithmetic modulo 2**32, held in int32 with wrapping multiplication and logical shifts
(the arithmetic shift's sign bits masked off): the eager path in place, a cache-sized chunk at a time, the fused
kernels as one expression. int32 lanes are twice as many per vector instruction as int64 ones, and GPUs
multiply int32 natively (int64 is emulated there): the fused DARE pass drew in int64 before, about 10% slower
on one CPU core. Both paths give the bits of the formula ``tests/test_draws.py`` computes with Python integers.
"""

from __future__ import annotations

import hashlib
import math

import torch

_CHUNK = 1 << 16  # eager draws are made this many at a time, in place: their scratch stays in cache


def key(seed: int, tensor_name: str, index: int) -> tuple[int, int]:
    """The draw key of model ``index``'s task vector at ``tensor_name`` for merge seed ``seed``: two 32-bit
    halves of a hash, so masks do not depend on merge order, threading or device."""
    digest = hashlib.sha256(f"{seed}\0{tensor_name}\0{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


# The finalizer's rounds, shared by both paths: x ^= x >>> shift, then x *= multiplier (odd, below 2**31; none
# after the last shift).
_ROUNDS = ((16, 0x7FEB352D), (15, 0x2C1B3C6D), (16, None))


def _low_bits(shift: int) -> int:
    """The mask that makes an int32 right shift by ``shift`` logical (the arithmetic one's sign bits off)."""
    return (1 << (32 - shift)) - 1


def _lsr(x: torch.Tensor, shift: int) -> torch.Tensor:
    """x >>> shift on int32."""
    return (x >> shift) & _low_bits(shift)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finalizer (xor-shift-multiply, ``_ROUNDS``), on int32."""
    for shift, multiplier in _ROUNDS:
        x = x ^ _lsr(x, shift)
        if multiplier is not None:
            x = x * multiplier
    return x


def index(n: int, device=None) -> torch.Tensor:
    """The int32 entry indices 0 .. n - 1 the draws are made at; past int32's range their low 32 bits (as the
    eager path takes them)."""
    if n <= 1 << 31:
        return torch.arange(n, dtype=torch.int32, device=device)
    return torch.arange(n, dtype=torch.int64, device=device).to(torch.int32)


def bits_at(index: torch.Tensor, k0, k1) -> torch.Tensor:
    """The 24 random bits (int32, in [0, 2**24)) of the draws at int32 entry indices (``index``); k0, k1: the
    key's halves as int32 (``key_tensor``'s entries, or ``_signed32`` of each)."""
    return _lsr(_mix(_mix(index ^ k0) ^ k1), 8)


def uniform_at(index: torch.Tensor, k0, k1) -> torch.Tensor:
    """float32 uniform draws in [0, 1) at int32 entry indices: ``bits_at`` over 2**24. Shared by the eager path
    and the fused kernels, so both compute the same operations."""
    return bits_at(index, k0, k1).to(torch.float32) * (2.0 ** -24)


def threshold(p: float) -> int:
    """The integer T with draw < p exactly when its bits are < T, for p rounded to float32 (as the kernels
    compare it): bits * 2**-24 < p  <=>  bits < p * 2**24  <=>  bits < ceil(p * 2**24). Comparing the bits
    spares the fused kernel an int-to-float conversion per entry (a third of DARE's masking pass)."""
    return math.ceil(float(torch.tensor(float(p), dtype=torch.float32)) * 2 ** 24)


def _signed32(v: int) -> int:
    """A 32-bit pattern as the int32 value with the same bits."""
    return v - (1 << 32) if v >= 1 << 31 else v


def _shift_xor_(x: torch.Tensor, shift: int, tmp: torch.Tensor) -> None:
    """x ^= x >>> shift on int32, in place."""
    torch.bitwise_right_shift(x, shift, out=tmp).bitwise_and_(_low_bits(shift))
    x.bitwise_xor_(tmp)


def _mix32_(x: torch.Tensor, tmp: torch.Tensor) -> None:
    """``_mix`` in place, with ``tmp`` as scratch (no temporaries per step)."""
    for shift, multiplier in _ROUNDS:
        _shift_xor_(x, shift, tmp)
        if multiplier is not None:
            x.mul_(multiplier)


def uniform_(out: torch.Tensor, draw_key: tuple[int, int]) -> torch.Tensor:
    """Fill ``out`` (float32, any shape) with the draws of ``draw_key`` for entries 0 .. numel - 1: the values
    of ``uniform_at``, made a cache-sized chunk at a time in place (the eager kernels' path)."""
    flat = out.view(-1)
    k0, k1 = (_signed32(k) for k in draw_key)
    size = min(_CHUNK, flat.numel())
    x_buf = torch.empty(size, dtype=torch.int32, device=out.device)
    tmp_buf = torch.empty_like(x_buf)
    for start in range(0, flat.numel(), _CHUNK):
        stop = min(start + _CHUNK, flat.numel())
        x, tmp = x_buf[:stop - start], tmp_buf[:stop - start]
        if stop <= 1 << 31:
            torch.arange(start, stop, dtype=torch.int32, device=out.device, out=x)
        else:  # indices past int32's range: their low 32 bits, as ``index`` takes them
            x.copy_(torch.arange(start, stop, dtype=torch.int64, device=out.device))
        _mix32_(x.bitwise_xor_(k0), tmp)
        _mix32_(x.bitwise_xor_(k1), tmp)
        torch.bitwise_right_shift(x, 8, out=tmp).bitwise_and_(_low_bits(8))
        flat[start:stop].copy_(tmp)
    return flat.mul_(2.0 ** -24).view(out.shape)


def uniform(draw_key: tuple[int, int], shape, device=None) -> torch.Tensor:
    """A new float32 tensor of ``shape`` holding the draws of ``draw_key``."""
    return uniform_(torch.empty(shape, dtype=torch.float32, device=device), draw_key)


def key_tensor(draw_key: tuple[int, int], device) -> torch.Tensor:
    """The key as an int32 tensor of two entries (the halves' bits): what the fused kernels take (a tensor, not
    Python ints, so one compiled graph serves every key)."""
    return torch.tensor([_signed32(k) for k in draw_key], dtype=torch.int32, device=device)
