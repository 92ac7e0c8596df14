"""The MERGE³ claim, measured: search quality against evaluation cost, side by side in one run, and what each
defence against a fooled estimator buys (issue: a search its own estimator cannot fool).

The same search (seed, genome, GA, population, number of candidates; single objective: the target task
``tw_arith_vl``) runs with every fitness variant below, for several seeds:

* ``full``: accuracy on every item (the reference);
* ``anchor``: raw accuracy on n random anchors per task (MERGE³'s cheapest fitness);
* ``irt``: an IRT estimator (default gmp-IRT) on the same fixed anchors;
* ``irt+refresh``: a new anchor set per generation (``fitness.anchors.refresh``);
* ``irt+online``: each generation's best by estimate scored on every item, told to the search, and added to
  the calibration population (``fitness.online_calibration.top_k: 1``);
* ``irt+refresh+online``: both;
* ``irt+adaptive``: items chosen per candidate by adaptive testing (``fitness.anchors.method: adaptive``);
* ``irt+online(k=2)``: online calibration with the 2 best per generation;
* ``irt+online, 50 anchors``: online calibration on 50 anchors per task;
* ``irt+adaptive(exposure 8)``: adaptive items, each drawn among the 8 most informative
  (``fitness.anchors.exposure``), so candidates are not all asked the same first items;
* ``..., verify 1``: one verified winner instead of 3 (verification is a fixed cost per search), and
  ``10 anchors``: refreshed sets of 10 anchors: the cheapest defended searches.

Every variant except ``full`` verifies its 3 best candidates by estimate (the ``verify 1`` ones: its best) on
every item when it ends (``fitness.verify_top_k``); the search's pick is the best verified one. Per run: the
true score of that pick, the true score of the best candidate by estimate alone, |estimate - true| over its 3
best by estimate (what a user would read without verification), and items evaluated: by the search, and by
verification and online calibration (counted in the cost; the one-off calibration is reported separately).
True scores of candidates are measured here by scoring them on every item (the benchmark's measurement, not
the search's cost).

Searches run in this process (one in-process scorer per run, no Ray), so the figures are the search's, not
the cluster's:

    .venv/bin/python benchmarks/bench_search.py [--world small] [--seeds 0 1 2 3 4] [--n 20]

Prints tables, writes benchmarks/results/search.json and benchmarks/results/search_convergence.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET = "tw_arith_vl"
VERIFY_K = 3
ADAPTIVE = {"method": "adaptive", "n": 40, "target_sd": 0.04}  # the adaptive variants' items
# fitness settings of each variant (merged into the search config's fitness section)
VARIANTS = {
    "full": {"type": "full"},
    "anchor": {"type": "anchor"},
    "irt": {"type": "irt"},
    "irt+refresh": {"type": "irt", "anchors": {"refresh": True}},
    "irt+online": {"type": "irt", "online_calibration": {"top_k": 1}},
    "irt+refresh+online": {"type": "irt", "anchors": {"refresh": True}, "online_calibration": {"top_k": 1}},
    "irt+adaptive": {"type": "irt", "anchors": ADAPTIVE},
    "irt+online(k=2)": {"type": "irt", "online_calibration": {"top_k": 2}},
    "irt+online, 50 anchors": {"type": "irt", "anchors": {"n": 50}, "online_calibration": {"top_k": 1}},
    "irt+adaptive(exposure 8)": {"type": "irt", "anchors": {**ADAPTIVE, "exposure": 8}},
    "irt+refresh, verify 1": {"type": "irt", "anchors": {"refresh": True}, "verify_top_k": 1},
    "irt+refresh, 10 anchors, verify 1": {"type": "irt", "anchors": {"refresh": True, "n": 10}, "verify_top_k": 1},
    "irt+adaptive(exposure 8), verify 1": {"type": "irt", "anchors": {**ADAPTIVE, "exposure": 8}, "verify_top_k": 1},
}
# the summary's IRT search, named before the run it summarizes: the best variant of the first 5-seed round
# (seeds 0-4, results/search_seeds0-4.json, whose summary named irt+online), confirmed on seeds 5-9
HEADLINE = "irt+refresh+online"


def _demo_genome() -> dict:
    """The demo's search space (experiments/demo.yaml), whose random merges span the target's range."""
    merge = yaml.safe_load((ROOT / "experiments" / "demo.yaml").read_text())["merge"]
    return {k: merge[k] for k in ("method", "parameters", "filters", "layer_granularity") if k in merge}


GENOME = _demo_genome()
MODELS = ["math_en", "lang_vl", "facts_en"]


def search_config(world: str, variant: str, seed: int, args, calibration: Path) -> dict:
    v = json.loads(json.dumps(VARIANTS[variant]))
    fit = {"type": v.pop("type")}
    if fit["type"] != "full":
        fit["anchors"] = {"method": "random", "n": args.n, "seed": seed, **v.pop("anchors", {})}
        fit["verify_top_k"] = VERIFY_K
        fit.update(v)
    if fit["type"] == "irt":
        fit.update(estimator=args.estimator, calibration=str(calibration))
    return {
        "name": f"{re.sub(r'[^A-Za-z0-9+-]+', '_', variant)}-s{seed}", "seed": seed, "world": world, "base": "base",
        "models": MODELS,
        "tasks": [TARGET], "objectives": {"mode": "per_task"}, "merge": GENOME, "fitness": fit,
        "algorithm": {"name": "ga", "pop_size": args.pop, "generations": args.generations},
        "evaluation": {"batch_size": 64, "device": "cpu"},
    }


def calibration_config(world: str, args) -> dict:
    return {"world": world, "n_random_merges": args.n_cal, "seed": 0, "genome": GENOME,
            "irt": {"model_type": "multidim_2pl", "dim": args.dim, "epochs": args.epochs},
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


def true_of(rec: dict, variant: str, scorer: TrueScorer, tasks: list[str] = (TARGET,)) -> dict[str, float]:
    tasks = list(tasks)
    if variant == "full":
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--n", type=int, default=20, help="anchors per task")
    ap.add_argument("--pop", type=int, default=8)
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--estimator", default="gmpirt")
    ap.add_argument("--n-cal", type=int, default=20, help="random merges in the calibration population")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--dim", type=int, default=3, help="IRT ability dimensions of the calibration")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--work", default=None, help="scratch directory (default $MERGE3_HOME/bench_search)")
    ap.add_argument("--out", default=str(RESULTS / "search.json"),
                    help="results file (the convergence plot is written beside it, as <stem>_convergence.png)")
    args = ap.parse_args()

    from merge3.calibration import Calibration, calibrate
    from merge3.search import run
    from merge3.search.workers import inline_pool
    from merge3.world import resolve_world
    from merge3.world.build import default_cache

    world = resolve_world(args.world)
    work = Path(args.work or default_cache() / "bench_search" / f"{world.spec.size}-{world.spec.digest()}")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cal_dir = work / f"calibration-{args.n_cal}-{args.epochs}-{len(GENOME.get('filters', []))}" \
        f"{'' if args.dim == 3 else f'-d{args.dim}'}"
    if not (cal_dir / "calibration.json").exists():
        calibrate(calibration_config(str(world.root), args), cal_dir)
    cal = Calibration.load(cal_dir)
    cal_items = int(cal.cost.get("items_total", 0))
    print(f"calibration: {cal_dir} ({cal_items} items evaluated, {time.time() - t0:.0f} s)", flush=True)

    scorer = TrueScorer(world, MODELS)
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            cfg = search_config(str(world.root), variant, seed, args, cal_dir)
            run_dir = work / "runs" / cfg["name"]
            shutil.rmtree(run_dir, ignore_errors=True)
            res = run(cfg, run_dir=run_dir, progress=False, pool_factory=inline_pool)
            runs.append(measure(variant, seed, res, scorer))
            write_partial(runs, work)
            r = runs[-1]
            print(f"seed {seed} {variant:20}: items {r['items_evaluated']:>6} + {r['verification_items']:>5}  "
                  f"pick {r['best_verified_true']:.3f}  best-by-estimate {r['best_by_estimate_true']:.3f} "
                  f"(est {r['best_estimated']:.3f})  |est-true| {r['front_abs_error']:.3f}  {r['wall_seconds']} s",
                  flush=True)

    ablation = [summarize(runs, v, cal_items) for v in args.variants if v != "full"]
    headline = next((a for a in ablation if a["variant"] == HEADLINE), ablation[0] if ablation else {})
    raw = next((a for a in ablation if a["variant"] == "anchor"), None)
    summary = {k: headline.get(k) for k in ("variant", "quality_ratio", "cost_ratio", "cost_ratio_with_calibration",
                                            "vs_raw_anchors_points", "front_abs_error_mean")}
    summary.update(seeds=args.seeds, search_only_cost_ratio=headline.get("search_only_cost_ratio"),
                   raw_anchor_quality_ratio=raw and raw["quality_ratio"],
                   goal_quality_98pct=bool((headline.get("quality_ratio") or 0) >= 0.98),
                   goal_cost_50x=bool((headline.get("cost_ratio") or 0) >= 50),
                   goal_beats_raw_anchors=bool((headline.get("vs_raw_anchors_points") or -1) > 0),
                   goal_front_error_le_3=bool((headline.get("front_abs_error_mean") or 99) <= 3))
    paper = paper_table(world, scorer, runs)
    out = {"world": world.spec.size, "world_hash": world.spec.digest(), "target": TARGET, "genome": GENOME,
           "n_anchors": args.n, "estimator": args.estimator, "pop_size": args.pop, "generations": args.generations,
           "verify_top_k": VERIFY_K, "seeds": args.seeds,
           "calibration": {"items_evaluated": cal_items, "n_random_merges": args.n_cal, "dim": args.dim},
           "summary": summary, "ablation": ablation, "runs": runs, "paper_table": paper,
           "command": "python benchmarks/bench_search.py " + " ".join(
               f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(args).items() if k not in ("work", "out"))}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    plot(runs, out_path.with_name(f"{out_path.stem}_convergence.png"))
    print_tables(summary, ablation, paper)


def measure(variant: str, seed: int, res, scorer) -> dict:
    """One run's figures; true scores from every item."""
    from merge3.search.front import best_by_estimate

    ok = [r for r in res.evaluations if r["status"] == "ok"]
    top = best_by_estimate(ok, VERIFY_K)
    true_top = [true_of(r, variant, scorer)[TARGET] for r in top]
    verified = [v for v in res.verified if v.get("verified")]
    pick = verified[0]["verified"][TARGET] if verified else true_top[0]
    return {"variant": variant, "seed": seed, "evaluations": res.n_evaluations,
            "items_evaluated": res.items_evaluated, "verification_items": res.verification_items,
            "wall_seconds": round(res.wall_seconds, 1), "best_estimated": top[0]["objectives"][TARGET],
            "best_by_estimate_true": true_top[0], "best_verified_true": pick,
            "front_abs_error": sum(abs(r["objectives"][TARGET] - t) for r, t in zip(top, true_top)) / len(top),
            "best_candidate": {"genome": top[0]["genome"], "seed": top[0]["seed"]},
            "curve": convergence(res.evaluations, variant, scorer)}


def write_partial(runs: list[dict], work: Path) -> None:
    """Runs so far, so an interrupted benchmark leaves what it measured (not the results file)."""
    (work / "runs_partial.json").write_text(json.dumps(runs, indent=1) + "\n")


def summarize(runs: list[dict], variant: str, cal_items: int) -> dict:
    """One ablation row: the variant against the full-fitness search and raw anchors of the same seeds."""
    import numpy as np

    def mean(v, key):
        vals = [r[key] for r in runs if r["variant"] == v]
        return float(np.mean(vals)) if vals else None

    full_true, full_items = mean("full", "best_verified_true"), mean("full", "items_evaluated")
    items, extra = mean(variant, "items_evaluated"), mean(variant, "verification_items")
    row = {"variant": variant, "mechanisms": VARIANTS[variant], "best_verified_true": mean(variant, "best_verified_true"),
           "best_by_estimate_true": mean(variant, "best_by_estimate_true"), "items": items,
           "verification_items": extra, "front_abs_error_mean": 100 * mean(variant, "front_abs_error"),
           "seconds": mean(variant, "wall_seconds")}
    if full_true:
        row["quality_ratio"] = row["best_verified_true"] / full_true
        row["quality_ratio_unverified"] = row["best_by_estimate_true"] / full_true
    if full_items and items:
        row["cost_ratio"] = full_items / (items + extra)
        row["search_only_cost_ratio"] = full_items / items
        row["cost_ratio_with_calibration"] = full_items / (items + extra + cal_items)
    raw = mean("anchor", "best_verified_true")
    if raw is not None:
        row["vs_raw_anchors_points"] = 100 * (row["best_verified_true"] - raw)
    return row


def paper_table(world, scorer: TrueScorer, runs: list[dict]) -> list[dict]:
    """Every task: the endpoints, the uniform merge, and the pick of the best seed of each variant."""
    from merge3.evaluation.lmeval import accuracy
    from merge3.merging.recipe import MergeRecipe

    rows = []
    tasks = world.task_names
    s = scorer.scorer
    for name in ["base", *MODELS]:
        acc = accuracy(s.answer_model(str(world.model(name))))
        rows.append({"model": name, **{t: acc[t] for t in tasks}})
    n = len(s.spec.models)
    acc = accuracy(s.answer(MergeRecipe(method="task_arithmetic", base_model=str(world.base), models=s.spec.models,
                                        parameters={"lambda": 1.0}, model_parameters=[{"weight": 1 / n}] * n)))
    rows.append({"model": "uniform task arithmetic", **{t: acc[t] for t in tasks}})
    for v in ("full", "anchor", HEADLINE):
        these = [r for r in runs if r["variant"] == v]
        if not these:
            continue
        best = max(these, key=lambda r: r["best_by_estimate_true"])
        full = scorer.score(best["best_candidate"]["genome"], best["best_candidate"]["seed"], tasks)
        rows.append({"model": f"best merge, {v} (seed {best['seed']})", **full,
                     "estimated_target": best["best_estimated"]})
    return rows


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(VARIANTS, ["tab:blue", "tab:orange", "tab:green", "tab:olive", "tab:purple", "tab:red",
                                 "tab:brown", "tab:pink", "tab:cyan", "tab:gray", "black", "gold", "lime"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for r in runs:
        if not r["curve"]:
            continue
        x, y = zip(*r["curve"])
        ax.step(x, y, where="post", color=colors[r["variant"]], alpha=0.7,
                label=None if r["variant"] in seen else r["variant"])
        seen.add(r["variant"])
    ax.set_xscale("log")
    ax.set_xlabel("items evaluated by the search (log; verification not included)")
    ax.set_ylabel(f"true {TARGET} accuracy of the best-so-far by estimate")
    ax.set_title("Search convergence by fitness variant")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_tables(summary: dict, ablation: list[dict], paper: list[dict]) -> None:
    print("\nablation (means over seeds; quality = best verified true / full search's best true)")
    print(f"{'variant':<22}{'quality':>9}{'unverified':>11}{'cost x':>8}{'search x':>9}{'|est-true|':>11}"
          f"{'vs raw':>8}")
    for a in ablation:
        print(f"{a['variant']:<22}{a.get('quality_ratio', 0):>9.3f}{a.get('quality_ratio_unverified', 0):>11.3f}"
              f"{a.get('cost_ratio', 0):>8.1f}{a.get('search_only_cost_ratio', 0):>9.1f}"
              f"{a['front_abs_error_mean']:>11.2f}{a.get('vs_raw_anchors_points', 0):>8.2f}")
    print("\nsummary")
    for k, v in summary.items():
        print(f"  {k:32} {v:.4f}" if isinstance(v, float) else f"  {k:32} {v}")
    tasks = [k for k in paper[0] if k.startswith("tw_")]
    print("\n" + f"{'model':<40}" + "".join(f"{t:>13}" for t in tasks))
    for r in paper:
        print(f"{r['model']:<40}" + "".join(f"{100 * r[t]:>13.1f}" for t in tasks))


if __name__ == "__main__":
    main()
