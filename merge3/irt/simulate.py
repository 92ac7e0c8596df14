"""Data simulated from a known multidimensional 2PL (shared by the IRT tests and usable by benchmarks)."""

from __future__ import annotations

import numpy as np

from ..evaluation.store import ResponseStore
from .params import ItemParams


def simulate_params(tasks=("ta", "tb"), n_items=300, dim=3, seed=0) -> ItemParams:
    rng = np.random.default_rng(seed)
    ts, ids, alpha, beta = [], [], [], []
    for k, t in enumerate(tasks):
        a = np.abs(rng.normal(0.6, 0.4, size=(n_items, dim)))
        a[:, k % dim] += 1.0  # each task leans on one skill
        ts += [t] * n_items
        ids += [f"{t}-{i:04d}" for i in range(n_items)]
        alpha.append(a)
        beta.append(rng.normal(0.0, 1.5, size=n_items))
    return ItemParams(tasks=ts, item_ids=ids, alpha=np.vstack(alpha), beta=np.concatenate(beta))


def sample_responses(params: ItemParams, theta, rng) -> dict:
    p = params.prob(theta)
    y = (rng.random(p.shape) < p).astype(int)
    out: dict = {}
    for t, i, v in zip(params.tasks, params.item_ids, y):
        out.setdefault(t, {})[i] = int(v)
    return out


def simulate_population(params: ItemParams, store_path, n_merges=30, seed=0):
    """Base + 3 endpoints + merges whose ability is a combination of theirs; returns (store, abilities)."""
    rng = np.random.default_rng(seed)
    d = params.dim
    base = np.zeros(d)
    ends = {f"e{k}": base + 1.5 * np.eye(d)[k % d] - 0.3 for k in range(3)}
    thetas = {"base": base, **ends}
    for j in range(n_merges):
        lam = rng.random(3) * 1.2
        thetas[f"m{j:03d}"] = base + sum(l * (ends[f"e{k}"] - base) for k, l in enumerate(lam))
    store = ResponseStore(store_path)
    for m, th in thetas.items():
        store.add(m, sample_responses(params, th, rng))
    return store, thetas
