"""Anchor extraction: the few items per task a candidate is evaluated on (tinyBenchmarks, Polo et al. 2024, sec. 3;
MERGE3, Mencattini et al. 2025, sec. 3.1).

* ``random``: n items drawn uniformly per task, weights 1/n (MERGE3's default).
* ``irt_cluster``: k-means with k = n over the items' IRT embeddings E_i = (alpha_i, beta_i); the anchor of a
  cluster is its item closest to the centroid, weighted by the cluster's share of the task's items.
* ``correctness_cluster``: the same over each item's correctness pattern across the calibration population
  (the column Y[:, i] of the response matrix), so anchors represent items that the population answers alike.

With cluster weights w_j = |C_j| / N the anchor estimate sum_j w_j y_{a_j} stands for the cluster means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METHODS = ("random", "irt_cluster", "correctness_cluster")


@dataclass
class Anchors:
    method: str
    n: int
    seed: int
    items: dict[str, list[str]]      # task -> anchor item ids
    weights: dict[str, list[float]]  # task -> weights (sum to 1), aligned with items

    @classmethod
    def uniform(cls, items: dict[str, list[str]], method: str = "given", seed: int = 0) -> "Anchors":
        """Anchors with weights 1/n: items chosen elsewhere (e.g. uniformly at random without a calibration)."""
        return cls(method=method, n=max((len(v) for v in items.values()), default=0), seed=int(seed),
                   items={t: list(map(str, v)) for t, v in items.items()},
                   weights={t: [1.0 / len(v)] * len(v) for t, v in items.items()})

    def key(self) -> tuple:
        """Identity for caches: the same items and weights give the same key."""
        return tuple((t, tuple(self.items[t]), tuple(round(w, 12) for w in self.weights[t])) for t in self.items)

    def total(self) -> int:
        return sum(len(v) for v in self.items.values())

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"method": self.method, "n": self.n, "seed": self.seed, "items": self.items,
                                    "weights": self.weights}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Anchors":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            a = cls(method=d["method"], n=int(d["n"]), seed=int(d.get("seed", 0)),
                    items={t: [str(i) for i in v] for t, v in d["items"].items()},
                    weights={t: [float(w) for w in v] for t, v in d["weights"].items()})
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: anchors file not found") from None
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: malformed anchors file ({exc})") from None
        for t in a.items:
            if len(a.items[t]) != len(a.weights.get(t, [])):
                raise ValueError(f"{path}: task {t} has {len(a.items[t])} anchors but "
                                 f"{len(a.weights.get(t, []))} weights")
        return a


def select_anchors(method: str, n: int, calibration, seed: int = 0, tasks: list[str] | None = None,
                   exclude: dict[str, list[str]] | None = None) -> Anchors:
    """``n`` anchors per task (all items when a task has fewer) by ``method``; deterministic given ``seed``.
    ``exclude``: item ids per task never chosen (a held-out test split)."""
    if method not in METHODS:
        raise ValueError(f"unknown anchor method {method!r}: expected one of {', '.join(METHODS)}")
    if int(n) < 1:
        raise ValueError(f"anchors per task must be at least 1, got {n}")
    seed = 0 if seed is None else int(seed)
    params = calibration.item_params
    tasks = tasks or calibration.tasks
    items, weights = {}, {}
    for ti, task in enumerate(tasks):
        rows = params.rows(task)
        if exclude and exclude.get(task):
            held = set(exclude[task])
            rows = np.array([r for r in rows if params.item_ids[r] not in held], dtype=rows.dtype)
        ids = [params.item_ids[r] for r in rows]
        k = min(int(n), len(ids))
        rng = np.random.default_rng([seed, ti])
        if method == "random" or k == len(ids):
            pick = np.sort(rng.choice(len(ids), size=k, replace=False))
            items[task], weights[task] = [ids[j] for j in pick], [1.0 / k] * k
            continue
        if method == "irt_cluster":
            emb = np.column_stack([params.alpha[rows], params.beta[rows]])
        else:
            emb = calibration.population_matrix(task, ids).T.astype(np.float64)  # items x models
        chosen, w = _cluster(emb, k, seed + ti)
        items[task], weights[task] = [ids[j] for j in chosen], w
    return Anchors(method=method, n=int(n), seed=int(seed), items=items, weights=weights)


def _cluster(emb: np.ndarray, k: int, seed: int):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=5, random_state=seed).fit(emb)
    chosen, weights = [], []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if members.size == 0:  # k-means may leave a cluster empty on tied points: it gets no anchor
            continue
        d = np.sum((emb[members] - km.cluster_centers_[c]) ** 2, axis=1)
        chosen.append(int(members[np.argmin(d)]))
        weights.append(members.size / emb.shape[0])
    order = np.argsort(chosen)
    return [chosen[j] for j in order], [weights[j] for j in order]
