"""One-pass (fused) versions of the kernels' elementwise arithmetic, compiled with ``torch.compile``.

Eager PyTorch makes one pass over memory per operation: a TIES merge of three bf16 endpoints is about 40 passes
over each tensor (widen, mask, weigh, vote, keep, accumulate, divide, add the base, narrow). The functions here
state the same operations, in the same order, on whole flat tensors; Inductor (C++ on CPU, Triton on GPU) fuses
them into one loop that reads each input once and writes the live parameter once.

Results are bit-identical to the eager kernels on CPU (every scalar is rounded to float32 here, as the eager
kernels round it; Inductor compiles without floating-point contraction, except for the weighted sum, whose
eager ``add_(d, alpha=s)`` is a fused multiply-add): ``tests/test_fused.py`` checks it for every method. The
random draws of DARE and DELLA are computed inside the pass from their key (``merge3.merging.draws``: integer
arithmetic, exact everywhere). What does not fuse stays eager and is computed exactly as the eager kernels
compute it: the L1 norms of DARE/DELLA rescaling (on the masked vectors), slerp's angle and model stock's
cosines (both cached per tensor by ``kernels``). On GPUs (Triton) bit-identity with
the eager kernels is not checked here: no GPU was available.

Each method variant compiles once per process (about 10-20 s on CPU, cached on disk by Inductor afterwards), so
this pays off over a search's many candidates, not for a one-off merge.
"""

from __future__ import annotations

import functools

import torch

from . import draws

_F32 = torch.float32


@functools.lru_cache(maxsize=4096)  # a recipe's few weights, asked again for every tensor
def f32(x: float) -> float:
    """A Python scalar rounded to float32, as an eager float32 kernel rounds it before the arithmetic."""
    return float(torch.tensor(float(x), dtype=_F32))


def _select(delta: torch.Tensor, sel: tuple) -> torch.Tensor:
    """delta (widened) times its 0/1 keep mask. ``sel`` = (kind, ...) with one kind per method, so a method
    compiles one graph whatever its densities (see ``kernels._selection``):
      ("none",)                              every entry kept (no sparsification)
      ("rank_lt", rank, k)                   magnitude: rank < k
      ("rank_between", rank, lo, hi)         magnitude_outliers: lo <= rank < hi
      ("draw_lt", key, t)                    random: draw < p, as bits < t = draws.threshold(p)
      ("della", key, rank, a, b)             della: draw < rank * a + b (rank: normalized, float32)
    (key: ``draws.key_tensor``; the draws are computed here, see ``merge3.merging.draws``)"""
    kind = sel[0]
    x = delta.to(_F32)
    if kind == "none":
        return x
    if kind == "rank_lt":
        keep = sel[1] < sel[2]
    elif kind == "rank_between":
        keep = (sel[1] >= sel[2]) & (sel[1] < sel[3])
    else:  # the draws are computed in the pass from their key, not read from memory
        draw_key = sel[1]
        index = draws.index(x.numel(), x.device)
        if kind == "draw_lt":
            keep = draws.bits_at(index, draw_key[0], draw_key[1]) < sel[2]
        else:
            _, _, rank, a, b = sel
            keep = draws.uniform_at(index, draw_key[0], draw_key[1]) < (rank * a + b)
    return x * keep.to(_F32)


def _masked(out: torch.Tensor, delta: torch.Tensor, sel: tuple) -> None:
    out.copy_(_select(delta, sel))


def _masked_abs(out: torch.Tensor, magnitude: torch.Tensor, delta: torch.Tensor, sel: tuple) -> None:
    """``_masked``, writing |out| too in the same pass: what the L1 rescale sums (no pass of its own over out)."""
    x = _select(delta, sel)
    out.copy_(x)
    magnitude.copy_(x.abs())


def _combine(out: torch.Tensor, base: torch.Tensor, inputs: list, sels: list, factors: list | None, weights: list,
             consensus: str | None, normalize: bool, total: float, lam: float) -> None:
    """The TIES family: select, rescale (``factors``: 0-dim tensors, 1.0 where an input is not rescaled; None
    for a method that never rescales), weigh, sign consensus (None, "sum" or "count"), normalize, scale by
    lambda, add the base, write ``out``. Multiplying by 1.0 where the eager kernel skips a step leaves every bit
    as it is, and keeps the graph the same for every tensor. Without factors, Inductor vectorizes the TIES
    pass over 32 bf16 lanes instead of 16 (half-vector loads): about a third faster on one CPU core."""
    xs = [_select(d, sel) * w for d, sel, w in zip(inputs, sels, weights)] if factors is None else \
        [_select(d, sel) * f * w for d, sel, f, w in zip(inputs, sels, factors, weights)]
    if consensus is not None:
        if consensus == "count":
            votes = torch.sign(xs[0])
            for x in xs[1:]:
                votes = votes + torch.sign(x)
        else:
            votes = xs[0]
            for x in xs[1:]:
                votes = votes + x
        majority = (votes >= 0).to(_F32) * 2 - 1
        mixed = torch.zeros(base.shape, dtype=_F32, device=base.device)
        divisor = torch.zeros(base.shape, dtype=_F32, device=base.device)
        for x, w in zip(xs, weights):
            keep = x * majority > 0  # never for x = +-0
            # a select, not x * keep: Inductor folds away the zeros mixed starts from, so a -0 from x * 0 would
            # survive where the eager kernel's +0 + -0 gives +0 (seen where the base is -0)
            mixed = mixed + torch.where(keep, x, 0.0)
            divisor = divisor + keep.to(_F32) * w
        if normalize:
            mixed = mixed / (divisor + (divisor == 0).to(_F32))
    else:
        mixed = xs[0]
        for x in xs[1:]:
            mixed = mixed + x
        if normalize:
            mixed = mixed / total
    out.copy_(mixed * lam + base.to(_F32))


def _weighted_sum(out: torch.Tensor, start: torch.Tensor, deltas: list, scales: list) -> None:
    """linear and task_arithmetic: start + sum s_i delta_i (start: the base, or c * base computed eagerly), each
    term added as the eager ``add_(d, alpha=s)`` adds it: one fused multiply-add (compiled with contraction on,
    so the bits match)."""
    acc = start.to(_F32)
    for d, s in zip(deltas, scales):
        acc = torch.add(acc, d.to(_F32), alpha=s)
    out.copy_(acc)


def _slerp(out: torch.Tensor, base: torch.Tensor, delta: torch.Tensor, ca, cb) -> None:
    a = base.to(_F32)
    b = a + delta.to(_F32)
    out.copy_(ca * a + cb * b)


def _model_stock(out: torch.Tensor, base: torch.Tensor, deltas: list, t: torch.Tensor, n: int) -> None:
    offs = [d.to(_F32) for d in deltas]
    mean = offs[0]
    for o in offs[1:]:
        mean = mean + o
    out.copy_(base.to(_F32) + t * (mean / n))


class _Lazy:
    """A function compiled on first call (shape-generic), so importing this module costs nothing."""

    def __init__(self, fn, **options):
        self.fn = fn
        self.options = options
        self.compiled = None

    def __call__(self, *args):
        if self.compiled is None:
            import torch._dynamo as dynamo

            # One graph per method variant (method, normalize, dtypes, number of models): more than dynamo's
            # default 8 graphs per function in a process that merges with several methods.
            dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 512)
            self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True, options=self.options or None)
        with torch.profiler.record_function(f"merge3.fused.{self.fn.__name__.lstrip('_')}"):  # names it in profiles
            return self.compiled(*args)


masked = _Lazy(_masked)
masked_abs = _Lazy(_masked_abs)
weighted_sum = _Lazy(_weighted_sum, **{"cpp.enable_floating_point_contract_flag": "fast"})
combine = _Lazy(_combine)
slerp = _Lazy(_slerp)
model_stock = _Lazy(_model_stock)


def check_available(device) -> None:
    """Compiles and runs a tiny kernel: a missing compiler is a one-line error before any candidate, not after."""
    try:
        out = torch.empty(4, device=device)
        slerp(out, torch.ones(4, device=device), torch.ones(4, device=device), 0.5, 0.5)
    except Exception as e:  # noqa: BLE001 - any compiler failure means the same thing to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"fused merge kernels need torch.compile to work on {device} (a C++ compiler on CPU, "
                           f"Triton on GPU): {first}; turn them off with workers.fused_merge: false") from None


def use_fused(requested: bool | None, device) -> bool:
    """Whether a materializer on ``device`` merges with the fused kernels: ``requested`` True / False, or None
    for the default (on for GPUs, where a failed compile then falls back to eager with a warning)."""
    device = torch.device(device)
    if not (device.type == "cuda" if requested is None else requested):
        return False
    try:
        check_available(device)
    except RuntimeError as e:
        if requested:
            raise
        import warnings

        warnings.warn(f"{e} (falling back to the eager kernels)", stacklevel=3)
        return False
    return True
