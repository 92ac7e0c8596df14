"""Kill-and-resume: a search killed with SIGKILL at any moment and resumed ends with exactly the evaluations
and front of the same search run without interruption."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from merge3.search import runner as R
from merge3.search.testing import SyntheticFitness

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from merge3.search import runner as R
from merge3.search.testing import SyntheticFitness
import yaml
cfg = yaml.safe_load(open(sys.argv[2]))
fit = SyntheticFitness(cfg["tasks"], delay=float(sys.argv[4]))
if sys.argv[1] == "run":
    R.run(cfg, run_dir=sys.argv[3], progress=False, evaluate=fit)
else:
    R.resume(sys.argv[3], progress=False, evaluate=fit)
"""


def _key(r):
    return (r["generation"], r["index"], tuple(r["genome"]), tuple(r["F"]), r["status"])


def _log(run_dir: Path) -> list[dict]:
    p = run_dir / "evaluations.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip().endswith("}")]


def _kill_and_resume(cmd_run, cmd_resume, run_dir: Path, rng: random.Random, max_kills: int, env,
                     timeout: float = 600) -> int:
    kills = 0
    t_end = time.time() + timeout
    while not (run_dir / "result.json").exists():
        assert time.time() < t_end, "kill-and-resume loop timed out"
        cmd = cmd_resume if (run_dir / "config.yaml").exists() else cmd_run
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < max_kills:
            start = len(_log(run_dir))
            wait_for = rng.randint(0, 3)
            while proc.poll() is None and len(_log(run_dir)) < start + wait_for:
                time.sleep(0.01)
            time.sleep(rng.random() * 0.3)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        proc.wait(timeout=max(1, t_end - time.time()))
        err = proc.stderr.read()
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"search process failed ({proc.returncode}): {err[-3000:]}")
    return kills


def _synthetic_config(world, tmp_path, pop_size: int, generations: int) -> tuple[dict, Path]:
    """micro.yaml with raw-anchor fitness (no calibration), written to tmp_path/c.yaml."""
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(world.root)
    cfg["fitness"] = {"type": "anchor", "anchors": {"n": 5}}
    cfg["algorithm"] = {"name": "nsga2", "pop_size": pop_size, "generations": generations}
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg, cfg_path


def test_sigkill_resume_equals_uninterrupted_synthetic(micro_world, tmp_path):
    cfg, cfg_path = _synthetic_config(micro_world, tmp_path, 5, 5)
    ref = R.run(cfg, run_dir=tmp_path / "ref", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))

    env = dict(os.environ)
    run_dir = tmp_path / "killed"
    base = [sys.executable, "-c", SCRIPT]
    kills = _kill_and_resume(base + ["run", str(cfg_path), str(run_dir), "0.05"],
                             base + ["resume", str(cfg_path), str(run_dir), "0.05"],
                             run_dir, random.Random(1), max_kills=6, env=env)
    assert kills >= 3
    got = _log(run_dir)
    assert sorted(map(_key, got)) == sorted(map(_key, ref.evaluations))
    assert len(got) == ref.n_evaluations  # no evaluation repeated
    res = json.loads((run_dir / "result.json").read_text())
    ref_res = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert res["front"] == ref_res["front"] and res["evaluations"] == ref_res["evaluations"]


@pytest.mark.slow
def test_sigkill_resume_equals_uninterrupted_real(micro_world, tmp_path):
    """The real path: CLI, local Ray workers, lm-eval, merges, IRT calibration; killed three times."""
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(micro_world.root)
    cfg["algorithm"]["generations"] = 2
    cfg["algorithm"]["pop_size"] = 4
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ)
    cli = [sys.executable, "-m", "merge3.cli"]
    ref_dir = tmp_path / "ref"
    r = subprocess.run(cli + ["search", str(cfg_path), "--run-dir", str(ref_dir), "--quiet"], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "killed"
    # reuse the reference run's calibration (deterministic, and the slow part) so the kills land in the search
    import shutil

    shutil.copytree(ref_dir / "calibration", tmp_path / "cal")
    for p in (cfg_path,):
        c = yaml.safe_load(p.read_text())
        c["fitness"]["calibration"] = str(tmp_path / "cal")
        p.write_text(yaml.safe_dump(c))
    kills = _kill_and_resume(cli + ["search", str(cfg_path), "--run-dir", str(run_dir), "--quiet"],
                             cli + ["resume", str(run_dir), "--quiet"], run_dir, random.Random(3), max_kills=3,
                             env=env, timeout=1500)
    assert kills >= 1
    ref = _log(ref_dir)
    got = _log(run_dir)
    assert sorted(map(_key, got)) == sorted(map(_key, ref))
    assert len(got) == len(ref)
    assert json.loads((run_dir / "result.json").read_text())["front"] == \
        json.loads((ref_dir / "result.json").read_text())["front"]


def test_sigterm_stops_cleanly_and_says_how_to_resume(micro_world, tmp_path):
    cfg, cfg_path = _synthetic_config(micro_world, tmp_path, 4, 20)
    run_dir = tmp_path / "run"
    script = SCRIPT.replace("progress=False", "progress=True")
    proc = subprocess.Popen([sys.executable, "-c", script, "run", str(cfg_path), str(run_dir), "0.05"],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while len(_log(run_dir)) < 3 and time.time() - t0 < 300:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0
    assert f"merge3 resume {run_dir}" in err, err[-2000:]
    logged = _log(run_dir)
    assert 3 <= len(logged) < 80 and not (run_dir / "result.json").exists()
    res = R.resume(run_dir, progress=False, evaluate=SyntheticFitness(cfg["tasks"]))  # the lock was released
    assert res.done and res.n_evaluations == 80
