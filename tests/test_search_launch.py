"""`merge3 launch`: the config is checked before any cluster is contacted; an unreachable job server is one
clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from merge3.search.launch import launch

ROOT = Path(__file__).resolve().parents[1]


def _wait_until_free(port: int, timeout_s: float = 120.0) -> None:
    """Returns once ``port`` on 127.0.0.1 can be bound (as Ray's agent binds it: address reuse on)."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"port {port} (Ray's job agent) still taken after {timeout_s:.0f} s")
        time.sleep(0.5)


def test_launch_rejects_bad_config_before_connecting(tmp_path):
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["algorithm"]["pop_size"] = 0
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="algorithm.pop_size"):
        launch(p, address="http://127.0.0.1:1")


def test_launch_unreachable_cluster(tmp_path):
    with pytest.raises(ValueError, match="cannot reach the Ray job server"):
        launch(ROOT / "experiments" / "micro.yaml", address="http://127.0.0.1:1")


def test_cluster_file_is_not_open_to_the_world():
    c = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    assert c["head_node_type"] in c["available_node_types"]
    assert any("GPU" in str(v) or "g5" in str(v.get("node_config", {})) for v in c["available_node_types"].values())
    head = " ".join(c["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for perm in c["provider"]["security_group"]["IpPermissions"]:
        for r in perm["IpRanges"]:
            assert r["CidrIp"] != "0.0.0.0/0"
    assert any("pip install" in s and "merge3" in s for s in c["setup_commands"])


def test_cluster_file_matches_ray_schema():
    import os

    import jsonschema
    import ray.autoscaler

    schema = json.loads(Path(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load((ROOT / "ray_cluster.yaml").read_text()), schema)


@pytest.mark.slow
def test_launch_submits_a_job_that_runs_the_search(micro_world, tmp_path):
    """A local Ray cluster with its job server stands in for `ray up`: the job joins it and runs the search."""
    import os
    import sys
    import time

    import ray
    from ray._private import ray_constants
    from ray.job_submission import JobSubmissionClient

    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg.update(world=str(micro_world.root), fitness={"type": "anchor", "anchors": {"n": 5}},
               algorithm={"name": "nsga2", "pop_size": 2, "generations": 1}, workers={"num_workers": 1})
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(cfg))
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    # A Ray instance an earlier test shut down can hold the job agent's fixed port for a while; the new agent
    # then serves no jobs ("No available agent to submit job").
    _wait_until_free(ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=8297)
    try:
        run_dir = tmp_path / "run"
        job = launch(p, address="http://127.0.0.1:8297", run_dir=str(run_dir))
        assert job.startswith("raysubmit_")
        client = JobSubmissionClient("http://127.0.0.1:8297")
        t0 = time.time()
        while not client.get_job_status(job).is_terminal() and time.time() - t0 < 600:
            time.sleep(2)
        assert str(client.get_job_status(job)).endswith("SUCCEEDED"), client.get_job_logs(job)[-3000:]
        assert json.loads((run_dir / "result.json").read_text())["evaluations"] == 2
    finally:
        ray.shutdown()
