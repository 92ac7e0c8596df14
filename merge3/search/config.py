"""Search configuration: schema, defaults, validation.

A search YAML is read by :func:`load_config`, which checks every key against :data:`SCHEMA` (unknown keys,
types, ranges), fills in defaults and resolves model names and paths; :func:`validate_resources` then checks
what is on disk (models exist and are mergeable, lm-eval knows every task, the genome is valid for the
models, a given calibration exists and covers the tasks). Every problem is a ``ValueError`` (or
``FileNotFoundError``) with one line naming the key, file or task, raised before anything is written.
"""

from __future__ import annotations

from ..yamlfile import read_yaml_mapping

import copy
import hashlib
import json
from pathlib import Path

ALGORITHMS = {"ga": 1, "de": 1, "cmaes": 1, "nsga2": 2, "nsga3": 2}  # name -> minimum objectives (1 = single)
SINGLE = ("ga", "de", "cmaes")
MULTI = ("nsga2", "nsga3")
ESTIMATORS = ("anchor", "irt", "pirt", "gpirt", "mpirt", "gmpirt")
ANCHOR_METHODS = ("random", "irt_cluster", "correctness_cluster")

# key -> (description, default). A nested dict is a section. ``REQUIRED`` marks keys without a default.
REQUIRED = object()

SCHEMA: dict = {
    "name": ("run name, used for the default run directory runs/<name> (default: the config file's stem)", None),
    "seed": ("run seed: algorithm randomness, merge seeds (derived per candidate) and anchor choice", 0),
    "world": ("a tiny world (micro, small or the path of a built world); lets base/models/tasks use its names", None),
    "base": ("base model: a path to a Hugging Face folder, or a world model name (base)", REQUIRED),
    "models": ("endpoint models merged onto the base: paths or world model names (math_en, lang_vl, facts_en)",
               REQUIRED),
    "tasks": ("lm-eval task names the fitness evaluates (default: the objective tasks)", None),
    "include_path": ("directory of extra lm-eval task YAMLs (default: the world's tasks/ when world is set)", None),
    "objectives": {
        "mode": ("per_task (one objective per task: a Pareto front) or weighted_sum (one objective)", "per_task"),
        "tasks": ("tasks to maximise (default: all of tasks)", None),
        "weights": ("weighted_sum only: {task: weight}; default equal weights", None),
    },
    "merge": {
        "method": ("merge method (linear, slerp, ties, dare_ties, dare_linear, breadcrumbs, della, ...)", REQUIRED),
        "parameters": ("evolved parameters: {name: [low, high]} searched per model (and per layer group)", REQUIRED),
        "fixed": ("parameters held fixed: {name: value}", {}),
        "layer_granularity": ("0: one value per model; k > 0: one value per group of k layers", 0),
        "filters": ("per-tensor-group variants (e.g. [self_attn, mlp]): separate genes for each", []),
    },
    "fitness": {
        "type": ("irt (anchors + estimator), anchor (raw anchor accuracy) or full (every item)", "irt"),
        "estimator": ("irt only: anchor, irt, pirt, gpirt, mpirt or gmpirt", "mpirt"),
        "calibration": ("irt: a calibration directory, or auto (calibrate inside the run directory first); "
                        "anchor: optional (random anchors are drawn from the task items without one)", "auto"),
        "anchors": {
            "method": ("random, irt_cluster or correctness_cluster (the latter two need a calibration)", "random"),
            "n": ("anchor items per task", 20),
            "seed": ("anchor selection seed (default: the run seed)", None),
        },
        "calibration_settings": {
            "n_random_merges": ("calibration population: random merges evaluated fully besides the endpoints", 12),
            "irt": ("IRT fit settings passed to merge3.calibration (model, dims, epochs, ...)", {}),
        },
    },
    "algorithm": {
        "name": ("ga, de or cmaes (one objective); nsga2 or nsga3 (several objectives)", None),
        "pop_size": ("candidates per generation", 8),
        "generations": ("number of generations (budget = pop_size x generations evaluations)", 4),
        "options": ("extra keyword arguments for the pymoo algorithm (e.g. CR for de, sigma for cmaes)", {}),
    },
    "penalty": ("objective value (accuracy) recorded for an invalid or failed candidate", 0.0),
    "evaluation": ("lm-eval options (EvalOptions: batch_size, num_fewshot, device, dtype, limit, "
                   "apply_chat_template, ...)", {}),
    "workers": {
        "num_workers": ("number of worker actors (default: one per GPU, else one per CPU slot)", None),
        "cpus_per_worker": ("CPUs reserved by each worker actor", 1),
        "gpus_per_worker": ("GPUs reserved by each worker (default: 1 when the cluster has GPUs, else 0)", None),
        "max_retries": ("times a candidate is retried on another worker after its worker died", 2),
        "device": ("materializer device (default: cuda when the worker has a GPU, else cpu)", None),
        "dtype": ("materializer dtype (default: the models')", None),
        "offload_task_vectors": ("keep task vectors on CPU to save GPU memory", False),
        "local_cpus": ("CPUs of the local Ray cluster started when no --address is given (default: all)", None),
    },
}


def describe(schema: dict = SCHEMA, prefix: str = "") -> list[tuple[str, str, object]]:
    """(dotted key, description, default) for every key: the documentation of the config format."""
    rows = []
    for key, spec in schema.items():
        if isinstance(spec, dict):
            rows.extend(describe(spec, f"{prefix}{key}."))
        else:
            desc, default = spec
            rows.append((prefix + key, desc, "required" if default is REQUIRED else default))
    return rows


def _fill(raw: dict, schema: dict, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"config key {where or 'top level'}: expected a mapping, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in schema]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ValueError(f"unknown config key {key!r}; known keys{' of ' + where if where else ''}: "
                         f"{', '.join(schema)}")
    out = {}
    for key, spec in schema.items():
        full = f"{where}.{key}" if where else key
        if isinstance(spec, dict):
            out[key] = _fill(raw.get(key) if raw.get(key) is not None else {}, spec, full)
        elif key in raw and raw[key] is not None:
            out[key] = copy.deepcopy(raw[key])
        else:
            if spec[1] is REQUIRED:
                raise ValueError(f"config key {full!r} is required ({spec[0]})")
            out[key] = copy.deepcopy(spec[1])
    return out


def _num(cfg_val, key: str, lo=None, hi=None, integer=False):
    ok = isinstance(cfg_val, int) if integer else isinstance(cfg_val, (int, float))
    if not ok or isinstance(cfg_val, bool):
        raise ValueError(f"config key {key!r}: expected {'an integer' if integer else 'a number'}, got {cfg_val!r}")
    if (lo is not None and cfg_val < lo) or (hi is not None and cfg_val > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"config key {key!r}: {cfg_val!r} is out of range {rng}")
    return cfg_val


def _str_list(v, key: str) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"config key {key!r}: expected a non-empty list of names, got {v!r}")
    if len(set(v)) != len(v):
        raise ValueError(f"config key {key!r}: duplicate entries in {v!r}")
    return list(v)


def normalize(raw: dict, name: str | None = None, base_dir: Path | None = None) -> dict:
    """Checks keys, types and ranges; fills defaults. Touches no model or task (see ``validate_resources``)."""
    cfg = _fill(raw if raw is not None else {}, SCHEMA, "")
    if cfg["name"] is None:
        cfg["name"] = name or "search"
    if not isinstance(cfg["name"], str) or not cfg["name"] or "/" in cfg["name"]:
        raise ValueError(f"config key 'name': expected a plain name, got {cfg['name']!r}")
    _num(cfg["seed"], "seed", 0, 2**31 - 1, integer=True)
    if not isinstance(cfg["base"], str):
        raise ValueError(f"config key 'base': expected a path or model name, got {cfg['base']!r}")
    cfg["models"] = _str_list(cfg["models"], "models")

    obj = cfg["objectives"]
    if obj["mode"] not in ("per_task", "weighted_sum"):
        raise ValueError(f"config key 'objectives.mode': expected per_task or weighted_sum, got {obj['mode']!r}")
    if cfg["tasks"] is not None:
        cfg["tasks"] = _str_list(cfg["tasks"], "tasks")
    if obj["tasks"] is not None:
        obj["tasks"] = _str_list(obj["tasks"], "objectives.tasks")
    if obj["weights"] is not None:
        if obj["mode"] != "weighted_sum":
            raise ValueError("config key 'objectives.weights' is only valid with objectives.mode: weighted_sum")
        if not isinstance(obj["weights"], dict) or not obj["weights"]:
            raise ValueError(f"config key 'objectives.weights': expected {{task: weight}}, got {obj['weights']!r}")
        for t, w in obj["weights"].items():
            _num(w, f"objectives.weights.{t}", 0.0)
        if obj["tasks"] is None:
            obj["tasks"] = list(obj["weights"])
    if obj["tasks"] is None:
        if cfg["tasks"] is None:
            raise ValueError("config key 'tasks' (or 'objectives.tasks') is required: which benchmarks to optimise")
        obj["tasks"] = list(cfg["tasks"])
    if cfg["tasks"] is None:
        cfg["tasks"] = list(obj["tasks"])
    missing = [t for t in obj["tasks"] if t not in cfg["tasks"]]
    if missing:
        raise ValueError(f"config key 'objectives.tasks': {missing} not among the evaluated tasks {cfg['tasks']}")
    if obj["mode"] == "weighted_sum":
        if obj["weights"] is None:
            obj["weights"] = {t: 1.0 for t in obj["tasks"]}
        extra = [t for t in obj["weights"] if t not in obj["tasks"]]
        if extra:
            raise ValueError(f"config key 'objectives.weights': task(s) {extra} not among objectives.tasks")
        if sum(obj["weights"].values()) <= 0:
            raise ValueError("config key 'objectives.weights': weights must not all be zero")
    n_obj = 1 if obj["mode"] == "weighted_sum" else len(obj["tasks"])

    merge = cfg["merge"]
    if not isinstance(merge["method"], str):
        raise ValueError(f"config key 'merge.method': expected a method name, got {merge['method']!r}")
    params = merge["parameters"]
    if not isinstance(params, dict) or not params:
        raise ValueError(f"config key 'merge.parameters': expected {{name: [low, high]}}, got {params!r}")
    for pname, rng in params.items():
        key = f"merge.parameters.{pname}"
        if not (isinstance(rng, (list, tuple)) and len(rng) == 2):
            raise ValueError(f"config key {key!r}: expected [low, high], got {rng!r}")
        lo, hi = (_num(v, key) for v in rng)
        if not lo < hi:
            raise ValueError(f"config key {key!r}: low {lo} must be below high {hi}")
    if not isinstance(merge["fixed"], dict):
        raise ValueError(f"config key 'merge.fixed': expected a mapping, got {merge['fixed']!r}")
    both = set(merge["fixed"]) & set(params)
    if both:
        raise ValueError(f"config key 'merge.fixed': {sorted(both)} also in merge.parameters")
    _num(merge["layer_granularity"], "merge.layer_granularity", 0, integer=True)
    if not isinstance(merge["filters"], list):
        raise ValueError(f"config key 'merge.filters': expected a list, got {merge['filters']!r}")

    fit = cfg["fitness"]
    if fit["type"] not in ("irt", "anchor", "full"):
        raise ValueError(f"config key 'fitness.type': expected irt, anchor or full, got {fit['type']!r}")
    if fit["estimator"] not in ESTIMATORS:
        raise ValueError(f"config key 'fitness.estimator': expected one of {', '.join(ESTIMATORS)}, "
                         f"got {fit['estimator']!r}")
    anc = fit["anchors"]
    if anc["method"] not in ANCHOR_METHODS:
        raise ValueError(f"config key 'fitness.anchors.method': expected one of {', '.join(ANCHOR_METHODS)}, "
                         f"got {anc['method']!r}")
    _num(anc["n"], "fitness.anchors.n", 1, integer=True)
    if anc["seed"] is None:
        anc["seed"] = cfg["seed"]
    _num(anc["seed"], "fitness.anchors.seed", 0, integer=True)
    cal = fit["calibration"]
    if fit["type"] == "full":
        fit["calibration"] = None
    elif fit["type"] == "anchor" and cal == "auto" and anc["method"] == "random" and "calibration" not in (
            (raw or {}).get("fitness") or {}):
        fit["calibration"] = None  # raw anchor accuracy on random anchors needs no calibration
    elif cal is None and (fit["type"] == "irt" or anc["method"] != "random"):
        raise ValueError(f"config key 'fitness.calibration': fitness {fit['type']} with {anc['method']} anchors "
                         "needs a calibration directory or auto")
    if isinstance(fit["calibration"], str) and fit["calibration"] != "auto" and base_dir is not None:
        fit["calibration"] = str((base_dir / fit["calibration"]).resolve()) if not Path(
            fit["calibration"]).is_absolute() else fit["calibration"]
    cs = fit["calibration_settings"]
    _num(cs["n_random_merges"], "fitness.calibration_settings.n_random_merges", 0, integer=True)
    if not isinstance(cs["irt"], dict):
        raise ValueError("config key 'fitness.calibration_settings.irt': expected a mapping")

    alg = cfg["algorithm"]
    if alg["name"] is None:
        alg["name"] = "ga" if n_obj == 1 else "nsga2"
    if alg["name"] not in ALGORITHMS:
        raise ValueError(f"config key 'algorithm.name': expected one of {', '.join(ALGORITHMS)}, got {alg['name']!r}")
    if n_obj == 1 and alg["name"] in MULTI:
        raise ValueError(f"config key 'algorithm.name': {alg['name']} needs several objectives, the config has one "
                         f"(use {', '.join(SINGLE)} or objectives.mode: per_task with several tasks)")
    if n_obj > 1 and alg["name"] in SINGLE:
        raise ValueError(f"config key 'algorithm.name': {alg['name']} optimises one objective, the config has "
                         f"{n_obj} (use nsga2/nsga3, or objectives.mode: weighted_sum)")
    _num(alg["pop_size"], "algorithm.pop_size", 2, 100000, integer=True)
    _num(alg["generations"], "algorithm.generations", 1, 100000, integer=True)
    if alg["name"] == "de" and alg["pop_size"] < 4:
        raise ValueError("config key 'algorithm.pop_size': de needs at least 4")
    if not isinstance(alg["options"], dict):
        raise ValueError("config key 'algorithm.options': expected a mapping")

    _num(cfg["penalty"], "penalty", 0.0, 1.0)
    if not isinstance(cfg["evaluation"], dict):
        raise ValueError("config key 'evaluation': expected a mapping of lm-eval options")
    from ..evaluation.lmeval import EvalOptions

    try:
        EvalOptions.from_dict(cfg["evaluation"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"config key 'evaluation': {exc}") from None

    w = cfg["workers"]
    if w["num_workers"] is not None:
        _num(w["num_workers"], "workers.num_workers", 1, integer=True)
    _num(w["cpus_per_worker"], "workers.cpus_per_worker", 0)
    if w["gpus_per_worker"] is not None:
        _num(w["gpus_per_worker"], "workers.gpus_per_worker", 0)
    _num(w["max_retries"], "workers.max_retries", 0, integer=True)
    if w["device"] not in (None, "cpu", "cuda") and not str(w["device"]).startswith("cuda:"):
        raise ValueError(f"config key 'workers.device': expected cpu or cuda, got {w['device']!r}")
    if w["local_cpus"] is not None:
        _num(w["local_cpus"], "workers.local_cpus", 1, integer=True)
    if w["cpus_per_worker"] == 0 and not w["gpus_per_worker"]:
        raise ValueError("config key 'workers.cpus_per_worker': 0 needs workers.gpus_per_worker > 0")
    return cfg


def n_objectives(cfg: dict) -> int:
    obj = cfg["objectives"]
    return 1 if obj["mode"] == "weighted_sum" else len(obj["tasks"])


def _resolve_model(ref: str, key: str, world, base_dir: Path | None) -> str:
    if world is not None and ref in (["base"] + list(world.endpoints)):
        return str(world.model(ref).resolve())
    p = Path(ref).expanduser()
    if not p.is_absolute() and base_dir is not None and not p.exists():
        p = base_dir / p
    if not p.exists():
        hint = f" (world models: base, {', '.join(world.endpoints)})" if world is not None else ""
        raise FileNotFoundError(f"config key {key!r}: model {ref!r} not found{hint}")
    if not (p / "config.json").is_file():
        raise ValueError(f"config key {key!r}: {p} is not a Hugging Face model folder (no config.json)")
    return str(p.resolve())


def resolve_paths(cfg: dict, base_dir: Path | None = None, build_world: bool = True) -> dict:
    """Turns world names into absolute paths (building or reusing the world when named by size)."""
    cfg = copy.deepcopy(cfg)
    world = None
    if cfg["world"] is not None:
        from ..world import SIZES, load_world, resolve_world

        ref = str(cfg["world"])
        if ref not in SIZES:
            p = Path(ref).expanduser()
            if not p.is_absolute() and base_dir is not None and not p.exists():
                p = base_dir / p
            ref = str(p)
            world = load_world(p)
        elif build_world:
            world = resolve_world(ref)
        else:
            world = None
        if world is not None:
            cfg["world"] = str(world.root.resolve())
    cfg["base"] = _resolve_model(cfg["base"], "base", world, base_dir)
    cfg["models"] = [_resolve_model(m, f"models[{i}]", world, base_dir) for i, m in enumerate(cfg["models"])]
    if len(set(cfg["models"] + [cfg["base"]])) != len(cfg["models"]) + 1:
        raise ValueError("config key 'models': the same model is listed twice (or is also the base)")
    if cfg["include_path"] is None and world is not None:
        cfg["include_path"] = str(world.tasks_dir.resolve())
    elif cfg["include_path"] is not None:
        p = Path(cfg["include_path"]).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_dir():
            raise FileNotFoundError(f"config key 'include_path': {p} is not a directory")
        cfg["include_path"] = str(p.resolve())
    return cfg


def n_layers_of(base: str) -> int:
    cfg = json.loads((Path(base) / "config.json").read_text())
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in cfg:
            return int(cfg[key])
    text = cfg.get("text_config") or {}
    if "num_hidden_layers" in text:
        return int(text["num_hidden_layers"])
    raise ValueError(f"{base}/config.json: cannot tell the number of layers")


def genome_config(cfg: dict) -> dict:
    m = cfg["merge"]
    return {"method": m["method"], "parameters": m["parameters"], "fixed": m["fixed"],
            "layer_granularity": m["layer_granularity"], "filters": m["filters"]}


def make_genome(cfg: dict):
    from ..genome import Genome

    try:
        return Genome.from_config(genome_config(cfg), len(cfg["models"]), n_layers_of(cfg["base"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"config key 'merge': {exc}") from None


def check_tasks(cfg: dict) -> None:
    """lm-eval must know every task (raises before any model is loaded)."""
    from lm_eval.tasks import TaskManager

    from ..evaluation.lmeval import _quiet_lm_eval

    _quiet_lm_eval()
    inc = cfg["include_path"]
    manager = TaskManager(include_path=inc, include_defaults=inc is None)
    missing = [t for t in cfg["tasks"] if t not in manager.all_tasks]
    if missing:
        where = f" (include path {inc})" if inc else ""
        raise ValueError(f"config key 'tasks': lm-eval does not know task(s) {missing}{where}")


def validate_resources(cfg: dict) -> None:
    """Disk-level checks on a resolved config: models compatible, genome valid, tasks known, calibration."""
    from ..merging.checks import check_compatible

    try:
        check_compatible(cfg["base"], cfg["models"])
    except ValueError as exc:
        raise ValueError(f"config key 'models': incompatible models: {exc}") from None
    g = make_genome(cfg)
    if g.dim < 1:
        raise ValueError("config key 'merge.parameters': the genome has no free genes")
    # a decode of the centre of the cube checks method/parameter combinations before any evaluation
    try:
        recipe = g.decode([0.5] * g.dim, base=cfg["base"], models=cfg["models"], seed=0)
        if hasattr(recipe, "validate"):
            recipe.validate()
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"config key 'merge': {exc}") from None
    check_tasks(cfg)
    cal = cfg["fitness"]["calibration"]
    if cal not in (None, "auto"):
        p = Path(cal)
        if not p.is_dir():
            raise FileNotFoundError(f"config key 'fitness.calibration': {p} is not a directory "
                                    "(use auto to calibrate inside the run directory)")
        from ..calibration import Calibration

        c = Calibration.load(p)
        have = set(getattr(c, "tasks", None) or cfg["tasks"])
        lacking = [t for t in cfg["tasks"] if t not in have]
        if lacking:
            raise ValueError(f"config key 'fitness.calibration': {p} has no calibration for task(s) {lacking}")


def read_yaml(path: str | Path) -> dict:
    return read_yaml_mapping(path, "config file")


def load_config(path_or_dict, name: str | None = None, base_dir: Path | None = None, check: bool = True) -> dict:
    """Reads (if a path), normalizes, resolves and (``check``) validates a search config. Writes nothing."""
    if isinstance(path_or_dict, (str, Path)):
        p = Path(path_or_dict)
        raw = read_yaml(p)
        name = name or p.stem
        base_dir = base_dir or p.resolve().parent
    else:
        raw = copy.deepcopy(path_or_dict)
    cfg = normalize(raw, name=name, base_dir=base_dir)
    cfg = resolve_paths(cfg, base_dir=base_dir or Path.cwd())
    if check:
        validate_resources(cfg)
    return cfg


def config_digest(cfg: dict) -> str:
    """Hash of everything that determines the search's evaluations (not its name or worker layout)."""
    keep = {k: v for k, v in cfg.items() if k not in ("name", "workers")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]
