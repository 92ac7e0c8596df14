"""Objectives and the Pareto front: what pymoo minimises, and which logged candidates are the best."""

from __future__ import annotations

import numpy as np

from .config import SearchConfig


def objective_vector(cfg: SearchConfig, objectives: dict[str, float]) -> list[float]:
    """pymoo minimises: F = -accuracy per objective task, or minus the normalised weighted sum."""
    obj = cfg.objectives
    if obj.mode == "weighted_sum":
        w = obj.weights
        return [-sum(w[t] * objectives[t] for t in w) / sum(w.values())]
    return [-objectives[t] for t in obj.tasks]


def pareto_front(records: list[dict], n_obj: int) -> list[dict]:
    """Non-dominated records (by ``F``, minimised); single objective: the best. Ties keep the earliest."""
    ok = [r for r in records if r.get("F") is not None]
    if not ok:
        return []
    ok = sorted(ok, key=lambda r: (r["generation"], r["index"]))
    F = np.array([r["F"] for r in ok], dtype=float)
    if n_obj == 1:
        return [ok[int(np.argmin(F[:, 0]))]]
    front, seen = [], set()
    for i in range(len(ok)):
        dominated = np.any(np.all(F <= F[i], axis=1) & np.any(F < F[i], axis=1))
        key = tuple(F[i])
        if not dominated and key not in seen:
            seen.add(key)
            front.append(ok[i])
    return front


def front_entry(rec: dict, objective_names: list[str]) -> dict:
    """A front member as ``status``, ``progress.json`` and ``result.json`` show it."""
    return {"candidate": rec["candidate"], "generation": rec["generation"], "index": rec["index"],
            "genome": rec["genome"], "seed": rec["seed"],
            "objectives": {n: -f for n, f in zip(objective_names, rec["F"])}, "estimates": rec["objectives"]}
