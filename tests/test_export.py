"""`merge3 merge` and Hugging Face export: folder layout, atomic writes, one-line errors before any compute."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from merge3.cli import main
from merge3.genome import Genome
from merge3.merging.export import export_merged
from merge3.merging.materializer import Materializer
from merge3.merging.recipe import MergeRecipe


def _recipe_file(tmp_path, world, **over):
    d = {"merge_method": "ties", "base_model": str(world.base),
         "models": [{"model": str(p), "parameters": {"weight": [0.3, 0.8], "density": 0.5}}
                    for p in world.endpoints.values()],
         "parameters": {"normalize": True}, "dtype": "float32"}
    d.update(over)
    p = tmp_path / "recipe.yml"
    p.write_text(yaml.safe_dump(d))
    return p


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_merge_cli_writes_hf_folder(micro_world, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    assert main(["merge", str(_recipe_file(tmp_path, micro_world)), str(out), "--shard-size", "100KB"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "README.md", "mergekit_config.yml",
            "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"} <= files
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert set(index["weight_map"]) == set(load_file(micro_world.base / "model.safetensors"))
    assert "ties" in (out / "README.md").read_text()
    assert MergeRecipe.from_yaml(out / "mergekit_config.yml").method == "ties"
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def _bad_model(world, tmp_path, edit):
    bad = tmp_path / "bad"
    shutil.copytree(world.endpoints["lang_vl"], bad)
    t = load_file(bad / "model.safetensors")
    edit(t)
    save_file(t, bad / "model.safetensors", metadata={"format": "pt"})
    return bad


def _nan(t):
    t["model.norm.weight"][3] = float("inf")


def _shape(t):
    t["model.layers.0.self_attn.q_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"][:-1]


def _extra(t):
    t["model.extra.weight"] = torch.zeros(2)


@pytest.mark.parametrize("what,match", [
    ("unknown_method", "unknown merge method 'frankenmerge'"),
    ("out_of_range", "density=1.5 out of range"),
    ("missing", "model folder not found"),
    ("nan", "model.norm.weight has 1 non-finite"),
    ("shape", "model.layers.0.self_attn.q_proj.weight has shape"),
    ("extra", "model.extra.weight is not in the base"),
    ("arch", "architecture"),
])
def test_merge_errors_are_one_line_and_write_nothing(micro_world, tmp_path, capsys, what, match):
    over = {}
    models = [{"model": str(p), "parameters": {"weight": 0.5, "density": 0.5}} for p in micro_world.endpoints.values()]
    if what == "unknown_method":
        over["merge_method"] = "frankenmerge"
    elif what == "out_of_range":
        models[0]["parameters"]["density"] = 1.5
    elif what == "missing":
        models[0]["model"] = str(tmp_path / "nowhere")
    elif what in ("nan", "shape", "extra"):
        models[1]["model"] = str(_bad_model(micro_world, tmp_path, {"nan": _nan, "shape": _shape, "extra": _extra}[what]))
    elif what == "arch":
        bad = tmp_path / "bad"
        shutil.copytree(micro_world.endpoints["lang_vl"], bad)
        cfg = json.loads((bad / "config.json").read_text())
        cfg["model_type"], cfg["architectures"] = "mistral", ["MistralForCausalLM"]
        (bad / "config.json").write_text(json.dumps(cfg))
        models[1]["model"] = str(bad)
    over["models"] = models
    out = tmp_path / "out"
    rc = main(["merge", str(_recipe_file(tmp_path, micro_world, **over)), str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and match in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_existing_output_refused(micro_world, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep")
    assert main(["merge", str(_recipe_file(tmp_path, micro_world)), str(out)]) != 0
    assert "already exists" in capsys.readouterr().err and (out / "x").read_text() == "keep"


def test_export_merged_appends_card_text(micro_world, tmp_path):
    eps = [str(p) for p in micro_world.endpoints.values()]
    mat = Materializer(micro_world.base, eps, device="cpu")
    r = MergeRecipe("task_arithmetic", str(micro_world.base), eps,
                    model_parameters=[{"weight": 0.5}, {"weight": 0.2}, {"weight": 0.1}])
    out = export_merged(mat, r, tmp_path / "cand", extra_card_text="## Scores\n\nestimated 0.61, full 0.63")
    assert "estimated 0.61, full 0.63" in (out / "README.md").read_text()
    got = _tensors(out)
    for name, t in mat.state_dict().items():
        assert torch.equal(got[name], t)


def test_genome_recipe_reproduced_by_mergekit_yaml(micro_world, tmp_path):
    """A decoded candidate's YAML, run through the mergekit-yaml command, gives the materializer's weights."""
    pytest.importorskip("mergekit", reason="mergekit 0.1.5 (the test extra) is needed for mergekit-yaml")
    eps = [str(p.resolve()) for p in micro_world.endpoints.values()]
    base = str(micro_world.base.resolve())
    g = Genome.from_config({"method": "breadcrumbs_ties", "parameters": {"weight": [0.0, 1.0], "density": [0.3, 0.9],
                                                                         "gamma": [0.0, 0.05]},
                            "fixed": {"lambda": 1.1}, "layer_granularity": 1, "filters": ["self_attn", "mlp"]},
                           n_models=3, n_layers=micro_world.spec.layers)
    recipe = g.decode(np.random.default_rng(0).random(g.dim), base, eps)
    path = tmp_path / "cand.yml"
    path.write_text(recipe.to_mergekit_yaml())
    out = tmp_path / "mk"
    subprocess.run([sys.executable, "-c", "import sys; from mergekit.scripts.run_yaml import main; sys.exit(main())",
                    str(path), str(out), "--no-copy-tokenizer", "--quiet"], check=True,
                   env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    mat = Materializer(base, eps, device="cpu")
    mat.apply(recipe)
    ref = _tensors(out)
    for name, t in mat.state_dict().items():
        torch.testing.assert_close(t, ref[name], rtol=1e-5, atol=1e-6)
