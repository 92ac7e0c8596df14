"""Malformed search configs are rejected with one clear line, before any evaluation and before the run
directory is touched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from merge3.search import config as C
from merge3.search.resources import load_config

ROOT = Path(__file__).resolve().parents[1]


def micro_cfg(world) -> dict:
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(world.root)
    return cfg


def test_schema_documents_every_key():
    rows = C.describe()
    keys = {k for k, _, _ in rows}
    for k in ("name", "seed", "world", "base", "models", "tasks", "objectives.mode", "merge.method",
              "merge.parameters", "fitness.type", "fitness.estimator", "fitness.calibration", "fitness.anchors.n",
              "algorithm.name", "algorithm.pop_size", "algorithm.generations", "algorithm.dispatch", "penalty",
              "workers.max_retries"):
        assert k in keys
    assert all(desc for _, desc, _ in rows)


def test_readme_table_lists_every_key():
    """The README's config table is the user's documentation of the schema: no key may be missing from it."""
    readme = (ROOT / "README.md").read_text()
    missing = [k for k, _, _ in C.describe() if f"| `{k}` |" not in readme]
    assert not missing, f"config keys missing from the README's table: {missing}"


@pytest.mark.parametrize("patch, words", [
    ({"bogus": 1}, ["unknown config key 'bogus'"]),
    ({"algorithm": {"name": "nsga2", "popsize": 4}}, ["algorithm.popsize"]),
    ({"algorithm": {"name": "nsga2", "pop_size": 1}}, ["algorithm.pop_size", "out of range"]),
    ({"algorithm": {"name": "nsga2", "generations": 0}}, ["algorithm.generations"]),
    ({"algorithm": {"name": "ga"}}, ["algorithm.name", "one objective"]),
    ({"algorithm": {"name": "sgd"}}, ["algorithm.name"]),
    ({"merge": {"method": "dare_ties", "parameters": {"weight": [1.0, 0.0]}}}, ["merge.parameters.weight"]),
    ({"merge": {"method": "dare_ties", "parameters": {"weight": "x"}}}, ["merge.parameters.weight"]),
    ({"fitness": {"estimator": "magic"}}, ["fitness.estimator"]),
    ({"fitness": {"anchors": {"n": 0}}}, ["fitness.anchors.n"]),
    ({"penalty": 2}, ["penalty"]),
    ({"seed": -1}, ["seed"]),
    ({"objectives": {"mode": "weighted_sum", "weights": {"tw_facts_en": 1.0}}}, ["objectives"]),
    ({"evaluation": {"batchsize": 4}}, ["evaluation"]),
    ({"workers": {"device": "tpu"}}, ["workers.device"]),
    ({"workers": {"rank_cache": "sometimes"}}, ["workers.rank_cache", "expected auto, true or false"]),
    ({"workers": {"rank_cache": 1}}, ["workers.rank_cache"]),
    ({"algorithm": {"name": "nsga2", "dispatch": "eager"}}, ["algorithm.dispatch", "generational, async"]),
    ({"objectives": {"mode": "weighted_sum"}, "algorithm": {"name": "de", "dispatch": "async"}},
     ["algorithm.dispatch", "de is generational only"]),
    ({"merge": {"method": "ties", "parameters": {"weight": [0, 1]}, "tokenizer_source": "first"}},
     ["merge.tokenizer_source", "expected base or union", "'first'"]),
    ({"merge": {"method": "linear", "parameters": {"weight": [0, 1]}, "tokenizer_source": "union"}},
     ["merge.tokenizer_source", "linear"]),
])
def test_normalize_rejects(patch, words):
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    for k, v in patch.items():
        cfg[k] = v
    with pytest.raises(ValueError) as e:
        C.normalize(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_required():
    with pytest.raises(ValueError, match="'base' is required"):
        C.normalize({"models": ["a"], "tasks": ["t"], "merge": {"method": "linear", "parameters": {"w": [0, 1]}}})


def test_defaults_and_weighted_sum():
    cfg = C.normalize({"base": "b", "models": ["m1", "m2"], "tasks": ["t1", "t2"],
                       "objectives": {"mode": "weighted_sum", "weights": {"t1": 2, "t2": 1}},
                       "merge": {"method": "linear", "parameters": {"weight": [0, 1]}}})
    assert cfg.algorithm.name == "ga" and cfg.n_objectives == 1
    assert cfg.fitness.anchors.seed == cfg.seed
    cfg = C.normalize({"base": "b", "models": ["m1"], "tasks": ["t1", "t2"],
                       "merge": {"method": "linear", "parameters": {"weight": [0, 1]}}})
    assert cfg.algorithm.name == "nsga2" and cfg.n_objectives == 2


def _run_cli(args, tmp_path):
    env = dict(**__import__("os").environ)
    return subprocess.run([sys.executable, "-m", "merge3.cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("kind", ["unknown_key", "bad_range", "missing_model", "incompatible", "unknown_task",
                                  "too_many_anchors"])
def test_search_rejects_before_touching_run_dir(kind, micro_world, tmp_path):
    cfg = micro_cfg(micro_world)
    if kind == "unknown_key":
        cfg["fitness"]["estimater"] = "mpirt"
        words = ["fitness.estimater"]
    elif kind == "bad_range":
        cfg["merge"]["parameters"]["density"] = [0.5, 0.2]
        words = ["merge.parameters.density"]
    elif kind == "missing_model":
        cfg["models"] = ["math_en", str(tmp_path / "no_such_model")]
        words = ["models[1]", "no_such_model", "not found"]
    elif kind == "incompatible":
        bad = tmp_path / "wide"
        shutil.copytree(micro_world.endpoints["lang_vl"], bad)
        conf = json.loads((bad / "config.json").read_text())
        conf["hidden_size"] = conf["hidden_size"] * 2
        (bad / "config.json").write_text(json.dumps(conf))
        from safetensors.torch import load_file, save_file

        for f in bad.glob("*.safetensors"):
            sd = load_file(f)
            k = next(k for k in sd if k.endswith("embed_tokens.weight"))
            sd[k] = sd[k].repeat(1, 2).contiguous()
            save_file(sd, f, metadata={"format": "pt"})
        cfg["models"] = ["math_en", str(bad)]
        words = ["models", "incompatible"]
    elif kind == "too_many_anchors":
        cfg["fitness"]["anchors"]["n"] = 500  # micro tasks have 200 items
        words = ["fitness.anchors.n", "500", "200 items"]
    else:
        cfg["tasks"] = ["tw_arith_vl", "tw_no_such_task"]
        cfg["objectives"] = {"mode": "per_task", "tasks": ["tw_arith_vl", "tw_no_such_task"]}
        words = ["tw_no_such_task", "lm-eval does not know"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    r = _run_cli(["search", str(path), "--run-dir", str(run_dir), "--quiet"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("merge3: error:"), r.stderr[-2000:]
    for w in words:
        assert w in err[0], err[0]
    assert not run_dir.exists()


def test_load_config_resolves_world_names(micro_world):
    cfg = load_config(micro_cfg(micro_world), name="x", check=False)
    assert cfg.base == str(micro_world.base.resolve())
    assert cfg.models[0] == str(micro_world.endpoints["math_en"].resolve())
    assert cfg.include_path == str(micro_world.tasks_dir.resolve())
    d = cfg.to_dict()
    d["workers"]["num_workers"] = 7
    assert C.SearchConfig.from_dict(d).digest() == cfg.digest()
    assert C.SearchConfig.from_dict(cfg.to_dict()) == cfg
    # merge.tokenizer_source left at its default changes neither the digest nor the genome (calibrations)
    assert "tokenizer_source" not in cfg.genome_config()
    d = cfg.to_dict()
    d["merge"]["tokenizer_source"] = "union"
    with_source = C.SearchConfig.from_dict(d)
    assert with_source.digest() != cfg.digest() and with_source.genome_config()["tokenizer_source"] == "union"
    d["merge"].pop("tokenizer_source")
    assert C.SearchConfig.from_dict(d).digest() == cfg.digest()


@pytest.mark.parametrize("merge, words", [
    ({"method": "dare_ties", "parameters": {"weight": [0, 1], "density": [0.1, 1.5]}}, ["merge", "density"]),
    ({"method": "slerp", "parameters": {"t": [0, 1]}}, ["merge", "slerp"]),
    ({"method": "frobnicate", "parameters": {"weight": [0, 1]}}, ["merge", "frobnicate"]),
])
def test_genome_errors_name_the_merge_key(merge, words, micro_world, tmp_path):
    cfg = micro_cfg(micro_world)
    cfg["merge"] = merge
    with pytest.raises(ValueError) as e:
        load_config(cfg, name="x")
    assert str(e.value).startswith("config key 'merge'") and all(w in str(e.value) for w in words)
