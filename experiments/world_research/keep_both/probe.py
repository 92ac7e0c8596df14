"""Scratch probes and searches for a merge that keeps both own-task gains (experiments/world_research/README.md, attempt 9).

Run from the repository root, e.g. `.venv/bin/python experiments/world_research/keep_both/p2.py`."""
import sys; sys.path.insert(0, __import__("os").path.abspath(__import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", "..")))
import os, sys, time, json
os.environ["HF_HUB_OFFLINE"]="1"; os.environ["TQDM_DISABLE"]="1"
import torch; torch.set_num_threads(1)
sys.path.insert(0, 'benchmarks')
import bench_world as B
from merge3.world import resolve_world
from merge3.merging.recipe import MergeRecipe
bench = B.Bench(resolve_world('small'))
E = bench.endpoints
base = str(bench.world.base)
def ta(mp, params={"lambda":1.0}):
    return MergeRecipe(method="task_arithmetic", base_model=base, models=E, parameters=params,
                       model_parameters=mp, dtype="float32", seed=0)
def run(label, recipe, tasks=("tw_arith_en","tw_lang_vl")):
    t=time.perf_counter(); acc=bench.evaluate_recipe(recipe, list(tasks))
    print(f"{label:60s} {acc} {time.perf_counter()-t:.0f}s", flush=True)
    return acc
