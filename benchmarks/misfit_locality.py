"""Is the item model's misfit local in ability space? A one-off analysis on bench_estimation's cache.

The model floor (``bench_estimation.model_floor``) is mean |accuracy - mean_i p_i(theta)| per task over the
held-out merges, theta fitted on every answer. Here the signed residuals of the calibration merges are used
to correct the held-out merges' residuals, and the floor is measured again:
* a per-task bias (the calibration merges' mean residual);
* the mean residual of each held-out merge's k nearest calibration merges in theta;
* a ridge regression of the residual on theta.
If a correction lowers the floor, the misfit is partly a smooth function of ability that an estimator could
learn from the calibration population. Then the same with theta read from --n random anchors per task (5 anchor
seeds), as a search would: p-IRT and gp-IRT with and without the neighbours' residual added to the part of each
task they estimate (1 - lambda of it; gp-IRT: times 1 - delta too).

    .venv/bin/python benchmarks/misfit_locality.py --n-cal 100 --dim 5   # after bench_estimation with those

Writes benchmarks/results/misfit_locality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_estimation as E  # noqa: E402  (its abilities fitted on every answer, as its model floor fits them)


def find_calibration(cache: Path, n_models: int, dim: int) -> Path:
    for d in sorted(cache.glob("calibration-*/")):
        meta = json.loads((d / "calibration.json").read_text())
        if meta.get("irt", {}).get("dim") == dim and meta.get("cost", {}).get("n_models") == n_models:
            return d
    raise SystemExit(f"no calibration with {n_models} models and dim {dim} under {cache}: run bench_estimation first")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="small")
    ap.add_argument("--n-cal", type=int, default=100, help="random merges in the calibration population")
    ap.add_argument("--dim", type=int, default=5)
    ap.add_argument("--n-test", type=int, default=50)
    ap.add_argument("--n", type=int, default=20, help="random anchors per task for the second part")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "misfit_locality.json"))
    a = ap.parse_args()

    from merge3.calibration import Calibration, item_model_residuals
    from merge3.evaluation.store import ResponseStore
    from merge3.irt import estimate, select_anchors
    from merge3.irt.estimators import map_ability
    from merge3.irt.fit import responses_to_rows
    from merge3.world import resolve_world
    from merge3.world.build import default_cache

    world = resolve_world(a.world)
    cache = next((default_cache() / "bench_estimation").glob(f"{world.root.name}-*"))
    cal_dir = find_calibration(cache, a.n_cal + 4, a.dim)
    cal = Calibration.load(cal_dir)
    params, tasks = cal.item_params, cal.tasks

    def residuals(store, models) -> tuple[np.ndarray, np.ndarray]:
        """Signed residuals (models x tasks) and abilities, each fitted on every answer."""
        thetas = {m: E.full_ability(cal, store.get(m), tasks) for m in models}
        return item_model_residuals(params, thetas, store, models, tasks), np.array([thetas[m] for m in models])

    meta = json.loads((cal_dir / "calibration.json").read_text())
    test_store = ResponseStore(cache / "test_responses.jsonl")
    r_cal, th_cal = residuals(ResponseStore(cache / "calibration_responses.jsonl"),
                              meta["train_models"] + meta["validation_models"])
    r_test, th_test = residuals(test_store, test_store.models()[: a.n_test])

    def floor(corrected: np.ndarray) -> float:
        return round(100 * float(np.abs(corrected).mean()), 3)

    out = {"calibration": str(cal_dir.name), "n_calibration_models": len(r_cal), "n_test": len(r_test),
           "tasks": tasks, "floor": floor(r_test),
           "mean_signed_residual_points": {"calibration": dict(zip(tasks, np.round(100 * r_cal.mean(0), 2).tolist())),
                                           "test": dict(zip(tasks, np.round(100 * r_test.mean(0), 2).tolist()))},
           "per_task_bias": floor(r_test - r_cal.mean(0)), "nearest_neighbours": {}, "ridge": {}}
    for k in (3, 5, 10):
        nearest = [np.argsort(np.linalg.norm(th_cal - th, axis=1))[:k] for th in th_test]
        out["nearest_neighbours"][k] = floor(r_test - np.array([r_cal[i].mean(0) for i in nearest]))
    X = np.c_[th_cal, np.ones(len(th_cal))]
    for lam in (0.1, 1.0, 10.0):
        W = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ r_cal)
        out["ridge"][lam] = floor(r_test - np.c_[th_test, np.ones(len(th_test))] @ W)
    errors = {k: [] for k in ("pirt", "pirt+neighbours", "gpirt", "gpirt+neighbours")}
    for seed in range(5):
        anchors = select_anchors("random", a.n, cal, seed=seed)
        layout = cal.layout(anchors)
        lam = np.array([len(anchors.items[t]) / len(layout[t][0]) for t in tasks])
        delta = np.array([cal.mixing_weight("gpirt", anchors, t) for t in tasks])
        for m in test_store.models()[: a.n_test]:
            answers = test_store.get(m)
            truth = np.array([np.mean(list(answers[t].values())) for t in tasks])
            seen = {t: {i: answers[t][i] for i in anchors.items[t]} for t in tasks}
            rows, y = responses_to_rows(params, seen)
            theta = map_ability(cal, rows, y)  # as p-/gp-IRT fit it
            fix = r_cal[np.argsort(np.linalg.norm(th_cal - theta, axis=1))[:5]].mean(0) * (1 - lam)
            for e in ("pirt", "gpirt"):
                est = estimate(e, seen, cal, anchors)
                z = np.array([est[t] for t in tasks])
                errors[e].append(np.abs(z - truth))
                errors[e + "+neighbours"].append(np.abs(z + fix * (1 - delta if e == "gpirt" else 1) - truth))
    out["with_anchor_theta"] = {"n": a.n, "anchor_seeds": 5, "neighbours": 5,
                                "mae": {k: round(100 * float(np.mean(v)), 3) for k, v in errors.items()}}
    print(json.dumps(out, indent=1))
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
