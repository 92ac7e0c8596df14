"""Magnitude / DELLA ranks cached or recomputed per candidate (``rank_cache``): the same bits either way, eager
and fused; "auto" caches only what fits in the memory left."""

from __future__ import annotations

import warnings

import pytest
import torch

from bitwise import differing
from merge3.merging import materializer as M
from merge3.merging import sparsify as S
from merge3.merging.kernels import Workspace, merge_tensor
from merge3.merging.materializer import Materializer
from merge3.merging.methods import get_method
from merge3.merging.recipe import MergeRecipe

RANKED = ["ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"]
RANKERS = {"magnitude": S.magnitude_order, "magnitude_outliers": S.outlier_order, "della": S.della_ranks}


@pytest.fixture(autouse=True)
def fuse_every_tensor(monkeypatch):
    """The micro world's tensors are small: fuse them anyway (merge_tensor leaves those under 64K eager)."""
    from merge3.merging import kernels

    monkeypatch.setattr(kernels, "FUSED_MIN_NUMEL", 0)


def _tied(seed, shape):
    """bf16-like task vectors: few distinct magnitudes, so the selections are decided by their tie-breaking."""
    x = torch.randint(-40, 41, shape, generator=torch.Generator().manual_seed(seed)) * 0.125
    return (x * 0.01).to(torch.bfloat16)


def _merge(spec, base, deltas, shared, per, ranks, fused):
    out = torch.empty_like(base)
    merge_tensor(spec, "t", base, deltas, shared, per, seed=5, out=out, ranks=ranks, work=Workspace(), fused=fused)
    return out


@pytest.mark.parametrize("method", RANKED)
@pytest.mark.parametrize("shape", [(37, 64), (1025, 1024)])  # both sides of sparsify._SORT_LIMIT
def test_uncached_ranks_give_the_cached_bits(method, shape):
    spec = get_method(method)
    base = _tied(0, shape)
    deltas = [_tied(i, shape) for i in (1, 2, 3)]
    ranks = [RANKERS[spec.sparsify](d.float()) for d in deltas]
    shared = {p.name: p.default for p in spec.params if p.scope == "shared"}
    per = [{"weight": 0.6, "density": 0.4, "epsilon": 0.1, "gamma": 0.02},
           {"weight": -0.3, "density": 0.7, "epsilon": 0.2, "gamma": 0.0},
           {"weight": 0.5, "density": 0.93, "epsilon": 0.05, "gamma": 0.01}]
    flipped = dict(shared, rescale=not shared["rescale"])
    for sh in (shared, flipped):
        for fused in (False, True):
            cached = _merge(spec, base, deltas, sh, per, ranks, fused)
            fresh = _merge(spec, base, deltas, sh, per, None, fused)
            differ = differing(fresh, cached)
            assert differ == 0, f"{method} fused={fused}: recomputed ranks differ from cached ones in {differ} entries"


def test_top_k_mask_is_the_ranks_selection():
    x = _tied(4, ((1 << 20) + 4096,)).float().abs()
    order = S.magnitude_order(x)
    for k in (1, 5000, x.numel() // 2, x.numel() - 3):
        assert torch.equal(S.top_k_mask(x, k), order < k)


def _recipes(world):
    base, eps = str(world.base), [str(p) for p in world.endpoints.values()]
    w = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.7}, {"weight": 0.2, "density": 0.3}]
    return [MergeRecipe("ties", base, eps, model_parameters=w),
            MergeRecipe("breadcrumbs", base, eps, model_parameters=[dict(x, gamma=0.05) for x in w]),
            MergeRecipe("della", base, eps, model_parameters=[dict(x, epsilon=0.1) for x in w], seed=3)]


@pytest.mark.parametrize("fused", [False, True])
def test_materializer_same_bits_with_and_without_cache(micro_world, fused):
    base, eps = str(micro_world.base), [str(p) for p in micro_world.endpoints.values()]
    on = Materializer(base, eps, device="cpu", fused=fused, rank_cache=True)
    off = Materializer(base, eps, device="cpu", fused=fused, rank_cache=False)
    for recipe in _recipes(micro_world) * 2:  # the second round merges from the filled cache
        a, b = on.apply(recipe).state_dict(), off.apply(recipe).state_dict()
        differ = [k for k in a if differing(a[k], b[k])]
        assert not differ, f"{recipe.method}: {differ[:3]} differ with the rank cache off"
    assert on.memory_bytes()["magnitude_ranks"] > 0 and on.memory_bytes()["della_ranks"] > 0
    assert off.memory_bytes()["magnitude_ranks"] == 0 and off.memory_bytes()["della_ranks"] == 0


def test_auto_caches_only_what_fits(micro_world, monkeypatch):
    base, eps = str(micro_world.base), [str(p) for p in micro_world.endpoints.values()]
    ties, _, della = _recipes(micro_world)
    mat = Materializer(base, eps, device="cpu")
    p = sum(t.numel() for t in mat._tv[mat.models[0]].values())
    need = {"magnitude": 3 * p * 4, "della": 3 * p * 4}
    monkeypatch.setattr(M, "available_bytes", lambda device: need["magnitude"] / M.RANK_CACHE_SHARE)  # just fits
    assert mat.caches_ranks(ties) is True
    monkeypatch.setattr(M, "available_bytes", lambda device: need["della"] / M.RANK_CACHE_SHARE - 1)  # does not
    with pytest.warns(UserWarning, match=r"^della rank cache off: it needs [0-9.]+ GiB, [0-9.]+ GiB left on cpu; "
                                         r"ranks are recomputed per candidate") as rec:
        assert mat.caches_ranks(della) is False
        mat.apply(della)
        mat.apply(della)
    assert len(rec) == 1, "the warning is given once"
    assert mat.memory_bytes()["della_ranks"] == 0
    assert mat.caches_ranks(MergeRecipe("linear", base, eps, model_parameters=[{"weight": 1.0}] * 3)) is None


def test_forced_settings_ignore_memory(micro_world, monkeypatch):
    base, eps = str(micro_world.base), [str(p) for p in micro_world.endpoints.values()]
    ties = _recipes(micro_world)[0]
    monkeypatch.setattr(M, "available_bytes", lambda device: 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Materializer(base, eps, device="cpu", rank_cache=True).caches_ranks(ties) is True
    assert Materializer(base, eps, device="cpu", rank_cache=False).caches_ranks(ties) is False


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_bad_setting_is_one_line(micro_world, bad):
    with pytest.raises(ValueError, match=r"^rank_cache: expected auto, True or False, got"):
        Materializer(micro_world.base, list(micro_world.endpoints.values()), device="cpu", rank_cache=bad)


def test_available_bytes_reads_the_host():
    free = M.available_bytes("cpu")
    assert free is not None and 0 < free < 1 << 50


def test_config_key_reaches_the_materializer():
    from merge3.scoring import ScorerSpec
    from merge3.search.config import Workers

    opts = Workers(rank_cache=False).materializer_options()
    assert opts["rank_cache"] is False and Workers().materializer_options()["rank_cache"] == "auto"
    spec = ScorerSpec(base="b", models=["m"], genome={}, tasks=["t"], **opts)
    assert spec.rank_cache is False
