"""Anchor refresh and online calibration (merge3.search.fitness): the calibration grows toward the candidates a
search proposes, each generation answers its own anchors, and a resumed search replays both exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from merge3.irt import Calibration, estimate, select_anchors
from merge3.irt.simulate import sample_responses, simulate_params, simulate_population
from merge3.search import runner as R
from merge3.search.testing import SimulatedKill, StopAfter, SyntheticFitness

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    params = simulate_params(tasks=("ta", "tb"), n_items=400, dim=3, seed=0)
    store, thetas = simulate_population(params, tmp_path_factory.mktemp("sim") / "r.jsonl", n_merges=8, seed=1)
    return params, store, thetas


def test_grown_calibration_estimates_the_search_region_better(sim):
    """A calibration of the endpoints and a few merges, and candidates from a region none of them is in (where
    the population prior shrinks every estimate toward the wrong place): adding models of that region lowers
    the estimators' error on new candidates there."""
    params, store, thetas = sim
    models = store.models()
    cal = Calibration(params, {m: thetas[m] for m in models}, ["e0", "e1", "e2"], base="base",
                      train_models=models, store=store)
    rng = np.random.default_rng(7)
    centre = 1.6 * thetas["e0"] + 0.8 * thetas["e1"]  # beyond every model of the population

    def region(n):
        return [centre + 0.15 * rng.standard_normal(3) for _ in range(n)]

    grown = cal.with_models({f"online-{j}": sample_responses(params, th, rng) for j, th in enumerate(region(6))})
    assert len(grown.train_models) == len(models) + 6 and grown.validation_models[-1] == "online-5"
    assert np.max(np.abs(grown.abilities["online-0"] - centre)) < 1.0  # fitted with the item parameters held
    assert "online-0" not in cal.abilities and cal.store.path is not None  # the original is untouched
    anchors = select_anchors("random", 10, cal, seed=3)
    err = {"before": [], "after": []}
    for theta in region(40):
        resp = sample_responses(params, theta, rng)
        on_anchors = {t: {i: resp[t][i] for i in anchors.items[t]} for t in anchors.items}
        truth = {t: float(np.mean(list(resp[t].values()))) for t in resp}
        for name, c in (("before", cal), ("after", grown)):
            est = estimate("gmpirt", on_anchors, c, anchors)
            err[name] += [abs(est[t] - truth[t]) for t in truth]
    before, after = float(np.mean(err["before"])), float(np.mean(err["after"]))
    assert after < 0.8 * before, (before, after)
    with pytest.raises(ValueError, match="already in the calibration population"):
        grown.with_models({"online-0": {}})


# --------------------------------------------------------------------------------------------- the search loop


def synth_cfg(world, **fitness) -> dict:
    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(world.root)
    cfg["fitness"] = {"type": "anchor", "anchors": {"n": 5}, **fitness}
    cfg["algorithm"] = {"name": "nsga2", "pop_size": 4, "generations": 4}
    return cfg


class Recording(SyntheticFitness):
    """Synthetic fitness that notes the anchors each job carried, and scores every item 0.1 below the estimate
    (so a told verified score is visible in what the algorithm proposes next)."""

    def __init__(self, tasks):
        super().__init__(tasks)
        self.anchors = {}

    def __call__(self, job):
        out = super().__call__(job)
        if job.full_responses and out.objectives:
            out.raw = {t: v - 0.1 for t, v in out.objectives.items()}
            out.items_evaluated = 200 * len(self.tasks)
        elif not job.full_responses:
            self.anchors[(job.generation, job.index)] = job.anchors
        return out


def test_refresh_gives_each_generation_its_own_anchors(micro_world, tmp_path):
    cfg = synth_cfg(micro_world, anchors={"n": 5, "refresh": True})
    fit = Recording(cfg["tasks"])
    R.run(cfg, run_dir=tmp_path / "a", progress=False, evaluate=fit)
    run0 = json.loads((tmp_path / "a" / "anchors.json").read_text())
    sets = {}
    for (g, _), a in fit.anchors.items():
        assert (a is None) == (g == 0)  # generation 0 answers the run's anchors (anchors.json)
        sets.setdefault(g, set()).add(json.dumps(a.items if a else run0, sort_keys=True))
    assert all(len(s) == 1 for s in sets.values()) and len({next(iter(s)) for s in sets.values()}) == 4
    again = Recording(cfg["tasks"])
    R.run(cfg, run_dir=tmp_path / "b", progress=False, evaluate=again)
    assert {k: a and a.items for k, a in again.anchors.items()} == {k: a and a.items for k, a in fit.anchors.items()}
    off = Recording(cfg["tasks"])
    R.run(synth_cfg(micro_world), run_dir=tmp_path / "c", progress=False, evaluate=off)
    assert all(a is None for a in off.anchors.values())


def test_online_calibration_tells_verified_scores(micro_world, tmp_path):
    cfg = synth_cfg(micro_world, online_calibration={"top_k": 2}, verify_top_k=0)
    res = R.run(cfg, run_dir=tmp_path / "a", progress=False, evaluate=Recording(cfg["tasks"]))
    lines = [json.loads(x) for x in (tmp_path / "a" / "verified.jsonl").read_text().splitlines()]
    assert [v["stage"] for v in lines] == ["online"] * 8 and res.verification_items == 8 * 400
    for g in range(4):  # each generation's two best by estimate
        gen = sorted((r for r in res.evaluations if r["generation"] == g), key=lambda r: sum(r["F"]))
        assert {v["index"] for v in lines if v["generation"] == g} == {gen[0]["index"], gen[1]["index"]}
    plain = R.run(synth_cfg(micro_world, verify_top_k=0), run_dir=tmp_path / "b", progress=False,
                  evaluate=Recording(cfg["tasks"]))
    first = lambda r: [x["genome"] for x in r.evaluations if x["generation"] == 0]  # noqa: E731
    later = lambda r: [x["genome"] for x in r.evaluations if x["generation"] > 0]  # noqa: E731
    assert first(res) == first(plain) and later(res) != later(plain)  # told other scores, proposed otherwise


def test_online_calibration_needs_generational_dispatch(micro_world, tmp_path):
    cfg = synth_cfg(micro_world, online_calibration={"top_k": 1})
    cfg["algorithm"]["dispatch"] = "async"
    with pytest.raises(ValueError, match="fitness.online_calibration.top_k"):
        R.run(cfg, run_dir=tmp_path / "a", progress=False, evaluate=Recording(cfg["tasks"]))
    assert not (tmp_path / "a").exists()


def test_resume_with_refresh_and_online_equals_uninterrupted(micro_world, tmp_path):
    cfg = synth_cfg(micro_world, anchors={"n": 5, "refresh": True}, online_calibration={"top_k": 1})
    full = R.run(cfg, run_dir=tmp_path / "a", progress=False, evaluate=Recording(cfg["tasks"]))
    for stop in (3, 5, 4, 2):  # killed mid-generation and mid-online step
        with pytest.raises(SimulatedKill):
            if not (tmp_path / "b").exists():
                R.run(cfg, run_dir=tmp_path / "b", progress=False, evaluate=StopAfter(Recording(cfg["tasks"]), stop))
            else:
                R.resume(tmp_path / "b", progress=False, evaluate=StopAfter(Recording(cfg["tasks"]), stop))
    res = R.resume(tmp_path / "b", progress=False, evaluate=Recording(cfg["tasks"]))
    key = lambda r: (r["generation"], r["index"], tuple(r["genome"]), tuple(r["F"]))  # noqa: E731
    assert sorted(map(key, res.evaluations)) == sorted(map(key, full.evaluations))
    assert [e["candidate"] for e in res.verified] == [e["candidate"] for e in full.verified]
    assert res.verification_items == full.verification_items  # nothing scored twice


@pytest.mark.slow
def test_adaptive_items_and_online_calibration_on_the_micro_world(micro_world, tmp_path):
    """The real path in one process (lm-eval, merges, py-irt): candidates answer items chosen for them, each
    generation's best is scored on every item and joins the calibration, and the driver's estimates use it."""
    from merge3.scoring import CandidateScorer
    from merge3.search.workers import InlinePool

    cfg = yaml.safe_load((ROOT / "experiments" / "micro.yaml").read_text())
    cfg["world"] = str(micro_world.root)
    cfg["fitness"].update(anchors={"method": "adaptive", "n": 16, "target_sd": 0.04, "batch": 4},
                          online_calibration={"top_k": 1}, verify_top_k=1, test_fraction=0.25,
                          calibration_settings={"n_random_merges": 3, "irt": {"epochs": 200}})
    cfg["algorithm"].update(pop_size=4, generations=2)
    scorers = []

    def inline(spec, workers, address=None, log=None):
        scorers.append(CandidateScorer(spec))
        return InlinePool(scorers[-1].score)

    s = R.Search.create(cfg, run_dir=tmp_path / "run", progress=False, pool_factory=inline)
    res = s.run()
    assert res.done and all(r["status"] == "ok" for r in res.evaluations)
    held_out = json.loads((tmp_path / "run" / "split.json").read_text())
    assert all(len(v) == 50 for v in held_out.values())  # 25% of 200 items per task
    for r in res.evaluations:
        counts = [len(v) for v in r["responses"].values()]
        assert all(4 <= c <= 16 for c in counts) and r["items_evaluated"] == sum(counts)
        assert not any(set(r["responses"][t]) & set(held_out[t]) for t in held_out)
    assert len({tuple(sorted(r["responses"]["tw_arith_vl"])) for r in res.evaluations}) > 1  # chosen per candidate
    online = [json.loads(x) for x in (tmp_path / "run" / "verified.jsonl").read_text().splitlines()]
    assert [v["stage"] for v in online][:2] == ["online", "online"]
    for v in online:  # scored on every item; the held-out ones kept apart, out of the calibration's answers
        assert v["items_evaluated"] == 400 and set(v["test"]) == set(cfg["tasks"])
        assert all(len(v["responses"][t]) == 150 and not set(v["responses"][t]) & set(held_out[t])
                   for t in held_out) if "responses" in v else True
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert all("test_objectives" in e for e in result["verified"])
    assert s.fitness.added == [v["candidate"] for v in online[:2]]
    # generation 1 was estimated with the calibration grown by generation 0's best: the workers' could not
    g1 = next(r for r in res.evaluations if r["generation"] == 1)
    worker_estimate = scorers[-1].estimate(g1["responses"])
    assert any(abs(worker_estimate[t] - g1["objectives"][t]) > 1e-9 for t in cfg["tasks"])


def test_refresh_with_async_dispatch_draws_per_batch(micro_world, tmp_path):
    from merge3.search.testing import ordered_pool

    cfg = synth_cfg(micro_world, anchors={"n": 5, "refresh": True})
    cfg["algorithm"]["dispatch"] = "async"
    fit = Recording(cfg["tasks"])
    res = R.run(cfg, run_dir=tmp_path / "a", progress=False, pool_factory=ordered_pool(fit, 3))
    assert res.done and res.n_evaluations == 16
    by_batch = {}
    for (b, _), a in fit.anchors.items():
        by_batch.setdefault(b, set()).add(json.dumps(a and a.items, sort_keys=True))
    assert all(len(v) == 1 for v in by_batch.values()) and len(set().union(*by_batch.values())) == len(by_batch) > 2


def test_held_out_items_are_never_anchors_nor_asked(sim):
    from merge3.irt.adaptive import AdaptiveSettings, run_adaptive

    params, store, thetas = sim
    cal = Calibration(params, {m: thetas[m] for m in store.models()}, ["e0", "e1", "e2"], base="base", store=store)
    held = {t: [params.item_ids[r] for r in params.rows(t)[::3]] for t in ("ta", "tb")}
    for method in ("random", "irt_cluster", "correctness_cluster"):
        a = select_anchors(method, 20, cal, seed=1, exclude=held)
        assert all(len(a.items[t]) == 20 and not set(a.items[t]) & set(held[t]) for t in held)
    resp = sample_responses(params, thetas["e1"], np.random.default_rng(2))
    res = run_adaptive(cal, ["ta", "tb"], lambda want: {t: {i: resp[t][i] for i in v} for t, v in want.items()},
                       AdaptiveSettings(target_sd=0.001, max_items=300), exclude=held)
    assert all(not set(res.responses[t]) & set(held[t]) for t in held)
    assert all(res.items[t] == 400 - len(held[t]) for t in held)  # every askable item, and no other


def test_adaptive_items_beat_random_anchors_when_the_model_holds(tmp_path):
    """Answers drawn from the calibration's own 2PL: adaptive testing's estimate is closer to the truth than
    p-IRT's on as many random anchors (on real merges the item model misfits; see the README's table)."""
    from merge3.irt.adaptive import AdaptiveSettings, run_adaptive

    params = simulate_params(tasks=("ta", "tb", "tc"), n_items=400, dim=3, seed=0)
    store, thetas = simulate_population(params, tmp_path / "r.jsonl", n_merges=30, seed=1)
    models = store.models()
    cal = Calibration(params, {m: thetas[m] for m in models}, ["e0", "e1", "e2"], base="base",
                      train_models=models[:26], validation_models=models[26:], store=store)
    rng = np.random.default_rng(5)
    err = {"adaptive": [], "random": []}
    for k in range(20):
        theta = sum(w * thetas[f"e{j}"] for j, w in enumerate(rng.dirichlet(np.ones(3))))
        resp = sample_responses(params, theta, rng)
        truth = {t: float(np.mean(list(resp[t].values()))) for t in resp}
        res = run_adaptive(cal, list(resp), lambda want: {t: {i: resp[t][i] for i in v} for t, v in want.items()},
                           AdaptiveSettings(target_sd=0.04))
        anchors = select_anchors("random", round(np.mean(list(res.items.values()))), cal, seed=k)
        est = estimate("pirt", {t: {i: resp[t][i] for i in anchors.items[t]} for t in resp}, cal, anchors)
        err["adaptive"] += [abs(res.estimates[t] - truth[t]) for t in truth]
        err["random"] += [abs(est[t] - truth[t]) for t in truth]
    assert np.mean(err["adaptive"]) < 0.8 * np.mean(err["random"]), {k: np.mean(v) for k, v in err.items()}


def test_gp_and_gmp_irt_do_not_mix_in_the_plain_mean_of_adaptive_items(tmp_path):
    """Adaptive items are chosen for the candidate, so their plain mean is biased; with `auto` weights gp/gmp-IRT
    equal p-/mp-IRT on them, while on random anchors they do mix it in (and a fixed weight is honoured)."""
    from merge3.irt.adaptive import AdaptiveSettings, run_adaptive
    from merge3.irt.anchors import Anchors

    params = simulate_params(tasks=("ta", "tb"), n_items=200, dim=3, seed=0)
    store, thetas = simulate_population(params, tmp_path / "r.jsonl", n_merges=12, seed=1)
    models = store.models()
    cal = Calibration(params, {m: thetas[m] for m in models}, ["e0", "e1", "e2"], base="base",
                      train_models=models[:12], validation_models=models[12:], store=store)
    resp = sample_responses(params, 0.5 * thetas["e0"] + 0.5 * thetas["e1"], np.random.default_rng(2))
    res = run_adaptive(cal, list(resp), lambda want: {t: {i: resp[t][i] for i in v} for t, v in want.items()},
                       AdaptiveSettings(target_sd=0.05, max_items=20))
    asked = Anchors.uniform({t: list(r) for t, r in res.responses.items()}, method="adaptive")
    assert estimate("gpirt", res.responses, cal, asked) == estimate("pirt", res.responses, cal, asked)
    assert estimate("gmpirt", res.responses, cal, asked) == estimate("mpirt", res.responses, cal, asked)
    same_items = Anchors.uniform({t: list(r) for t, r in res.responses.items()}, method="given")
    assert cal.mixing_weight("gpirt", same_items, "ta") > 0  # a random-like set: the anchors' mean is mixed in
    fixed = Calibration(params, {m: thetas[m] for m in models}, ["e0", "e1", "e2"], base="base",
                        train_models=models[:12], validation_models=models[12:], store=store,
                        settings={"gp_weight": 0.5})
    assert fixed.mixing_weight("gpirt", asked, "ta") == 0.5


def test_adaptive_exposure_control_spreads_the_first_items_over_candidates_and_is_seeded(sim):
    """exposure 1: every candidate at the prior is asked the same first batch; exposure 8: candidates with
    other seeds are asked other items, the same seed the same ones."""
    from merge3.irt.adaptive import AdaptiveSettings, run_adaptive

    params, store, thetas = sim
    cal = Calibration(params, {m: thetas[m] for m in store.models()}, ["e0", "e1", "e2"], base="base", store=store)
    resp = sample_responses(params, thetas["e2"], np.random.default_rng(3))

    def asked(exposure, seed):
        res = run_adaptive(cal, ["ta", "tb"], lambda want: {t: {i: resp[t][i] for i in v} for t, v in want.items()},
                           AdaptiveSettings(target_sd=0.001, max_items=8, exposure=exposure), seed=seed)
        return {t: sorted(r) for t, r in res.responses.items()}

    assert asked(1, 0) == asked(1, 7)
    spread = [asked(8, s) for s in range(4)]
    assert spread[0] == asked(8, 0)
    assert len({json.dumps(a, sort_keys=True) for a in spread}) == 4
    with pytest.raises(ValueError, match="exposure"):
        AdaptiveSettings(exposure=0)
