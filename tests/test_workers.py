"""Ray worker pool: a worker killed mid-evaluation has its candidate retried on another worker, and the search
goes on (real Ray actors, real merges, real lm-eval)."""

from __future__ import annotations

from pathlib import Path

import yaml

from merge3.search import runner as R

ROOT = Path(__file__).resolve().parents[1]


def test_killed_worker_candidate_is_retried(micro_world, tmp_path):
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(micro_world.root)
    cfg["fitness"] = {"type": "anchor", "anchors": {"n": 8}}  # raw anchor accuracy: no calibration needed
    cfg["algorithm"] = {"name": "nsga2", "pop_size": 4, "generations": 1}
    res = R.run(cfg, run_dir=tmp_path / "run", progress=False, fault={(0, 1)})
    assert res.done and res.n_evaluations == 4
    by_index = {r["index"]: r for r in res.evaluations}
    assert all(r["status"] == "ok" for r in res.evaluations), [r["error"] for r in res.evaluations]
    killed = by_index[1]
    assert killed["attempts"] == 2
    assert all(by_index[i]["attempts"] == 1 for i in (0, 2, 3))
    assert killed["items_evaluated"] == 16
