"""Per-tensor merge arithmetic on a base tensor and task vectors (delta_i = theta_i - theta_base).

Everything is computed in float32 (float64 inputs stay float64) whatever the storage dtype, then written into
``out`` when given. Working from task vectors rather than endpoint weights is what lets the materializer keep
them resident; every method here is expressed in them exactly (linear: sum w_i theta_i = W base + sum w_i delta_i).
"""

from __future__ import annotations

import hashlib

import torch

from . import sparsify as S
from .methods import MethodSpec


def tensor_generator(seed: int, tensor_name: str, index: int, device) -> torch.Generator:
    """One generator per (seed, tensor, model): random masks do not depend on merge order or threading."""
    digest = hashlib.sha256(f"{seed}\0{tensor_name}\0{index}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _store(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


def merge_tensor(spec: MethodSpec, name: str, base: torch.Tensor, deltas: list, shared: dict, per_model: list[dict],
                 seed: int | None = None, out: torch.Tensor | None = None, ranks: list | None = None,
                 work: Workspace | None = None) -> torch.Tensor:
    """Merge one tensor. ``deltas[i]`` (None: the base itself) pairs with ``per_model[i]``; ``ranks[i]`` optional
    cached ranks of delta_i for the method's sparsifier (``sparsify.magnitude_order``, ``outlier_order`` or
    ``della_ranks``); ``work`` optional scratch reused across calls. Returns ``out`` (filled) or a new float32
    tensor."""
    if not base.is_floating_point():
        return _store(base, out)
    if spec.name in ("linear", "task_arithmetic"):
        return _weighted_sum(spec, name, base, deltas, shared, per_model, out)
    if spec.name == "slerp":
        return _store(_slerp(base, deltas[0], shared["t"]), out)
    if spec.name == "model_stock":
        return _store(_model_stock(base, deltas, shared["filter_wise"]), out)
    return _generalized(spec, name, base, deltas, shared, per_model, seed, ranks, out, work)


def _weighted_sum(spec, name, base, deltas, shared, per_model, out):
    """linear and task_arithmetic: c * base + sum s_i delta_i, written straight into ``out`` when it is float."""
    w = [p["weight"] for p in per_model]
    if spec.name == "linear":
        total = sum(w)
        if shared["normalize"]:
            if total == 0:
                raise ValueError(f"linear: the weights sum to 0 at {name}; cannot normalize")
            c, scale = 1.0, [x / total for x in w]
        else:
            c, scale = total, w
    else:  # task_arithmetic: no consensus, divisor sum of weights (guarded) when normalizing
        total = sum(w)
        div = total if (shared["normalize"] and abs(total) >= 1e-8) else 1.0
        lam = shared["lambda"]
        c, scale = 1.0, [x / div * lam for x in w]
    cdt = _compute_dtype(base)
    direct = out is not None and out.dtype == cdt and out.device == base.device
    acc = out if direct else torch.empty(base.shape, dtype=cdt, device=base.device)
    if c == 1.0:
        acc.copy_(base)
    else:
        torch.mul(base.to(cdt), c, out=acc)
    tmp = None
    for d, s in zip(deltas, scale):
        if d is not None and s != 0.0:
            if d.dtype != cdt or d.device != base.device:  # widen first: a mixed-dtype add_ is much slower
                tmp = torch.empty(base.shape, dtype=cdt, device=base.device) if tmp is None else tmp
                d = tmp.copy_(d)
            acc.add_(d, alpha=s)
    return acc if (direct or out is None) else _store(acc, out)


class Workspace:
    """Float32 scratch reused from tensor to tensor (and candidate to candidate): the TIES family needs about
    N + 3 buffers of the largest tensor's size; allocating them per tensor cost as much as the arithmetic."""

    def __init__(self):
        self._bufs: dict = {}

    def get(self, slot: str, n: int, dtype: torch.dtype, device) -> torch.Tensor:
        key = (slot, dtype, str(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bufs.values())


def _l1_rescale_(x: torch.Tensor, before: torch.Tensor) -> None:
    """In place: x * (before / after), as ``sparsify.rescale_l1`` computes it (same rounding)."""
    after = torch.linalg.vector_norm(x, ord=1)
    if before < S._EPS or after < S._EPS:
        return
    x.mul_(before / after)


def _sparsify_into(spec, name, i, delta, x, p, shared, seed, rank, work, n):
    """x (float32, flat, holding delta_i) sparsified in place, with the uncached functions' exact results."""
    rescale = shared.get("rescale", False)
    kind = spec.sparsify
    density = p["density"]
    if density >= 1:
        return
    if kind in ("magnitude", "della") and density <= 0:
        x.zero_()
        return
    if rank is None and kind == "magnitude":  # uncached (one-off merges): kthvalue threshold, sort only on ties
        x.copy_(S.magnitude(x, density, rescale))
        return
    if rank is None and kind == "magnitude_outliers":
        x.copy_(S.magnitude_outliers(x, density, p["gamma"], rescale))
        return
    before = torch.linalg.vector_norm(x, ord=1) if rescale else None
    keep = work.get("keep", n, torch.bool, x.device)
    if kind == "magnitude":
        torch.lt(rank, max(1, int(density * n)), out=keep)
    elif kind == "magnitude_outliers":
        target = int(density * n)
        if target <= 0 or n == 0:
            x.zero_()
            return
        n_top = int(p["gamma"] * n)
        n_bot = max(0, n - target - n_top)
        low = work.get("low", n, torch.bool, x.device)
        torch.ge(rank, n_bot, out=low)
        torch.lt(rank, n_bot + target, out=keep)
        torch.logical_and(low, keep, out=keep)
    else:
        gen = tensor_generator(seed if seed is not None else 0, name, i, x.device)
        r = work.get("rand", n, torch.float32, x.device)
        r.uniform_(0, 1, generator=gen)  # what torch.rand draws
        if kind == "random":
            torch.lt(r, density, out=r)  # 1.0 / 0.0 in place of the draws
        else:  # della: keep-probability rising with the in-row magnitude rank
            eps = p["epsilon"]
            if density + eps >= 1 or density - eps <= 0:
                raise ValueError(f"della needs density +/- epsilon inside (0, 1), got density={density:g}, "
                                 f"epsilon={eps:g}")
            if rank is None:
                rank = S.della_ranks(x.reshape(delta.shape))
            cols = rank.shape[1]
            probs = work.get("probs", n, torch.float32, x.device)
            probs.copy_(rank.reshape(-1))
            probs.div_(max(cols - 1, 1)).mul_(2 * eps).add_(density - eps)
            torch.lt(r, probs, out=r)
    if kind in ("magnitude", "magnitude_outliers"):
        r = work.get("rand", n, torch.float32, x.device)
        r.copy_(keep)
    x.mul_(r)  # a 0/1 float mask: the vectorized path (bool masks and masked_fill are several times slower)
    if rescale:
        _l1_rescale_(x, before)


def _generalized(spec, name, base, deltas, shared, per_model, seed, ranks, out=None, work=None):
    """The TIES family (mergekit's generalized task arithmetic): sparsify, weight, sign consensus, normalize.

    Works in float32 scratch reused across tensors (``work``), in place; the operations and their order are
    those of the reference formulation (task vectors masked, rescaled, weighted; the votes summed in model
    order; kept entries and their weights accumulated in model order), so the results are bit-identical."""
    cdt = _compute_dtype(base)
    work = work or Workspace()
    n = base.numel()
    dev = base.device
    xs, weights = [], []
    for i, (delta, p) in enumerate(zip(deltas, per_model)):
        x = work.get(f"x{i}", n, cdt, dev)
        if delta is None:
            x.zero_()
        else:
            x.copy_(delta.reshape(-1))
            if spec.sparsify:
                _sparsify_into(spec, name, i, delta, x, p, shared, seed, None if ranks is None else ranks[i],
                               work, n)
        x.mul_(p["weight"])
        xs.append(x)
        weights.append(p["weight"])
    if not xs:
        return _store(base.to(cdt), out)
    mixed = work.get("mixed", n, cdt, dev)
    if spec.consensus:
        votes = work.get("votes", n, cdt, dev)
        if shared.get("consensus_method", "sum") == "count":
            torch.sign(xs[0], out=votes)
            tmp = work.get("tmp", n, cdt, dev)
            for x in xs[1:]:
                votes.add_(torch.sign(x, out=tmp))
        else:
            votes.copy_(xs[0])
            for x in xs[1:]:
                votes.add_(x)
        majority = votes  # the votes are no longer needed: +1 / -1 (a tie counts as +)
        torch.ge(votes, 0, out=majority).mul_(2).sub_(1)
        normalize = shared["normalize"]
        divisor = work.get("divisor", n, cdt, dev) if normalize else None
        tmp = work.get("tmp", n, cdt, dev)
        mixed.zero_()
        if normalize:
            divisor.zero_()
        for x, w in zip(xs, weights):
            keep = torch.gt(torch.mul(x, majority, out=tmp), 0, out=tmp)  # sign(x) == majority (zeros never vote)
            mixed.add_(x.mul_(keep))
            if normalize:
                divisor.add_(keep, alpha=w)
        if normalize:
            divisor.add_(torch.eq(divisor, 0, out=tmp))  # 0 -> 1
            mixed.div_(divisor)
    else:
        mixed.copy_(xs[0])
        for x in xs[1:]:
            mixed.add_(x)
        total = float(sum(weights))
        if shared["normalize"]:
            mixed.div_(total if abs(total) >= 1e-8 else 1.0)
    if shared["lambda"] != 1:
        mixed.mul_(shared["lambda"])
    if base.dtype == cdt:
        mixed.add_(base.reshape(-1))
    else:  # widen first: a mixed-dtype add is several times slower than a copy and an add
        mixed.add_(work.get("tmp", n, cdt, dev).copy_(base.reshape(-1)))
    if out is None:
        return mixed.reshape(base.shape).clone()
    out.copy_(mixed.reshape(base.shape))
    return out


def _slerp(base, delta, t):
    """Spherical interpolation between the base and the other model, over the whole tensor; lerp when the two
    are nearly colinear (|cos| > 0.9995)."""
    cdt = _compute_dtype(base)
    a = base.to(cdt).reshape(-1)
    b = a + (0 if delta is None else delta.to(device=base.device, dtype=cdt).reshape(-1))
    if a.numel() == 0:
        return b.reshape(base.shape)
    na = torch.linalg.vector_norm(a)
    nb = torch.linalg.vector_norm(b)
    na = torch.where(na > 1e-8, na, torch.ones_like(na))
    nb = torch.where(nb > 1e-8, nb, torch.ones_like(nb))
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if float(dot.abs()) > 0.9995:
        ca, cb = 1 - t, t
    else:
        theta = torch.acos(dot)
        s = torch.sin(theta)
        ca, cb = torch.sin((1 - t) * theta) / s, torch.sin(t * theta) / s
    return (ca * a + cb * b).reshape(base.shape)


def _model_stock(base, deltas, filter_wise):
    """Model Stock: t = N c / (1 + (N - 1) c) from the mean pairwise cosine c of the offsets; base + t * mean."""
    cdt = _compute_dtype(base)
    w0 = base.to(cdt)
    offs = [torch.zeros_like(w0) if d is None else d.to(device=base.device, dtype=cdt) for d in deltas]
    if filter_wise:
        if w0.dim() == 1:
            w0 = w0.unsqueeze(0)
            offs = [o.unsqueeze(0) for o in offs]
    else:
        w0 = w0.reshape(-1)
        offs = [o.reshape(-1) for o in offs]
    cos = []
    for i, a in enumerate(offs):
        for b in offs[i + 1:]:
            norm = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cos.append(((a * b).sum(dim=-1) / norm.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    n = len(offs)
    den = 1 + (n - 1) * c
    singular = den.abs() < 1e-6  # no finite estimate: keep the base
    t = torch.where(singular, torch.zeros_like(c), (n * c) / torch.where(singular, torch.ones_like(den), den))
    mean = sum(offs[1:], offs[0].clone()) / n
    return (w0 + t * mean).reshape(base.shape)
