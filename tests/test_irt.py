"""Estimators and ability fits on data simulated from a known multidimensional 2PL."""

from __future__ import annotations

import numpy as np
import pytest

from merge3.irt.simulate import sample_responses, simulate_params, simulate_population
from merge3.calibration import Calibration
from merge3.irt import ESTIMATORS, Anchors, ItemParams, estimate, fit_ability, mp_ability, select_anchors
from merge3.irt.fit import responses_to_rows


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    params = simulate_params(tasks=("ta", "tb", "tc"), n_items=400, dim=3, seed=0)
    store, thetas = simulate_population(params, tmp_path_factory.mktemp("sim") / "r.jsonl", n_merges=30, seed=1)
    # True abilities stand in for a calibration (the estimators, not py-irt, are under test here).
    models = store.models()
    cal = Calibration(params, {m: thetas[m] for m in models}, ["e0", "e1", "e2"], base="base",
                      train_models=models[:26], validation_models=models[26:], store=store)
    return params, store, thetas, cal


def test_fit_ability_recovers_known_theta(sim):
    params, _, _, _ = sim
    rng = np.random.default_rng(3)
    for theta in (np.array([1.0, -0.5, 0.3]), np.array([-1.0, 0.8, 0.0])):
        # Ten thousand simulated answers (each item answered repeatedly) pin theta down tightly.
        resp = [sample_responses(params, theta, rng) for _ in range(8)]
        rows = np.concatenate([responses_to_rows(params, r)[0] for r in resp])
        y = np.concatenate([responses_to_rows(params, r)[1] for r in resp])
        from merge3.irt.fit import fit_logistic_map

        got = fit_logistic_map(params.alpha[rows], y, params.beta[rows], prior_sd=10.0)
        assert np.max(np.abs(got - theta)) < 0.15, (got, theta)
        single = fit_ability(params, resp[0], prior_sd=10.0)
        assert np.max(np.abs(single - theta)) < 0.4


def test_mp_ability_recovers_combination(sim):
    params, _, thetas, cal = sim
    lam = np.array([0.7, 0.2, 0.5])
    theta = sum(l * thetas[f"e{k}"] for k, l in enumerate(lam)) + (1 - lam.sum()) * thetas["base"]
    resp = sample_responses(params, theta, np.random.default_rng(4))
    rows, y = responses_to_rows(params, resp)
    got = mp_ability(cal, rows, y)
    assert np.max(np.abs(got - theta)) < 0.3


def _true_acc(params, theta):
    return {t: float(np.mean(params.prob(theta, params.rows(t)))) for t in params.task_names()}


@pytest.mark.parametrize("method", ["random", "irt_cluster", "correctness_cluster"])
def test_estimators_track_accuracy_and_beat_anchor_accuracy(sim, method):
    params, _, thetas, cal = sim
    anchors = select_anchors(method, 15, cal, seed=2)
    rng = np.random.default_rng(5)
    err = {e: [] for e in ESTIMATORS}
    for _ in range(25):
        lam = rng.random(3)
        theta = sum(l * thetas[f"e{k}"] for k, l in enumerate(lam))
        full = sample_responses(params, theta, rng)
        true = {t: float(np.mean(list(full[t].values()))) for t in full}
        resp = {t: {i: full[t][i] for i in anchors.items[t]} for t in anchors.items}
        for e in ESTIMATORS:
            est = estimate(e, resp, cal, anchors)
            assert set(est) == set(true) and all(0.0 <= v <= 1.0 for v in est.values())
            err[e] += [abs(est[t] - true[t]) for t in true]
    mae = {e: float(np.mean(v)) for e, v in err.items()}
    for e in ("irt", "pirt", "gpirt", "mpirt", "gmpirt"):
        assert mae[e] < 0.075, mae  # sampling noise of 400 items alone is ~2 points
    assert mae["irt"] < mae["anchor"], mae  # IRT uses the other tasks' anchors and item difficulty


def test_estimate_is_deterministic_and_fast(sim):
    import time

    params, store, _, cal = sim
    anchors = select_anchors("random", 20, cal, seed=0)
    full = store.get("m000")
    resp = {t: {i: full[t][i] for i in anchors.items[t]} for t in anchors.items}
    first = {e: estimate(e, resp, cal, anchors) for e in ESTIMATORS}
    t0 = time.perf_counter()
    again = {e: estimate(e, resp, cal, anchors) for e in ESTIMATORS}
    assert again == first
    assert (time.perf_counter() - t0) / len(ESTIMATORS) < 0.1


def test_anchor_weights_and_roundtrip(sim, tmp_path):
    _, _, _, cal = sim
    for method in ("random", "irt_cluster", "correctness_cluster"):
        a = select_anchors(method, 12, cal, seed=1)
        for t in cal.tasks:
            assert 1 <= len(a.items[t]) <= 12 and len(set(a.items[t])) == len(a.items[t])
            assert abs(sum(a.weights[t]) - 1) < 1e-9
        b = Anchors.load(a.save(tmp_path / f"{method}.json"))
        assert b.items == a.items and b.weights == a.weights
        assert select_anchors(method, 12, cal, seed=1).items == a.items  # deterministic
    assert select_anchors("random", 12, cal, seed=1).items != select_anchors("random", 12, cal, seed=2).items


def test_mismatched_ids_and_unknown_names_raise(sim, tmp_path):
    params, store, _, cal = sim
    a = select_anchors("random", 5, cal, seed=0)
    resp = {t: {i: 1 for i in a.items[t]} for t in a.items}
    wrong = {**resp, "ta": {**{i: 1 for i in a.items["ta"][1:]}, "ta-9999": 0}}
    with pytest.raises(ValueError, match="do not match the anchors"):
        estimate("irt", wrong, cal, a)
    with pytest.raises(ValueError, match="no anchors"):
        estimate("irt", {**resp, "nope": {"x": 1}}, cal, a)
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate("bogus", resp, cal, a)
    with pytest.raises(ValueError, match="not in the item parameters"):
        fit_ability(params, {"ta": {"ta-9999": 1}})
    with pytest.raises(ValueError, match="unknown anchor method"):
        select_anchors("kmeans", 5, cal)
    (tmp_path / "bad.json").write_text('{"method": "random", "n": 2, "items": {"ta": ["a"]}, "weights": {}}')
    with pytest.raises(ValueError, match="malformed anchors file|weights"):
        Anchors.load(tmp_path / "bad.json")


def test_item_params_roundtrip_and_errors(sim, tmp_path):
    params = sim[0]
    for suffix in (".npz", ".json"):
        p = ItemParams.load(params.save(tmp_path / f"ip{suffix}"))
        assert p.item_ids == params.item_ids and p.tasks == params.tasks
        assert np.allclose(p.alpha, params.alpha) and np.allclose(p.beta, params.beta)
    (tmp_path / "broken.json").write_text('{"tasks": ["a"], "item_ids": ["x", "y"], "alpha": [[1]], "beta": [0]}')
    with pytest.raises(ValueError, match="broken.json: malformed"):
        ItemParams.load(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError):
        ItemParams.load(tmp_path / "absent.npz")


def test_refine_map_undoes_shrunk_discriminations(sim):
    from merge3.irt.fit import response_matrix, refine_map

    params, store, thetas, _ = sim
    models, keys, Y = response_matrix(store, None, params.task_names())
    assert [k for k in keys] == list(zip(params.tasks, params.item_ids))
    shrunk = ItemParams(params.tasks, params.item_ids, params.alpha * 0.3, params.beta * 0.3)

    def loglik(p, th):
        P = np.clip(np.array([p.prob(th[m]) for m in models]), 1e-9, 1 - 1e-9)
        return float(np.mean(Y * np.log(P) + (1 - Y) * np.log(1 - P)))

    start = {m: thetas[m] for m in models}
    refined, th = refine_map(shrunk, start, Y, models, iters=30)
    assert loglik(refined, th) > loglik(shrunk, start) + 0.02
    again, _ = refine_map(shrunk, start, Y, models, iters=30)
    assert np.array_equal(again.alpha, refined.alpha)


def test_item_model_misfit_is_small_when_the_model_holds_and_large_when_it_does_not(tmp_path):
    """The calibration's misfit diagnostic: answers drawn from the item model itself are matched to within
    sampling noise; abilities that belong to other models are not."""
    from merge3.calibration import item_model_misfit
    from merge3.irt.simulate import simulate_params, simulate_population

    params = simulate_params(n_items=400, seed=3)
    store, thetas = simulate_population(params, tmp_path / "r.jsonl", n_merges=12, seed=4)
    models = [m for m in thetas if m.startswith("m")]
    good = item_model_misfit(params, thetas, store, models, params.task_names())
    wrong = {m: thetas[models[(k + 1) % len(models)]] for k, m in enumerate(models)}  # each model's neighbour's
    bad = item_model_misfit(params, wrong, store, models, params.task_names())
    assert set(good) == set(params.task_names())
    assert max(good.values()) < 2.5          # 400 items per task: sampling noise about 1.7 points
    assert min(bad.values()) > 2 * max(good.values())
