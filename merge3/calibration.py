"""Calibration: evaluate a reference population fully, fit IRT item parameters, keep what the estimators need.

``merge3 calibrate CONFIG [--out DIR]`` builds the population (the base, the endpoints, and random merges
drawn from the search genome; response files can be imported instead of evaluated), evaluates every model on
every item, fits item parameters with py-irt, and writes a calibration directory:

    calibration.json   tasks, items per task, population and its split, abilities, IRT settings, cost
    item_params.npz    alpha (items x d), beta, task and id of every item (see ``merge3.irt.params``)
    responses.jsonl    the population's full responses (a ``ResponseStore``)
    anchors.json       the default anchors (``anchors`` in the config), with their gp/gmp mixing weights

The directory appears only when complete (written into a temporary sibling, then renamed). Evaluations go into
``.<name>.partial/responses.jsonl`` first, durably, so an interrupted calibration resumes where it stopped.
The population is scored by :class:`merge3.scoring.CandidateScorer`, in this process or on any worker pool
the caller passes (the search passes its Ray workers). The data model the estimators read is
:class:`merge3.irt.Calibration`.

Design choices (see README, Calibration):
* One joint multidimensional 2PL over all tasks (``irt.model_type: multidim_2pl``, ``irt.dim: 3`` by default):
  the tasks share skills (arithmetic in two languages, the second language itself), and one ability vector per
  model lets anchors of every task inform each task's estimate. ``2pl`` is one scalar ability.
* py-irt's SVI leaves discriminations shrunk towards its hierarchical prior on populations of tens of models;
  ``irt.refine_iters`` (default 100) polishes its solution to the joint MAP with batched Newton steps
  (``merge3.irt.fit.refine_map``). Set it to 0 for py-irt's parameters as they come.
* A fraction of the random merges (``irt.validation_fraction``) is held out of the item fit; the gp-IRT and
  gmp-IRT mixing weights are set from the estimators' errors on them, so the weights see out-of-sample error.
* Abilities (endpoints included) are re-fitted by MAP on each model's full responses with the item parameters
  fixed, the same estimator a candidate's anchors go through.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .evaluation.store import ResponseStore
from .irt.anchors import METHODS as ANCHOR_METHODS, select_anchors
from .irt.calibration import DEFAULT_ESTIMATOR_SETTINGS, Calibration
from .irt.fit import IrtDiverged, fit_ability, fit_irt, refine_map, response_matrix
from .irt.params import ItemParams
from .scoring import CandidateJob, CandidateScorer, ModelJob, ScorerSpec
from .yamlfile import read_yaml_mapping

__all__ = ["Calibration", "CalibrationConfig", "calibrate", "calibrate_from_file", "evaluate_population",
           "random_merge_genomes"]

IRT_DEFAULTS = {"model_type": "multidim_2pl", "dim": 3, "epochs": 400, "lr": 0.1, "validation_fraction": 0.2,
                "refine_iters": 100}
IRT_MODELS = ("2pl", "multidim_2pl")
DEFAULT_RANDOM_MERGES = 12


def check_irt_settings(irt: dict, where: str = "irt", what: str = "calibration config") -> dict:
    """``irt`` with defaults filled in; unknown settings and bad values are errors naming ``what`` key ``where``."""
    out = {**IRT_DEFAULTS, **(irt or {})}
    bad = sorted(set(out) - set(IRT_DEFAULTS) - {"priors"})
    if bad:
        raise ValueError(f"{what} key {where!r}: unknown setting(s) {bad}; known: {sorted(IRT_DEFAULTS)}")
    if out["model_type"] not in IRT_MODELS:
        raise ValueError(f"{what} key '{where}.model_type': expected {' or '.join(IRT_MODELS)}, "
                         f"got {out['model_type']!r}")
    for k in ("dim", "epochs", "refine_iters"):
        if not isinstance(out[k], int) or isinstance(out[k], bool) or out[k] < (1 if k == "dim" else 0):
            raise ValueError(f"{what} key '{where}.{k}': expected a {'positive' if k == 'dim' else 'non-negative'} "
                             f"integer, got {out[k]!r}")
    if not isinstance(out["lr"], (int, float)) or not out["lr"] > 0:
        raise ValueError(f"{what} key '{where}.lr': expected a positive number, got {out['lr']!r}")
    vf = out["validation_fraction"]
    if not isinstance(vf, (int, float)) or not 0 <= vf < 1:
        raise ValueError(f"{what} key '{where}.validation_fraction': expected a number in [0, 1), got {vf!r}")
    return out


def _doc(text: str, default=None):
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class CalibrationConfig:
    """A calibration config (``merge3 calibrate`` YAML); the search's ``auto`` calibration builds one too."""

    world: str | None = _doc("micro, small, smollm2, or the path of a built world (gives base, endpoints, tasks, "
                             "include_path)")
    base: str | None = _doc("base model path (overrides the world's)")
    endpoints: list | dict | None = _doc("endpoint model paths: a list, or {name: path} (overrides the world's)")
    tasks: list | None = _doc("lm-eval task names (overrides the world's)")
    include_path: str | None = _doc("directory of lm-eval task YAML files (overrides the world's)")
    n_random_merges: int = _doc(f"random merges from the genome added to the population (default "
                                f"{DEFAULT_RANDOM_MERGES})", DEFAULT_RANDOM_MERGES)
    genome: dict | None = _doc("the search genome, e.g. {method: dare_ties, parameters: {weight: [0, 1], "
                               "density: [0.1, 1]}}")
    irt: dict = _doc("{model_type: multidim_2pl|2pl, dim: 3, epochs: 400, lr: 0.1, validation_fraction: 0.2, "
                     "refine_iters: 100}", {})
    estimators: dict = _doc("{gmp_weight: auto|0..1, gp_weight: auto|0..1, mp_include_base: true}", {})
    anchors: dict = _doc("default anchors stored with the calibration: {method: random, n: 20, seed: 0}", {})
    seed: int = _doc("seed for random merges, IRT fit, split and anchors (default 0)", 0)
    eval: dict = _doc("lm-eval options (merge3.evaluation.lmeval.EvalOptions: batch_size, num_fewshot, "
                      "device, ...)", {})
    import_responses: list = _doc("response files (.jsonl ResponseStores) whose models join the population "
                                  "unevaluated", [])
    import_item_params: str | None = _doc("item parameter file (.npz/.json) or calibration directory: skip the "
                                          "IRT fit")
    out: str | None = _doc("calibration directory when --out is not given (relative to the config file)")

    @classmethod
    def keys(cls) -> dict[str, str]:
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, raw: dict) -> "CalibrationConfig":
        """Checks every key and value (one line naming the key), fills defaults."""
        unknown = sorted(set(raw) - set(cls.keys()))
        if unknown:
            raise ValueError(f"calibration config: unknown key(s) {unknown}; known: {sorted(cls.keys())}")
        d = {k: v for k, v in raw.items() if v is not None}
        if isinstance(d.get("import_responses"), str):
            d["import_responses"] = [d["import_responses"]]
        d["irt"] = check_irt_settings(d.get("irt") or {})
        n = d.get("n_random_merges", DEFAULT_RANDOM_MERGES)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"calibration config key 'n_random_merges': expected a non-negative integer, got {n!r}")
        if n > 0 and not d.get("genome"):
            raise ValueError("calibration config: `n_random_merges` > 0 needs `genome` (the search genome)")
        est = {**DEFAULT_ESTIMATOR_SETTINGS, **(d.get("estimators") or {})}
        for k in ("gmp_weight", "gp_weight"):
            v = est[k]
            if v != "auto" and not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"calibration config key 'estimators.{k}': expected auto or a number in [0, 1]")
        d["estimators"] = est
        anchors = {"method": "random", "n": 20, "seed": None, **(d.get("anchors") or {})}
        if anchors["method"] not in ANCHOR_METHODS:
            raise ValueError(f"calibration config key 'anchors.method': expected one of "
                             f"{', '.join(ANCHOR_METHODS)}, got {anchors['method']!r}")
        d["anchors"] = anchors
        return cls(**d)

    def relative_to(self, here: Path) -> "CalibrationConfig":
        """Paths in the config taken relative to ``here`` (the config file's directory)."""
        from .world import is_world_name

        def rel(p):
            return str(p) if Path(p).is_absolute() else str(here / p)

        endpoints = self.endpoints
        if isinstance(endpoints, list):
            endpoints = [rel(p) for p in endpoints]
        elif isinstance(endpoints, dict):
            endpoints = {k: rel(p) for k, p in endpoints.items()}
        return dataclasses.replace(
            self, base=self.base and rel(self.base), include_path=self.include_path and rel(self.include_path),
            import_item_params=self.import_item_params and rel(self.import_item_params),
            world=self.world if self.world is None or is_world_name(self.world) else rel(self.world),
            endpoints=endpoints, import_responses=[rel(p) for p in self.import_responses])


def calibrate_from_file(config_path: str | Path, out_dir: str | Path | None = None, log=None) -> Path:
    config_path = Path(config_path)
    here = config_path.resolve().parent
    cfg = CalibrationConfig.from_dict(read_yaml_mapping(config_path, "calibration config")).relative_to(here)
    if out_dir is None:
        out_dir = (cfg.out if Path(cfg.out).is_absolute() else here / cfg.out) if cfg.out else \
            Path("calibrations") / config_path.stem
    return calibrate(cfg, out_dir, log=log)


@dataclass(frozen=True)
class Population:
    """Who is calibrated on what: base path, {endpoint name: path}, tasks, include path."""

    base: str | None
    endpoints: dict[str, str]
    tasks: list[str]
    include_path: str | None

    @classmethod
    def of(cls, cfg: CalibrationConfig) -> "Population":
        base = endpoints = tasks = include = None
        if cfg.world:
            from .world import resolve_world

            w = resolve_world(str(cfg.world))
            base, endpoints, tasks, include = str(w.base), {k: str(v) for k, v in w.endpoints.items()}, \
                list(w.task_names), str(w.tasks_dir)
        if cfg.base:
            base = str(cfg.base)
        if cfg.endpoints:
            eps = cfg.endpoints
            endpoints = {str(k): str(v) for k, v in eps.items()} if isinstance(eps, dict) else endpoint_names(eps)
        tasks = list(cfg.tasks) if cfg.tasks else tasks
        include = str(cfg.include_path) if cfg.include_path else include
        if not tasks:
            raise ValueError("calibration config: give `world` or `tasks`")
        if base is None and not cfg.import_item_params and not cfg.import_responses:
            raise ValueError("calibration config: give `world` or `base` (and `endpoints`)")
        return cls(base, endpoints or {}, tasks, include)


def endpoint_names(paths: list[str]) -> dict[str, str]:
    """{name: path} for endpoints given as paths: the folder name, made unique (and never ``base``)."""
    out: dict[str, str] = {}
    for p in paths:
        name = Path(p).name or str(p)
        while name in out or name == "base":
            name += "_"
        out[name] = str(p)
    return out


def random_merge_genomes(genome_cfg: dict, n_models: int, n_layers: int, n: int, seed: int):
    """The genome vectors of the calibration's random merges (uniform in the genome's unit cube)."""
    from .genome import Genome

    g = Genome.from_config(genome_cfg, n_models, n_layers)
    rng = np.random.default_rng([seed, 7919])
    return g, [rng.random(g.dim) for _ in range(n)]


def population_jobs(cfg: CalibrationConfig, pop: Population, store: ResponseStore) -> list[tuple[str, object, dict]]:
    """(model id, job, store metadata) for every population member ``store`` lacks, in a fixed order."""
    from .genome import n_layers_of

    jobs = []
    wanted = ([("base", pop.base)] if pop.base else []) + list(pop.endpoints.items())
    for k, (name, path) in enumerate(wanted):
        if name not in store:
            jobs.append((name, ModelJob(index=k, name=name, path=str(path)),
                         {"kind": "base" if name == "base" else "endpoint", "path": str(path)}))
    missing = [j for j in range(cfg.n_random_merges) if f"merge-{j:03d}" not in store]
    if missing and not pop.base:
        raise ValueError("calibration config: random merges need `base` (or `world`)")
    if cfg.n_random_merges and pop.base:
        _, xs = random_merge_genomes(cfg.genome, len(pop.endpoints), n_layers_of(pop.base), cfg.n_random_merges,
                                     cfg.seed)
        for j in range(cfg.n_random_merges):
            got = store.meta(f"merge-{j:03d}").get("x") if f"merge-{j:03d}" in store else None
            if got is not None and (len(got) != len(xs[j]) or not np.allclose(got, xs[j], rtol=0, atol=1e-12)):
                raise ValueError(f"{store.path}: merge-{j:03d} was evaluated for another genome or seed (the "
                                 f"calibration settings changed); remove {store.path.parent} to calibrate afresh")
        for j in missing:
            job = CandidateJob(generation=-1, index=len(wanted) + j, x=tuple(float(v) for v in xs[j]),
                               seed=cfg.seed * 100003 + j, full_responses=True)
            jobs.append((f"merge-{j:03d}", job, {"kind": "random_merge", "x": list(job.x), "index": j}))
    return jobs


def population_scorer_spec(cfg: CalibrationConfig, pop: Population, cache_dir) -> ScorerSpec:
    return ScorerSpec(base=pop.base, models=list(pop.endpoints.values()), genome=cfg.genome, tasks=pop.tasks,
                      include_path=pop.include_path, evaluation=dict(cfg.eval), fitness="full",
                      device=cfg.eval.get("device"), cache_dir=str(cache_dir))


def evaluate_population(cfg: CalibrationConfig, store: ResponseStore, pool_factory=None, cache_dir=None,
                        log=print) -> dict:
    """Evaluates every population model missing from ``store`` on all items (on a pool from
    ``pool_factory(spec)``, or in this process); returns cost counters. Each answer is stored durably as soon
    as it arrives. ``cache_dir``: where lm-eval's datasets are cached (default: beside ``store``)."""
    pop = Population.of(cfg)
    jobs = population_jobs(cfg, pop, store)
    cost = {"models_evaluated": 0, "items_evaluated": 0, "eval_seconds": 0.0}
    if not jobs:
        return cost
    spec = population_scorer_spec(cfg, pop, cache_dir or store.path.parent)
    pool = pool_factory(spec) if pool_factory is not None else None
    try:
        if pool is None:
            scorer = CandidateScorer(spec)
            results = (scorer.score(job) for _, job, _ in jobs)
        else:
            results = pool.run([job for _, job, _ in jobs])
        by_index = {job.index: (name, meta) for name, job, meta in jobs}
        t0 = time.time()
        for res in results:
            name, meta = by_index[res.index]
            if res.status != "ok" or not res.responses:
                raise RuntimeError(f"calibration model {name}: {res.error}")
            store.add(name, res.responses, meta)
            cost["models_evaluated"] += 1
            cost["items_evaluated"] += res.items_evaluated
            log(f"calibration: evaluated {name} ({cost['models_evaluated']}/{len(jobs)})")
        cost["eval_seconds"] = time.time() - t0
    finally:
        if pool is not None:
            pool.close()
    return cost


def calibrate(config: CalibrationConfig | dict, out_dir: str | Path, pool_factory=None, log=None,
              irt_key: str = "irt", what: str = "calibration config") -> Path:
    """Runs a calibration (see module doc) into ``out_dir`` (must not exist, or be empty) and returns it.

    ``irt_key`` and ``what`` name the IRT settings in errors (a search's auto calibration:
    ``fitness.calibration_settings.irt`` of its config).

    ``pool_factory(spec) -> pool`` evaluates the population elsewhere (e.g. on Ray workers); default: here.
    """
    log = log or (lambda msg: None)
    out = Path(out_dir)
    if (out / "calibration.json").exists():
        raise FileExistsError(f"{out} already holds a calibration; remove it or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    cfg = config if isinstance(config, CalibrationConfig) else CalibrationConfig.from_dict(dict(config))
    pop = Population.of(cfg)

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial"  # survives a crash: evaluations are resumed from it
    partial.mkdir(exist_ok=True)
    store = ResponseStore(partial / "responses.jsonl")
    for src in cfg.import_responses:
        if not Path(src).exists():
            raise FileNotFoundError(f"{src}: response file to import not found")
        imported = ResponseStore(src)
        for m in imported.models():
            if m not in store:
                store.add(m, imported.get(m), {**imported.meta(m), "imported_from": str(src)})
    cost = evaluate_population(cfg, store, pool_factory=pool_factory, cache_dir=out.parent, log=log)
    cost_path = partial / "cost.json"
    prior = json.loads(cost_path.read_text()) if cost_path.exists() else {}
    cost = {k: prior.get(k, 0) + v for k, v in cost.items()}
    cost_path.write_text(json.dumps(cost))

    try:
        params, abilities, split = fit_population(cfg, pop, store, log)
    except IrtDiverged as exc:
        lr = float(cfg.irt["lr"])
        raise ValueError(f"{what} key '{irt_key}.lr': {exc}; lower it (e.g. to {lr / 2:g}) and run again (the "
                         f"population's answers in {partial} are kept)") from None
    cost.update(split.pop("cost"))
    meta = {"version": 1, "tasks": pop.tasks, "n_items": {t: len(params.rows(t)) for t in pop.tasks},
            "base": "base" if pop.base else None, "endpoints": list(pop.endpoints),
            "endpoint_paths": pop.endpoints, "base_path": pop.base, **split, "abilities": abilities,
            "irt": cfg.irt, "estimators": cfg.estimators, "cost": cost,
            "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)), "created": time.time()}
    _write(out, params, store, meta, cfg)
    shutil.rmtree(partial, ignore_errors=True)
    return out


def fit_population(cfg: CalibrationConfig, pop: Population, store: ResponseStore, log):
    """Item parameters (py-irt, polished) on the training split, and every model's MAP ability."""
    tasks, irt, seed = pop.tasks, cfg.irt, int(cfg.seed)
    complete = [m for m in store.models() if all(t in store.get(m) for t in tasks)]
    names = (["base"] if pop.base else []) + list(pop.endpoints)
    lacking = [n for n in names if n not in complete]
    if lacking:
        raise ValueError(f"calibration: model(s) {lacking} have no full responses on {tasks}")
    # imported models first (in their files' order), then this calibration's random merges in index order,
    # whatever order the workers finished them in
    others = [m for m in complete if m not in names]
    own = [m for m in others if store.meta(m).get("kind") == "random_merge" and "imported_from" not in store.meta(m)]
    others = [m for m in others if m not in own] + sorted(own, key=lambda m: int(store.meta(m)["index"]))
    rng = np.random.default_rng([seed, 104729])
    n_val = int(round(float(irt["validation_fraction"]) * len(others)))
    val = sorted(rng.choice(others, size=n_val, replace=False).tolist()) if n_val else []
    train = names + [m for m in others if m not in val]

    t0 = time.time()
    prior = (0.0, 3.0)  # ability prior for the full-response refits: weak (thousands of answers each)
    if cfg.import_item_params:
        params = ItemParams.load(cfg.import_item_params)
        missing = [t for t in tasks if t not in params.task_names()]
        if missing:
            raise ValueError(f"{cfg.import_item_params}: no item parameters for task(s) {missing}")
    else:
        log(f"calibration: fitting {irt['model_type']} (dim {irt['dim']}) on {len(train)} models")
        params, fitted = fit_irt(store, model_type=irt["model_type"], dim=int(irt["dim"]), epochs=int(irt["epochs"]),
                                 lr=float(irt["lr"]), seed=seed, models=train, tasks=tasks,
                                 **({"priors": irt["priors"]} if "priors" in irt else {}))
        if int(irt.get("refine_iters") or 0) > 0:
            _, _, Y = response_matrix(store, train, tasks)
            params, fitted = refine_map(params, fitted, Y, train, iters=int(irt["refine_iters"]))
        th = np.array(list(fitted.values()))
        prior = (th.mean(axis=0), float(max(1.0, th.std())))  # py-irt's own scale for the abilities
    fit_seconds = time.time() - t0
    # Abilities by MAP with the items fixed: endpoints (mp-IRT's basis) and every population model.
    abilities = {m: fit_ability(params, {t: store.get(m)[t] for t in tasks}, *prior).tolist() for m in complete}
    per_model = sum(len(params.rows(t)) for t in tasks)
    cost = {"fit_seconds": fit_seconds, "n_models": len(complete), "items_per_model": per_model,
            "items_total": len(complete) * per_model}
    misfit = item_model_misfit(params, abilities, store, val or train, tasks)
    log(f"calibration: item-model misfit on the {'validation' if val else 'training'} models (accuracy points, "
        f"ability fitted on all their answers): " + ", ".join(f"{t} {v:.1f}" for t, v in misfit.items()))
    return params, abilities, {"train_models": train, "validation_models": val, "cost": cost,
                               "misfit": {"models": "validation" if val else "train", "mae_points": misfit}}


def item_model_misfit(params, abilities: dict, store: ResponseStore, models: list[str], tasks: list[str]) -> dict:
    """Per task, mean |mean_i p_i(theta_m) - accuracy_m| in points over ``models``, each theta_m fitted on all of
    that model's answers: the error no anchor set can remove (an estimator that reads only the item model is
    at least this far off; gp/gmp-IRT get below it by leaning on the anchors' answers)."""
    r = item_model_residuals(params, abilities, store, models, tasks)
    return {t: round(100 * float(np.mean(np.abs(r[:, k]))), 3) if models else None for k, t in enumerate(tasks)}


def item_model_residuals(params, abilities: dict, store: ResponseStore, models: list[str],
                         tasks: list[str]) -> np.ndarray:
    """accuracy_m - mean_i p_i(theta_m) per model (rows, in ``models``' order) and task (columns)."""
    return np.array([[float(np.mean(list(store.get(m)[t].values())))
                      - float(np.mean(params.prob(np.asarray(abilities[m]), params.rows(t)))) for t in tasks]
                     for m in models]).reshape(len(models), len(tasks))


def _write(out: Path, params: ItemParams, store: ResponseStore, meta: dict, cfg: CalibrationConfig) -> None:
    """Writes the calibration into a temporary sibling and renames it into place when complete."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        params.save(tmp / "item_params.npz")
        shutil.copyfile(store.path, tmp / "responses.jsonl")
        (tmp / "calibration.json").write_text(json.dumps(meta, indent=1) + "\n")
        cal = Calibration.load(tmp)
        a = cfg.anchors
        anchors = select_anchors(a["method"], int(a["n"]), cal, seed=int(a["seed"] if a["seed"] is not None
                                                                          else cfg.seed))
        anchors.save(tmp / "anchors.json")
        meta["default_anchor_weights"] = {e: {t: cal.mixing_weight(e, anchors, t) for t in cal.tasks}
                                          for e in ("gpirt", "gmpirt")}
        (tmp / "calibration.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # an empty directory given as --out
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
