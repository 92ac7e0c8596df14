"""How well does each estimator recover full-benchmark accuracy from n anchors per task?

On a tiny world: a calibration population (base, endpoints, --n-cal random merges) is evaluated fully and
calibrated (py-irt); --n-test further random merges from the same genome, never seen by the calibration,
are evaluated fully too. For every estimator, anchor method and n, each test merge's accuracy is estimated
from its answers on the anchors alone and compared with its full-benchmark accuracy. Anchor selection is
repeated over --anchor-seeds seeds and averaged (random anchors are a draw; one draw is an anecdote).

Reported per row: MAE in accuracy points (0-100) averaged over tasks and test merges, its spread over
anchor seeds, and cost_ratio = items of a full evaluation / anchors evaluated. The calibration (a one-off
per benchmark and endpoint set) is counted separately, as items evaluated and as the number of candidates
after which the anchors have paid it back.

    .venv/bin/python benchmarks/bench_estimation.py --world small      # writes benchmarks/results/estimation.json

Evaluations are cached (ResponseStores under $MERGE3_HOME/bench_estimation/), so a rerun only re-estimates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



def _demo_genome() -> dict:
    """The demo's search space (experiments/demo.yaml), whose random merges span the target's range."""
    import yaml

    merge = yaml.safe_load((ROOT / "experiments" / "demo.yaml").read_text())["merge"]
    return {k: merge[k] for k in ("method", "parameters", "filters", "layer_granularity") if k in merge}


GENOME = _demo_genome()
TARGET_SDS = (0.05, 0.04, 0.03, 0.02)  # adaptive testing: posterior-sd stopping targets (accuracy, 0..1)


def evaluate_test_merges(world, store, n_test: int, seed: int, eval_opts: dict) -> float:
    """Held-out merges: genome vectors from their own seed stream (disjoint from the calibration's)."""
    from merge3.scoring import CandidateScorer, ScorerSpec

    ids = [f"test-{j:03d}" for j in range(n_test)]
    todo = [j for j, m in enumerate(ids) if m not in store]
    if not todo:
        return 0.0
    scorer = CandidateScorer(ScorerSpec(
        base=str(world.base), models=[str(p) for p in world.endpoints.values()], genome=GENOME,
        tasks=world.task_names, include_path=str(world.tasks_dir), evaluation=eval_opts, fitness="full",
        device="cpu", cache_dir=str(world.root)))
    rng = np.random.default_rng([seed, 424242])
    xs = [rng.random(scorer.genome.dim) for _ in ids]
    t0 = time.time()
    for j in todo:
        store.add(ids[j], scorer.answer(scorer.recipe(xs[j], seed * 7 + 1000 + j)),
                  {"kind": "test_merge", "x": [float(v) for v in xs[j]]})
        print(f"  test merge {j + 1}/{n_test} evaluated", flush=True)
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="small", help="micro, small or a built world's path (default small)")
    ap.add_argument("--n-cal", type=int, default=40, help="random merges in the calibration population")
    ap.add_argument("--n-test", type=int, default=50, help="held-out random merges")
    ap.add_argument("--ns", default="10,20,50,100", help="anchors per task")
    ap.add_argument("--methods", default="random,irt_cluster,correctness_cluster")
    ap.add_argument("--anchor-seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--dim", type=int, default=3)
    ap.add_argument("--model-type", default="multidim_2pl")
    ap.add_argument("--refine-iters", type=int, default=100, help="MAP polishing steps after py-irt (0: none)")
    ap.add_argument("--target-sds", default=",".join(map(str, TARGET_SDS)),
                    help="adaptive testing rows: posterior-sd stopping targets")
    ap.add_argument("--adaptive-max", type=int, default=100, help="adaptive testing: items per task at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cached-only", action="store_true",
                    help="evaluate nothing: use the merges already in the cache (fewer if a run was cut short)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "estimation.json"))
    a = ap.parse_args(argv)

    from merge3.calibration import Calibration, CalibrationConfig, calibrate, evaluate_population
    from merge3.evaluation.store import ResponseStore
    from merge3.irt import ESTIMATORS, estimate, select_anchors
    from merge3.world import resolve_world
    from merge3.world.build import default_cache

    world = resolve_world(a.world)
    genome_tag = hashlib.sha256(json.dumps(GENOME, sort_keys=True).encode()).hexdigest()[:8]
    cache = default_cache() / "bench_estimation" / f"{world.root.name}-{genome_tag}"
    cache.mkdir(parents=True, exist_ok=True)
    eval_opts = {"device": "cpu", "batch_size": a.batch_size}
    cal_cfg = {"base": str(world.base), "endpoints": {k: str(v) for k, v in world.endpoints.items()},
               "tasks": world.task_names, "include_path": str(world.tasks_dir), "n_random_merges": a.n_cal,
               "genome": GENOME, "seed": a.seed, "eval": eval_opts,
               "irt": {"model_type": a.model_type, "dim": a.dim, "epochs": a.epochs,
                                                         "refine_iters": a.refine_iters}}

    cal_store = ResponseStore(cache / "calibration_responses.jsonl")
    test_store = ResponseStore(cache / "test_responses.jsonl")
    if a.cached_only:
        a.n_cal = min(a.n_cal, sum(m.startswith("merge-") for m in cal_store.models()))
        a.n_test = min(a.n_test, len(test_store.models()))
        cal_cfg["n_random_merges"] = a.n_cal
        print(f"cached evaluations only: {a.n_cal} calibration merges, {a.n_test} test merges", flush=True)
    else:
        print(f"world {world.root}; evaluating the calibration population ({3 + 1 + a.n_cal} models)", flush=True)
        evaluate_population(CalibrationConfig.from_dict(cal_cfg), cal_store,
                            log=lambda m: print("  " + m, flush=True))
        print(f"evaluating {a.n_test} held-out merges", flush=True)
        evaluate_test_merges(world, test_store, a.n_test, a.seed, eval_opts)

    digest = hashlib.sha256(json.dumps(cal_cfg, sort_keys=True).encode()).hexdigest()[:10]
    cal_dir = cache / f"calibration-{digest}"
    if not (cal_dir / "calibration.json").exists():
        print("fitting the calibration (py-irt)", flush=True)
        keep = ["base", *world.endpoints, *[f"merge-{j:03d}" for j in range(a.n_cal)]]
        sub = ResponseStore(cache / f"calibration_responses-{digest}.jsonl")
        for m in keep:
            if m not in sub:
                sub.add(m, cal_store.get(m), cal_store.meta(m))
        calibrate({**cal_cfg, "import_responses": [str(sub.path)]}, cal_dir)
    cal = Calibration.load(cal_dir)
    tasks = cal.tasks
    n_full = sum(cal.n_items.values())
    truth, fulls = {}, {}
    for m in test_store.models()[: a.n_test]:
        fulls[m] = test_store.get(m)
        truth[m] = {t: float(np.mean(list(fulls[m][t].values()))) for t in tasks}

    rows = []
    methods = a.methods.split(",")
    t_est, n_calls = 0.0, 0
    for n in [int(v) for v in a.ns.split(",")]:
        for method in methods:
            per_seed = {e: [] for e in ESTIMATORS}
            per_task = {e: {t: [] for t in tasks} for e in ESTIMATORS}
            n_anchors = []
            for s in range(a.anchor_seeds):
                anchors = select_anchors(method, n, cal, seed=a.seed * 1000 + s)
                n_anchors.append(anchors.total())
                errs = {e: [] for e in ESTIMATORS}
                for m, full in fulls.items():
                    resp = {t: {i: full[t][i] for i in anchors.items[t]} for t in tasks}
                    for e in ESTIMATORS:
                        t0 = time.perf_counter()
                        est = estimate(e, resp, cal, anchors)
                        t_est += time.perf_counter() - t0
                        n_calls += 1
                        for t in tasks:
                            err = 100 * abs(est[t] - truth[m][t])
                            errs[e].append(err)
                            per_task[e][t].append(err)
                for e in ESTIMATORS:
                    per_seed[e].append(float(np.mean(errs[e])))
            for e in ESTIMATORS:
                rows.append({"estimator": e, "anchors": method, "n": n, "anchors_total": float(np.mean(n_anchors)),
                             "cost_ratio": round(n_full / float(np.mean(n_anchors)), 2),
                             "mae": round(float(np.mean(per_seed[e])), 3),
                             "mae_sd_over_anchor_seeds": round(float(np.std(per_seed[e])), 3),
                             "mae_per_task": {t: round(float(np.mean(v)), 3) for t, v in per_task[e].items()}})

    rows += adaptive_rows(cal, fulls, truth, tasks, n_full, a)
    floor = model_floor(cal, test_store, list(fulls), tasks)

    cal_items = cal.cost.get("items_total", 0)
    calibration = {"models": cal.cost.get("n_models"), "items_evaluated": cal_items,
                   "full_evaluation_equivalents": cal.cost.get("n_models"),
                   "irt_fit_seconds": round(float(cal.cost.get("fit_seconds", 0.0)), 1),
                   "irt": json.loads((cal_dir / "calibration.json").read_text())["irt"],
                   "break_even_candidates_at_n20": round(cal_items / max(n_full - 20 * len(tasks), 1), 1)}
    goals = {}
    for method in methods:
        by_n = {r["n"]: r for r in rows if r["anchors"] == method and r["estimator"] == "gmpirt"}
        base = {r["n"]: r for r in rows if r["anchors"] == "random" and r["estimator"] == "anchor"}
        goals[method] = {"gmpirt_beats_random_anchor_at_every_n": all(by_n[n]["mae"] < base[n]["mae"] for n in by_n),
                         "mae_le_2_with_ge_50x": any(r["mae"] <= 2 and r["cost_ratio"] >= 50 for r in rows
                                                     if r["anchors"] == method)}
    best20 = min((r for r in rows if r["anchors"] == "random" and r["n"] == 20), key=lambda r: r["mae"], default=None)
    adaptive = sorted((r for r in rows if r["anchors"] == "adaptive"), key=lambda r: (r["items_mean"], r["mae"]))
    as_good = next((r for r in adaptive if best20 and r["mae"] <= best20["mae"]), None)
    goals["adaptive"] = {
        "random20_best": best20 and {"estimator": best20["estimator"], "mae": best20["mae"]},
        "items_per_task_for_random20_mae": as_good and as_good["items_mean"],
        "mae_le_2_with_ge_50x": any(r["mae"] <= 2 and r["cost_ratio"] >= 50 for r in adaptive)}
    report = {"command": "python benchmarks/bench_estimation.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                  if k not in ("out", "cached_only") and v is not None),
              "rows": rows, "model_floor": floor, "calibration": calibration, "goals": goals,
              "setup": {"world": str(world.root), "world_size": world.spec.size, "tasks": tasks,
                        "items_per_model": n_full, "n_calibration_merges": a.n_cal, "n_test_merges": len(fulls),
                        "anchor_seeds": a.anchor_seeds, "genome": GENOME, "seed": a.seed,
                        "estimate_ms_mean": round(1000 * t_est / max(n_calls, 1), 3)}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")

    print(f"\n{len(fulls)} held-out merges, {n_full} items each; MAE in accuracy points (mean over tasks, "
          f"merges and {a.anchor_seeds} anchor seeds)")
    hdr = f"{'anchors':<20} {'n':>4} {'ratio':>6} " + " ".join(f"{e:>7}" for e in ESTIMATORS)
    print(hdr)
    print("-" * len(hdr))
    for n in [int(v) for v in a.ns.split(",")]:
        for method in methods:
            rs = {r["estimator"]: r for r in rows if r["n"] == n and r["anchors"] == method}
            print(f"{method:<20} {n:>4} {rs['anchor']['cost_ratio']:>6.1f} "
                  + " ".join(f"{rs[e]['mae']:>7.2f}" for e in ESTIMATORS))
    print("adaptive (n = items per task used, mean):")
    for sd in sorted({r["target_sd"] for r in adaptive}, reverse=True):
        rs = {r["estimator"]: r for r in adaptive if r["target_sd"] == sd}
        first = next(iter(rs.values()))
        print(f"{'sd <= ' + str(sd):<20} {first['items_mean']:>4.0f} {first['cost_ratio']:>6.1f} "
              + " ".join(f"{rs[e]['mae']:>7.2f}" for e in ESTIMATORS))
    print(f"model floor (theta fitted on all {n_full} answers, then the task means of p): MAE {floor['mae']:.2f} "
          f"{floor['mae_per_task']}")
    print(f"\ncalibration (one-off): {calibration['models']} models fully evaluated = {cal_items} items; "
          f"IRT fit {calibration['irt_fit_seconds']} s; paid back after "
          f"{calibration['break_even_candidates_at_n20']} candidates at n=20")
    print(f"estimate(): {report['setup']['estimate_ms_mean']} ms per call; goals: {json.dumps(goals)}")
    print(f"wrote {a.out}")
    return 0


def model_floor(cal, store, models, tasks) -> dict:
    """What no choice of anchors can beat: each held-out merge's ability fitted on every item it answered, then
    mean_i p_i(theta) per task against its true accuracy (the calibration's misfit diagnostic, on these merges).
    The error left is the item model's misfit."""
    from merge3.calibration import item_model_misfit

    thetas = {m: full_ability(cal, store.get(m), tasks) for m in models}
    per_task = item_model_misfit(cal.item_params, thetas, store, models, tasks)
    return {"mae": round(float(np.mean(list(per_task.values()))), 3), "mae_per_task": per_task}


def full_ability(cal, answers: dict, tasks) -> np.ndarray:
    """A model's ability fitted on every item it answered (a weak prior: sd 3)."""
    from merge3.irt.fit import fit_ability

    return np.asarray(fit_ability(cal.item_params, {t: answers[t] for t in tasks}, cal.ability_prior_mean, 3.0))


def adaptive_rows(cal, fulls, truth, tasks, n_full, a) -> list[dict]:
    """Adaptive testing of each held-out merge, its answers looked up in its stored full evaluation (the same
    0/1 lm-eval gave for the item), then every estimator on the items it answered (``pirt`` is adaptive
    testing's own estimate). ``n`` is the cap per task, ``items_mean`` the items per task it used."""
    from merge3.irt import ESTIMATORS, Anchors, estimate
    from merge3.irt.adaptive import AdaptiveSettings, run_adaptive

    out = []
    for sd in [float(v) for v in a.target_sds.split(",") if v]:
        settings = AdaptiveSettings(target_sd=sd, max_items=a.adaptive_max)
        errs = {e: [] for e in ESTIMATORS}
        per_task = {e: {t: [] for t in tasks} for e in ESTIMATORS}
        items = []
        for m, full in fulls.items():
            res = run_adaptive(cal, tasks, lambda want: {t: {i: full[t][i] for i in ids} for t, ids in want.items()},
                               settings)
            items.append(sum(res.items.values()))
            asked = Anchors.uniform({t: list(r) for t, r in res.responses.items()}, method="adaptive")
            for e in ESTIMATORS:
                est = estimate(e, res.responses, cal, asked)
                for t in tasks:
                    err = 100 * abs(est[t] - truth[m][t])
                    errs[e].append(err)
                    per_task[e][t].append(err)
        total = float(np.mean(items))
        for e in ESTIMATORS:
            out.append({"estimator": e, "anchors": "adaptive", "n": a.adaptive_max, "target_sd": sd,
                        "items_mean": round(total / len(tasks), 2), "anchors_total": round(total, 2),
                        "cost_ratio": round(n_full / total, 2), "mae": round(float(np.mean(errs[e])), 3),
                        "mae_sd_over_anchor_seeds": 0.0,
                        "mae_per_task": {t: round(float(np.mean(v)), 3) for t, v in per_task[e].items()}})
    return out


if __name__ == "__main__":
    sys.exit(main())
