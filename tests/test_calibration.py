"""Calibration on real tiny-world evaluations: py-irt fit, abilities, estimators, files and config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from merge3.calibration import Calibration, calibrate, calibrate_from_file
from merge3.evaluation.store import ResponseStore
from merge3.irt import ESTIMATORS, estimate, fit_ability, fit_irt, select_anchors
from merge3.irt.fit import response_matrix, refine_map


@pytest.fixture(scope="module")
def micro_store(micro_world, tmp_path_factory):
    """Base and endpoints evaluated on the first 40 items of each micro task (lm-eval ``limit``)."""
    from merge3.evaluation.lmeval import EvalOptions, TaskSuite

    suite = TaskSuite(micro_world.task_names, include_path=micro_world.tasks_dir,
                      options=EvalOptions(device="cpu", batch_size=64, limit=40), cache_dir=micro_world.root)
    store = ResponseStore(tmp_path_factory.mktemp("cal") / "responses.jsonl")
    for name in ["base", *micro_world.endpoints]:
        store.add(name, suite.evaluate(suite.wrap_model(micro_world.model(name))))
    return store


def test_py_irt_fit_on_real_responses(micro_store):
    params, thetas = fit_irt(micro_store, model_type="multidim_2pl", dim=2, epochs=150, seed=0)
    assert len(params) == 4 * 40 and params.dim == 2 and set(thetas) == set(micro_store.models())
    assert np.all(params.alpha > 0) and np.all(np.isfinite(params.beta))
    again, _ = fit_irt(micro_store, model_type="multidim_2pl", dim=2, epochs=150, seed=0)
    assert np.allclose(again.alpha, params.alpha) and np.allclose(again.beta, params.beta)  # seeded
    p1, _ = fit_irt(micro_store, model_type="2pl", epochs=30, seed=0)
    assert p1.dim == 1

    # As calibration does: polish py-irt's (prior-shrunk) solution to the joint MAP, then abilities fitted
    # with the items fixed predict each model's own accuracy.
    models, _, Y = response_matrix(micro_store, None, None)
    params, _ = refine_map(params, thetas, Y, models, iters=100)
    abilities = {m: fit_ability(params, micro_store.get(m), prior_sd=3.0) for m in micro_store.models()}
    cal = Calibration(params, abilities, ["math_en", "lang_vl", "facts_en"], base="base", store=micro_store)
    acc, pred = [], []
    for m in micro_store.models():
        for t, r in micro_store.get(m).items():
            acc.append(np.mean(list(r.values())))
            pred.append(np.mean(params.prob(abilities[m], params.rows(t))))
    # Four models are a thin population for 160 items: ask for the right ordering, not exact values.
    assert np.corrcoef(acc, pred)[0, 1] > 0.8, (acc, pred)
    anchors = select_anchors("irt_cluster", 8, cal, seed=0)
    full = micro_store.get("math_en")
    resp = {t: {i: full[t][i] for i in anchors.items[t]} for t in anchors.items}
    for e in ESTIMATORS:
        assert all(0 <= v <= 1 for v in estimate(e, resp, cal, anchors).values())


def test_fit_irt_input_errors():
    with pytest.raises(ValueError, match="unknown IRT model"):
        fit_irt((["a", "b"], [("t", "x")], np.array([[1], [0]])), model_type="3pl")
    with pytest.raises(ValueError, match="response matrix is"):
        fit_irt((["a", "b"], [("t", "x")], np.array([[1, 0]])))
    with pytest.raises(ValueError, match="only 0 and 1"):
        fit_irt((["a", "b"], [("t", "x")], np.array([[1], [2]])))


def test_calibrate_from_imported_responses(micro_store, tmp_path):
    out = calibrate({"tasks": ["tw_arith_en", "tw_lang_vl"], "endpoints": {"math_en": "x", "lang_vl": "y",
                     "facts_en": "z"}, "base": "b", "n_random_merges": 0, "import_responses": [str(micro_store.path)],
                     "irt": {"epochs": 30, "dim": 2, "validation_fraction": 0.0}, "anchors": {"n": 5}},
                    tmp_path / "cal")
    cal = Calibration.load(out)
    assert cal.tasks == ["tw_arith_en", "tw_lang_vl"] and cal.n_items == {"tw_arith_en": 40, "tw_lang_vl": 40}
    assert cal.endpoint_matrix().shape == (2, 4) and cal.cost["models_evaluated"] == 0
    meta = json.loads((out / "calibration.json").read_text())
    assert set(meta["default_anchor_weights"]) == {"gpirt", "gmpirt"}
    assert cal.default_anchors().n == 5
    assert not (tmp_path / ".cal.partial").exists()
    with pytest.raises(FileExistsError):
        calibrate({"tasks": ["tw_arith_en"], "base": "b", "import_responses": [str(micro_store.path)]}, out)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        calibrate({"world": "micro", "n_random_merge": 3}, tmp_path / "a")
    with pytest.raises(ValueError, match="needs `genome`"):
        calibrate({"world": "micro", "n_random_merges": 3}, tmp_path / "a")
    with pytest.raises(ValueError, match="irt.model_type"):
        calibrate({"world": "micro", "n_random_merges": 0, "irt": {"model_type": "4pl"}}, tmp_path / "a")
    (tmp_path / "c.yaml").write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        calibrate_from_file(tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError, match="not a calibration directory"):
        Calibration.load(tmp_path)


@pytest.mark.slow
def test_calibrate_micro_world_with_random_merges(micro_world, tmp_path):
    cfg = {"world": str(micro_world.root), "n_random_merges": 2, "seed": 1,
           "genome": {"method": "dare_ties", "parameters": {"weight": [0, 1], "density": [0.1, 1]}},
           "irt": {"epochs": 30, "dim": 2, "validation_fraction": 0.5}, "eval": {"device": "cpu", "limit": 30}}
    out = calibrate(cfg, tmp_path / "cal")
    cal = Calibration.load(out)
    assert len(cal.validation_models) == 1 and cal.cost["models_evaluated"] == 6
    assert ResponseStore(out / "responses.jsonl").meta("merge-000")["kind"] == "random_merge"


def test_damaged_calibration_is_an_error_naming_the_file(micro_store, tmp_path):
    out = calibrate({"tasks": ["tw_arith_en"], "endpoints": {"math_en": "x", "lang_vl": "y", "facts_en": "z"},
                     "base": "b", "n_random_merges": 0, "import_responses": [str(micro_store.path)],
                     "irt": {"epochs": 10, "dim": 1, "validation_fraction": 0.0, "refine_iters": 0}}, tmp_path / "cal")
    Calibration.load(out)
    (out / "item_params.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="item_params.npz"):
        Calibration.load(out)
    (out / "calibration.json").write_text("{ torn")
    with pytest.raises(ValueError, match="calibration.json"):
        Calibration.load(out)
