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

Design choices (see README, Calibration):
* One joint multidimensional 2PL over all tasks (``irt.model_type: multidim_2pl``, ``irt.dim: 3`` by default):
  the tasks share skills (arithmetic in two languages, the second language itself), and one ability vector per
  model lets anchors of every task inform each task's estimate. ``2pl`` is one scalar ability.
* py-irt's SVI leaves discriminations shrunk towards its hierarchical prior on populations of tens of models
  (in-sample accuracy errors of 6+ points on the micro world); ``irt.refine_iters`` (default 100) polishes its
  solution to the joint MAP with batched Newton steps (``merge3.irt.fit.refine_map``), which cut the held-out
  estimation error by a third there. Set it to 0 for py-irt's parameters as they come.
* A fraction of the random merges (``irt.validation_fraction``) is held out of the item fit; the gp-IRT and
  gmp-IRT mixing weights are set from the estimators' errors on them, so the weights see out-of-sample error.
* Abilities (endpoints included) are re-fitted by MAP on each model's full responses with the item parameters
  fixed, the same estimator a candidate's anchors go through.
"""

from __future__ import annotations

from .yamlfile import read_yaml_mapping

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .evaluation.store import ResponseStore
from .irt.anchors import Anchors, select_anchors
from .irt.fit import fit_ability, fit_irt
from .irt.params import ItemParams

CONFIG_KEYS = {
    "world": "micro, small, or the path of a built world (gives base, endpoints, tasks, include_path)",
    "base": "base model path (overrides the world's)",
    "endpoints": "endpoint model paths: a list, or {name: path} (overrides the world's)",
    "tasks": "lm-eval task names (overrides the world's)",
    "include_path": "directory of lm-eval task YAML files (overrides the world's)",
    "n_random_merges": "random merges from the genome added to the population (default 20)",
    "genome": "the search genome, e.g. {method: dare_ties, parameters: {weight: [0, 1], density: [0.1, 1]}}",
    "irt": "{model_type: multidim_2pl|2pl, dim: 3, epochs: 400, lr: 0.1, validation_fraction: 0.2, refine_iters: 100}",
    "estimators": "{gmp_weight: auto|0..1, gp_weight: auto|0..1, mp_include_base: true}",
    "anchors": "default anchors stored with the calibration: {method: random, n: 20, seed: 0}",
    "seed": "seed for random merges, IRT fit, split and anchors (default 0)",
    "eval": "lm-eval options (merge3.evaluation.lmeval.EvalOptions: batch_size, num_fewshot, device, ...)",
    "import_responses": "response files (.jsonl ResponseStores) whose models join the population unevaluated",
    "import_item_params": "item parameter file (.npz/.json) or calibration directory: skip the IRT fit",
    "out": "calibration directory when --out is not given (relative to the config file)",
}

DEFAULT_IRT = {"model_type": "multidim_2pl", "dim": 3, "epochs": 400, "lr": 0.1, "validation_fraction": 0.2,
               "refine_iters": 100}
DEFAULT_EST = {"gmp_weight": "auto", "gp_weight": "auto", "mp_include_base": True}
DEFAULT_ANCHORS = {"method": "random", "n": 20, "seed": None}


def anchors_key(anchors) -> tuple:
    """Cache identity of any anchors-like object (``items`` and ``weights`` per task)."""
    return tuple((t, tuple(anchors.items[t]), tuple(round(float(w), 12) for w in anchors.weights[t]))
                 for t in sorted(anchors.items))


class Calibration:
    """What the estimators and anchor methods read; ``Calibration.load(dir)`` or built in memory (tests)."""

    def __init__(self, item_params: ItemParams, abilities: dict[str, list], endpoints: list[str],
                 base: str | None = None, train_models: list[str] | None = None,
                 validation_models: list[str] | None = None, store: ResponseStore | None = None,
                 settings: dict | None = None, cost: dict | None = None, root: Path | None = None,
                 config: dict | None = None):
        self.item_params = item_params
        self.abilities = {m: np.asarray(v, dtype=np.float64) for m, v in abilities.items()}
        missing = [e for e in endpoints + ([base] if base else []) if e not in self.abilities]
        if missing:
            raise ValueError(f"calibration has no ability for model(s) {missing}")
        self.endpoints = list(endpoints)
        self.base = base
        self.train_models = list(train_models or [m for m in self.abilities])
        self.validation_models = list(validation_models or [])
        self.store = store
        self.settings = {**DEFAULT_EST, **(settings or {})}
        self.cost = dict(cost or {})
        self.root = root
        self.config = dict(config or {})
        self.tasks = item_params.task_names()
        self.n_items = {t: int(len(item_params.rows(t))) for t in self.tasks}
        pop = np.array([self.abilities[m] for m in self.train_models])
        # Candidates' ability prior: the calibration population's spread (a merge lies among its parents).
        self.ability_prior_mean = pop.mean(axis=0) if len(pop) else np.zeros(item_params.dim)
        self.ability_prior_sd = float(max(0.5, np.sqrt(np.mean(pop.var(axis=0)))) if len(pop) > 1 else 1.0)
        # mp-IRT's prior on the combination weights, the same way: the population's own weights
        # (least squares theta_m ~ Theta_E lambda_m), so mp-IRT and IRT are regularized alike.
        E = self.endpoint_matrix()
        lams = np.array([np.linalg.lstsq(E, self.abilities[m], rcond=None)[0] for m in self.train_models]) \
            if len(pop) > 1 else np.zeros((0, E.shape[1]))
        self.mp_prior_mean = lams.mean(axis=0) if len(lams) > 1 else np.full(E.shape[1], 1.0 / E.shape[1])
        self.mp_prior_sd = float(max(0.25, np.sqrt(np.mean(lams.var(axis=0))))) if len(lams) > 1 else 1.0
        self._layouts: dict = {}
        self._weights: dict = {}

    # -- what the estimators read -------------------------------------------------------------------------
    def endpoint_matrix(self) -> np.ndarray:
        """d x K: the abilities mp-IRT combines (the endpoints, and the base when mp_include_base)."""
        names = list(self.endpoints)
        if self.settings.get("mp_include_base", True) and self.base and self.base not in names:
            names.append(self.base)
        return np.column_stack([self.abilities[n] for n in names])

    def layout(self, anchors) -> dict:
        """Per task: (all rows, rows not among the anchors), cached per anchor set."""
        key = anchors_key(anchors)
        if key not in self._layouts:
            out = {}
            for t, ids in anchors.items.items():
                all_rows = self.item_params.rows(t)
                anchor_rows = self.item_params.rows(t, ids)
                out[t] = (all_rows, np.setdiff1d(all_rows, anchor_rows))
            self._layouts[key] = out
        return self._layouts[key]

    def population_matrix(self, task: str, item_ids: list[str]) -> np.ndarray:
        """Training population x items 0/1 (for correctness clustering)."""
        if self.store is None:
            raise ValueError("correctness clustering needs the calibration's responses (responses.jsonl)")
        _, _, Y = self.store.matrix(task, models=self.train_models, item_ids=item_ids)
        return Y

    def mixing_weight(self, estimator: str, anchors, task: str) -> float:
        """delta of gp-IRT / gmp-IRT for this anchor set and task (fixed in settings, or b^2 / (b^2 + v))."""
        fixed = self.settings.get("gp_weight" if estimator == "gpirt" else "gmp_weight", "auto")
        if fixed != "auto":
            return float(fixed)
        key = (estimator, anchors_key(anchors))
        if key not in self._weights:
            self._weights[key] = self._fit_weights(estimator, anchors)
        return self._weights[key].get(task, 0.5)

    def _fit_weights(self, estimator: str, anchors) -> dict[str, float]:
        from .irt.estimators import estimate

        base_est = "pirt" if estimator == "gpirt" else "mpirt"
        models = self.validation_models or self.train_models  # in-sample when nothing was held out
        if self.store is None or not models:
            return {t: 0.5 for t in anchors.items}
        err2 = {t: [] for t in anchors.items}
        var = {t: [] for t in anchors.items}
        for m in models:
            full = self.store.get(m)
            tasks = [t for t in anchors.items if t in full]
            resp = {t: {i: full[t][i] for i in anchors.items[t]} for t in tasks}
            est = estimate(base_est, resp, self, anchors)
            for t in tasks:
                z = float(np.mean(list(full[t].values())))
                n, N = len(anchors.items[t]), self.n_items[t]
                w = np.asarray(anchors.weights[t])
                err2[t].append((est[t] - z) ** 2)
                # variance of the anchor estimate: Bernoulli(z) answers, finite-population corrected
                var[t].append(z * (1 - z) * float(np.sum(w ** 2)) * (N - n) / max(N - 1, 1))
        out = {}
        for t in anchors.items:
            if not err2[t]:
                out[t] = 0.5
                continue
            b2, v = float(np.mean(err2[t])), float(np.mean(var[t]))
            out[t] = b2 / (b2 + v) if b2 + v > 0 else 0.5
        return out

    # -- files ----------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        root = Path(path)
        meta_path = root / "calibration.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{root}: not a calibration directory (no calibration.json); "
                                    "make one with `merge3 calibrate CONFIG`")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta_path}: malformed ({exc})") from None
        store = ResponseStore(root / "responses.jsonl") if (root / "responses.jsonl").is_file() else None
        try:
            return cls(ItemParams.load(root), meta["abilities"], meta["endpoints"], base=meta.get("base"),
                       train_models=meta.get("train_models"), validation_models=meta.get("validation_models"),
                       store=store, settings=meta.get("estimators"), cost=meta.get("cost"), root=root,
                       config=meta.get("config"))
        except KeyError as exc:
            raise ValueError(f"{meta_path}: missing key {exc}") from None

    def default_anchors(self) -> Anchors | None:
        p = self.root / "anchors.json" if self.root else None
        return Anchors.load(p) if p and p.is_file() else None


# ----------------------------------------------------------------------------------------------- calibrate

def calibrate_from_file(config_path: str | Path, out_dir: str | Path | None = None) -> Path:
    config_path = Path(config_path)
    cfg = read_yaml_mapping(config_path, "calibration config")
    here = config_path.resolve().parent

    def rel(p):
        return str(p) if Path(p).is_absolute() else str(here / p)

    for k in ("base", "include_path", "import_item_params"):
        if cfg.get(k):
            cfg[k] = rel(cfg[k])
    if cfg.get("world") and cfg["world"] not in ("micro", "small"):
        cfg["world"] = rel(cfg["world"])
    if isinstance(cfg.get("endpoints"), list):
        cfg["endpoints"] = [rel(p) for p in cfg["endpoints"]]
    elif isinstance(cfg.get("endpoints"), dict):
        cfg["endpoints"] = {k: rel(p) for k, p in cfg["endpoints"].items()}
    if cfg.get("import_responses"):
        imp = cfg["import_responses"]
        cfg["import_responses"] = [rel(p) for p in ([imp] if isinstance(imp, str) else imp)]
    if out_dir is None:
        out_dir = rel(cfg["out"]) if cfg.get("out") else Path("calibrations") / config_path.stem
    return calibrate(cfg, out_dir)


def _resolve_models(cfg: dict):
    """(base path, {endpoint name: path}, tasks, include_path) from the world and/or explicit keys."""
    base = endpoints = tasks = include = None
    if cfg.get("world"):
        from .world import resolve_world

        w = resolve_world(str(cfg["world"]))
        base, endpoints, tasks, include = str(w.base), {k: str(v) for k, v in w.endpoints.items()}, \
            list(w.task_names), str(w.tasks_dir)
    if cfg.get("base"):
        base = str(cfg["base"])
    if cfg.get("endpoints"):
        eps = cfg["endpoints"]
        if isinstance(eps, dict):
            endpoints = {str(k): str(v) for k, v in eps.items()}
        else:
            endpoints = {}
            for p in eps:
                name = Path(p).name or str(p)
                while name in endpoints or name == "base":
                    name += "_"
                endpoints[name] = str(p)
    if cfg.get("tasks"):
        tasks = list(cfg["tasks"])
    if cfg.get("include_path"):
        include = str(cfg["include_path"])
    if not tasks:
        raise ValueError("calibration config: give `world` or `tasks`")
    if base is None and not cfg.get("import_item_params") and not cfg.get("import_responses"):
        raise ValueError("calibration config: give `world` or `base` (and `endpoints`)")
    return base, endpoints or {}, tasks, include


def _check_config(cfg: dict) -> None:
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"calibration config: unknown key(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
    irt = {**DEFAULT_IRT, **(cfg.get("irt") or {})}
    bad = sorted(set(irt) - set(DEFAULT_IRT) - {"priors"})
    if bad:
        raise ValueError(f"calibration config key 'irt': unknown setting(s) {bad}; known: {sorted(DEFAULT_IRT)}")
    if irt["model_type"] not in ("2pl", "multidim_2pl"):
        raise ValueError(f"calibration config key 'irt.model_type': expected 2pl or multidim_2pl, got {irt['model_type']!r}")
    if not (0 <= float(irt["validation_fraction"]) < 1):
        raise ValueError("calibration config key 'irt.validation_fraction': expected a number in [0, 1)")
    n = cfg.get("n_random_merges", 20)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"calibration config key 'n_random_merges': expected a non-negative integer, got {n!r}")
    if n > 0 and not cfg.get("genome"):
        raise ValueError("calibration config: `n_random_merges` > 0 needs `genome` (the search genome)")
    est = {**DEFAULT_EST, **(cfg.get("estimators") or {})}
    for k in ("gmp_weight", "gp_weight"):
        v = est[k]
        if v != "auto" and not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(f"calibration config key 'estimators.{k}': expected auto or a number in [0, 1]")


def _n_layers(base: str) -> int:
    cfg = json.loads((Path(base) / "config.json").read_text())
    return int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers"))


def random_merge_genomes(genome_cfg: dict, n_models: int, n_layers: int, n: int, seed: int):
    """The genome vectors of the calibration's random merges (uniform in the genome's unit cube)."""
    from .genome import Genome

    g = Genome.from_config(genome_cfg, n_models, n_layers)
    rng = np.random.default_rng([seed, 7919])
    return g, [rng.random(g.dim) for _ in range(n)]


def evaluate_population(cfg: dict, store: ResponseStore, base, endpoints: dict, tasks, include, seed: int,
                        log=print) -> dict:
    """Evaluates every population model missing from ``store`` on all items; returns cost counters."""
    from .evaluation.lmeval import EvalOptions, TaskSuite

    n_merges = int(cfg.get("n_random_merges", 20))
    wanted = ([("base", base)] if base else []) + list(endpoints.items())
    todo = [(name, path) for name, path in wanted if name not in store]
    merge_ids = [f"merge-{j:03d}" for j in range(n_merges)]
    todo_merges = [j for j, mid in enumerate(merge_ids) if mid not in store]
    cost = {"models_evaluated": 0, "items_evaluated": 0, "eval_seconds": 0.0}
    if not todo and not todo_merges:
        return cost
    suite = TaskSuite(tasks, include_path=include, options=EvalOptions.from_dict(cfg.get("eval")),
                      cache_dir=store.path.parent)
    t0 = time.time()
    for name, path in todo:
        lm = suite.wrap_model(path)
        resp = suite.evaluate(lm)
        store.add(name, resp, {"kind": "base" if name == "base" else "endpoint", "path": str(path)})
        cost["models_evaluated"] += 1
        cost["items_evaluated"] += sum(len(r) for r in resp.values())
        log(f"calibration: evaluated {name}")
        del lm
    if todo_merges:
        from .merging.materializer import Materializer

        models = list(endpoints.values())
        g, xs = random_merge_genomes(cfg["genome"], len(models), _n_layers(base), n_merges, seed)
        mat = Materializer(base, models, device=(cfg.get("eval") or {}).get("device") or "cpu")
        lm = suite.wrap_model(mat.model, mat.tokenizer)
        for j in todo_merges:
            recipe = g.decode(xs[j], base=str(base), models=models, seed=seed * 100003 + j)
            mat.apply(recipe)
            resp = suite.evaluate(lm)
            store.add(merge_ids[j], resp, {"kind": "random_merge", "x": [float(v) for v in xs[j]], "index": j})
            cost["models_evaluated"] += 1
            cost["items_evaluated"] += sum(len(r) for r in resp.values())
            log(f"calibration: evaluated random merge {j + 1}/{n_merges}")
    cost["eval_seconds"] = time.time() - t0
    return cost


def calibrate(config: dict, out_dir: str | Path, log=None) -> Path:
    """Runs a calibration (see module doc) into ``out_dir`` (must not exist) and returns it."""
    log = log or (lambda msg: None)
    cfg = dict(config)
    out = Path(out_dir)
    if (out / "calibration.json").exists():
        raise FileExistsError(f"{out} already holds a calibration; remove it or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    _check_config(cfg)
    seed = int(cfg.get("seed", 0))
    irt = {**DEFAULT_IRT, **(cfg.get("irt") or {})}
    base, endpoints, tasks, include = _resolve_models(cfg)

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial"  # survives a crash: evaluations are resumed from it
    partial.mkdir(exist_ok=True)
    store = ResponseStore(partial / "responses.jsonl")
    for src in cfg.get("import_responses") or []:
        if not Path(src).exists():
            raise FileNotFoundError(f"{src}: response file to import not found")
        imported = ResponseStore(src)
        for m in imported.models():
            if m not in store:
                store.add(m, imported.get(m), {**imported.meta(m), "imported_from": str(src)})
    cost = evaluate_population(cfg, store, base, endpoints, tasks, include, seed, log=log)
    prior = (json.loads((partial / "cost.json").read_text()) if (partial / "cost.json").exists() else {})
    cost = {k: prior.get(k, 0) + v for k, v in cost.items()}
    (partial / "cost.json").write_text(json.dumps(cost))

    complete = [m for m in store.models() if all(t in store.get(m) for t in tasks)]
    names = (["base"] if base else []) + list(endpoints)
    lacking = [n for n in names if n not in complete]
    if lacking:
        raise ValueError(f"calibration: model(s) {lacking} have no full responses on {tasks}")
    others = [m for m in complete if m not in names]
    rng = np.random.default_rng([seed, 104729])
    n_val = int(round(float(irt["validation_fraction"]) * len(others)))
    val = sorted(rng.choice(others, size=n_val, replace=False).tolist()) if n_val else []
    train = names + [m for m in others if m not in val]

    t0 = time.time()
    prior = (0.0, 3.0)  # ability prior for the full-response refits: weak (thousands of answers each)
    if cfg.get("import_item_params"):
        params = ItemParams.load(cfg["import_item_params"])
        missing = [t for t in tasks if t not in params.task_names()]
        if missing:
            raise ValueError(f"{cfg['import_item_params']}: no item parameters for task(s) {missing}")
    else:
        log(f"calibration: fitting {irt['model_type']} (dim {irt['dim']}) on {len(train)} models")
        params, fitted = fit_irt(store, model_type=irt["model_type"], dim=int(irt["dim"]), epochs=int(irt["epochs"]),
                            lr=float(irt["lr"]), seed=seed, models=train, tasks=tasks,
                            **({"priors": irt["priors"]} if "priors" in irt else {}))
        if int(irt.get("refine_iters") or 0) > 0:
            from .irt.fit import _as_matrix, refine_map

            _, _, Y = _as_matrix(store, train, tasks)
            params, fitted = refine_map(params, fitted, Y, train, iters=int(irt["refine_iters"]))
        th = np.array(list(fitted.values()))
        prior = (th.mean(axis=0), float(max(1.0, th.std())))  # py-irt's own scale for the abilities
    fit_seconds = time.time() - t0
    # Abilities by MAP with the items fixed: endpoints (mp-IRT's basis) and every population model.
    abilities = {}
    for m in complete:
        full = store.get(m)
        abilities[m] = fit_ability(params, {t: full[t] for t in tasks}, *prior).tolist()
    n_items = {t: len(params.rows(t)) for t in tasks}
    cost.update(fit_seconds=fit_seconds, n_models=len(complete),
                items_per_model=sum(n_items.values()), items_total=len(complete) * sum(n_items.values()))
    meta = {"version": 1, "tasks": tasks, "n_items": n_items, "base": "base" if base else None,
            "endpoints": list(endpoints), "endpoint_paths": endpoints, "base_path": base,
            "train_models": train, "validation_models": val, "abilities": abilities,
            "irt": irt, "estimators": {**DEFAULT_EST, **(cfg.get("estimators") or {})}, "cost": cost,
            "config": _jsonable(cfg), "created": time.time()}

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        params.save(tmp / "item_params.npz")
        shutil.copyfile(store.path, tmp / "responses.jsonl")
        (tmp / "calibration.json").write_text(json.dumps(meta, indent=1) + "\n")
        cal = Calibration.load(tmp)
        a_cfg = {**DEFAULT_ANCHORS, **(cfg.get("anchors") or {})}
        anchors = select_anchors(a_cfg["method"], int(a_cfg["n"]), cal,
                                 seed=int(a_cfg["seed"] if a_cfg["seed"] is not None else seed))
        anchors.save(tmp / "anchors.json")
        meta["default_anchor_weights"] = {e: {t: cal.mixing_weight(e, anchors, t) for t in tasks}
                                          for e in ("gpirt", "gmpirt")}
        (tmp / "calibration.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # an empty directory given as --out
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    return out


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)
