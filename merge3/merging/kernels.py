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
                 seed: int | None = None, out: torch.Tensor | None = None, ranks: list | None = None) -> torch.Tensor:
    """Merge one tensor. ``deltas[i]`` (None: the base itself) pairs with ``per_model[i]``; ``ranks[i]`` optional
    cached DELLA ranks. Returns ``out`` (filled) or a new float32 tensor."""
    if not base.is_floating_point():
        return _store(base, out)
    if spec.name in ("linear", "task_arithmetic"):
        return _weighted_sum(spec, name, base, deltas, shared, per_model, out)
    if spec.name == "slerp":
        return _store(_slerp(base, deltas[0], shared["t"]), out)
    if spec.name == "model_stock":
        return _store(_model_stock(base, deltas, shared["filter_wise"]), out)
    return _store(_generalized(spec, name, base, deltas, shared, per_model, seed, ranks), out)


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
    for d, s in zip(deltas, scale):
        if d is not None and s != 0.0:
            acc.add_(d.to(base.device), alpha=s)
    return acc if (direct or out is None) else _store(acc, out)


def _sparsified(spec, name, i, delta, p, shared, seed, rank):
    d = delta
    rescale = shared.get("rescale", False)
    if spec.sparsify == "magnitude":
        return S.magnitude(d, p["density"], rescale)
    if spec.sparsify == "magnitude_outliers":
        return S.magnitude_outliers(d, p["density"], p["gamma"], rescale)
    gen = tensor_generator(seed if seed is not None else 0, name, i, d.device)
    if spec.sparsify == "random":
        return S.random(d, p["density"], gen, rescale)
    if spec.sparsify == "della":
        return S.della(d, p["density"], p["epsilon"], gen, rescale, ranks=rank)
    return d


def _generalized(spec, name, base, deltas, shared, per_model, seed, ranks):
    """The TIES family (mergekit's generalized task arithmetic): sparsify, weight, sign consensus, normalize."""
    cdt = _compute_dtype(base)
    weighted, weights = [], []
    for i, (delta, p) in enumerate(zip(deltas, per_model)):
        d = torch.zeros(base.shape, dtype=cdt, device=base.device) if delta is None \
            else delta.to(device=base.device, dtype=cdt)
        if spec.sparsify:
            d = _sparsified(spec, name, i, d, p, shared, seed, None if ranks is None else ranks[i])
        weighted.append(d * p["weight"] if d is delta else d.mul_(p["weight"]))  # never scale a resident tensor
        weights.append(p["weight"])
    if not weighted:
        return base.to(cdt)
    if spec.consensus:
        if shared.get("consensus_method", "sum") == "count":
            votes = sum(x.sign() for x in weighted)
        else:
            votes = sum(weighted[1:], weighted[0].clone())
        majority = (votes >= 0).to(cdt) * 2 - 1  # a tie counts as +
        del votes
        mixed = torch.zeros_like(weighted[0])
        divisor = torch.zeros_like(weighted[0])
        for x, w in zip(weighted, weights):
            keep = (x * majority) > 0  # sign(x) == majority sign (zeros, pruned or not, never vote)
            mixed += torch.where(keep, x, 0.0)
            divisor.add_(keep, alpha=w)
        divisor[divisor == 0] = 1
    else:
        mixed = sum(weighted[1:], weighted[0].clone())
        total = float(sum(weights))
        divisor = total if abs(total) >= 1e-8 else 1.0
    if shared["normalize"]:
        mixed /= divisor
    if shared["lambda"] != 1:
        mixed *= shared["lambda"]
    return base.to(cdt) + mixed


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
