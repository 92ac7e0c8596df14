import os, sys, json, time
import sys; sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
os.environ["HF_HUB_OFFLINE"]="1"; os.environ["TQDM_DISABLE"]="1"; os.environ["OMP_NUM_THREADS"]="1"
import torch; torch.set_num_threads(1)
from merge3.search.runner import run
name, method, models, lo, hi, gran, filters, pop, gens = sys.argv[1], sys.argv[2], sys.argv[3].split(","), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), [f for f in sys.argv[7].split(",") if f], int(sys.argv[8]), int(sys.argv[9])
params = {"weight": [lo, hi]}
fixed = {"lambda": 1.0}
if method in ("ties", "dare_ties"):
    params["density"] = [0.1, 1.0]; fixed["normalize"] = False
cfg = {"name": name, "seed": 0, "world": "small", "base": "base", "models": models,
       "tasks": ["tw_arith_en", "tw_lang_vl"], "objectives": {"mode": "per_task"},
       "merge": {"method": method, "parameters": params, "fixed": fixed, "layer_granularity": gran, "filters": filters},
       "fitness": {"type": "full"}, "algorithm": {"name": "nsga2", "pop_size": pop, "generations": gens},
       "evaluation": {"batch_size": 64}, "workers": {"num_workers": 1, "local_cpus": 1, "cpus_per_worker": 1}}
t = time.time()
res = run(cfg, run_dir=os.path.join(os.environ.get('KB_RUNS', '/tmp/kb/runs'), name), progress=False)
print("seconds", round(time.time() - t), "evals", res.n_evaluations)
for f in res.front:
    print(json.dumps(f.get("objectives") if isinstance(f, dict) else f)[:300])
