"""Search configuration: a typed, frozen schema with its defaults, documentation and validation.

:func:`load_config` reads a search YAML (or a dict), checks every key against the dataclasses below (unknown
keys, types, ranges), fills in defaults, resolves model names and paths, and (``check``) checks what is on
disk: the models exist and are mergeable, lm-eval knows every task, the genome is valid for the models, a
given calibration exists and covers the tasks. Every problem is a ``ValueError`` (or ``FileNotFoundError``)
with one line naming the key, file or task, raised before anything is written.

Each field's ``metadata["doc"]`` documents the key (``describe()`` lists them all: the README's table).
Names of estimators, anchor methods, fitness types and algorithms come from their registries.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from ..calibration import DEFAULT_RANDOM_MERGES, check_irt_settings
from ..irt.anchors import METHODS as ANCHOR_METHODS
from ..irt.estimators import ESTIMATORS
from ..scoring import FITNESS_TYPES
from ..merging.recipe import check_tokenizer_source
from ..yamlfile import read_yaml_mapping
from .algorithms import ALGORITHMS, MULTI_OBJECTIVE, SINGLE_OBJECTIVE, STEADY_STATE

REQUIRED = object()  # the default of a key that has none
DISPATCH_MODES = ("generational", "async")


def key(doc: str, default=REQUIRED):
    """A config key: its documentation and default (mutable defaults are copied per instance)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def section(cls, doc: str):
    return field(default_factory=cls, metadata={"doc": doc})


@dataclass(frozen=True)
class Objectives:
    mode: str = key("per_task (one objective per task: a Pareto front) or weighted_sum (one objective)", "per_task")
    tasks: list | None = key("tasks to maximise (default: all of tasks)", None)
    weights: dict | None = key("weighted_sum only: {task: weight}; default equal weights", None)


@dataclass(frozen=True)
class MergeSpace:
    method: str = key("merge method (linear, slerp, ties, dare_ties, dare_linear, breadcrumbs, della, ...)")
    parameters: dict = key("evolved parameters: {name: [low, high]} searched per model (and per layer group)")
    fixed: dict = key("parameters held fixed: {name: value}", {})
    layer_granularity: int = key("0: one value per model; k > 0: one value per group of k layers", 0)
    filters: list = key("per-tensor-group variants (e.g. [self_attn, mlp]): separate genes for each", [])
    tokenizer_source: str | None = key("endpoints whose vocabulary differs from the base's: base (the base's "
                                       "tokens) or union (plus every added token); rows aligned by token as in "
                                       "mergekit. null: every model has the base's vocabulary", None)


@dataclass(frozen=True)
class AnchorSettings:
    method: str = key("random, irt_cluster or correctness_cluster (the latter two need a calibration), or "
                      "adaptive: items chosen per candidate by computerized adaptive testing (irt fitness; "
                      "merge3.irt.adaptive)", "random")
    n: int = key("anchor items per task (adaptive: the most items per task a candidate answers)", 20)
    seed: int | None = key("anchor selection seed (default: the run seed)", None)
    refresh: bool = key("draw a new anchor set for every generation (async dispatch: every batch) from a stream "
                        "seeded by (anchor seed, generation), so the population cannot specialise on one set of "
                        "items; generation 0 uses the anchors of refresh: false. Resume stays exact", False)
    target_sd: float = key("adaptive only: a candidate stops answering once every task's estimated accuracy has "
                           "this posterior standard deviation (0..1 scale) or less, or it answered n items per task",
                           0.03)
    batch: int = key("adaptive only: items per task chosen per step (one lm-eval call per step)", 4)
    exposure: int = key("adaptive only: each item is drawn (seeded by the candidate) among this many most "
                        "informative ones, so candidates are not all asked the same first items; 1: always the "
                        "most informative", 1)


@dataclass(frozen=True)
class CalibrationSettings:
    n_random_merges: int = key("calibration population: random merges evaluated fully besides the endpoints",
                               DEFAULT_RANDOM_MERGES)
    irt: dict = key("IRT fit settings (merge3.calibration.IRT_DEFAULTS: model_type, dim, epochs, lr, "
                    "validation_fraction, refine_iters)", {})


@dataclass(frozen=True)
class OnlineCalibration:
    top_k: int = key("after every `every` generations, this many of the generation's best candidates by estimate "
                     "are scored on every item (their items count in the search's cost): the search is told their "
                     "measured scores instead of the estimates, and (irt fitness) their answers join the "
                     "calibration population: abilities fitted with the item parameters held, the ability priors "
                     "and the gp/gmp mixing weights re-estimated with them among the validation models. "
                     "Generational dispatch only. 0: off", 0)
    every: int = key("generations between two online calibration steps", 1)


@dataclass(frozen=True)
class Fitness:
    type: str = key("irt (anchors + estimator), anchor (raw anchor accuracy) or full (every item)", "irt")
    estimator: str = key("irt only: anchor, irt, pirt, gpirt, mpirt or gmpirt", "mpirt")
    calibration: str | None = key("irt: a calibration directory, or auto (calibrate inside the run directory "
                                  "first); anchor: optional (random anchors are drawn from the task items "
                                  "without one)", "auto")
    anchors: AnchorSettings = section(AnchorSettings, "anchor items")
    calibration_settings: CalibrationSettings = section(CalibrationSettings, "the auto calibration")
    test_fraction: float = key("share of each task's items held out from the search (irt/anchor fitness): no "
                               "anchor, adaptive item, verification or online calibration uses them; the "
                               "verified candidates' scores on them (`test`, measured by the same evaluation "
                               "that verifies them) are what status, result.json and export report as held-out. "
                               "Drawn once per run from the run seed (split.json). 0: no split", 0.0)
    online_calibration: OnlineCalibration = section(OnlineCalibration, "candidates scored on every item while "
                                                    "the search runs (irt/anchor fitness)")
    verify_top_k: int = key("irt/anchor fitness: when the search ends, this many of its best candidates by "
                            "estimate (single objective: the top k; several: the Pareto front's first k by mean "
                            "objective) are scored on every item; status, result.json and export rank by these "
                            "verified scores, and their items count in the cost (0: none)", 3)


@dataclass(frozen=True)
class Algorithm:
    name: str | None = key("ga, de or cmaes (one objective); nsga2 or nsga3 (several objectives)", None)
    pop_size: int = key("candidates per generation", 8)
    generations: int = key("number of generations (budget = pop_size x generations evaluations)", 4)
    options: dict = key("extra keyword arguments for the pymoo algorithm (e.g. CR for de, sigma for cmaes)", {})
    dispatch: str = key("generational: each generation is asked, scored by all workers, then told (workers wait "
                        "for its slowest candidate); async: steady state, a free worker gets the next proposal at "
                        "once and results are told as they return, in batches of what has come back (ga, nsga2, "
                        "nsga3 only); the budget stays pop_size x generations", "generational")


@dataclass(frozen=True)
class Workers:
    num_workers: int | None = key("number of worker actors (default: one per GPU, else one per CPU slot)", None)
    cpus_per_worker: float = key("CPUs reserved by each worker actor", 1)
    gpus_per_worker: float | None = key("GPUs reserved by each worker (default: 1 when the cluster has GPUs, "
                                        "else 0)", None)
    max_retries: int = key("times a candidate is retried on another worker after its worker died or it timed "
                           "out", 2)
    candidate_timeout_s: float | None = key("a candidate still running after this many seconds is cancelled: its "
                                            "worker is killed and replaced, the candidate retried (max_retries) "
                                            "or recorded as failed with the penalty. Jobs that answer every item "
                                            "(calibration population, verification) get 10x as long. null: no "
                                            "limit", 3600.0)
    device: str | None = key("materializer device (default: cuda when the worker has a GPU, else cpu)", None)
    dtype: str | None = key("materializer dtype (default: the models')", None)
    offload_task_vectors: bool = key("keep task vectors on CPU to save GPU memory", False)
    fused_merge: bool | None = key("merge with fused kernels: one compiled pass per tensor instead of one per "
                                   "operation (same results; 5-10x faster for the TIES family, slerp and model "
                                   "stock) at the cost of a compile per method when a worker starts (needs a C++ "
                                   "compiler on CPU). Default: on for GPUs, off on CPU", None)
    rank_cache: str | bool = key("cache the magnitude / DELLA ranks of the task vectors after the first TIES, "
                                 "breadcrumbs or DELLA candidate (int32: N x P x 4 bytes each) "
                                 "instead of recomputing them per candidate (same results). auto: cache when they "
                                 "take at most 3/4 of the memory left on the materializer's device, else recompute "
                                 "with a warning; true: always; false: never", "auto")
    local_cpus: int | None = key("CPUs of the local Ray cluster started when no --address is given "
                                 "(default: all)", None)

    def materializer_options(self) -> dict:
        """The ScorerSpec fields these settings fill."""
        return {"device": self.device, "dtype": self.dtype, "offload_task_vectors": self.offload_task_vectors,
                "fused_merge": self.fused_merge, "rank_cache": self.rank_cache}


@dataclass(frozen=True)
class SearchConfig:
    name: str | None = key("run name, used for the default run directory runs/<name> (default: the config "
                           "file's stem)", None)
    seed: int = key("run seed: algorithm randomness, merge seeds (derived per candidate) and anchor choice", 0)
    world: str | None = key("a world (micro, small, smollm2 or the path of a built world); lets base/models/tasks "
                            "use its names", None)
    base: str = key("base model: a path to a Hugging Face folder, or a world model name (base)")
    models: list = key("endpoint models merged onto the base: paths or world model names (math_en, lang_vl, "
                       "facts_en)")
    tasks: list | None = key("lm-eval task names the fitness evaluates (default: the objective tasks)", None)
    include_path: str | None = key("directory of extra lm-eval task YAMLs (default: the world's tasks/ when "
                                   "world is set)", None)
    objectives: Objectives = section(Objectives, "what the search maximises")
    merge: MergeSpace = section(MergeSpace, "the search space")
    fitness: Fitness = section(Fitness, "how a candidate is scored")
    algorithm: Algorithm = section(Algorithm, "the pymoo optimizer")
    penalty: float = key("objective value (accuracy) recorded for an invalid or failed candidate", 0.0)
    evaluation: dict = key("lm-eval options (EvalOptions: batch_size, num_fewshot, device, dtype, limit, "
                           "apply_chat_template, ...)", {})
    workers: Workers = section(Workers, "Ray worker actors")

    # ---------------------------------------------------------------- derived

    @property
    def n_objectives(self) -> int:
        return 1 if self.objectives.mode == "weighted_sum" else len(self.objectives.tasks)

    @property
    def objective_names(self) -> list[str]:
        return ["weighted_sum"] if self.objectives.mode == "weighted_sum" else list(self.objectives.tasks)

    @property
    def budget(self) -> int:
        return self.algorithm.pop_size * self.algorithm.generations

    def genome_config(self) -> dict:
        d = dataclasses.asdict(self.merge)
        if d["tokenizer_source"] is None:  # the default: genomes (and calibrations) from before the key stay valid
            del d["tokenizer_source"]
        return d

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "SearchConfig":
        """The typed config of an already normalized dict (a run directory's config.yaml)."""
        return _typed(cls, _fill(d, cls, where, keep_none=True))

    def digest(self) -> str:
        """Hash of everything that determines the search's evaluations (not its name or worker layout, nor
        the verification after the search: it changes no evaluation the search makes)."""
        keep = {k: v for k, v in self.to_dict().items() if k not in ("name", "workers")}
        keep["fitness"] = {k: v for k, v in keep["fitness"].items() if k != "verify_top_k"}
        # keys added later leave the digests of runs that do not use them unchanged
        if keep["fitness"]["test_fraction"] == 0.0:
            del keep["fitness"]["test_fraction"]
        if keep["fitness"]["online_calibration"] == dataclasses.asdict(OnlineCalibration()):
            del keep["fitness"]["online_calibration"]
        anchors = keep["fitness"]["anchors"]
        for name, default in (("refresh", False), ("target_sd", 0.03), ("batch", 4), ("exposure", 1)):
            if anchors[name] == default:
                del anchors[name]
        if keep["merge"]["tokenizer_source"] is None:  # the default: digests from before the key stay valid
            keep["merge"] = {k: v for k, v in keep["merge"].items() if k != "tokenizer_source"}
        if keep["algorithm"]["dispatch"] == "generational":  # the default: digests from before the key stay valid
            keep["algorithm"] = {k: v for k, v in keep["algorithm"].items() if k != "dispatch"}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe(cls=SearchConfig, prefix: str = "") -> list[tuple[str, str, object]]:
    """(dotted key, description, default) for every key: the documentation of the config format."""
    rows = []
    for f in fields(cls):
        if _is_section(f):
            rows.extend(describe(_section_cls(f), f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((prefix + f.name, f.metadata["doc"], "required" if default is REQUIRED else default))
    return rows


# --------------------------------------------------------------------------------------------- generic


def _is_section(f) -> bool:
    return f.default_factory is not dataclasses.MISSING and is_dataclass(f.default_factory)


def _section_cls(f):
    return f.default_factory


def _fill(raw, cls, where: str, keep_none: bool = False) -> dict:
    """``raw`` checked for unknown keys, with every missing key set to its default (sections recursively).
    A key given as null takes its default too, unless ``keep_none`` (a resolved config, where null is a value)."""
    if not isinstance(raw, dict):
        raise ValueError(f"config key {where or 'top level'}: expected a mapping, got {type(raw).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        full = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ValueError(f"unknown config key {full!r}; known keys{' of ' + where if where else ''}: "
                         f"{', '.join(names)}")
    out = {}
    for f in fields(cls):
        full = f"{where}.{f.name}" if where else f.name
        if _is_section(f):
            out[f.name] = _fill(raw.get(f.name) if raw.get(f.name) is not None else {}, _section_cls(f), full,
                                keep_none)
        elif f.name in raw and (raw[f.name] is not None or keep_none):
            out[f.name] = copy.deepcopy(raw[f.name])
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if default is REQUIRED:
                raise ValueError(f"config key {full!r} is required ({f.metadata['doc']})")
            out[f.name] = default
    return out


def _typed(cls, d: dict):
    return cls(**{f.name: (_typed(_section_cls(f), d[f.name]) if _is_section(f) else d[f.name])
                  for f in fields(cls)})


def _num(value, key_: str, lo=None, hi=None, integer=False):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool):
        raise ValueError(f"config key {key_!r}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"config key {key_!r}: {value!r} is out of range {rng}")
    return value


def _str_list(v, key_: str) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"config key {key_!r}: expected a non-empty list of names, got {v!r}")
    if len(set(v)) != len(v):
        raise ValueError(f"config key {key_!r}: duplicate entries in {v!r}")
    return list(v)


def _one_of(value, choices, key_: str):
    if value not in choices:
        raise ValueError(f"config key {key_!r}: expected one of {', '.join(choices)}, got {value!r}")


# --------------------------------------------------------------------------------------------- sections


def _check_top(cfg: dict, name: str | None) -> None:
    if cfg["name"] is None:
        cfg["name"] = name or "search"
    if not isinstance(cfg["name"], str) or not cfg["name"] or "/" in cfg["name"]:
        raise ValueError(f"config key 'name': expected a plain name, got {cfg['name']!r}")
    _num(cfg["seed"], "seed", 0, 2**31 - 1, integer=True)
    if not isinstance(cfg["base"], str):
        raise ValueError(f"config key 'base': expected a path or model name, got {cfg['base']!r}")
    cfg["models"] = _str_list(cfg["models"], "models")
    _num(cfg["penalty"], "penalty", 0.0, 1.0)
    if not isinstance(cfg["evaluation"], dict):
        raise ValueError("config key 'evaluation': expected a mapping of lm-eval options")
    from ..evaluation.lmeval import EvalOptions

    try:
        EvalOptions.from_dict(cfg["evaluation"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"config key 'evaluation': {exc}") from None


def _check_objectives(cfg: dict) -> None:
    obj = cfg["objectives"]
    _one_of(obj["mode"], ("per_task", "weighted_sum"), "objectives.mode")
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


def _check_merge(merge: dict) -> None:
    if not isinstance(merge["method"], str):
        raise ValueError(f"config key 'merge.method': expected a method name, got {merge['method']!r}")
    params = merge["parameters"]
    if not isinstance(params, dict) or not params:
        raise ValueError(f"config key 'merge.parameters': expected {{name: [low, high]}}, got {params!r}")
    for pname, rng in params.items():
        k = f"merge.parameters.{pname}"
        if not (isinstance(rng, (list, tuple)) and len(rng) == 2):
            raise ValueError(f"config key {k!r}: expected [low, high], got {rng!r}")
        lo, hi = (_num(v, k) for v in rng)
        if not lo < hi:
            raise ValueError(f"config key {k!r}: low {lo} must be below high {hi}")
    if not isinstance(merge["fixed"], dict):
        raise ValueError(f"config key 'merge.fixed': expected a mapping, got {merge['fixed']!r}")
    both = set(merge["fixed"]) & set(params)
    if both:
        raise ValueError(f"config key 'merge.fixed': {sorted(both)} also in merge.parameters")
    _num(merge["layer_granularity"], "merge.layer_granularity", 0, integer=True)
    if not isinstance(merge["filters"], list):
        raise ValueError(f"config key 'merge.filters': expected a list, got {merge['filters']!r}")
    check_tokenizer_source(merge["tokenizer_source"], "config key 'merge.tokenizer_source'")
    if merge["tokenizer_source"] is not None and merge["method"] == "linear":
        # a linear recipe names no base_model, so mergekit would align it without one: not what the resident
        # vocabulary of the workers' materializer is laid out for
        raise ValueError("config key 'merge.tokenizer_source': not supported with method linear in a search "
                         "(use task_arithmetic)")


def _check_fitness(fit: dict, seed: int, raw_fitness: dict, base_dir: Path | None) -> None:
    _one_of(fit["type"], FITNESS_TYPES, "fitness.type")
    _one_of(fit["estimator"], ESTIMATORS, "fitness.estimator")
    anc = fit["anchors"]
    _one_of(anc["method"], ANCHOR_METHODS + ("adaptive",), "fitness.anchors.method")
    _num(anc["n"], "fitness.anchors.n", 1, integer=True)
    if anc["seed"] is None:
        anc["seed"] = seed
    _num(anc["seed"], "fitness.anchors.seed", 0, integer=True)
    cal = fit["calibration"]
    if fit["type"] == "full":
        fit["calibration"] = None
    elif fit["type"] == "anchor" and cal == "auto" and anc["method"] == "random" and "calibration" not in raw_fitness:
        fit["calibration"] = None  # raw anchor accuracy on random anchors needs no calibration
    elif cal is None and (fit["type"] == "irt" or anc["method"] != "random"):
        raise ValueError(f"config key 'fitness.calibration': fitness {fit['type']} with {anc['method']} anchors "
                         "needs a calibration directory or auto")
    cal = fit["calibration"]
    if isinstance(cal, str) and cal != "auto" and base_dir is not None and not Path(cal).is_absolute():
        fit["calibration"] = str((base_dir / cal).resolve())
    if not isinstance(anc["refresh"], bool):
        raise ValueError(f"config key 'fitness.anchors.refresh': expected true or false, got {anc['refresh']!r}")
    _num(anc["target_sd"], "fitness.anchors.target_sd", 0.0001, 0.9999)
    _num(anc["batch"], "fitness.anchors.batch", 1, integer=True)
    _num(anc["exposure"], "fitness.anchors.exposure", 1, integer=True)
    if anc["method"] == "adaptive":
        if fit["type"] != "irt":
            raise ValueError(f"config key 'fitness.anchors.method': adaptive chooses items with the IRT model and "
                             f"needs fitness.type: irt, got {fit['type']}")
        if anc["refresh"]:
            raise ValueError("config key 'fitness.anchors.refresh': adaptive items are chosen per candidate "
                             "already; refresh applies to fixed anchor sets")
    _num(fit["verify_top_k"], "fitness.verify_top_k", 0, integer=True)
    _num(fit["test_fraction"], "fitness.test_fraction", 0.0, 0.9)
    if fit["test_fraction"] and fit["type"] == "full":
        raise ValueError("config key 'fitness.test_fraction': full fitness scores every item; a held-out split "
                         "needs irt or anchor fitness")
    online = fit["online_calibration"]
    _num(online["top_k"], "fitness.online_calibration.top_k", 0, integer=True)
    _num(online["every"], "fitness.online_calibration.every", 1, integer=True)
    cs = fit["calibration_settings"]
    _num(cs["n_random_merges"], "fitness.calibration_settings.n_random_merges", 0, integer=True)
    if not isinstance(cs["irt"], dict):
        raise ValueError("config key 'fitness.calibration_settings.irt': expected a mapping")
    check_irt_settings(cs["irt"], "fitness.calibration_settings.irt", what="config")


def _check_algorithm(alg: dict, n_obj: int) -> None:
    if alg["name"] is None:
        alg["name"] = SINGLE_OBJECTIVE[0] if n_obj == 1 else MULTI_OBJECTIVE[0]
    _one_of(alg["name"], ALGORITHMS, "algorithm.name")
    if n_obj == 1 and alg["name"] in MULTI_OBJECTIVE:
        raise ValueError(f"config key 'algorithm.name': {alg['name']} needs several objectives, the config has one "
                         f"(use {', '.join(SINGLE_OBJECTIVE)} or objectives.mode: per_task with several tasks)")
    if n_obj > 1 and alg["name"] in SINGLE_OBJECTIVE:
        raise ValueError(f"config key 'algorithm.name': {alg['name']} optimises one objective, the config has "
                         f"{n_obj} (use {'/'.join(MULTI_OBJECTIVE)}, or objectives.mode: weighted_sum)")
    _num(alg["pop_size"], "algorithm.pop_size", 2, 100000, integer=True)
    _num(alg["generations"], "algorithm.generations", 1, 100000, integer=True)
    if alg["name"] == "de" and alg["pop_size"] < 4:
        raise ValueError("config key 'algorithm.pop_size': de needs at least 4")
    if not isinstance(alg["options"], dict):
        raise ValueError("config key 'algorithm.options': expected a mapping")
    _one_of(alg["dispatch"], DISPATCH_MODES, "algorithm.dispatch")
    if alg["dispatch"] == "async" and alg["name"] not in STEADY_STATE:
        raise ValueError(f"config key 'algorithm.dispatch': async needs an algorithm that takes results in batches "
                         f"of any size ({', '.join(STEADY_STATE)}); {alg['name']} is generational only")


def _check_workers(w: dict) -> None:
    if w["num_workers"] is not None:
        _num(w["num_workers"], "workers.num_workers", 1, integer=True)
    _num(w["cpus_per_worker"], "workers.cpus_per_worker", 0)
    if w["gpus_per_worker"] is not None:
        _num(w["gpus_per_worker"], "workers.gpus_per_worker", 0)
    _num(w["max_retries"], "workers.max_retries", 0, integer=True)
    if w["candidate_timeout_s"] is not None:
        _num(w["candidate_timeout_s"], "workers.candidate_timeout_s", 0.001)
    if w["device"] not in (None, "cpu", "cuda") and not str(w["device"]).startswith("cuda:"):
        raise ValueError(f"config key 'workers.device': expected cpu or cuda, got {w['device']!r}")
    if w["local_cpus"] is not None:
        _num(w["local_cpus"], "workers.local_cpus", 1, integer=True)
    if w["rank_cache"] != "auto" and not isinstance(w["rank_cache"], bool):  # not 0 / 1: YAML's false / true
        raise ValueError(f"config key 'workers.rank_cache': expected auto, true or false, got {w['rank_cache']!r}")
    if w["cpus_per_worker"] == 0 and not w["gpus_per_worker"]:
        raise ValueError("config key 'workers.cpus_per_worker': 0 needs workers.gpus_per_worker > 0")


def normalize(raw: dict, name: str | None = None, base_dir: Path | None = None) -> SearchConfig:
    """Checks keys, types and ranges; fills defaults. Touches no model or task (see ``validate_resources``)."""
    raw = raw if raw is not None else {}
    cfg = _fill(raw, SearchConfig, "")
    _check_top(cfg, name)
    _check_objectives(cfg)
    _check_merge(cfg["merge"])
    _check_fitness(cfg["fitness"], cfg["seed"], raw.get("fitness") or {}, base_dir)
    n_obj = 1 if cfg["objectives"]["mode"] == "weighted_sum" else len(cfg["objectives"]["tasks"])
    _check_algorithm(cfg["algorithm"], n_obj)
    if cfg["fitness"]["online_calibration"]["top_k"] and cfg["algorithm"]["dispatch"] == "async":
        raise ValueError("config key 'fitness.online_calibration.top_k': online calibration steps between "
                         "generations; it needs algorithm.dispatch: generational")
    _check_workers(cfg["workers"])
    return _typed(SearchConfig, cfg)


def read_yaml(path: str | Path) -> dict:
    return read_yaml_mapping(path, "config file")
