"""Does merging pay off in the tiny world? Full-benchmark accuracy measured with lm-eval.

For each world (small, and micro for the tests' world): a fresh timed build (its files' sha256 compared with the
cached build's), then rows for the base, each endpoint, the uniform task-arithmetic merge (weight 1/N each), the
recorded merge (task arithmetic 1·Δmath_en + 1·Δlang_vl, the one the micro test asserts), a few skill-keeping
merges, and the best merge of a full-fitness search (every target item evaluated for every candidate), on every
task. On the small world it also measures the spread of the true target accuracy over random candidates of the
demo's genome. Every candidate is scored through ``merge3.scoring.CandidateScorer``, as a search scores it.

    .venv/bin/python benchmarks/bench_world.py [--world small] [--micro micro] [--random 50]

Prints tables and writes benchmarks/results/world.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

OWN_TASK = {"math_en": "tw_arith_en", "lang_vl": "tw_lang_vl", "facts_en": "tw_facts_en"}
TARGET = "tw_arith_vl"
def _demo_genome() -> dict:
    """The demo's genome, as experiments/demo.yaml states it."""
    import yaml

    merge = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml").read_text())["merge"]
    return {k: merge[k] for k in ("method", "parameters", "filters") if k in merge}


DEMO_GENOME = _demo_genome()
# The searched genome: task-arithmetic weight per endpoint, separately for the input embeddings, the output
# head and the rest (the transformer layers), so a merge can take the Veltic word rows from lang_vl and the
# layers from math_en.
# The recorded merge (weights for math_en, lang_vl, facts_en; tests/test_world.py asserts it on micro), then
# milder ones probing whether one merge keeps both own-task gains.
RECORDED_WEIGHTS = [(1.0, 1.0, 0.0), (0.7, 1.0, 0.0), (0.5, 1.0, 0.0), (0.5, 1.0, 0.5)]
SEARCH_GENOME = {"method": "task_arithmetic", "parameters": {"weight": [0.0, 1.5]}, "fixed": {"lambda": 1.0},
                 "filters": ["embed_tokens", "lm_head"]}


def _round(acc: dict) -> dict:
    return {t: round(100 * a, 1) for t, a in acc.items()}


class Bench:
    def __init__(self, world):
        from merge3.scoring import CandidateScorer, ScorerSpec

        self.world = world
        self.endpoints = [str(p) for p in world.endpoints.values()]
        self.scorer = CandidateScorer(ScorerSpec(
            base=str(world.base), models=self.endpoints, genome=None, tasks=world.task_names,
            include_path=str(world.tasks_dir), evaluation={"device": "cpu", "batch_size": 64}, device="cpu",
            cache_dir=str(world.root)))
        self.suite = self.scorer.suite

    def evaluate_path(self, path) -> dict:
        from merge3.evaluation.lmeval import accuracy

        return _round(accuracy(self.scorer.answer_model(str(path))))

    def evaluate_recipe(self, recipe, tasks=None) -> dict:
        from merge3.evaluation.lmeval import accuracy

        items = None if tasks is None else {t: self.suite.item_ids(t) for t in tasks}
        return _round(accuracy(self.scorer.answer(recipe, items)))

    def genome(self, cfg):
        from merge3.genome import Genome

        return Genome.from_config(cfg, len(self.endpoints), self.world.spec.layers)

    def task_arithmetic(self, weights) -> object:
        """Task arithmetic, lambda 1, one weight per endpoint (same for every tensor)."""
        from merge3.merging.recipe import MergeRecipe

        return MergeRecipe(method="task_arithmetic", base_model=str(self.world.base), models=self.endpoints,
                           parameters={"lambda": 1.0}, model_parameters=[{"weight": w} for w in weights],
                           dtype="float32", seed=0)

    def uniform_recipe(self):
        """Task arithmetic, weight 1/N for every endpoint and tensor (in the searched genome's filter form)."""
        from merge3.merging.recipe import MergeRecipe

        n = len(self.endpoints)
        w = [{"filter": f, "value": 1 / n} for f in SEARCH_GENOME["filters"]] + [{"value": 1 / n}]
        return MergeRecipe(method="task_arithmetic", base_model=str(self.world.base), models=self.endpoints,
                           parameters={"lambda": 1.0}, model_parameters=[{"weight": w} for _ in range(n)],
                           dtype="float32", seed=0)

    def search(self, pop: int, generations: int, seed: int):
        """A genetic algorithm (pymoo) on the target's full-benchmark accuracy; returns (recipe, x, log)."""
        from pymoo.algorithms.soo.nonconvex.ga import GA
        from pymoo.core.problem import Problem
        from pymoo.optimize import minimize

        genome = self.genome(SEARCH_GENOME)
        log = []

        def fitness(x):
            recipe = genome.decode(x, str(self.world.base), self.endpoints, seed=0)
            acc = self.evaluate_recipe(recipe, [TARGET])[TARGET]
            log.append(acc)
            return -acc

        class P(Problem):
            def __init__(self):
                super().__init__(n_var=genome.dim, n_obj=1, xl=0.0, xu=1.0)

            def _evaluate(self, X, out, *args, **kwargs):
                out["F"] = np.array([[fitness(x)] for x in X])

        # The first population: the uniform merge (weight 1/N everywhere) and random candidates.
        rng = np.random.default_rng(seed)
        first = rng.random((pop, genome.dim))
        first[0] = genome.encode(self.uniform_recipe())
        res = minimize(P(), GA(pop_size=pop, sampling=first, eliminate_duplicates=True), ("n_gen", generations),
                       seed=seed, verbose=False)
        x = np.atleast_2d(res.X)[0]
        return genome.decode(x, str(self.world.base), self.endpoints, seed=0), genome, x, log

    def random_spread(self, n: int, seed: int) -> dict:
        genome = self.genome(DEMO_GENOME)
        rng = np.random.default_rng(seed)
        accs = []
        for _ in range(n):
            recipe = genome.decode(rng.random(genome.dim), str(self.world.base), self.endpoints, seed=0)
            accs.append(self.evaluate_recipe(recipe, [TARGET])[TARGET])
        q1, median, q3 = np.percentile(accs, [25, 50, 75])
        return {"n": n, "genome": DEMO_GENOME, "min": min(accs), "q1": round(float(q1), 2),
                "median": round(float(median), 2), "q3": round(float(q3), 2), "max": max(accs),
                "mean": round(statistics.mean(accs), 2)}


def timed_build(size: str, workdir: Path):
    """Builds the world fresh under ``workdir`` (timed) and compares its hashes with the cached build, if any."""
    from merge3.world import build_world, load_world, world_spec
    from merge3.world.build import world_dir

    start = time.perf_counter()
    world = build_world(size, out=workdir / size, progress=False)
    seconds = round(time.perf_counter() - start, 1)
    cached = world_dir(world_spec(size))
    same = load_world(cached).files == world.files if (cached / "world.json").is_file() else None
    return world, seconds, same


def table(bench: Bench, search_pop: int, search_gens: int, seed: int) -> dict:
    world = bench.world
    rows = []
    for name in ["base", *world.endpoints]:
        rows.append({"model": name, **bench.evaluate_path(world.model(name))})
    uniform = bench.uniform_recipe()
    uniform_row = {"model": "uniform merge (task arithmetic, weight 1/3)", **bench.evaluate_recipe(uniform)}
    rows.append(uniform_row)
    # The recorded merge and milder ones: how much of both own-task gains a single merge keeps.
    probes = []
    for w in RECORDED_WEIGHTS:
        label = "recorded merge" if w == RECORDED_WEIGHTS[0] else "probe"
        row = {"model": f"{label} (task arithmetic, weights {', '.join(f'{x:g}' for x in w)})",
               **bench.evaluate_recipe(bench.task_arithmetic(w))}
        rows.append(row)
        probes.append((w, row))
    t0 = time.perf_counter()
    recipe, genome, x, log = bench.search(search_pop, search_gens, seed)
    search_seconds = round(time.perf_counter() - t0, 1)
    best_row = {"model": "best merge (full-fitness GA)", **bench.evaluate_recipe(recipe)}
    rows.append(best_row)
    endpoint_best = max(r[TARGET] for r in rows if r["model"] in world.endpoints)
    base = rows[0]
    gains = {name: round(next(r for r in rows if r["model"] == name)[task] - base[task], 1)
             for name, task in OWN_TASK.items()}
    def kept(row):
        return {name: round((row[task] - base[task]) / max(gains[name], 1e-9), 3)
                for name, task in OWN_TASK.items() if name != "facts_en"}

    keepers = [(w, r) for w, r in probes + [(None, best_row), (None, uniform_row)] if min(kept(r).values()) >= 0.8]
    keeper = max(keepers, key=lambda wr: wr[1][TARGET]) if keepers else None
    return {
        "world": world.spec.size, "world_hash": world.spec.digest(), "items_per_task": bench.suite.n_items(),
        "target_task": TARGET, "rows": rows,
        **{r["model"]: {t: r[t] for t in world.task_names} for r in rows if r["model"] in world.endpoints},
        "uniform_merge": {"model": uniform_row["model"], "recipe": uniform.to_dict() if hasattr(uniform, "to_dict") else None,
                          "accuracy": {t: uniform_row[t] for t in world.task_names}},
        "best_merge": {"model": best_row["model"], "genome": SEARCH_GENOME, "genes": dict(zip(genome.names(), [round(float(v), 4) for v in x])),
                       "recipe": {"method": recipe.method, "parameters": recipe.parameters,
                                  "model_parameters": recipe.model_parameters},
                       "accuracy": {t: best_row[t] for t in world.task_names},
                       "search": {"algorithm": "pymoo GA", "pop_size": search_pop, "generations": search_gens,
                                  "seed": seed, "candidates": len(log), "items_per_candidate": bench.suite.n_items()[TARGET],
                                  "fitness": f"full {TARGET} accuracy (lm-eval)", "seconds": search_seconds,
                                  "best_fitness_seen": max(log)},
                       "gain_over_best_endpoint": round(best_row[TARGET] - endpoint_best, 1),
                       "share_of_own_task_gain_kept": kept(best_row)},
        "recorded_merge": {"model": probes[0][1]["model"], "weights": list(RECORDED_WEIGHTS[0]),
                           "accuracy": {t: probes[0][1][t] for t in world.task_names},
                           "gain_over_best_endpoint": round(probes[0][1][TARGET] - endpoint_best, 1),
                           "share_of_own_task_gain_kept": kept(probes[0][1])},
        "skill_keeping_merge": None if keeper is None else {
            "model": keeper[1]["model"], "accuracy": {t: keeper[1][t] for t in world.task_names},
            "share_of_own_task_gain_kept": kept(keeper[1])},
        "own_task_gain": gains,
    }


def print_table(res: dict) -> None:
    tasks = list(res["items_per_task"])
    print(f"world {res['world']}, items per task {res['items_per_task']}")
    print(f"{'model':<44}" + "".join(f"{t:>13}" for t in tasks))
    for r in res["rows"]:
        print(f"{r['model']:<44}" + "".join(f"{r[t]:>13.1f}" for t in tasks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="small", help="the main world's size")
    ap.add_argument("--micro", default="micro", help="the second (tests') world's size, or '' to skip it")
    ap.add_argument("--random", type=int, default=50, help="random candidates of the demo's genome")
    ap.add_argument("--pop", type=int, default=10, help="full-fitness search: candidates per generation")
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "world.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    build_seconds, deterministic = {}, {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-world-"))
    world, build_seconds[args.world], deterministic[args.world] = timed_build(args.world, workdir)
    bench = Bench(world)
    result = table(bench, args.pop, args.generations, args.seed)
    result["random_spread"] = bench.random_spread(args.random, args.seed)
    print_table(result)
    print("random candidates of the demo's genome, target accuracy:", result["random_spread"])
    if args.micro:
        micro, build_seconds[args.micro], deterministic[args.micro] = timed_build(args.micro, workdir)
        result["micro"] = table(Bench(micro), args.pop, args.generations, args.seed)
        print_table(result["micro"])
    result["build_seconds"] = build_seconds
    result["fresh_build_matches_cache"] = deterministic
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["command"] = (f"python benchmarks/bench_world.py --world {args.world} --micro {args.micro} "
                         f"--random {args.random} --pop {args.pop} --generations {args.generations} --seed {args.seed}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
