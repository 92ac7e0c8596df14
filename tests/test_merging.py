"""Merge methods and recipes without mergekit: random methods, parameter resolution, validation."""

from __future__ import annotations

import pytest
import torch

from merge3.merging import draws as D
from merge3.merging import sparsify as S
from merge3.merging.kernels import merge_tensor
from merge3.merging.methods import METHODS, get_method
from merge3.merging.recipe import MergeRecipe, evaluate_setting, layer_position

ISSUE_METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
                 "della", "della_linear", "slerp", "model_stock"]


def test_all_methods_present_with_mergekit_defaults():
    assert set(ISSUE_METHODS) <= set(METHODS)
    d = {m: {p.name: p.default for p in METHODS[m].params} for m in METHODS}
    assert d["ties"]["normalize"] is True and d["ties"]["rescale"] is False
    assert d["dare_ties"]["rescale"] is True and d["dare_ties"]["normalize"] is False
    assert d["dare_linear"]["rescale"] is True
    assert d["della"]["normalize"] is True and d["della"]["rescale"] is True and d["della"]["epsilon"] == 0.15
    assert d["breadcrumbs"]["gamma"] == 0.01
    assert d["linear"]["normalize"] is True
    assert all(d[m]["lambda"] == 1.0 and d[m]["density"] == 1.0 for m in ISSUE_METHODS
               if m not in ("linear", "slerp", "model_stock"))


def test_gradient_and_filter_resolution():
    assert evaluate_setting([0.0, 1.0], "model.layers.1.mlp.up_proj.weight", 0.25, float) == 0.25
    assert evaluate_setting([0.0, 1.0, 0.0], "x", 0.75, float) == pytest.approx(0.5)
    s = [{"filter": "self_attn", "value": 0.1}, {"value": [0.0, 1.0]}]
    assert evaluate_setting(s, "model.layers.0.self_attn.q_proj.weight", 1.0, float) == 0.1
    assert evaluate_setting(s, "model.layers.3.mlp.up_proj.weight", 1.0, float) == 1.0
    assert evaluate_setting([{"filter": "mlp", "value": 1.0}], "model.norm.weight", 0, float) is None
    assert layer_position("model.layers.2.mlp.up_proj.weight", 5) == 0.5
    assert layer_position("model.embed_tokens.weight", 5) == 0.0
    assert layer_position("model.layers.0.mlp.up_proj.weight", 1) == 1.0


def test_resolution_precedence_and_defaults():
    r = MergeRecipe("ties", "b", ["m1", "m2"], parameters={"weight": 0.3, "density": 0.5},
                    model_parameters=[{"weight": [0.0, 1.0]}, {}])
    shared, per = r.resolve("model.layers.3.mlp.down_proj.weight", 4)
    assert per[0] == {"weight": 1.0, "density": 0.5}
    assert per[1]["weight"] == 0.3
    assert shared["normalize"] is True and shared["lambda"] == 1.0


@pytest.mark.parametrize("recipe,match", [
    (dict(method="nope", base_model="b", models=["m"]), "unknown merge method"),
    (dict(method="ties", base_model="b", models=["m"], model_parameters=[{"weight": 1, "density": 1.5}]),
     "density=1.5 out of range"),
    (dict(method="ties", base_model="b", models=["m"], model_parameters=[{"density": 0.5}]), "needs weight"),
    (dict(method="ties", base_model="b", models=["m"], parameters={"weight": 1, "t": 0.3}), "unknown parameter 't'"),
    (dict(method="slerp", base_model="b", models=["m", "n"], parameters={"t": 0.3}), "exactly 1"),
    (dict(method="slerp", base_model="b", models=["m"], parameters={"t": [0.3, 1.2]}), "out of range"),
    (dict(method="model_stock", base_model="b", models=["m"]), "at least 2"),
    (dict(method="ties", base_model="b", models=["m"], parameters={"weight": float("nan")}), "finite"),
    (dict(method="ties", base_model="b", models=["m"], parameters={"weight": 1, "normalize": "maybe"}), "boolean"),
    (dict(method="ties", base_model="b", models=["m"], parameters={"weight": 1}, dtype="int8"), "dtype"),
])
def test_validation_errors_are_one_line(recipe, match):
    with pytest.raises(ValueError, match=match) as e:
        MergeRecipe(**recipe).validate()
    assert "\n" not in str(e.value)


def test_della_constraint_checked_per_tensor():
    r = MergeRecipe("della", "b", ["m"], model_parameters=[{"weight": 1.0, "density": 0.1, "epsilon": 0.2}])
    r.validate()
    with pytest.raises(ValueError, match="density \\+/- epsilon"):
        r.resolve("model.layers.0.mlp.up_proj.weight", 2)


def test_yaml_round_trip(tmp_path):
    r = MergeRecipe("dare_ties", "/abs/base", ["/abs/a", "/abs/b"], parameters={"lambda": 0.9},
                    model_parameters=[{"weight": [0.1, 0.4], "density": 0.5},
                                      {"weight": [{"filter": "mlp", "value": 0.2}, {"value": 0.6}]}],
                    dtype="bfloat16", seed=7)
    p = tmp_path / "r.yml"
    p.write_text(r.to_mergekit_yaml())
    back = MergeRecipe.from_yaml(p)
    assert back.to_dict() == r.to_dict()
    assert MergeRecipe.from_dict(r.to_dict()).seed == 7


def _delta(seed=0, shape=(128, 96)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_random_methods_reproducible_and_seeded(method):
    spec = get_method(method)
    base = _delta(0)
    deltas = [_delta(1), _delta(2)]
    shared = {p.name: p.default for p in spec.params if p.scope == "shared"}
    per = [{"weight": 0.6, "density": 0.4, "epsilon": 0.1}, {"weight": 0.5, "density": 0.6, "epsilon": 0.2}]
    a = merge_tensor(spec, "t", base, deltas, shared, per, seed=3)
    b = merge_tensor(spec, "t", base, deltas, shared, per, seed=3)
    c = merge_tensor(spec, "t", base, deltas, shared, per, seed=4)
    d = merge_tensor(spec, "other.tensor", base, deltas, shared, per, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_keeps_density_and_matches_l1(density):
    x = _delta(5, (256, 256))
    g = D.key(0, "t", 0)
    y = S.random(x, density, g, rescale=True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - density) < 0.01
    torch.testing.assert_close(y.abs().sum(), x.abs().sum(), rtol=1e-5, atol=0)
    ratio = (y[y != 0] / x[y != 0])  # one common factor (L1 matching), not 1/density
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)
    assert S.random(x, 1.0, g) is x


def test_della_prefers_large_magnitudes():
    x = _delta(6, (64, 512))
    g = D.key(0, "t", 0)
    y = S.della(x, 0.5, 0.3, g, rescale=False)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.02
    ranks = S.della_ranks(x)  # normalized: 0 smallest, 1 largest in its row
    assert ranks.dtype == torch.float32 and float(ranks.min()) == 0 and float(ranks.max()) == 1
    assert kept[ranks > 0.8].float().mean() > 0.7 and kept[ranks < 0.2].float().mean() < 0.3
    torch.testing.assert_close(S.della(x, 0.5, 0.3, D.key(1, "t", 0), ranks=S.della_ranks(x)),
                               S.della(x, 0.5, 0.3, D.key(1, "t", 0)))


def test_slerp_lerp_fallback_and_endpoints():
    spec = get_method("slerp")
    base = _delta(7)
    d = _delta(8)
    torch.testing.assert_close(merge_tensor(spec, "t", base, [d], {"t": 0.0}, []), base)
    torch.testing.assert_close(merge_tensor(spec, "t", base, [d], {"t": 1.0}, []), base + d, rtol=1e-5, atol=1e-5)
    colinear = base * 0.01  # other = 1.01 * base: lerp
    torch.testing.assert_close(merge_tensor(spec, "t", base, [colinear], {"t": 0.3}, []), base * 1.003)


@pytest.mark.parametrize("density", [0.1, 0.37, 0.5, 0.9])
@pytest.mark.parametrize("gamma", [0.0, 0.05])
def test_sparsifiers_keep_exact_counts_under_heavy_ties(density, gamma):
    """bf16-like task vectors tie a lot: the kept count must still be exact, the kept set the largest."""
    x = (torch.randint(-6, 7, (50, 40), generator=torch.Generator().manual_seed(9)) * 0.25).float()
    n = x.numel()
    y = S.magnitude(x, density)
    k = max(1, int(density * n))
    assert int((y != 0).sum()) == min(k, int((x != 0).sum())) or int((y != 0).sum()) <= k
    assert int((S._ranks_between(x.abs().reshape(-1), n - k, n)).sum()) == k
    kept = x.abs().reshape(-1)[S._ranks_between(x.abs().reshape(-1), n - k, n)]
    dropped = x.abs().reshape(-1)[~S._ranks_between(x.abs().reshape(-1), n - k, n)]
    assert kept.min() >= dropped.max()
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    m = S._ranks_between(x.abs().reshape(-1), n_bot, n_bot + target)
    srt = torch.sort(x.abs().reshape(-1)).values
    assert int(m.sum()) == target
    torch.testing.assert_close(torch.sort(x.abs().reshape(-1)[m]).values, srt[n_bot:n_bot + target])


@pytest.mark.parametrize("n", [3000, (1 << 20) + 4096])
def test_cached_ranks_select_what_the_uncached_path_selects(n):
    """The materializer's cached magnitude ranks keep exactly the uncached entries, ties included (bf16-like
    task vectors tie a lot), on both sides of the sort limit."""
    x = (torch.randint(-40, 41, (n,), generator=torch.Generator().manual_seed(3)) * 0.125).float()
    mo, oo = S.magnitude_order(x), S.outlier_order(x)
    for d in (0.05, 0.5, 0.93):
        for rescale in (False, True):
            assert torch.equal(S.magnitude(x, d, rescale, order=mo), S.magnitude(x, d, rescale))
            assert torch.equal(S.magnitude_outliers(x, d, 0.03, rescale, order=oo),
                               S.magnitude_outliers(x, d, 0.03, rescale))


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties", "dare_ties", "dare_linear", "della", "breadcrumbs", "linear",
                                    "task_arithmetic"])
def test_workspace_kernel_matches_reference_formulation(method):
    """merge_tensor with cached ranks and reused scratch gives the same bits as without either."""
    from merge3.merging.kernels import Workspace

    spec = get_method(method)
    base = _delta(0).to(torch.bfloat16)
    deltas = [_delta(i).to(torch.bfloat16) * 0.01 for i in (1, 2, 3)]
    shared = {p.name: p.default for p in spec.params if p.scope == "shared"}
    per = [{"weight": 0.6, "density": 0.4, "epsilon": 0.1, "gamma": 0.02},
           {"weight": -0.3, "density": 0.7, "epsilon": 0.2, "gamma": 0.0},
           {"weight": 0.5, "density": 1.0, "epsilon": 0.1, "gamma": 0.01}]
    ranker = {"magnitude": S.magnitude_order, "magnitude_outliers": S.outlier_order, "della": S.della_ranks}
    ranks = [ranker[spec.sparsify](d.float()) for d in deltas] if spec.sparsify in ranker else None
    work = Workspace()
    ref = merge_tensor(spec, "t", base, deltas, shared, per, seed=5)
    for _ in range(2):
        out = torch.empty_like(base)
        merge_tensor(spec, "t", base, deltas, shared, per, seed=5, out=out, ranks=ranks, work=work)
        assert torch.equal(out, ref.to(torch.bfloat16))
        assert torch.equal(merge_tensor(spec, "t", base, deltas, shared, per, seed=5, ranks=ranks, work=work), ref)


@pytest.mark.parametrize("shape", [(96,), (40, 24), (4, 10, 24)])
@pytest.mark.parametrize("method,shared", [("slerp", {"t": 0.3}), ("model_stock", {"filter_wise": False}),
                                           ("model_stock", {"filter_wise": True})])
def test_slerp_and_model_stock_in_scratch_match_the_allocating_path(method, shared, shape):
    """With a workspace slerp and model stock compute in place on its scratch: same bits as without one,
    reused across calls, with and without ``out``."""
    from merge3.merging.kernels import Workspace

    spec = get_method(method)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(shape, generator=g).to(torch.bfloat16)
    deltas = [(torch.randn(shape, generator=g) * 0.05).to(torch.bfloat16) for _ in range(1 if method == "slerp" else 3)]
    per = [{"weight": 1.0} for _ in deltas]
    ref = merge_tensor(spec, "t", base, deltas, shared, per)
    work = Workspace()
    for _ in range(2):
        out = torch.empty_like(base)
        assert merge_tensor(spec, "t", base, deltas, shared, per, out=out, work=work) is out
        assert torch.equal(out, ref.to(torch.bfloat16))
        assert torch.equal(merge_tensor(spec, "t", base, deltas, shared, per, work=work), ref)
