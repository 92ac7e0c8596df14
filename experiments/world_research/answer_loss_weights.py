"""Attempt 10's weight probes: task arithmetic W_MATH·Δmath + W_LANG·Δlang_vl with a math endpoint from
answer_loss.py, on every item of tw_arith_en, tw_arith_vl and tw_lang_vl. From the repository root:

    .venv/bin/python experiments/world_research/answer_loss_weights.py /tmp/answer_loss/answer 0.7,1 0.8,1
"""
import os, sys, json
os.environ["HF_HUB_OFFLINE"]="1"; os.environ["TQDM_DISABLE"]="1"
import torch; torch.set_num_threads(1)
from merge3.evaluation.lmeval import accuracy
from merge3.merging.recipe import MergeRecipe
from merge3.scoring import CandidateScorer, ScorerSpec
from merge3.world import resolve_world
w = resolve_world("small"); math_dir = sys.argv[1]; lang = str(w.model("lang_vl"))
TASKS = ["tw_arith_en", "tw_arith_vl", "tw_lang_vl"]
s = CandidateScorer(ScorerSpec(base=str(w.base), models=[math_dir, lang], genome=None, tasks=TASKS,
    include_path=str(w.tasks_dir), evaluation={"device": "cpu", "batch_size": 64}, device="cpu", cache_dir=str(w.root)))
for wm, wl in [tuple(map(float, p.split(","))) for p in sys.argv[2:]]:
    acc = accuracy(s.answer(MergeRecipe(method="task_arithmetic", base_model=str(w.base), models=[math_dir, lang],
        parameters={"lambda": 1.0}, model_parameters=[{"weight": wm}, {"weight": wl}], dtype="float32")))
    print(json.dumps({"math_dir": math_dir, "weights": [wm, wl], **{k: round(v, 3) for k, v in acc.items()}}), flush=True)
