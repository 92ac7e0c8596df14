"""The live materializer: in-place writes, same logits as the merge written to disk and reloaded."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge3.merging.export import merge_to_dir
from merge3.merging.materializer import Materializer
from merge3.merging.recipe import MergeRecipe


@pytest.fixture(scope="module")
def mat(micro_world):
    return Materializer(micro_world.base, list(micro_world.endpoints.values()), device="cpu")


def _ids(mat):
    return mat.tokenizer("the creature counts seven stones", return_tensors="pt")["input_ids"]


def _recipes(world):
    base = str(world.base)
    eps = [str(p) for p in world.endpoints.values()]
    w = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.7}, {"weight": 0.2, "density": 0.3}]
    return [
        MergeRecipe("linear", base, eps, model_parameters=[{"weight": 1.0}, {"weight": 2.0}, {"weight": 0.5}]),
        MergeRecipe("task_arithmetic", base, eps, parameters={"lambda": 0.9}, model_parameters=w),
        MergeRecipe("ties", base, eps, model_parameters=w),
        MergeRecipe("dare_ties", base, eps, model_parameters=w, seed=11),
        MergeRecipe("della_linear", base, eps, model_parameters=[dict(x, epsilon=0.1) for x in w], seed=3),
        MergeRecipe("breadcrumbs_ties", base, eps, model_parameters=w),
        MergeRecipe("model_stock", base, eps),
    ]


def test_apply_is_in_place_and_matches_disk(mat, micro_world, tmp_path):
    from transformers import AutoModelForCausalLM

    model = mat.model
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    ids = _ids(mat)
    with torch.no_grad():
        base_logits = model(ids).logits.clone()
    for i, recipe in enumerate(_recipes(micro_world)):
        assert mat.apply(recipe) is model
        assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
        with torch.no_grad():
            live = model(ids).logits
        out = merge_to_dir(recipe, tmp_path / f"m{i}", device="cpu")
        disk = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        with torch.no_grad():
            ref = disk(ids).logits
        torch.testing.assert_close(live, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{recipe.method}: {m}")
        assert not torch.allclose(live, base_logits, atol=1e-4)
    mat.restore_base()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base_logits)


def test_random_recipes_reproducible(mat, micro_world):
    r = _recipes(micro_world)[3]
    mat.apply(r)
    a = {k: v.clone() for k, v in mat.state_dict().items()}
    mat.apply(_recipes(micro_world)[2])
    mat.apply(r)
    assert all(torch.equal(a[k], v) for k, v in mat.state_dict().items())


def test_recipe_models_must_match(mat, micro_world):
    r = _recipes(micro_world)[1]
    r.models = list(reversed(r.models))
    with pytest.raises(ValueError, match="same order"):
        mat.apply(r)


def test_memory_report(mat):
    m = mat.memory_bytes()
    assert m["task_vectors"] == 3 * m["base"] and m["model"] == m["base"]


def test_non_finite_endpoint_named(micro_world, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(micro_world.endpoints["math_en"], bad)
    t = load_file(bad / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    t[name][0, 0] = float("nan")
    save_file(t, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{name} has 1 non-finite"):
        Materializer(micro_world.base, [bad], device="cpu")


def test_nonfinite_merge_is_an_invalid_candidate(micro_world):
    """Extreme weights: bounds beyond float32 are rejected with the genome (before any search); a merge whose
    tensors end up non-finite makes the candidate invalid instead of scoring NaN log-probabilities."""
    from merge3.scoring import CandidateJob, CandidateScorer, ScorerSpec

    eps = [str(p) for p in micro_world.endpoints.values()]

    def scorer_for(high):
        genome = {"method": "task_arithmetic", "parameters": {"weight": [0.0, high]}}
        return CandidateScorer(ScorerSpec(base=str(micro_world.base), models=eps, genome=genome,
                                          tasks=["tw_arith_vl"], include_path=str(micro_world.tasks_dir),
                                          evaluation={"batch_size": 64}, device="cpu"))

    with pytest.raises(ValueError, match="finite float32"):
        scorer_for(1.0e300)
    scorer = scorer_for(1.0)
    ok = scorer.score(CandidateJob(generation=0, index=1, x=(0.5, 0.5, 0.5), seed=0))
    assert ok.status == "ok" and 0.0 <= ok.objectives["tw_arith_vl"] <= 1.0
    mat = scorer.materializer
    apply = mat.apply

    def overflowing(recipe):  # what an overflow in a kernel leaves behind
        model = apply(recipe)
        next(iter(model.parameters())).data[0, 0] = float("inf")
        return model

    mat.apply = overflowing
    res = scorer.score(CandidateJob(generation=0, index=0, x=(1.0, 1.0, 1.0), seed=0))
    assert res.status == "invalid" and "not finite" in res.error and res.objectives is None, res.error
