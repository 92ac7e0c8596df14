"""Fused merge kernels (one compiled pass per tensor) give the eager kernels' bits, for every method."""

from __future__ import annotations

import pytest
import torch

from bitwise import differing
from merge3.merging import fused
from merge3.merging import sparsify as S
from merge3.merging.kernels import Workspace, merge_tensor
from merge3.merging.materializer import Materializer
from merge3.merging.methods import METHODS, get_method
from merge3.merging.recipe import MergeRecipe

@pytest.fixture(autouse=True)
def fuse_every_tensor(monkeypatch):
    """The tensors here are small: fuse them anyway (merge_tensor leaves tensors under 64K entries eager)."""
    from merge3.merging import kernels

    monkeypatch.setattr(kernels, "FUSED_MIN_NUMEL", 0)


GENERALIZED = [m for m in METHODS if m not in ("linear", "task_arithmetic", "slerp", "model_stock")]
RANKERS = {"magnitude": S.magnitude_order, "magnitude_outliers": S.outlier_order, "della": S.della_ranks}


def _tensor(seed, shape=(37, 64), dtype=torch.bfloat16):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x[0, :5] = 0.0
    x[1, :3] = -0.0  # signed zeros: the eager kernels' zero_() and masks must be mirrored exactly
    return x.to(dtype)


def _both(spec, base, deltas, shared, per, ranks=None):
    eager, fast = torch.empty_like(base), torch.empty_like(base)
    merge_tensor(spec, "t", base, deltas, shared, per, seed=5, out=eager, ranks=ranks, work=Workspace())
    work = Workspace()
    for _ in range(2):  # the second call reuses the cached constants and scratch
        merge_tensor(spec, "t", base, deltas, shared, per, seed=5, out=fast, ranks=ranks, work=work, fused=True)
        differ = differing(fast, eager)
        assert differ == 0, f"{spec.name}: fused differs from eager in {differ} entries"


@pytest.mark.parametrize("method", GENERALIZED)
def test_ties_family_bit_identical(method):
    spec = get_method(method)
    base = _tensor(0)
    base[2, :4] = -0.0
    deltas = [_tensor(i) * 0.01 for i in (1, 2, 3)]
    ranks = [RANKERS[spec.sparsify](d.float()) for d in deltas] if spec.sparsify in RANKERS else None
    shared = {p.name: p.default for p in spec.params if p.scope == "shared"}
    per = [{"weight": 0.6, "density": 0.4, "epsilon": 0.1, "gamma": 0.02},
           {"weight": -0.3, "density": 0.7, "epsilon": 0.2, "gamma": 0.0},
           {"weight": 0.5, "density": 1.0, "epsilon": 0.1, "gamma": 0.01}]
    _both(spec, base, deltas, shared, per, ranks)
    # positive weights: a sum of -0 terms stays -0 (a negative weight makes one +0), so the sign of every zero counts
    _both(spec, base, deltas, shared, [dict(p, weight=abs(p["weight"])) for p in per], ranks)
    # the other normalize / rescale / consensus settings, lambda, a base input and an empty selection
    flipped = dict(shared, normalize=not shared["normalize"], rescale=not shared["rescale"], **{"lambda": 1.3})
    if spec.consensus:
        flipped["consensus_method"] = "count"
    per[0]["density"] = 0.0 if spec.sparsify != "della" else 0.3
    _both(spec, base, [None] + deltas[1:], flipped, per, None if ranks is None else [None] + ranks[1:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weighted_sums_bit_identical(dtype):
    base = _tensor(0, shape=(301, 67), dtype=dtype)  # an odd size: the vectorized loops' tails too
    deltas = [_tensor(i, shape=(301, 67), dtype=dtype) * 0.01 for i in (1, 2, 3)]
    per = [{"weight": 0.6}, {"weight": -0.3}, {"weight": 0.0}]
    for threads in (1, 2):
        torch.set_num_threads(threads)
        _both(get_method("linear"), base, deltas, {"normalize": True}, per)
        _both(get_method("linear"), base, [None] + deltas[1:], {"normalize": False}, per)
        _both(get_method("task_arithmetic"), base, deltas, {"normalize": False, "lambda": 0.8}, per)
        _both(get_method("task_arithmetic"), base, deltas, {"normalize": True, "lambda": 1.0}, per)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_slerp_and_model_stock_bit_identical(dtype):
    base = _tensor(0, dtype=dtype)
    deltas = [_tensor(i, dtype=dtype) * 0.01 for i in (1, 2, 3)]
    _both(get_method("slerp"), base, deltas[:1], {"t": 0.3}, [])
    _both(get_method("slerp"), base, [base * 0.001], {"t": 0.7}, [])  # nearly colinear: the lerp branch
    for filter_wise in (False, True):
        _both(get_method("model_stock"), base, deltas, {"filter_wise": filter_wise}, [])
        _both(get_method("model_stock"), base[0], [d[0] for d in deltas], {"filter_wise": filter_wise}, [])


def test_fused_materializer_matches_eager(micro_world):
    base, eps = str(micro_world.base), [str(p) for p in micro_world.endpoints.values()]
    eager = Materializer(base, eps, device="cpu")
    fast = Materializer(base, eps, device="cpu", fused=True)
    assert not eager.fused and fast.fused
    w = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.7}, {"weight": 0.2, "density": 0.3}]
    for recipe in [MergeRecipe("ties", base, eps, model_parameters=w),
                   MergeRecipe("dare_ties", base, eps, model_parameters=w, seed=11),
                   MergeRecipe("model_stock", base, eps)]:
        a, b = eager.apply(recipe).state_dict(), fast.apply(recipe).state_dict()
        assert all(differing(a[k], b[k]) == 0 for k in a), recipe.method


def test_missing_compiler_is_one_line(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused, "slerp", fused._Lazy(fused._slerp))
    with pytest.raises(RuntimeError, match=r"^fused merge kernels need torch.compile .*No working C\+\+ compiler "
                                           r"found; turn them off with workers.fused_merge: false$"):
        fused.check_available("cpu")


def test_default_falls_back_to_eager_when_it_cannot_compile(monkeypatch):
    """Default (None): on for GPUs, and a failed compile warns and merges eagerly; True: the failure is an error."""
    def broken(device):
        raise RuntimeError("fused merge kernels need torch.compile to work on cuda: no compiler")

    monkeypatch.setattr(fused, "check_available", broken)
    assert fused.use_fused(None, "cpu") is False and fused.use_fused(False, "cuda") is False
    with pytest.warns(UserWarning, match="no compiler.*falling back to the eager kernels"):
        assert fused.use_fused(None, "cuda") is False
    with pytest.raises(RuntimeError, match="no compiler"):
        fused.use_fused(True, "cpu")
