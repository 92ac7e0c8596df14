"""`merge3 demo`: its search is experiments/demo.yaml; the whole pipeline runs (slow: on the micro world)."""

from __future__ import annotations

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


@pytest.mark.slow
def test_demo_pipeline_on_micro_world(micro_world, tmp_path, capsys):
    from merge3.demo import run_demo

    out = run_demo(run_dir=tmp_path / "demo", world=str(micro_world.root), quick=True)
    text = capsys.readouterr().out
    for name in ("base", "math_en", "lang_vl", "facts_en", "merge g"):
        assert name in text
    assert "fewer" in text
    assert out["summary"]["candidates"] and all(r["full"] for r in out["summary"]["candidates"])
    assert (tmp_path / "demo" / "demo.md").exists()
    # a second run reuses everything
    again = run_demo(run_dir=tmp_path / "demo", world=str(micro_world.root), quick=True)
    assert again["summary"] == out["summary"]
