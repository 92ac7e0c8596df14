"""Asynchronous dispatch (algorithm.dispatch: async): no generation barrier, every candidate scored once, and a
search stopped at any point and resumed ends identical to one never stopped, given the same completion order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from merge3.search import config as C
from merge3.search import runner as R
from merge3.search.testing import SimulatedKill, StopAfter, SyntheticFitness, ordered_pool

ROOT = Path(__file__).resolve().parents[1]


def async_cfg(world, **alg) -> dict:
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(world.root)
    cfg["fitness"] = {"type": "anchor", "anchors": {"n": 5}}
    cfg["algorithm"] = {"name": "nsga2", "pop_size": 5, "generations": 4, "dispatch": "async", **alg}
    return cfg


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "evaluations.jsonl").read_text().splitlines()]


def _key(r):
    return (r["candidate"], tuple(r["genome"]), tuple(r["F"]), r["status"], r["told"])


def test_default_dispatch_keeps_the_digest():
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    gen = C.normalize(cfg)
    assert gen.algorithm.dispatch == "generational"
    assert gen.digest() == "54180a31e312ca08"  # the digest before algorithm.dispatch existed
    cfg["algorithm"]["dispatch"] = "async"
    assert C.normalize(cfg).digest() != gen.digest()


@pytest.mark.parametrize("name, mode, workers", [("nsga2", "per_task", 3), ("ga", "weighted_sum", 2),
                                                 ("nsga3", "per_task", 7)])
def test_async_scores_every_candidate_once(name, mode, workers, micro_world, tmp_path):
    cfg = async_cfg(micro_world, name=name)
    cfg["objectives"] = {"mode": mode}
    fit = SyntheticFitness(cfg["tasks"])
    res = R.run(cfg, run_dir=tmp_path / "run", progress=False, pool_factory=ordered_pool(fit, workers))
    assert res.done and res.n_evaluations == 20
    log = _log(tmp_path / "run")
    assert len(log) == 20 and len({r["candidate"] for r in log}) == 20
    assert [r["told"] for r in log] == sorted(r["told"] for r in log)  # told in the order they came back
    batches = {r["generation"] for r in log}
    assert len(batches) >= 4  # overlapping batches, not one generation at a time
    assert json.loads((tmp_path / "run" / "result.json").read_text())["evaluations"] == 20
    if workers > 2:  # results came back out of proposal order, and batches overlapped
        assert [(r["generation"], r["index"]) for r in log] != sorted((r["generation"], r["index"]) for r in log)


@pytest.mark.parametrize("stops", [(1, 4, 2, 6), (7,), (3, 3, 3, 3, 3, 3)])
def test_async_killed_and_resumed_equals_uninterrupted(stops, micro_world, tmp_path):
    cfg = async_cfg(micro_world)
    fit = SyntheticFitness(cfg["tasks"])
    ref = R.run(cfg, run_dir=tmp_path / "ref", progress=False, pool_factory=ordered_pool(fit, 3))
    run_dir = tmp_path / "run"
    for stop in stops:  # each stop acts like a kill: nothing after it is written
        with pytest.raises(SimulatedKill):
            if not run_dir.exists():
                R.run(cfg, run_dir=run_dir, progress=False, pool_factory=ordered_pool(StopAfter(fit, stop), 3))
            else:
                R.resume(run_dir, progress=False, pool_factory=ordered_pool(StopAfter(fit, stop), 3))
    res = R.resume(run_dir, progress=False, pool_factory=ordered_pool(fit, 3))
    assert res.done
    assert [_key(r) for r in _log(run_dir)] == [_key(r) for r in _log(tmp_path / "ref")]  # same order, once each
    assert [r["candidate"] for r in res.front] == [r["candidate"] for r in ref.front]
    ref_result = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert json.loads((run_dir / "result.json").read_text()) == ref_result


def test_async_resume_refuses_a_foreign_log(micro_world, tmp_path):
    cfg = async_cfg(micro_world)
    fit = SyntheticFitness(cfg["tasks"])
    with pytest.raises(SimulatedKill):
        R.run(cfg, run_dir=tmp_path / "run", progress=False, pool_factory=ordered_pool(StopAfter(fit, 6), 3))
    log = tmp_path / "run" / "evaluations.jsonl"
    lines = log.read_text().splitlines()
    rec = json.loads(lines[2])
    rec["genome"][0] = 0.123456
    lines[2] = json.dumps(rec)
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="evaluations.jsonl: .* is not what the search proposes"):
        R.resume(tmp_path / "run", progress=False, pool_factory=ordered_pool(fit, 3))
