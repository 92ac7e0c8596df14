"""`merge3 demo`: its search is experiments/demo.yaml; the whole pipeline runs (slow: on the micro world)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from merge3.demo import demo_config
from merge3.search import config as C

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_is_experiments_demo_yaml():
    raw = yaml.safe_load((ROOT / "experiments" / "demo.yaml").read_text())
    assert C.normalize(demo_config("small")) == C.normalize(raw)
    quick = C.normalize(demo_config("small", quick=True))
    assert quick.budget < 8 * 5


THIRD_PARTY_NOISE = ("Generating test split", "Running loglikelihood", "Tokenizing", "No anchor items", "it/s]",
                     "Building contexts", "layers were not sharded", "INFO", "WARNING")


@pytest.mark.slow
def test_demo_pipeline_on_micro_world(micro_world, tmp_path, capsys):
    import os
    import subprocess
    import sys

    from merge3.demo import run_demo

    r = subprocess.run([sys.executable, "-m", "merge3.cli", "demo", "--run-dir", str(tmp_path / "demo"), "--world",
                        str(micro_world.root), "--quick"], capture_output=True, text=True, env=dict(os.environ),
                       timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout
    for name in ("base", "math_en", "lang_vl", "facts_en", "merge g"):
        assert name in text
    assert "fewer" in text
    noise = [line for line in (r.stdout + r.stderr).splitlines() if any(n in line for n in THIRD_PARTY_NOISE)]
    assert not noise, noise[:5]
    assert (tmp_path / "demo" / "search" / "third_party.log").exists()
    out = run_demo(run_dir=tmp_path / "demo", world=str(micro_world.root), quick=True)  # reuses every step
    assert out["summary"]["candidates"] and all(r["full"] for r in out["summary"]["candidates"])
    assert (tmp_path / "demo" / "demo.md").exists()
    assert json.loads((tmp_path / "demo" / "export" / "summary.json").read_text()) == out["summary"]
