"""Per-tensor merge arithmetic on a base tensor and task vectors (delta_i = theta_i - theta_base).

Everything is computed in float32 (float64 inputs stay float64) whatever the storage dtype, then written into
``out`` when given. Working from task vectors rather than endpoint weights is what lets the materializer keep
them resident; every method here is expressed in them exactly (linear: sum w_i theta_i = W base + sum w_i delta_i).
"""

from __future__ import annotations

import torch

from . import draws as D
from . import sparsify as S
from .methods import MethodSpec


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _store(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


# Below this many entries a compiled call's fixed cost (guards, launch) exceeds the passes it saves: eager. Not
# for the TIES family, whose eager kernel makes 20-100 operations per tensor, each costing about as much.
FUSED_MIN_NUMEL = 1 << 16
_FEW_PASSES = ("linear", "task_arithmetic", "slerp", "model_stock")


def merge_tensor(spec: MethodSpec, name: str, base: torch.Tensor, deltas: list, shared: dict, per_model: list[dict],
                 seed: int | None = None, out: torch.Tensor | None = None, ranks: list | None = None,
                 work: Workspace | None = None, fused: bool = False) -> torch.Tensor:
    """Merge one tensor. ``deltas[i]`` (None: the base itself) pairs with ``per_model[i]``; ``ranks[i]`` optional
    cached ranks of delta_i for the method's sparsifier (``sparsify.magnitude_order``, ``outlier_order`` or
    ``della_ranks``); ``work`` optional scratch (and per-tensor constants) reused across calls; ``fused``: the
    same arithmetic in one compiled pass (``fused``; same bits on CPU). Returns ``out`` (filled) or a new float32
    tensor."""
    if not base.is_floating_point():
        return _store(base, out)
    fused = fused and (base.numel() >= FUSED_MIN_NUMEL or spec.name not in _FEW_PASSES)
    if spec.name in ("linear", "task_arithmetic"):
        return _weighted_sum(spec, name, base, deltas, shared, per_model, out, fused, work)
    if fused:
        out = torch.empty(base.shape, dtype=_compute_dtype(base), device=base.device) if out is None else out
        return _fused(spec, name, base, deltas, shared, per_model, seed, ranks, out, work or Workspace())
    if spec.name == "slerp":
        return _slerp(base, deltas[0], shared["t"], work, name, out)
    if spec.name == "model_stock":
        return _model_stock(base, deltas, shared["filter_wise"], work, name, out)
    return _generalized(spec, name, base, deltas, shared, per_model, seed, ranks, out, work)


def _weighted_sum(spec, name, base, deltas, shared, per_model, out, fused=False, work=None):
    """linear and task_arithmetic: c * base + sum s_i delta_i, written straight into ``out`` when it is float
    (else accumulated in float32 scratch: the workspace's when given, reused across tensors and candidates)."""
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
    if fused and cdt == torch.float32:
        from . import fused as F

        out = torch.empty(base.shape, dtype=cdt, device=base.device) if out is None else out
        terms = [(d, s) for d, s in zip(deltas, scale) if d is not None and s != 0.0]
        # c * base stays its own (eager) rounding step: compiled with contraction on, it would join the first add
        start = base if c == 1.0 else torch.mul(base.to(cdt), c)
        F.weighted_sum(out.reshape(-1), start.reshape(-1), [d.reshape(-1).to(base.device) for d, _ in terms],
                       [F.f32(s) for _, s in terms])
        return out

    def scratch(slot):
        if work is None or out is None:  # without ``out`` the result is returned: never a workspace buffer
            return torch.empty(base.shape, dtype=cdt, device=base.device)
        return work.get(slot, base.numel(), cdt, base.device).view(base.shape)

    direct = out is not None and out.dtype == cdt and out.device == base.device
    acc = out if direct else scratch("acc")
    if c == 1.0:
        acc.copy_(base)
    else:
        torch.mul(base.to(cdt), c, out=acc)
    tmp = None
    for d, s in zip(deltas, scale):
        if d is not None and s != 0.0:
            if d.dtype != cdt or d.device != base.device:  # widen first: a mixed-dtype add_ is much slower
                tmp = scratch("tmp") if tmp is None else tmp
                d = tmp.copy_(d)
            acc.add_(d, alpha=s)
    return acc if (direct or out is None) else _store(acc, out)


class Workspace:
    """Float32 scratch reused from tensor to tensor (and candidate to candidate): the TIES family needs about
    N + 3 buffers of the largest tensor's size; allocating them per tensor cost as much as the arithmetic.

    ``constants`` holds what depends on the resident tensors only, not on the candidate (slerp's angle, model
    stock's interpolation factor, the L1 norm of a task vector), keyed by the tensors' identities: a workspace
    belongs to one materializer, whose base and task vectors live as long as it does."""

    def __init__(self):
        self._bufs: dict = {}
        self.constants: dict = {}

    def constant(self, key: tuple, compute):
        if key not in self.constants:
            self.constants[key] = compute()
        return self.constants[key]

    def get(self, slot: str, n: int, dtype: torch.dtype, device) -> torch.Tensor:
        key = (slot, dtype, str(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]

    def zeros(self, slot: str, n: int, dtype: torch.dtype, device) -> torch.Tensor:
        """n zeros, filled once: a read-only input (callers never write into it)."""
        key = ("zeros", slot, dtype, str(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self._bufs[key] = torch.zeros(n, dtype=dtype, device=device)
        return buf[:n]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bufs.values())


def _l1_rescale_(x: torch.Tensor, before: torch.Tensor, scratch: torch.Tensor) -> None:
    """In place: x * (before / after), as ``sparsify.rescale_l1`` computes it (same rounding)."""
    factor = S.l1_factor(before, S.l1(x, scratch))
    if factor is not None:
        x.mul_(factor)


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
    # the unpruned L1 norm does not depend on the candidate: once per tensor (the fused path's constant)
    before = work.constant(("l1", name, i, id(delta)), lambda: S.l1(x)) if rescale else None
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
        r = D.uniform_(work.get("rand", n, torch.float32, x.device), D.key(seed or 0, name, i))
        if kind == "random":
            torch.lt(r, density, out=r)  # 1.0 / 0.0 in place of the draws
        else:  # della: keep-probability rising with the in-row magnitude rank
            eps = p["epsilon"]
            if density + eps >= 1 or density - eps <= 0:
                raise ValueError(f"della needs density +/- epsilon inside (0, 1), got density={density:g}, "
                                 f"epsilon={eps:g}")
            if rank is None:
                rank = S.della_ranks(x.reshape(delta.shape))
            probs = work.get("probs", n, torch.float32, x.device)
            probs.copy_(rank.reshape(-1)).mul_(2 * eps).add_(density - eps)
            torch.lt(r, probs, out=r)
    if kind in ("magnitude", "magnitude_outliers"):
        r = work.get("rand", n, torch.float32, x.device)
        r.copy_(keep)
    x.mul_(r)  # a 0/1 float mask: the vectorized path (bool masks and masked_fill are several times slower)
    if rescale:
        _l1_rescale_(x, before, r)  # the mask is spent: its buffer holds |x|


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


def _slerp_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos of the angle between two flat tensors (clamped to [-1, 1])."""
    na = torch.linalg.vector_norm(a)
    nb = torch.linalg.vector_norm(b)
    na = torch.where(na > 1e-8, na, torch.ones_like(na))
    nb = torch.where(nb > 1e-8, nb, torch.ones_like(nb))
    return ((a / na) * (b / nb)).sum().clamp(-1, 1)


def _slerp_factors(dot: torch.Tensor, t: float):
    """(ca, cb) with slerp = ca * a + cb * b; lerp when the two are nearly colinear (|cos| > 0.9995)."""
    if float(dot.abs()) > 0.9995:
        return 1 - t, t
    theta = torch.acos(dot)
    s = torch.sin(theta)
    return torch.sin((1 - t) * theta) / s, torch.sin(t * theta) / s


def _slerp_ends(base, delta):
    """The two flat tensors slerp interpolates between: the base and the other model (base + delta)."""
    cdt = _compute_dtype(base)
    a = base.to(cdt).reshape(-1)
    return a, a + (0 if delta is None else delta.to(device=base.device, dtype=cdt).reshape(-1))


def _slerp_dot(base, delta, work, name, ends=None):
    """cos of the angle between the two ends; it does not depend on t: with a workspace, computed once per
    tensor (``ends``: ``_slerp_ends`` when the caller has them)."""
    def compute():
        return _slerp_cos(*(ends or _slerp_ends(base, delta)))

    return compute() if work is None else work.constant(("slerp", name, id(base), id(delta)), compute)


def _slerp(base, delta, t, work=None, name="", out=None):
    """Spherical interpolation between the base and the other model, over the whole tensor. With a workspace,
    the same operations in place on its scratch (fresh tensors of a model's size per candidate cost more than
    the arithmetic). Returns ``out`` (filled) or a new tensor."""
    if work is None or delta is None or base.numel() == 0:
        a, b = _slerp_ends(base, delta)
        if a.numel() == 0:
            return _store(b.reshape(base.shape), out)
        ca, cb = _slerp_factors(_slerp_dot(base, delta, work, name, ends=(a, b)), t)
        return _store((ca * a + cb * b).reshape(base.shape), out)
    cdt, n, dev = _compute_dtype(base), base.numel(), base.device
    a = work.get("slerp_a", n, cdt, dev).copy_(base.reshape(-1))
    b = work.get("slerp_b", n, cdt, dev).copy_(delta.reshape(-1)).add_(a)  # a + delta
    ca, cb = _slerp_factors(_slerp_dot(base, delta, work, name, ends=(a, b)), t)
    result = a.mul_(ca).add_(b.mul_(cb)).reshape(base.shape)  # ca * a + cb * b
    return result.clone() if out is None else _store(result, out)


def _stock_views(base, deltas, filter_wise):
    """The base and offsets as model stock compares them: rows (filter_wise) or one flat vector."""
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
    return w0, offs


def _stock_factor(offs):
    """t = N c / (1 + (N - 1) c) from the mean pairwise cosine c of the offsets (per row when filter_wise)."""
    cos = []
    for i, a in enumerate(offs):
        for b in offs[i + 1:]:
            norm = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cos.append(((a * b).sum(dim=-1) / norm.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    n = len(offs)
    den = 1 + (n - 1) * c
    singular = den.abs() < 1e-6  # no finite estimate: keep the base
    return torch.where(singular, torch.zeros_like(c), (n * c) / torch.where(singular, torch.ones_like(den), den))


def _stock_key(name, base, deltas, filter_wise):
    return ("model_stock", name, bool(filter_wise), id(base), tuple(id(d) for d in deltas))


def _model_stock(base, deltas, filter_wise, work=None, name="", out=None):
    """Model Stock: base + t * mean of the offsets; t depends on the endpoints only (cached with a workspace,
    and then computed in place on its scratch, as ``_slerp``). Returns ``out`` (filled) or a new tensor."""
    n = len(deltas)
    if work is None or any(d is None for d in deltas):
        w0, offs = _stock_views(base, deltas, filter_wise)
        t = (_stock_factor(offs) if work is None else
             work.constant(_stock_key(name, base, deltas, filter_wise), lambda: _stock_factor(offs)))
        mean = sum(offs[1:], offs[0].clone()) / n
        return _store((w0 + t * mean).reshape(base.shape), out)
    t = work.constant(_stock_key(name, base, deltas, filter_wise),
                      lambda: _stock_factor(_stock_views(base, deltas, filter_wise)[1]))
    cdt, size, dev = _compute_dtype(base), base.numel(), base.device
    shape = (base.shape if base.dim() > 1 else (1, -1)) if filter_wise else (-1,)  # _stock_views' shapes
    mean = work.get("stock_mean", size, cdt, dev).view(shape).copy_(deltas[0].reshape(shape))
    tmp = work.get("stock_tmp", size, cdt, dev).view(shape)
    for d in deltas[1:]:
        mean.add_(tmp.copy_(d.reshape(shape)))  # widened first: a mixed-dtype add_ is slower
    result = mean.div_(n).mul_(t).add_(tmp.copy_(base.reshape(shape))).reshape(base.shape)  # w0 + t * mean
    return result.clone() if out is None else _store(result, out)


# ---------------------------------------------------------------------------------------------------------------
# Fused: the same arithmetic, compiled into one pass (merge3.merging.fused). Reductions stay eager, as above.

def _flat_on(t: torch.Tensor | None, device, work: Workspace, slot: str) -> torch.Tensor | None:
    """A flat view of t on ``device`` (offloaded task vectors are copied into scratch first)."""
    if t is None:
        return None
    if t.device == device:
        return t.reshape(-1)
    return work.get(slot, t.numel(), t.dtype, device).copy_(t.reshape(-1))


def _selection(spec, name, i, delta, shape, p, seed, rank, work):
    """What ``_sparsify_into`` multiplies delta_i (flat, of ``shape``) by, in the fused kernel's terms (one kind
    per method: an entry kept whole is a mask of ones); None: the selection is all zeros."""
    from .fused import f32

    kind, density, n, dev = spec.sparsify, p["density"], delta.numel(), delta.device
    if kind is None or density >= 1:
        return _keep_all(spec, rank, work, dev, n)
    if kind in ("magnitude", "della") and density <= 0:
        return None
    if kind == "magnitude":
        k = max(1, int(density * n))
        if rank is None:  # uncached: this candidate's kept set (a threshold, not a sort of every entry)
            return ("rank_lt", _kept_as_rank(S.top_k_mask(_abs32(delta), k), work, i), 1)
        return ("rank_lt", rank.reshape(-1), k)
    if kind == "magnitude_outliers":
        target = int(density * n)
        if target <= 0 or n == 0:
            return None
        n_bot = max(0, n - target - int(p["gamma"] * n))
        if rank is None:
            keep = S.between_mask(_abs32(delta), n_bot, n_bot + target)
            return ("rank_between", _kept_as_rank(keep, work, i), 0, 1)
        return ("rank_between", rank.reshape(-1), n_bot, n_bot + target)
    draw_key = D.key_tensor(D.key(seed or 0, name, i), dev)  # the kernel computes the draws from it
    if kind == "random":
        return ("draw_lt", draw_key, D.threshold(density))
    eps = p["epsilon"]
    if density + eps >= 1 or density - eps <= 0:
        raise ValueError(f"della needs density +/- epsilon inside (0, 1), got density={density:g}, "
                         f"epsilon={eps:g}")
    rank = S.della_ranks(delta.to(torch.float32).reshape(shape)) if rank is None else rank
    return ("della", draw_key, rank.reshape(-1), f32(2 * eps), f32(density - eps))


def _abs32(delta: torch.Tensor) -> torch.Tensor:
    """|delta| in float32, flat: what the rankers and the eager kernel select on (ties break the same way)."""
    return delta.reshape(-1).to(torch.float32).abs()


def _kept_as_rank(keep: torch.Tensor, work: Workspace, i: int) -> torch.Tensor:
    """A keep mask as int32 ranks, 0 kept and 1 dropped: the cached ranks' dtype, so the compiled graph is the
    same with or without the rank cache."""
    rank = work.get(f"rank{i}", keep.numel(), torch.int32, keep.device)
    return rank.copy_(torch.logical_not(keep, out=keep))


def _keep_all(spec, rank, work, dev, n):
    """The method's selection kind with a mask of ones (entries kept whole, or already selected). ``rank``: any
    tensor of n entries of the cached ranks' dtype (a mask of ones compares nothing that matters), so the graph
    stays the same."""
    kind = spec.sparsify
    if kind is None:
        return ("none",)
    dtype = torch.float32 if kind == "della" else torch.int32  # della's ranks are normalized
    rank = work.zeros("rank", n, dtype, dev) if rank is None else rank.reshape(-1)
    if kind == "magnitude":
        return ("rank_lt", rank, n)
    if kind == "magnitude_outliers":
        return ("rank_between", rank, 0, n)
    any_key = work.zeros("draw_key", 2, torch.int32, dev)  # every draw is below 1.0
    if kind == "random":
        return ("draw_lt", any_key, 1 << 24)
    return ("della", any_key, rank, 0.0, 1.0)


def _fused(spec, name, base, deltas, shared, per_model, seed, ranks, out, work):
    from . import fused as F

    dev, n = base.device, base.numel()
    flat_out = out.reshape(-1)
    if spec.name == "slerp":
        delta = deltas[0]
        if delta is None:
            return _slerp(base, delta, shared["t"], work, name, out)
        ca, cb = _slerp_factors(_slerp_dot(base, delta, work, name), shared["t"])
        ca, cb = (F.f32(ca), F.f32(cb)) if isinstance(ca, float) else (ca, cb)
        F.slerp(flat_out, base.reshape(-1), _flat_on(delta, dev, work, "dev0"), ca, cb)
        return out
    if spec.name == "model_stock":
        fw = shared["filter_wise"]
        if any(d is None for d in deltas) or base.dim() > 2:
            return _model_stock(base, deltas, fw, work, name, out)
        t = work.constant(_stock_key(name, base, deltas, fw), lambda: _stock_factor(_stock_views(base, deltas, fw)[1]))
        shape = (-1, base.shape[-1]) if (fw and base.dim() > 1) else ((1, -1) if fw else (-1,))
        views = [_flat_on(d, dev, work, f"dev{i}").reshape(shape) for i, d in enumerate(deltas)]
        F.model_stock(out.reshape(shape), base.reshape(shape), views, t, len(deltas))
        return out
    if not per_model:
        return _store(base.to(_compute_dtype(base)), out)
    # The same graph for every tensor of a recipe: every input of one dtype, a selection of one kind (a mask of
    # ones where the eager kernel skips it; none when rescaling, whose inputs are masked first into float32
    # scratch), a factor per input when rescaling (1.0 likewise; none otherwise).
    rescale = bool(shared.get("rescale", False))
    some_rank = next((r for r in ranks or [] if r is not None), None)
    dtype = torch.float32 if rescale else next((d.dtype for d in deltas if d is not None), base.dtype)
    inputs, sels, weights = [], [], []
    factors = [] if rescale else None
    for i, (delta, p) in enumerate(zip(deltas, per_model)):
        d = _flat_on(delta, dev, work, f"dev{i}")
        rank = None if ranks is None else ranks[i]
        sel = None if d is None else _selection(spec, name, i, d, base.shape, p, seed, rank, work)
        empty = sel is None
        if empty:  # nothing kept: zeros, as the eager kernel's x.zero_()
            d, sel = work.zeros("input", n, dtype, dev), _keep_all(spec, some_rank, work, dev, n)
        if rescale:  # the L1 rescale needs the masked vector whole: mask it first, then combine it as it is
            x = work.get(f"x{i}", n, torch.float32, dev)
            factor = work.constant(("one", i, str(dev)), lambda: torch.ones((), dtype=torch.float32, device=dev))
            if p["density"] < 1 and not empty:
                magnitude = work.get("abs", n, torch.float32, dev)
                F.masked_abs(x, magnitude, d, sel)
                before = work.constant(("l1", name, i, id(delta)), lambda: S.l1(d.to(torch.float32)))
                rescaled = S.l1_factor(before, magnitude.sum())  # S.l1(x): the same |x|, summed alike
                factor = factor if rescaled is None else rescaled
            else:
                F.masked(x, d, sel)
            d, sel = x, ("none",)
            factors.append(factor)
        inputs.append(d)
        sels.append(sel)
        weights.append(F.f32(p["weight"]))
    consensus = shared.get("consensus_method", "sum") if spec.consensus else None
    total = float(sum(p["weight"] for p in per_model))
    F.combine(flat_out, base.reshape(-1), inputs, sels, factors, weights, consensus,
              bool(shared["normalize"]), F.f32(total if abs(total) >= 1e-8 else 1.0), F.f32(shared["lambda"]))
    return out
