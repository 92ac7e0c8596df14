"""The MERGE³ claim, measured: search quality against evaluation cost, side by side in one run.

The same search (seed, genome, algorithm, population, number of candidates) runs with three fitness
functions: (a) ``full``: accuracy on every item; (b) ``anchor``: raw accuracy on n random anchors per task;
(c) ``irt``: an IRT estimator (default gmp-IRT) on the same anchors. Single objective (GA on the target
task ``tw_arith_vl``) and multi-objective (NSGA-II on ``tw_arith_vl`` and ``tw_lang_vl``), several seeds.

For each run: the true full-benchmark score of the best candidate found (single objective), the hypervolume
of the true full-benchmark scores of the final front (multi-objective, reference point 0), items evaluated
by the search (calibration counted separately, and once more included in a second ratio) and wall time.
True scores of candidates chosen by (b) and (c) are measured by evaluating them fully here; those
evaluations are the benchmark's measurement, not the search's cost.

    .venv/bin/python benchmarks/bench_search.py [--world small] [--seeds 0 1] [--n 20]

Prints tables, writes benchmarks/results/search.json and benchmarks/results/search_convergence.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

RESULTS = Path(__file__).parent / "results"
TARGET, LANG = "tw_arith_vl", "tw_lang_vl"
FITNESSES = ("full", "anchor", "irt")
# One genome for the calibration, every search and the re-scoring of their candidates.
GENOME = {"method": "dare_ties", "parameters": {"weight": [0.0, 1.0], "density": [0.1, 1.0]}}


def search_config(world: str, mode: str, fitness: str, seed: int, args, calibration: Path) -> dict:
    tasks = [TARGET] if mode == "single" else [TARGET, LANG]
    fit = {"type": fitness}
    if fitness != "full":
        fit["anchors"] = {"method": "random", "n": args.n, "seed": seed}
    if fitness == "irt":
        fit.update(estimator=args.estimator, calibration=str(calibration))
    return {
        "name": f"{mode}-{fitness}-s{seed}", "seed": seed, "world": world, "base": "base",
        "models": ["math_en", "lang_vl", "facts_en"], "tasks": tasks,
        "objectives": {"mode": "per_task"},
        "merge": GENOME,
        "fitness": fit,
        "algorithm": {"name": "ga" if mode == "single" else "nsga2", "pop_size": args.pop,
                      "generations": args.generations},
        "evaluation": {"batch_size": 64, "device": "cpu"},
        "workers": {"num_workers": args.workers, "cpus_per_worker": 1, "local_cpus": args.workers},
    }


def calibration_config(world: str, args) -> dict:
    return {"world": world, "n_random_merges": args.n_cal, "seed": 0,
            "genome": GENOME,
            "irt": {"model_type": "multidim_2pl", "dim": 3, "epochs": args.epochs},
            "eval": {"device": "cpu", "batch_size": 64}}


class TrueScorer:
    """Full-benchmark scores of logged candidates, re-created exactly from (genome, merge seed); cached."""

    def __init__(self, world, models: list[str]):
        from merge3.scoring import CandidateScorer, ScorerSpec

        self.scorer = CandidateScorer(ScorerSpec(
            base=str(world.base), models=[str(world.model(m)) for m in models], genome=GENOME,
            tasks=world.task_names, include_path=str(world.tasks_dir),
            evaluation={"device": "cpu", "batch_size": 64}, fitness="full", device="cpu", cache_dir=str(world.root)))
        self.cache: dict = {}

    def score(self, genome: list[float], seed: int, tasks: list[str]) -> dict[str, float]:
        from merge3.evaluation.lmeval import accuracy

        key = (tuple(round(g, 12) for g in genome), seed, tuple(tasks))
        if key not in self.cache:
            s = self.scorer
            acc = accuracy(s.answer(s.recipe(genome, seed), {t: s.suite.item_ids(t) for t in tasks}))
            self.cache[key] = {t: acc[t] for t in tasks}
        return self.cache[key]


def true_of(rec: dict, fitness: str, scorer: TrueScorer, tasks: list[str]) -> dict[str, float]:
    if fitness == "full":
        return {t: rec["objectives"][t] for t in tasks}  # a full-evaluation fitness is the true score
    return scorer.score(rec["genome"], rec["seed"], tasks)


def convergence(records: list[dict], fitness: str, scorer: TrueScorer) -> list[tuple[int, float]]:
    """(items evaluated so far, true target score of the best-so-far candidate by the search's fitness)."""
    points, items, best, best_fit = [], 0, None, -1.0
    for rec in records:
        items += rec["items_evaluated"]
        if rec["status"] == "ok" and rec["objectives"][TARGET] > best_fit:
            best_fit, best = rec["objectives"][TARGET], rec
        if best is not None:
            points.append((items, true_of(best, fitness, scorer, [TARGET])[TARGET]))
    return points


def hypervolume(points: list[tuple[float, float]]) -> float:
    import numpy as np
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=np.zeros(2))(-np.array(points))) if points else 0.0


def pareto(points):
    return [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n", type=int, default=20, help="anchors per task for (b) and (c)")
    ap.add_argument("--pop", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--estimator", default="gmpirt")
    ap.add_argument("--n-cal", type=int, default=20, help="random merges in the calibration population")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["single", "multi"])
    ap.add_argument("--work", default=None, help="scratch directory (default $MERGE3_HOME/bench_search)")
    args = ap.parse_args()

    from merge3.calibration import Calibration, calibrate
    from merge3.search import run
    from merge3.world import resolve_world
    from merge3.world.build import default_cache

    world = resolve_world(args.world)
    work = Path(args.work or default_cache() / "bench_search" / f"{world.spec.size}-{world.spec.digest()}")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cal_dir = work / f"calibration-{args.n_cal}-{args.epochs}"
    if not (cal_dir / "calibration.json").exists():
        calibrate(calibration_config(str(world.root), args), cal_dir)
    cal = Calibration.load(cal_dir)
    cal_items = int(cal.cost.get("items_evaluated", 0))
    cal_seconds = time.time() - t0
    print(f"calibration: {cal_dir} ({cal_items} items evaluated, {cal_seconds:.0f} s)")

    scorer = TrueScorer(world, ["math_en", "lang_vl", "facts_en"])
    runs = []
    for mode in args.modes:
        tasks = [TARGET] if mode == "single" else [TARGET, LANG]
        for seed in args.seeds:
            for fitness in FITNESSES:
                cfg = search_config(str(world.root), mode, fitness, seed, args, cal_dir)
                run_dir = work / "runs" / cfg["name"]
                shutil.rmtree(run_dir, ignore_errors=True)
                res = run(cfg, run_dir=run_dir, progress=False)
                ok = [r for r in res.evaluations if r["status"] == "ok"]
                row = {"mode": mode, "seed": seed, "fitness": fitness, "evaluations": res.n_evaluations,
                       "items_evaluated": res.items_evaluated, "verification_items": res.verification_items,
                       "wall_seconds": round(res.wall_seconds, 1)}
                if mode == "single":
                    best = max(ok, key=lambda r: r["objectives"][TARGET])
                    row["best_estimated"] = best["objectives"][TARGET]
                    row["best_true"] = true_of(best, fitness, scorer, [TARGET])[TARGET]
                    row["best_candidate"] = {"genome": best["genome"], "seed": best["seed"]}
                    # the search's own pick after verifying its top candidates on every item (fitness.verify_top_k)
                    row["best_verified_true"] = res.verified[0]["verified"][TARGET] if res.verified else row["best_true"]
                    row["curve"] = convergence(res.evaluations, fitness, scorer)
                else:
                    true_pts = [tuple(true_of(r, fitness, scorer, tasks)[t] for t in tasks) for r in res.front]
                    row["front_size"] = len(res.front)
                    row["hypervolume_true"] = hypervolume(pareto(true_pts))
                    row["front_true"] = true_pts
                runs.append(row)
                write_partial(runs, work)
                print(f"{mode:6} seed {seed} {fitness:6}: items {row['items_evaluated']:>7}  "
                      + (f"best true {row['best_true']:.3f} (est {row['best_estimated']:.3f})" if mode == "single"
                         else f"HV(true front) {row['hypervolume_true']:.4f}")
                      + f"  {row['wall_seconds']} s", flush=True)

    summary = summarize(runs, cal_items)
    paper = paper_table(world, scorer, runs)
    out = {"world": world.spec.size, "world_hash": world.spec.digest(), "n_anchors": args.n,
           "estimator": args.estimator, "pop_size": args.pop, "generations": args.generations,
           "seeds": args.seeds, "calibration": {"items_evaluated": cal_items, "seconds": round(cal_seconds, 1),
                                                "n_random_merges": args.n_cal},
           "summary": summary, "runs": runs, "paper_table": paper,
           "command": "python benchmarks/bench_search.py " + " ".join(
               f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(args).items() if k != "work")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(runs, RESULTS / "search_convergence.png")
    print_tables(summary, paper)


def write_partial(runs: list[dict], work: Path) -> None:
    """Runs so far, so an interrupted benchmark leaves what it measured (not the results file)."""
    (work / "runs_partial.json").write_text(json.dumps(runs, indent=1) + "\n")


def summarize(runs: list[dict], cal_items: int) -> dict:
    import numpy as np

    def mean(mode, fitness, key):
        vals = [r[key] for r in runs if r["mode"] == mode and r["fitness"] == fitness]
        return float(np.mean(vals)) if vals else None

    s: dict = {}
    for mode, key in (("single", "best_true"), ("multi", "hypervolume_true")):
        for f in FITNESSES:
            s[f"{mode}_{f}_{key}"] = mean(mode, f, key)
            s[f"{mode}_{f}_items"] = mean(mode, f, "items_evaluated")
            s[f"{mode}_{f}_verification_items"] = mean(mode, f, "verification_items")
            s[f"{mode}_{f}_seconds"] = mean(mode, f, "wall_seconds")
            if mode == "single":
                s[f"single_{f}_best_verified_true"] = mean(mode, f, "best_verified_true")
    a, c = s.get("single_full_best_true"), s.get("single_irt_best_true")
    ia, ic = s.get("single_full_items"), s.get("single_irt_items")
    if a and c is not None:
        s["quality_ratio"] = c / a
        s["quality_ratio_verified"] = s["single_irt_best_verified_true"] / a
    if ia and ic:
        s["cost_ratio"] = ia / ic
        s["cost_ratio_with_calibration"] = ia / (ic + cal_items)
        s["cost_ratio_with_verification"] = ia / (ic + (s.get("single_irt_verification_items") or 0))
    if s.get("single_anchor_best_true") is not None and c is not None:
        s["irt_minus_anchor_best_true"] = c - s["single_anchor_best_true"]
    ha, hc = s.get("multi_full_hypervolume_true"), s.get("multi_irt_hypervolume_true")
    if ha and hc is not None:
        s["hypervolume_ratio"] = hc / ha
    s["goal_quality_98pct"] = bool(s.get("quality_ratio", 0) >= 0.98)
    s["goal_cost_50x"] = bool(s.get("cost_ratio", 0) >= 50)
    s["goal_beats_anchor"] = bool(s.get("irt_minus_anchor_best_true", -1) > 0)
    return s


def paper_table(world, scorer: TrueScorer, runs: list[dict]) -> list[dict]:
    """Every task: endpoints, uniform merge, and the best merge each fitness found (seed with the best)."""
    from merge3.evaluation.lmeval import accuracy
    from merge3.merging.recipe import MergeRecipe

    rows = []
    tasks = world.task_names
    s = scorer.scorer
    for name in ["base", "math_en", "lang_vl", "facts_en"]:
        acc = accuracy(s.answer_model(str(world.model(name))))
        rows.append({"model": name, **{t: acc[t] for t in tasks}})
    n = len(s.spec.models)
    acc = accuracy(s.answer(MergeRecipe(method="task_arithmetic", base_model=str(world.base), models=s.spec.models,
                                        parameters={"lambda": 1.0}, model_parameters=[{"weight": 1 / n}] * n)))
    rows.append({"model": "uniform task arithmetic", **{t: acc[t] for t in tasks}})
    for f in FITNESSES:
        single = [r for r in runs if r["mode"] == "single" and r["fitness"] == f]
        if not single:
            continue
        best = max(single, key=lambda r: r["best_true"])
        full = scorer.score(best["best_candidate"]["genome"], best["best_candidate"]["seed"], tasks)
        rows.append({"model": f"best merge, fitness {f} (seed {best['seed']})", **full,
                     "estimated_target": best["best_estimated"]})
    return rows


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"full": "tab:blue", "anchor": "tab:orange", "irt": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        if r["mode"] != "single" or not r["curve"]:
            continue
        x, y = zip(*r["curve"])
        ax.step(x, y, where="post", color=colors[r["fitness"]], alpha=0.8,
                label=f"{r['fitness']}" if r["seed"] == runs[0]["seed"] else None)
    ax.set_xscale("log")
    ax.set_xlabel("items evaluated by the search (log)")
    ax.set_ylabel(f"true {TARGET} accuracy of best-so-far")
    ax.set_title("Search convergence: full vs raw anchors vs IRT estimate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_tables(summary: dict, paper: list[dict]) -> None:
    print("\nsummary")
    for k, v in summary.items():
        print(f"  {k:40} {v:.4f}" if isinstance(v, float) else f"  {k:40} {v}")
    tasks = [k for k in paper[0] if k.startswith("tw_")]
    print("\n" + f"{'model':<40}" + "".join(f"{t:>13}" for t in tasks))
    for r in paper:
        print(f"{r['model']:<40}" + "".join(f"{100 * r[t]:>13.1f}" for t in tasks))


if __name__ == "__main__":
    main()
