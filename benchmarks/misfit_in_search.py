"""Is a search's front error the item model's misfit or the anchors' noise? A one-off analysis of the run
directories bench_search leaves behind (refresh + online calibration, the seeds of its last run).

Each candidate's gmp-IRT estimate is re-computed exactly as the search computed it (the calibration of its
generation: the one-off calibration grown with the answers of the candidates online calibration scored before
it; ``check`` is the largest difference from the logged estimate), then corrected by the mean residual
(accuracy - mean p) of its k nearest population models in ability, on the share of the task the model
estimates ((1 - delta)(1 - lambda)). Population models include online calibration's fully answered
candidates, i.e. models where the search goes. Compared with the true target scores (every item): over the
last two generations' candidates, and over each search's 3 best by estimate (the front a user would read).
If the correction leaves the front's error where it was, that error is the selection of candidates whose
anchor answers were lucky, not the item model's misfit. Then what would remove a winner's curse: the front
re-estimated on --fresh random items per candidate it was not selected on (items it never answered; 5 draws
each; gmp-IRT with the search's final calibration).

    .venv/bin/python benchmarks/misfit_in_search.py [--seeds 5 6 7 8 9] [--neighbours 1 2 5]

Writes benchmarks/results/misfit_in_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_search as B  # noqa: E402  (its target, genome, models and true scorer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7, 8, 9])
    ap.add_argument("--neighbours", type=int, nargs="+", default=[1, 2, 5])
    ap.add_argument("--fresh", type=int, nargs="+", default=[20, 50, 100], help="fresh items per front candidate")
    ap.add_argument("--calibration", default="calibration-100-400-2-d5", help="bench_search's calibration dir")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "misfit_in_search.json"))
    a = ap.parse_args()

    from merge3.calibration import Calibration, item_model_residuals
    from merge3.irt import estimate
    from merge3.irt.anchors import Anchors
    from merge3.irt.estimators import mp_ability
    from merge3.irt.fit import responses_to_rows
    from merge3.search.front import best_by_estimate
    from merge3.world import resolve_world
    from merge3.world.build import default_cache

    world = resolve_world(a.world)
    work = default_cache() / "bench_search" / f"{world.spec.size}-{world.spec.digest()}"
    base = Calibration.load(work / a.calibration)
    target, params = B.TARGET, base.item_params
    rows_t = params.rows(target)
    scorer = B.TrueScorer(world, B.MODELS)

    def fresh_errors(rec, true, cal, fresh):
        """|gmp-IRT estimate on fresh random items - true| for this front candidate, 5 draws per size; ``cal``:
        the search's final calibration."""
        answers = scorer.scorer.answer(scorer.scorer.recipe(rec["genome"], rec["seed"]),
                                       {target: scorer.scorer.suite.item_ids(target)})[target]
        unseen = sorted(set(answers) - set(rec["responses"][target]))
        for n in fresh:
            for draw in range(5):
                ids = list(np.random.default_rng([rec["seed"], n, draw]).choice(unseen, n, replace=False))
                anchors = Anchors.uniform({target: ids}, method="random")
                z = estimate("gmpirt", {target: {i: answers[i] for i in ids}}, cal, anchors)[target]
                fresh[n].append(abs(z - true))

    def residuals(cal):
        """Ability and target residual of every population model with its target answers."""
        models = [m for m in cal.train_models if cal.store.get(m).get(target)]
        return (np.array([cal.abilities[m] for m in models]),
                item_model_residuals(params, cal.abilities, cal.store, models, [target])[:, 0])

    errors = {"last_generations": {"uncorrected": []}, "front": {"uncorrected": []}}
    for k in a.neighbours:
        errors["last_generations"][f"neighbours_{k}"], errors["front"][f"neighbours_{k}"] = [], []
    check = 0.0
    fresh = {n: [] for n in a.fresh}
    for seed in a.seeds:
        rd = work / "runs" / f"irt+refresh+online-s{seed}"
        if not (rd / "evaluations.jsonl").is_file():
            raise SystemExit(f"{rd}: no run directory; run bench_search with --seeds {seed} first")
        recs = [r for r in map(json.loads, open(rd / "evaluations.jsonl")) if r["status"] == "ok"]
        online = [v for v in map(json.loads, open(rd / "verified.jsonl"))
                  if v["stage"] == "online" and v["status"] == "ok"]
        front = {r["candidate"] for r in best_by_estimate(recs, 3)}
        final = base.with_models({v["candidate"]: v["responses"] for v in online})
        last = max(r["generation"] for r in recs)
        cals = {}
        for r in recs:
            if r["generation"] < last - 1 and r["candidate"] not in front:
                continue
            g = r["generation"]
            if g not in cals:
                added = {v["candidate"]: v["responses"] for v in online if v["generation"] < g}
                cal = base.with_models(added) if added else base
                cals[g] = (cal, *residuals(cal))
            cal, th_pop, r_pop = cals[g]
            anchors = Anchors.uniform({target: list(r["responses"][target])}, method="random")
            z = estimate("gmpirt", r["responses"], cal, anchors)[target]
            check = max(check, abs(z - r["objectives"][target]))
            rows, y = responses_to_rows(params, r["responses"])
            nearest = np.argsort(np.linalg.norm(th_pop - mp_ability(cal, rows, y), axis=1))
            share = (1 - cal.mixing_weight("gmpirt", anchors, target)) * (1 - len(rows) / len(rows_t))
            true = scorer.score(r["genome"], r["seed"], [target])[target]
            groups = ["front"] * (r["candidate"] in front) + ["last_generations"] * (g >= last - 1)
            if r["candidate"] in front:
                fresh_errors(r, true, final, fresh)
            for group in groups:
                errors[group]["uncorrected"].append(abs(z - true))
                for k in a.neighbours:
                    errors[group][f"neighbours_{k}"].append(abs(z + share * r_pop[nearest[:k]].mean() - true))
    out = {"seeds": a.seeds, "check": check,
           "front_fresh_items_mae_points": {n: round(100 * float(np.mean(v)), 2) for n, v in fresh.items()},
           "mae_points": {grp: {k: round(100 * float(np.mean(v)), 2) for k, v in e.items()}
                          for grp, e in errors.items()},
           "counts": {grp: len(e["uncorrected"]) for grp, e in errors.items()}}
    print(json.dumps(out, indent=1))
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
