"""The deterministic methods against mergekit 0.1.5 itself, on the micro world (float32 round-off tolerance)."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from merge3.merging.export import merge_to_dir
from merge3.merging.recipe import MergeRecipe

pytest.importorskip("mergekit", reason="mergekit 0.1.5 (the test extra) is needed for the reference merges")

RTOL, ATOL = 1e-5, 1e-6


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _mergekit(recipe: MergeRecipe, out):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    cfg = MergeConfiguration.model_validate(yaml.safe_load(recipe.to_mergekit_yaml()))
    run_merge(cfg, str(out), MergeOptions(device="cpu", quiet=True, copy_tokenizer=False, write_model_card=False,
                                          lazy_unpickle=False))
    return _tensors(out)


def _paths(world):
    eps = [str(p.resolve()) for p in world.endpoints.values()]
    return str(world.base.resolve()), eps


def _cases(base, eps):
    w3 = [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.7}]
    grad = [{"weight": [0.2, 0.9], "density": 0.4}, {"weight": 0.6, "density": [0.7, 0.3]},
            {"weight": [{"filter": "self_attn", "value": 0.9}, {"value": -0.2}], "density": 0.5}]
    return {
        "linear": MergeRecipe("linear", base, eps, model_parameters=w3),
        "linear_unnormalized_grad": MergeRecipe("linear", base, eps, parameters={"normalize": False},
                                                model_parameters=[{"weight": [0.2, 0.5]}, {"weight": 0.3},
                                                                  {"weight": 0.1}]),
        "linear_with_base": MergeRecipe("linear", base, eps[:2], parameters={"weight": 0.25},
                                        model_parameters=[{"weight": 1.0}, {}]),
        "task_arithmetic": MergeRecipe("task_arithmetic", base, eps, parameters={"lambda": 0.8},
                                       model_parameters=w3),
        "task_arithmetic_normalize": MergeRecipe("task_arithmetic", base, eps, parameters={"normalize": True},
                                                 model_parameters=w3),
        "ties": MergeRecipe("ties", base, eps, model_parameters=grad),
        "ties_int8_unnormalized": MergeRecipe("ties", base, eps, parameters={"int8_mask": True, "normalize": False,
                                                                              "lambda": 1.3},
                                              model_parameters=grad),
        "breadcrumbs": MergeRecipe("breadcrumbs", base, eps, parameters={"gamma": 0.05},
                                   model_parameters=[{"weight": 0.5, "density": 0.8}, {"weight": 0.4, "density": 0.6},
                                                     {"weight": 0.3, "density": 0.9, "gamma": 0.2}]),
        "breadcrumbs_ties": MergeRecipe("breadcrumbs_ties", base, eps, model_parameters=grad),
        "dare_ties_density1": MergeRecipe("dare_ties", base, eps, model_parameters=w3),
        "della_density1": MergeRecipe("della", base, eps, model_parameters=w3),
        "slerp": MergeRecipe("slerp", base, eps[:1], parameters={"t": [{"filter": "mlp", "value": [0.1, 0.9]},
                                                                         {"value": 0.4}]}),
        "slerp_listed_base": MergeRecipe("slerp", base, [base, eps[1]], parameters={"t": 0.7}),
        "model_stock": MergeRecipe("model_stock", base, eps),
        "model_stock_filter_wise": MergeRecipe("model_stock", base, eps, parameters={"filter_wise": True}),
    }


CASES = list(_cases("b", ["x", "y", "z"]))


@pytest.mark.parametrize("case", CASES)
def test_matches_mergekit(micro_world, tmp_path, case):
    base, eps = _paths(micro_world)
    recipe = _cases(base, eps)[case]
    ref = _mergekit(recipe, tmp_path / "mk")
    ours = _tensors(merge_to_dir(recipe, tmp_path / "ours", device="cpu"))
    assert set(ref) <= set(ours)
    changed = 0
    for name, t in ref.items():
        torch.testing.assert_close(ours[name], t, rtol=RTOL, atol=ATOL, msg=lambda m: f"{case} {name}: {m}")
        changed += not torch.equal(t, load_file(str(micro_world.base / "model.safetensors")).get(name, t))
    assert changed > 0  # the merge did something


def test_sparsifiers_match_mergekit():
    from mergekit import sparsify as mk

    from merge3.merging import sparsify as ours

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 48, generator=g)
    x[0, :10] = 0.0                      # exact ties (zeros) must not change the kept set
    x[1, :4] = 0.5
    for d in (0.0, 0.05, 0.3, 0.77, 1.0):
        for rescale in (False, True):
            norm = mk.RescaleNorm.l1 if rescale else None
            torch.testing.assert_close(ours.magnitude(x, d, rescale), mk.magnitude(x, d, norm), rtol=RTOL, atol=ATOL)
            for gamma in (0.0, 0.01, 0.2):
                torch.testing.assert_close(ours.magnitude_outliers(x, d, gamma, rescale),
                                           mk.magnitude_outliers(x, d, norm, gamma=gamma), rtol=RTOL, atol=ATOL)


def test_consensus_mask_matches_mergekit():
    from mergekit.merge_methods.generalized_task_arithmetic import get_mask

    from merge3.merging.kernels import merge_tensor
    from merge3.merging.methods import get_method

    g = torch.Generator().manual_seed(1)
    base = torch.randn(40, 30, generator=g)
    deltas = [torch.randn(40, 30, generator=g) * s for s in (1.0, 0.5, 2.0)]
    deltas[1][deltas[1].abs() < 0.3] = 0        # pruned entries leave the per-element divisor
    w = [0.5, 1.1, 0.25]
    deltas[0][0, :5], deltas[1][0, :5], deltas[2][0, :5] = 1.0, 0.0, -2.0  # exact tie of the sum: counts as +
    stacked = torch.stack([d * x for d, x in zip(deltas, w)])
    mask = get_mask(stacked, method="sum")
    wt = torch.tensor(w).view(-1, 1, 1)
    div = (wt * mask).sum(0)
    div[div == 0] = 1
    expect = base + (stacked * mask).sum(0) / div
    spec = get_method("ties")
    got = merge_tensor(spec, "x", base, deltas, {"normalize": True, "lambda": 1.0, "rescale": False,
                                                  "int8_mask": False, "consensus_method": "sum"},
                       [{"weight": x, "density": 1.0} for x in w])
    torch.testing.assert_close(got, expect, rtol=RTOL, atol=ATOL)
