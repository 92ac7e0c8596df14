"""What a careful user or a security reviewer meets: damaged logs, YAML alias bombs, wrong addresses, busy or
half-made run directories, full disks, file modes, damaged cached worlds, a diverging IRT fit. Each is one line
naming the file or key, and nothing is lost or silently redone."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from merge3.cli import main
from merge3.search import runner as R
from merge3.search.rundir import RunDir, RunLock
from merge3.search.testing import SimulatedKill, StopAfter, SyntheticFitness

ROOT = Path(__file__).resolve().parents[1]


def synth_cfg(world, **alg) -> dict:
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(world.root)
    cfg["fitness"] = {"type": "anchor", "anchors": {"n": 5}, "verify_top_k": 0}
    cfg["algorithm"] = {"name": "nsga2", "pop_size": 4, "generations": 2, **alg}
    return cfg


# ------------------------------------------------------------------------------------------- (a) local Ray


def test_local_ray_binds_to_loopback_and_keeps_auth(monkeypatch):
    import ray

    from merge3.search import workers as W

    seen = {}
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    assert W.start_ray(None, 2)
    assert seen["address"] == "local" and seen["num_cpus"] == 2
    assert seen["_node_ip_address"] == "127.0.0.1" and seen["dashboard_host"] == "127.0.0.1"
    assert "RAY_AUTH_MODE" not in os.environ  # authentication is left on (Ray's default for a new local cluster)


# ------------------------------------------------------------------------------------------- (b) damaged log


def test_damaged_log_line_is_an_error_naming_file_and_line(micro_world, tmp_path):
    cfg = synth_cfg(micro_world)
    fit = SyntheticFitness(cfg["tasks"])
    with pytest.raises(SimulatedKill):
        R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=StopAfter(fit, 5))
    log = tmp_path / "run" / "evaluations.jsonl"
    lines = log.read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # a damaged line in the middle (not a crash's cut tail)
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"evaluations.jsonl, line 3: damaged record"):
        R.resume(tmp_path / "run", progress=False, evaluate=fit)
    assert main(["status", str(tmp_path / "run"), "--no-plot"]) == 2  # status says the same, in one line
    lines[2] = "{}"
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 3: not a record"):
        RunDir(tmp_path / "run").records()


def test_cut_last_line_is_repaired_with_a_message(micro_world, tmp_path, capsys):
    cfg = synth_cfg(micro_world)
    fit = SyntheticFitness(cfg["tasks"])
    ref = R.run(cfg, run_dir=tmp_path / "ref", progress=False, evaluate=fit)
    with pytest.raises(SimulatedKill):
        R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=StopAfter(fit, 5))
    log = tmp_path / "run" / "evaluations.jsonl"
    text = log.read_text()
    log.write_text(text[: len(text) - 40])  # the last append cut by a crash
    capsys.readouterr()
    res = R.resume(tmp_path / "run", progress=False, evaluate=fit)
    assert "removed an incomplete last line" in capsys.readouterr().err
    assert res.n_evaluations == ref.n_evaluations == len(log.read_text().splitlines())


# ------------------------------------------------------------------------------------------- (c) --address


def test_unreachable_address_fails_fast_and_leaves_no_run_directory(micro_world, tmp_path, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # a port nothing listens on
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(synth_cfg(micro_world)))
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg_path), "--run-dir", str(run_dir), "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--address 127.0.0.1:{port}: no Ray cluster answers" in err[0]
    assert not run_dir.exists()  # the corrected command can reuse the same --run-dir
    res = R.run(cfg_path, run_dir=run_dir, progress=False, evaluate=SyntheticFitness(synth_cfg(micro_world)["tasks"]))
    assert res.done


# ------------------------------------------------------------------------------------------- (d) YAML aliases


def test_yaml_alias_bomb_is_refused(micro_world, tmp_path, capsys):
    bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for k in range(1, 9):
        bomb.append(f"{chr(97 + k)}: &{chr(97 + k)} [" + ",".join([f"*{chr(96 + k)}"] * 9) + "]")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(bomb) + "\n")
    assert p.stat().st_size < 2000
    assert main(["search", str(p), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and "aliases" in err[0]
    assert not (tmp_path / "run").exists()
    for cmd in (["merge", str(p), str(tmp_path / "out")], ["calibrate", str(p)]):
        assert main(cmd) == 2 and "aliases" in capsys.readouterr().err


def test_run_config_is_written_without_aliases(micro_world, tmp_path):
    cfg = synth_cfg(micro_world, generations=1)
    R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "&id" not in text and "*id" not in text
    assert RunDir(tmp_path / "run").read_config().tasks == cfg["tasks"]


# ------------------------------------------------------------------------------------------- (e) cached world


def test_damaged_cached_world_is_an_error_naming_the_file(micro_world, tmp_path, monkeypatch):
    from merge3.world import build as B

    root = tmp_path / "world"
    shutil.copytree(micro_world.root, root)
    (root / B.VERIFIED).unlink(missing_ok=True)
    calls = []
    real = B._sha256
    monkeypatch.setattr(B, "_sha256", lambda p: calls.append(p) or real(p))
    B.load_world(root)
    n = len(calls)
    assert n == len(micro_world.files)
    B.load_world(root)
    assert len(calls) == n  # verified once: unchanged files are not hashed again
    weights = root / "models" / "math_en" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-9] ^= 0xFF  # same size, one byte changed
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"math_en/model.safetensors: sha256 differs .*world.json"):
        B.load_world(root)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="math_en/model.safetensors: missing"):
        B.load_world(root)


# ------------------------------------------------------------------------------------------- (f) file modes


def test_written_files_get_the_usual_mode(micro_world, tmp_path):
    from merge3.merging.export import export_merged
    from merge3.merging.materializer import Materializer
    from merge3.merging.recipe import MergeRecipe

    old = os.umask(0o022)
    try:
        m = Materializer(micro_world.base, list(micro_world.endpoints.values()))
        recipe = MergeRecipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(micro_world.base),
                                        "models": [{"model": str(p), "parameters": {"weight": 0.5}}
                                                   for p in micro_world.endpoints.values()]})
        out = export_merged(m, recipe, tmp_path / "out")
        cfg = synth_cfg(micro_world, generations=1)
        R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    finally:
        os.umask(old)
    files = list(out.glob("*.safetensors")) + [p for p in (tmp_path / "run").iterdir() if p.name != ".lock"]
    assert files
    for p in files:
        assert oct(p.stat().st_mode & 0o777) == oct(0o644), p


# ------------------------------------------------------------------------------------------- (g) full disk


def test_full_disk_names_the_file_and_leaves_no_temporary(micro_world, tmp_path, monkeypatch):
    from merge3 import files

    real = os.fsync

    def full(fd):  # the disk fills up when config.yaml is written
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".config.yaml.tmp-" + str(os.getpid())):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    cfg = synth_cfg(micro_world)
    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write .*run/config.yaml: No space left on device"):
        R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    monkeypatch.setattr(files.os, "fsync", real)
    assert not list((tmp_path / "run").glob("*.tmp-*")) and not list((tmp_path / "run").glob(".*.tmp-*"))
    res = R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    assert res.done  # nothing half-made blocked the same run directory


def test_export_stopped_by_a_full_disk_continues_into_the_same_folder(micro_world, tmp_path, monkeypatch):
    from merge3.merging import export as E
    from merge3.search.export import export_run

    cfg = synth_cfg(micro_world)
    R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    real, calls = E.save_file, []

    def fills_up(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(E, "save_file", fills_up)
    out = tmp_path / "export"
    with pytest.raises(OSError, match=r"cannot write .*export/g\d+-i\d+: No space left on device"):
        export_run(tmp_path / "run", out, top=3, evaluate=False, progress=False)
    monkeypatch.setattr(E, "save_file", real)
    done = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    assert len(done) == 1 and not list(out.glob(".*tmp-*"))  # one finished folder, nothing half-written
    first = (out / done[0] / "model.safetensors.index.json").stat().st_mtime_ns
    summary = export_run(tmp_path / "run", out, top=3, evaluate=False, progress=False)
    assert len(summary["candidates"]) == 3
    assert (out / done[0] / "model.safetensors.index.json").stat().st_mtime_ns == first  # kept, not rewritten


# ------------------------------------------------------------------------------------------- (h) busy run dir


def test_second_search_on_a_busy_run_directory_names_the_holder(micro_world, tmp_path):
    cfg = synth_cfg(micro_world)
    fit = SyntheticFitness(cfg["tasks"])
    R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=fit)
    with RunLock(tmp_path / "run"):
        with pytest.raises(R.RunDirectoryLocked, match=rf"in use by another merge3 process \(pid {os.getpid()} on "):
            R.run(cfg, run_dir=tmp_path / "run", progress=False, evaluate=fit)


# ------------------------------------------------------------------------------------------- (i) diverging IRT


def test_diverging_irt_fit_names_the_full_key_and_the_run_continues_after_the_fix(micro_world, tmp_path, monkeypatch):
    from merge3.irt import fit as F

    cfg = synth_cfg(micro_world, generations=1)
    cfg["fitness"] = {"type": "irt", "calibration": "auto", "anchors": {"n": 5}, "verify_top_k": 0,
                      "calibration_settings": {"n_random_merges": 0, "irt": {"lr": 5.0, "epochs": 5, "dim": 1}}}
    real = F.fit_irt

    def diverges(*a, lr=0.1, **kw):
        if lr > 1:
            raise F.IrtDiverged(f"the IRT fit diverged (NaN parameters) with lr {lr:g}")
        return real(*a, lr=lr, **kw)

    import merge3.calibration as C

    monkeypatch.setattr(C, "fit_irt", diverges)
    evaluated = []

    from merge3.search import prepare as P

    real_calibrate = P.calibrate

    def small_calibration(config, out, pool_factory=None, log=None, **kw):  # the population answers 20 items
        config = dataclasses.replace(config, eval={"limit": 20, "batch_size": 64})
        return real_calibrate(config, out, pool_factory=None, log=lambda m: evaluated.append(m), **kw)

    monkeypatch.setattr(P, "calibrate", small_calibration)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError) as e:
        R.run(cfg_path, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    msg = str(e.value)
    assert "'fitness.calibration_settings.irt.lr'" in msg and "diverged" in msg and "lower it" in msg
    assert "stable" not in msg
    n_evaluated = sum("evaluated" in m for m in evaluated)
    assert n_evaluated == 3  # base and 2 endpoints
    cfg["fitness"]["calibration_settings"]["irt"]["lr"] = 0.1  # the fix, in the user's own config file
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = R.run(cfg_path, run_dir=tmp_path / "run", progress=False, evaluate=SyntheticFitness(cfg["tasks"]))
    assert res.done
    assert sum("evaluated" in m for m in evaluated) == n_evaluated  # the population was not evaluated again


def test_local_ray_cluster_listens_on_loopback_with_token_auth(tmp_path):
    """The real thing, in a fresh process with RAY_AUTH_MODE unset: no Ray process listens beyond 127.0.0.1."""
    import subprocess
    import sys

    script = """
import subprocess, sys
from merge3.search.workers import start_ray
start_ray(None, 1)
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode
print("node", ray._private.worker.global_worker.node.node_ip_address)
print("token", get_authentication_mode() == AuthenticationMode.TOKEN)
ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
import os
mine = [l for l in ss.splitlines() if "ray" in l or "gcs_server" in l or f"pid={os.getpid()}," in l]
print("listen", " ".join(l.split()[3] for l in mine))
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["HOME"] = str(tmp_path)  # Ray writes its token to ~/.ray/auth_token
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    assert out["node"] == "127.0.0.1" and out["token"] == "True"
    if shutil.which("ss"):
        addrs = out["listen"].split()
        assert addrs and all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]") for a in addrs), addrs
