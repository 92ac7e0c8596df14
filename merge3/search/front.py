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


def best_by_estimate(records: list[dict], k: int) -> list[dict]:
    """The ``k`` best records by mean objective (``F``, minimised), distinct genomes only; ties keep the earliest."""
    out, seen = [], set()
    for r in sorted(records, key=lambda r: (sum(r["F"]) / len(r["F"]), r["generation"], r["index"])):
        if len(out) == k:
            break
        if tuple(r["genome"]) not in seen:
            seen.add(tuple(r["genome"]))
            out.append(r)
    return out


def to_verify(records: list[dict], n_obj: int, k: int) -> list[dict]:
    """The candidates a search re-scores on every item: the ``k`` best by estimate (one objective), or the first
    ``k`` members of the estimated Pareto front by mean objective (several)."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("F") is not None]
    return best_by_estimate(ok if n_obj == 1 else pareto_front(ok, n_obj), max(k, 0))


def front_entry(rec: dict, objective_names: list[str], verified: dict | None = None) -> dict:
    """A front member as ``status``, ``progress.json`` and ``result.json`` show it (with its scores on every
    item when it was verified)."""
    entry = {"candidate": rec["candidate"], "generation": rec["generation"], "index": rec["index"],
             "genome": rec["genome"], "seed": rec["seed"],
             "objectives": {n: -f for n, f in zip(objective_names, rec["F"])}, "estimates": rec["objectives"]}
    v = (verified or {}).get((rec["generation"], rec["index"]))
    if v is not None:
        entry["verified"] = v["full"]
        if v.get("test"):
            entry["test"] = v["test"]  # held-out items (fitness.test_fraction): never seen by the search
    return entry


def verified_ranking(records: list[dict], verified: dict, cfg: SearchConfig) -> list[dict]:
    """Verified candidates ranked by their verified objectives (one objective: best first; several: the
    verified Pareto front first, then the rest), each with its estimates and verified scores."""
    by_key = {(r["generation"], r["index"]): r for r in records}
    rows = []
    for key, v in verified.items():
        if v.get("status") == "ok" and key in by_key:
            rec = by_key[key]
            rows.append({**front_entry(rec, cfg.objective_names, verified), "F": objective_vector(cfg, v["full"])})
    front = {(r["generation"], r["index"]) for r in pareto_front(rows, cfg.n_objectives)}
    rows.sort(key=lambda r: ((r["generation"], r["index"]) not in front, sum(r["F"]) / len(r["F"]),
                             r["generation"], r["index"]))
    for r in rows:
        r["verified_objectives"] = {n: -f for n, f in zip(cfg.objective_names, r.pop("F"))}
        if r.get("test") and all(r["test"].get(t) is not None for t in cfg.tasks):
            r["test_objectives"] = {n: -f for n, f in zip(cfg.objective_names, objective_vector(cfg, r["test"]))}
    return rows
