"""Full-benchmark accuracy of the tiny world's models, measured with lm-eval.

Rows: the base, each endpoint, and the uniform task-arithmetic average of the endpoints (weight 1/N each,
lambda 1: base + mean of the task vectors), on every task. Checks the world's design goal: each endpoint
beats the base on its own task by at least 15 points.

    .venv/bin/python benchmarks/bench_world.py [--world small]

Prints a table and writes benchmarks/results/world.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

OWN_TASK = {"math_en": "tw_arith_en", "lang_vl": "tw_lang_vl", "facts_en": "tw_facts_en"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="small", help="micro, small or a world directory")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "world.json"))
    args = ap.parse_args()

    from merge3.evaluation.lmeval import accuracy
    from merge3.merging.recipe import MergeRecipe
    from merge3.scoring import CandidateScorer, ScorerSpec
    from merge3.world import resolve_world

    world = resolve_world(args.world)
    endpoints = [str(p) for p in world.endpoints.values()]
    scorer = CandidateScorer(ScorerSpec(base=str(world.base), models=endpoints, genome=None, tasks=world.task_names,
                                        include_path=str(world.tasks_dir), evaluation={"device": "cpu"},
                                        device="cpu", cache_dir=str(world.root)))
    suite = scorer.suite
    rows = []
    start = time.perf_counter()
    for name in ["base", *world.endpoints]:
        acc = accuracy(scorer.answer_model(str(world.model(name))))
        rows.append({"model": name, **{t: round(100 * a, 1) for t, a in acc.items()}})

    recipe = MergeRecipe(method="task_arithmetic", base_model=str(world.base), models=endpoints,
                         parameters={"lambda": 1.0}, model_parameters=[{"weight": 1 / len(endpoints)}] * len(endpoints),
                         dtype="float32", seed=None)
    acc = accuracy(scorer.answer(recipe))
    rows.append({"model": "uniform task arithmetic", **{t: round(100 * a, 1) for t, a in acc.items()}})

    tasks = world.task_names
    base = rows[0]
    gains = {name: round(next(r for r in rows if r["model"] == name)[task] - base[task], 1)
             for name, task in OWN_TASK.items()}
    header = f"{'model':<26}" + "".join(f"{t:>13}" for t in tasks)
    print(f"world {world.spec.size} ({world.root}), items per task {suite.n_items()}")
    print(header)
    for r in rows:
        print(f"{r['model']:<26}" + "".join(f"{r[t]:>13.1f}" for t in tasks))
    print("endpoint gain over base on its own task (points):", gains)
    result = {"world": world.spec.size, "world_hash": world.spec.digest(), "items_per_task": suite.n_items(),
              "rows": rows, "own_task_gain": gains, "seconds": round(time.perf_counter() - start, 1),
              "command": "python benchmarks/bench_world.py --world " + args.world}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
