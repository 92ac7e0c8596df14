"""The search loop with a synthetic in-process fitness (narrow unit tests of ask-and-tell, logging, penalties,
checkpoints, locking). The real path (Ray, lm-eval, merges) is tested in test_search_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from merge3.search import runner as R
from merge3.search.rundir import RunDir
from merge3.search.testing import SimulatedKill, StopAfter, SyntheticFitness

ROOT = Path(__file__).resolve().parents[1]


def synth_cfg(world, **alg) -> dict:
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(world.root)
    cfg["fitness"] = {"type": "anchor", "anchors": {"n": 5}}
    cfg["algorithm"] = {"name": "nsga2", "pop_size": 4, "generations": 3, **alg}
    return cfg


@pytest.mark.parametrize("name, mode", [("nsga2", "per_task"), ("nsga3", "per_task"), ("ga", "weighted_sum"),
                                        ("de", "weighted_sum"), ("cmaes", "weighted_sum")])
def test_algorithms_run_and_log(name, mode, micro_world, tmp_path):
    cfg = synth_cfg(micro_world, name=name, pop_size=4 if name != "nsga3" else 5)
    cfg["objectives"] = {"mode": mode}
    fit = SyntheticFitness(cfg["tasks"])
    res = R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=fit)
    assert res.done and res.generations == 3
    assert res.n_evaluations == 3 * cfg["algorithm"]["pop_size"]
    log = [json.loads(line) for line in (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    assert len(log) == res.n_evaluations
    for rec in log:
        for key in ("candidate", "genome", "objectives", "anchors", "worker", "time", "seconds", "items_evaluated"):
            assert key in rec
        assert all(0.0 <= v <= 1.0 for v in rec["genome"])
    assert (tmp_path / "run" / "result.json").exists() and (tmp_path / "run" / "progress.json").exists()
    assert res.front
    if mode == "weighted_sum":
        assert len(res.front) == 1
    anchors = json.loads((tmp_path / "run" / "anchors.json").read_text())
    assert set(anchors) == set(cfg["tasks"]) and all(len(v) == 5 for v in anchors.values())


def test_failures_get_the_penalty(micro_world, tmp_path):
    cfg = synth_cfg(micro_world)
    cfg["penalty"] = 0.0
    res = R.run(cfg, run_dir=tmp_path / "run", progress=False,
                evaluate=SyntheticFitness(cfg["tasks"], fail_every=3))
    failed = [r for r in res.evaluations if r["status"] != "ok"]
    assert failed and res.done
    for r in failed:
        assert r["error"] and all(v == 0.0 for v in r["objectives"].values())


@pytest.mark.parametrize("name, mode", [("nsga2", "per_task"), ("nsga3", "per_task"), ("ga", "weighted_sum"),
                                        ("de", "weighted_sum"), ("cmaes", "weighted_sum")])
def test_resume_after_stop_equals_uninterrupted(name, mode, micro_world, tmp_path):
    cfg = synth_cfg(micro_world, generations=4, name=name, pop_size=4 if name != "nsga3" else 5)
    cfg["objectives"] = {"mode": mode}
    fit = SyntheticFitness(cfg["tasks"])
    full = R.run(cfg, run_dir=tmp_path / "a", progress=False, evaluate=fit)
    for stop in (3, 5, 2):  # stop mid-generation repeatedly, as if killed
        with pytest.raises(SimulatedKill):
            if not (tmp_path / "b").exists():
                R.run(cfg, run_dir=tmp_path / "b", progress=False, evaluate=StopAfter(fit, stop))
            else:
                R.resume(tmp_path / "b", progress=False, evaluate=StopAfter(fit, stop))
    res = R.resume(tmp_path / "b", progress=False, evaluate=fit)
    key = lambda r: (r["generation"], r["index"], tuple(r["genome"]), tuple(r["F"]))  # noqa: E731
    assert sorted(map(key, res.evaluations)) == sorted(map(key, full.evaluations))
    assert [key(r) for r in res.front] == [key(r) for r in full.front]
    lines = (tmp_path / "b" / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == full.n_evaluations  # nothing evaluated twice


def test_second_process_is_locked_out(micro_world, tmp_path):
    cfg = synth_cfg(micro_world, generations=2)
    s = R.Search.create(cfg, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    try:
        with pytest.raises(R.RunDirectoryLocked, match="in use by another merge3 process"):
            R.Search.open(tmp_path / "run", progress=False)
    finally:
        s.lock.release()
    R.resume(tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    with pytest.raises(FileExistsError, match="merge3 resume"):
        R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))


def test_status_json_and_plot(micro_world, tmp_path, capsys):
    from merge3.search.status import print_status

    cfg = synth_cfg(micro_world)
    R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    info = print_status(tmp_path / "run", as_json=True)
    out = json.loads(capsys.readouterr().out)
    assert out["done"] is True and out["evaluations"] == 12 and out["generation"] == 3
    assert out["front"] and {"genome", "objectives"} <= set(out["front"][0])
    assert (tmp_path / "run" / "status.png").stat().st_size > 1000
    assert info["cost"]["items_evaluated"] == 12 * 20
    print_status(tmp_path / "run", as_json=False, plot=False)
    assert "Pareto front" in capsys.readouterr().out


def test_pareto_front():
    recs = [{"generation": 0, "index": i, "F": f} for i, f in enumerate([[-1, 0], [0, -1], [-0.5, -0.5],
                                                                          [-0.4, -0.4], [-1, 0]])]
    front = R.pareto_front(recs, 2)
    assert [r["index"] for r in front] == [0, 1, 2]
    assert R.pareto_front(recs[:4], 1)[0]["index"] == 0


class _OverrateByOrder(SyntheticFitness):
    """On every item (verification) a candidate scores the reverse of its estimate: the search's best by
    estimate is the worst verified, so a ranking by estimate and one by verified score disagree."""

    def __call__(self, job):
        out = super().__call__(job)
        if job.full_responses and out.objectives:
            out.raw = {t: 1.0 - v for t, v in out.objectives.items()}
            out.items_evaluated = 100 * len(self.tasks)
        return out


def test_verified_winners_rank_by_every_item(micro_world, tmp_path, capsys):
    from merge3.search.status import print_status

    cfg = synth_cfg(micro_world, name="ga")
    cfg["objectives"] = {"mode": "weighted_sum"}
    cfg["fitness"]["verify_top_k"] = 3
    res = R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=_OverrateByOrder(cfg["tasks"]))
    assert len(res.verified) == 3 and res.verification_items == 3 * 200
    by_estimate = sorted(res.verified, key=lambda e: -e["objectives"]["weighted_sum"])
    assert [e["candidate"] for e in res.verified] == [e["candidate"] for e in reversed(by_estimate)]
    best = res.verified[0]
    assert all(abs(best["verified"][t] + best["estimates"][t] - 1.0) < 1e-12 for t in cfg["tasks"])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [e["candidate"] for e in result["verified"]] == [e["candidate"] for e in res.verified]
    lines = (tmp_path / "run" / "verified.jsonl").read_text().splitlines()
    R.resume(tmp_path / "run", progress=False, evaluate=_OverrateByOrder(cfg["tasks"]))
    assert (tmp_path / "run" / "verified.jsonl").read_text().splitlines() == lines  # verified once
    info = print_status(tmp_path / "run", as_json=True, plot=False)
    capsys.readouterr()
    assert info["cost"]["verification_items"] == 600 and info["verified"][0]["candidate"] == best["candidate"]


def test_no_verification_with_k0(micro_world, tmp_path):
    cfg = synth_cfg(micro_world, generations=1)
    cfg["fitness"]["verify_top_k"] = 0
    res = R.run(cfg, run_dir=tmp_path / "a", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    assert res.verified == [] and not (tmp_path / "a" / "verified.jsonl").exists()


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_executes_nothing_from_the_run_directory(micro_world, tmp_path):
    """A run directory is data: a pickle planted in it (as older versions' checkpoint.pkl) is never loaded."""
    import pickle

    cfg = synth_cfg(micro_world, generations=3)
    fit = SyntheticFitness(cfg["tasks"])
    ref = R.run(cfg, run_dir=tmp_path / "ref", progress=False, evaluate=fit)
    with pytest.raises(SimulatedKill):
        R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=StopAfter(fit, 5))
    marker = tmp_path / "pwned"
    for name in ("checkpoint.pkl", "state.pkl"):
        (tmp_path / "run" / name).write_bytes(pickle.dumps(_Hostile(str(marker))))
    res = R.resume(tmp_path / "run", progress=False, evaluate=fit)
    from merge3.search.export import choose
    from merge3.search.status import collect

    collect(tmp_path / "run")
    assert not marker.exists()
    assert [(r["candidate"], r["F"]) for r in res.evaluations] == [(r["candidate"], r["F"]) for r in ref.evaluations]
    assert choose(res.evaluations, RunDir(tmp_path / "run").read_config(), True, None)


def test_resume_refuses_an_edited_config(micro_world, tmp_path):
    cfg = synth_cfg(micro_world, generations=2)
    fit = SyntheticFitness(cfg["tasks"])
    with pytest.raises(SimulatedKill):
        R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=StopAfter(fit, 3))
    text = (tmp_path / "run" / "config.yaml").read_text()
    (tmp_path / "run" / "config.yaml").write_text(text.replace("generations: 2", "generations: 3"))
    with pytest.raises(ValueError, match="config.yaml was changed"):
        R.resume(tmp_path / "run", progress=False, evaluate=fit)
