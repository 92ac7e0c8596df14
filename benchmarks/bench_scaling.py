"""Worker utilization and throughput: generational against asynchronous dispatch (``algorithm.dispatch``).

Utilization = time workers spent scoring / (wall time x workers), wall time from the first candidate handed to
a worker to the last result back (the run's set-up is not counted); candidates per hour = evaluations / wall.

- simulated: the real search driver (ask-and-tell, logging, resume bookkeeping) with k = 1, 2, 4, 8, 16
  in-process workers whose "evaluation" sleeps a time drawn from a lognormal with sigma 1 (heavy-tailed, as
  candidate times are in practice), seeded by the candidate's merge seed; no CPU used, so k can exceed the
  cores. Same config for every k: NSGA-II, pop_size 16, 32 generations (512 candidates: the drain at the end,
  when fewer candidates than workers are left, weighs little).
- real: the micro world, k = 1, 2 local Ray workers merging and scoring each candidate (CandidateScorer, every
  item of both tasks: ``fitness.type: full``), NSGA-II, pop_size 4, 4 generations; timed once the workers have
  loaded the models (their start-up, a few seconds, is not counted).

    .venv/bin/python benchmarks/bench_scaling.py [--mean 0.15] [--real-only | --simulated-only]

Prints a table, writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's merge3, whatever the environment has installed
RESULTS = Path(__file__).parent / "results"
MODES = ("generational", "async")


class TimedPool:
    """Wraps a pool: busy seconds (each result's ``seconds``) and the span from the first job to the last result."""

    def __init__(self, inner):
        self.inner, self.n_workers = inner, inner.n_workers
        self.busy, self.t0, self.t1, self.n = 0.0, None, None, 0

    def run(self, jobs, more=None):
        if self.t0 is None:
            self.t0 = time.perf_counter()
        for res in self.inner.run(jobs, more=more):
            self.t1 = time.perf_counter()
            self.busy += float(res.seconds)
            self.n += 1
            yield res

    def close(self):
        self.inner.close()


class LognormalSleep:
    """A simulated evaluation: sleeps exp(N(mu, 1)) seconds (mean ``mean``), drawn from the candidate's seed."""

    def __init__(self, tasks, mean: float):
        from merge3.search.testing import SyntheticFitness

        self.fitness, self.mu = SyntheticFitness(tasks), math.log(mean) - 0.5

    def __call__(self, job):
        import numpy as np

        t = float(np.exp(np.random.default_rng(job.seed).normal(self.mu, 1.0)))
        t0 = time.perf_counter()
        time.sleep(t)
        res = self.fitness(job)
        res.seconds = time.perf_counter() - t0
        return res


def micro_config(world, mode: str, workers: int, pop: int, generations: int, fitness: str = "anchor") -> dict:
    import yaml

    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(world.root)
    cfg["fitness"] = {"type": fitness, "verify_top_k": 0, **({"anchors": {"n": 8}} if fitness != "full" else {})}
    cfg["algorithm"] = {"name": "nsga2", "pop_size": pop, "generations": generations, "dispatch": mode}
    cfg["workers"] = {"num_workers": workers, "cpus_per_worker": 1, "local_cpus": max(2, workers)}
    return cfg


def measure(cfg: dict, factory, tmp: Path) -> tuple[TimedPool, float]:
    from merge3.search import runner as R

    pools = []

    def pool_factory(spec, workers, address=None, log=None):
        pools.append(TimedPool(factory(spec, workers, address, log)))
        return pools[-1]

    run_dir = tmp / f"{cfg['algorithm']['dispatch']}-{cfg['workers']['num_workers']}-{time.time_ns()}"
    res = R.run(cfg, run_dir=run_dir, progress=False, pool_factory=pool_factory)
    assert res.done and len(pools) == 1
    shutil.rmtree(run_dir, ignore_errors=True)
    return pools[0], res.n_evaluations


def ready_ray_pool(spec, workers, address=None, log=None):
    """Ray workers, returned once each has loaded the models."""
    import ray

    from merge3.search.workers import open_ray_pool

    pool = open_ray_pool(spec, workers, address, log=log)
    ray.get([a.ready.remote() for a in pool.actors])
    return pool


def row(mode: str, k: int, simulated: bool, pool: TimedPool, n: int) -> dict:
    wall = pool.t1 - pool.t0
    return {"mode": mode, "workers": k, "simulated": simulated, "utilization": round(pool.busy / (wall * k), 4),
            "candidates_per_hour": round(3600 * n / wall, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mean", type=float, default=0.15, help="mean simulated evaluation time, seconds")
    ap.add_argument("--pop", type=int, default=16)
    ap.add_argument("--generations", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--real-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--real-only", action="store_true")
    ap.add_argument("--simulated-only", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "scaling.json"))
    args = ap.parse_args(argv)

    from merge3.search.testing import SyntheticFitness  # noqa: F401  (imports merge3 before the world build)
    from merge3.search.workers import ThreadPool
    from merge3.world import build_world

    world = build_world("micro", progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scaling-"))
    rows, t_start = [], time.time()
    try:
        if not args.real_only:
            for k in args.workers:
                for mode in MODES:
                    cfg = micro_config(world, mode, k, pop=args.pop, generations=args.generations)
                    sleeper = LognormalSleep(cfg["tasks"], args.mean)
                    pool, n = measure(cfg, lambda spec, w, a, log, k=k, s=sleeper: ThreadPool(s, k), tmp)
                    rows.append(row(mode, k, True, pool, n))
                    print(rows[-1], file=sys.stderr, flush=True)
        if not args.simulated_only:
            for k in args.real_workers:
                for mode in MODES:
                    cfg = micro_config(world, mode, k, pop=4, generations=4, fitness="full")
                    pool, n = measure(cfg, ready_ray_pool, tmp)
                    rows.append(row(mode, k, False, pool, n))
                    print(rows[-1], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    goals = {}
    for simulated in (True, False):
        for mode in MODES:
            one = next((r for r in rows if r["mode"] == mode and r["simulated"] == simulated and r["workers"] == 1),
                       None)
            for r in rows:
                if r["mode"] == mode and r["simulated"] == simulated and one and r["workers"] > 1:
                    goals[f"{'simulated' if simulated else 'real'} {mode} k={r['workers']}: candidates/hour "
                          "over k x one worker's"] = round(r["candidates_per_hour"] /
                                                          (r["workers"] * one["candidates_per_hour"]), 3)
    cmd = "python benchmarks/bench_scaling.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                  " " + " ".join(sys.argv[1:] if argv is None else argv))
    out = {"rows": rows, "command": cmd,
           "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores (shared with other "
                      f"work; load average {os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}",
           "setup": {"simulated": f"NSGA-II pop_size {args.pop} x {args.generations} generations "
                                  f"({args.pop * args.generations} candidates), sleep ~ lognormal sigma 1, mean "
                                  f"{args.mean} s, in-process threads",
                     "real": "micro world, NSGA-II pop_size 4 x 4 generations (16 candidates), local Ray workers "
                             "(1 CPU each), every item of tw_arith_vl and tw_lang_vl (fitness full), timed after "
                             "the workers loaded the models"},
           "ratios": goals, "seconds": round(time.time() - t_start, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")

    print(f"{'mode':<13} {'workers':>7} {'simulated':>9} {'utilization':>11} {'candidates/hour':>15} "
          f"{'vs k x 1 worker':>15}")
    for r in rows:
        one = next((o for o in rows if o["mode"] == r["mode"] and o["simulated"] == r["simulated"]
                    and o["workers"] == 1), None)
        ratio = f"{r['candidates_per_hour'] / (r['workers'] * one['candidates_per_hour']):.2f}" if one else "-"
        print(f"{r['mode']:<13} {r['workers']:>7} {str(r['simulated']).lower():>9} {r['utilization']:>11.2f} "
              f"{r['candidates_per_hour']:>15.0f} {ratio:>15}")
    print(f"wrote {args.out} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
