"""Sparsification of one task vector (mergekit 0.1.5 semantics), computed in the tensor's dtype (float32 here).

Magnitude selection uses ``kthvalue`` thresholds instead of a full sort (the task vector is the same for every
candidate, only the density changes) and falls back to an exact sort only when ties at the threshold would keep
the wrong number of entries.
"""

from __future__ import annotations

import torch

from . import draws

_EPS = 1e-7
# Up to this many entries, ties are broken by a sort, as mergekit does (bit-identical on CPU); above it, by
# index order in O(n) (both choices are arbitrary; the sort would dominate the candidate's cost).
_SORT_LIMIT = 1 << 20


def _sorted_mask(a: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    mask = torch.zeros(a.numel(), dtype=torch.bool, device=a.device)
    mask[torch.sort(a).indices[r0:r1]] = True
    return mask


def l1(x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """sum |x|, as mergekit's L1 rescale computes it (``scratch``: a buffer of x's size to hold |x|; twice as
    fast as ``vector_norm(ord=1)``)."""
    return (x.abs() if scratch is None else torch.abs(x, out=scratch)).sum()


def l1_factor(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor | None:
    """The L1 rescale's factor before / after, or None (no rescaling) when either norm is about zero."""
    return None if (before < _EPS or after < _EPS) else before / after


def rescale_l1(tensor: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Scale the kept entries so the L1 norm matches the unpruned tensor (mergekit PR #245, not 1/density)."""
    factor = l1_factor(l1(tensor), l1(masked))
    return masked if factor is None else masked * factor


def _finish(tensor, mask, rescale):
    masked = tensor * mask
    return rescale_l1(tensor, masked) if rescale else masked


def _ranks_between(a: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Mask of the entries with ascending ranks [r0, r1) of a flat tensor, in O(n): two kthvalue thresholds,
    entries tied at a threshold taken in index order (low-precision task vectors, e.g. bf16, tie a lot; a sort
    would break such ties arbitrarily too)."""
    n = a.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=a.device)
    if r1 <= r0:
        return mask
    lo = torch.kthvalue(a, r0 + 1).values
    hi = torch.kthvalue(a, r1).values
    mask = (a > lo) & (a < hi)
    n_below_lo = int((a < lo).sum())
    eq_lo = (a == lo).nonzero().flatten()
    if bool(lo == hi):
        mask[eq_lo[r0 - n_below_lo:r1 - n_below_lo]] = True
        return mask
    mask[eq_lo[r0 - n_below_lo:]] = True
    n_below_hi = int((a < hi).sum())
    mask[(a == hi).nonzero().flatten()[:r1 - n_below_hi]] = True
    return mask


def _positions(perm: torch.Tensor) -> torch.Tensor:
    """Inverse of a permutation, int32: the position of each entry in the sorted order."""
    n = perm.numel()
    out = torch.empty(n, dtype=torch.int32, device=perm.device)
    out[perm] = torch.arange(n, dtype=torch.int32, device=perm.device)
    return out


def magnitude_order(tensor: torch.Tensor) -> torch.Tensor:
    """Each entry's rank in the order ``magnitude`` keeps entries (0: kept first), flat int32.

    It does not depend on the density, so a caller that sparsifies the same task vector for many candidates
    computes it once: ``magnitude(..., order=o)`` is then one comparison ``o < k``, with exactly the kept set
    of the uncached path (mergekit's descending argsort up to _SORT_LIMIT entries; above it, ties at the
    threshold in reverse index order, as ``_ranks_between`` takes them)."""
    a = tensor.abs().reshape(-1).to(torch.float32) if tensor.dtype != torch.float64 else tensor.abs().reshape(-1)
    if a.numel() <= _SORT_LIMIT:
        return _positions(torch.argsort(a, descending=True))
    return _positions(torch.sort(a, stable=True).indices.flip(0))


def outlier_order(tensor: torch.Tensor) -> torch.Tensor:
    """Each entry's ascending rank by magnitude as ``magnitude_outliers`` ranks them, flat int32 (cacheable)."""
    a = tensor.abs().reshape(-1).to(torch.float32) if tensor.dtype != torch.float64 else tensor.abs().reshape(-1)
    if a.numel() <= _SORT_LIMIT:
        return _positions(torch.sort(a).indices)
    return _positions(torch.sort(a, stable=True).indices)


def magnitude(tensor: torch.Tensor, density: float, rescale: bool = False,
              order: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the k = max(1, int(density * numel)) largest |entries| (TIES). ``order``: ``magnitude_order``."""
    if density >= 1:
        return tensor
    n = tensor.numel()
    if density <= 0 or n == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * n))
    mask = (order < k) if order is not None else top_k_mask(tensor.abs().reshape(-1), k)
    return _finish(tensor, mask.reshape(tensor.shape).to(tensor.dtype), rescale)


def top_k_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k largest entries of a flat tensor (|x|), the entries ``magnitude_order`` ranks below k, in
    O(n) without ranks: one kthvalue threshold; ties at it broken as ``magnitude_order`` breaks them (by a
    sort up to _SORT_LIMIT entries, above it the last ones in index order)."""
    n = a.numel()
    thr = torch.kthvalue(a, n - k + 1).values
    mask = a >= thr
    if int(mask.sum()) == k:
        return mask
    if n <= _SORT_LIMIT:
        mask.zero_()
        mask[torch.argsort(a, descending=True)[:k]] = True
        return mask
    torch.gt(a, thr, out=mask)
    need = k - int(mask.sum())  # entries equal to the threshold still to keep: the last ones
    tied = (a == thr).nonzero().flatten()
    mask[tied[tied.numel() - need:]] = True
    return mask


def between_mask(a: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Mask of the entries of a flat tensor (|x|) with ascending ranks [r0, r1), those ``outlier_order`` ranks
    there, without ranks."""
    if a.numel() > _SORT_LIMIT:
        return _ranks_between(a, r0, r1)
    return _sorted_mask(a, r0, r1)


def magnitude_outliers(tensor: torch.Tensor, density: float, gamma: float = 0.01,
                       rescale: bool = False, order: torch.Tensor | None = None) -> torch.Tensor:
    """Drop the largest gamma fraction and the smallest entries so that int(density * numel) remain (breadcrumbs)."""
    if density >= 1:
        return tensor
    n = tensor.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    if target <= 0 or n == 0:
        return _finish(tensor, torch.zeros_like(tensor), rescale)
    if order is not None:
        mask = (order >= n_bot) & (order < n_bot + target)
    else:
        mask = between_mask(tensor.abs().reshape(-1), n_bot, n_bot + target)
    return _finish(tensor, mask.reshape(tensor.shape).to(tensor.dtype), rescale)


def random(tensor: torch.Tensor, density: float, draw_key: tuple[int, int],
           rescale: bool = False) -> torch.Tensor:
    """Keep each entry with probability density (DARE); ``draw_key``: ``draws.key(seed, tensor name, model)``."""
    if density >= 1:
        return tensor
    mask = draws.uniform(draw_key, tensor.shape, tensor.device) < density
    return _finish(tensor, mask.to(tensor.dtype), rescale)


def della_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Per-row magnitude ranks normalized to [0, 1] (0: smallest; (rank - min) / (max - min)), float32, one row
    per output row; independent of the candidate, so cacheable. Normalized once here rather than per candidate:
    the kernels then spend no conversion and no division per entry."""
    t2 = tensor.unsqueeze(0) if tensor.dim() < 2 else tensor
    t2 = t2.reshape(t2.shape[0], -1) if t2.dim() > 2 else t2
    ranks = torch.argsort(torch.argsort(t2.abs(), dim=1), dim=1)
    return ranks.to(torch.float32).div_(max(t2.shape[1] - 1, 1))


def della(tensor: torch.Tensor, density: float, epsilon: float, draw_key: tuple[int, int],
          rescale: bool = False, ranks: torch.Tensor | None = None) -> torch.Tensor:
    """Keep entries with probability rising with their rank by magnitude within the row (DELLA MagPrune)."""
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(f"della needs density +/- epsilon inside (0, 1), got density={density:g}, epsilon={epsilon:g}")
    if ranks is None:
        ranks = della_ranks(tensor)
    probs = (density - epsilon) + ranks * (2 * epsilon)
    mask = draws.uniform(draw_key, probs.shape, tensor.device) < probs
    return _finish(tensor, mask.reshape(tensor.shape).to(tensor.dtype), rescale)
