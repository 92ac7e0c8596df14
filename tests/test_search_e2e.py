"""End to end on the micro world, as CI runs it: `merge3 search experiments/micro.yaml` (calibration, local Ray
workers, lm-eval on anchors, in-memory merges, mp-IRT estimates, NSGA-II), then status and export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "merge3.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), **kw)


@pytest.fixture(scope="module")
def micro_run(micro_world, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("e2e") / "micro"
    t0 = time.time()
    r = _cli(["search", str(ROOT / "experiments" / "micro.yaml"), "--run-dir", str(run_dir)], timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    print(f"micro search: {time.time() - t0:.0f} s")
    return run_dir, r


def test_micro_search_completes(micro_run):
    run_dir, r = micro_run
    for f in ("config.yaml", "meta.json", "anchors.json", "evaluations.jsonl", "verified.jsonl", "result.json",
              "calibration/calibration.json"):
        assert (run_dir / f).exists(), f
    log = [json.loads(x) for x in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert len(log) == 6 * 3
    ok = [x for x in log if x["status"] == "ok"]
    assert len(ok) >= len(log) - 1, [x["error"] for x in log if x["status"] != "ok"]
    workers = {x["worker"] for x in ok}
    assert len(workers) >= 1
    for x in ok:
        assert x["items_evaluated"] == 30  # 15 anchors x 2 tasks
        assert set(x["objectives"]) == {"tw_arith_vl", "tw_lang_vl"}
        assert all(0.0 <= v <= 1.0 for v in x["objectives"].values())
    # candidates really differ: merges with different genomes give different answers
    assert len({json.dumps(x["responses"], sort_keys=True) for x in ok}) > 1
    assert "generation 3/3" in r.stderr


def test_status_json(micro_run):
    run_dir, _ = micro_run
    r = _cli(["status", str(run_dir), "--json"], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert info["done"] is True and info["generation"] == 3 and info["evaluations"] == 18
    assert info["budget_left"] == 0 and info["front"]
    assert {"genome", "objectives"} <= set(info["front"][0])
    c = info["cost"]
    assert 0 < c["items_evaluated"] / c["items_full_evaluation"] < 0.1
    # the best candidates by estimate (up to 3 of the front) were re-scored on every item (2 tasks x 200)
    assert c["verification_items"] > 0 and c["verification_items"] % 400 == 0
    assert info["verified"] and all(set(e["verified"]) == {"tw_arith_vl", "tw_lang_vl"} for e in info["verified"])
    assert (run_dir / "status.png").exists()


def test_export_front(micro_run, tmp_path):
    run_dir, _ = micro_run
    out = tmp_path / "export"
    r = _cli(["export", str(run_dir), str(out), "--top", "1"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    (row,) = summary["candidates"]
    folder = Path(row["path"])
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    card = (folder / "README.md").read_text()
    assert "estimated (search)" in card and "full benchmark" in card
    assert set(row["full"]) == {"tw_arith_vl", "tw_lang_vl"}
    assert "| candidate |" in (out / "summary.md").read_text()
