"""Ray worker pool: a worker killed mid-evaluation has its candidate retried on another worker (bounded
retries, then the penalty), and the search goes on (real Ray actors, real merges, real lm-eval)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from merge3.search import runner as R
from merge3.search.testing import HangingScorer, crashing_ray_pool

ROOT = Path(__file__).resolve().parents[1]


def test_killed_worker_candidate_is_retried(micro_world, tmp_path):
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(micro_world.root)
    cfg["fitness"] = {"type": "anchor", "anchors": {"n": 8}}  # raw anchor accuracy: no calibration needed
    cfg["algorithm"] = {"name": "nsga2", "pop_size": 4, "generations": 1}
    cfg["workers"]["max_retries"] = 1
    cfg["penalty"] = 0.0
    # candidate 1: its worker dies once (retried elsewhere, succeeds); candidate 2: dies on every attempt
    res = R.run(cfg, run_dir=tmp_path / "run", progress=False, pool_factory=crashing_ray_pool({(0, 1): 1, (0, 2): 99}))
    assert res.done and res.n_evaluations == 4
    by_index = {r["index"]: r for r in res.evaluations}
    assert by_index[1]["status"] == "ok" and by_index[1]["attempts"] == 2
    assert by_index[1]["items_evaluated"] == 16
    assert by_index[2]["status"] == "failed" and by_index[2]["attempts"] == 2
    assert "worker died" in by_index[2]["error"]
    assert all(v == 0.0 for v in by_index[2]["objectives"].values())
    assert all(by_index[i]["status"] == "ok" and by_index[i]["attempts"] == 1 for i in (0, 3))


def test_hung_candidate_is_timed_out_and_retried(micro_world, tmp_path):
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(micro_world.root)
    cfg["fitness"] = {"type": "anchor", "anchors": {"n": 8}, "verify_top_k": 0}
    cfg["algorithm"] = {"name": "nsga2", "pop_size": 4, "generations": 1}
    cfg["workers"].update(max_retries=1, candidate_timeout_s=4)
    # candidate 1 hangs on its first attempt (retried, succeeds); candidate 2 hangs on every attempt
    res = R.run(cfg, run_dir=tmp_path / "run", progress=False,
                pool_factory=crashing_ray_pool({(0, 1): 1, (0, 2): 99}, scorer=HangingScorer))
    assert res.done and res.n_evaluations == 4
    lines = (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == 4  # every candidate logged exactly once
    by_index = {r["index"]: r for r in res.evaluations}
    assert by_index[1]["status"] == "ok" and by_index[1]["attempts"] == 2
    assert by_index[2]["status"] == "failed" and "timed out after 4 s" in by_index[2]["error"]
    assert all(by_index[i]["status"] == "ok" for i in (0, 3))


def test_hung_candidate_is_timed_out_and_retried_async(micro_world, tmp_path):
    """The same with asynchronous dispatch: the other workers go on with later proposals meanwhile."""
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(micro_world.root)
    cfg["fitness"] = {"type": "anchor", "anchors": {"n": 8}, "verify_top_k": 0}
    cfg["algorithm"] = {"name": "nsga2", "pop_size": 4, "generations": 2, "dispatch": "async"}
    cfg["workers"].update(max_retries=1, candidate_timeout_s=4)
    res = R.run(cfg, run_dir=tmp_path / "run", progress=False,
                pool_factory=crashing_ray_pool({(0, 1): 1, (0, 2): 99}, scorer=HangingScorer))
    assert res.done and res.n_evaluations == 8
    lines = (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == 8 and len({json.loads(x)["candidate"] for x in lines}) == 8  # each logged exactly once
    by_key = {(r["generation"], r["index"]): r for r in res.evaluations}
    assert by_key[(0, 1)]["status"] == "ok" and by_key[(0, 1)]["attempts"] == 2
    assert by_key[(0, 2)]["status"] == "failed" and "timed out after 4 s" in by_key[(0, 2)]["error"]
    assert all(r["status"] == "ok" for k, r in by_key.items() if k not in ((0, 1), (0, 2)))
