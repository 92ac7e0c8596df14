"""Setting a run up before its first generation: calibration, anchors, metadata, the scorer's spec.

Everything here is written once and reused on resume: an ``auto`` calibration inside the run directory, the
anchors (``anchors.json``: re-derived on resume and checked against the file), and ``meta.json``.
"""

from __future__ import annotations

import dataclasses
import random
import time

from ..calibration import CalibrationConfig, calibrate
from ..irt import Anchors, Calibration, select_anchors
from ..scoring import ScorerSpec
from .config import SearchConfig
from .fitness import FitnessState
from .resources import make_genome
from .rundir import ANCHORS, CALIBRATION, CONFIG, RunDir, read_json


def auto_calibration_config(cfg: SearchConfig) -> CalibrationConfig:
    """The calibration an ``auto`` search runs: its models, tasks, genome and lm-eval options."""
    cs, anc = cfg.fitness.calibration_settings, cfg.fitness.anchors
    return CalibrationConfig.from_dict({
        "base": cfg.base, "endpoints": list(cfg.models), "tasks": list(cfg.tasks),
        "include_path": cfg.include_path, "n_random_merges": cs.n_random_merges, "genome": cfg.genome_config(),
        "irt": dict(cs.irt), "seed": cfg.seed, "eval": dict(cfg.evaluation),
        "anchors": {"method": "random" if anc.method == "adaptive" else anc.method, "n": anc.n, "seed": anc.seed}})


def ensure_calibration(cfg: SearchConfig, rd: RunDir, pool_factory, say) -> str | None:
    """The calibration directory the fitness uses; an ``auto`` one is made (or finished) here first."""
    cal = cfg.fitness.calibration
    if cal != "auto":
        return cal
    out = (rd / CALIBRATION).resolve()
    if (out / "calibration.json").exists():
        Calibration.load(out)  # a damaged calibration is an error naming its file, never silently redone
        return str(out)
    cs = cfg.fitness.calibration_settings
    say(f"calibrating into {out}: {len(cfg.models)} endpoints, the base and {cs.n_random_merges} random "
        "merges evaluated fully, once")
    w = cfg.workers
    workers = None if pool_factory is None else (lambda spec: pool_factory(dataclasses.replace(
        spec, **w.materializer_options())))
    calibrate(auto_calibration_config(cfg), out, pool_factory=workers, log=say,
              irt_key="fitness.calibration_settings.irt", what="config")
    return str(out)


def choose_anchors(cfg: SearchConfig, calibration: Calibration | None, item_ids, seed: int | None = None,
                   test_items: dict[str, list[str]] | None = None) -> Anchors:
    """The fitness's anchors (seed: the config's anchor seed unless given): chosen on the calibration, or
    uniformly at random from ``item_ids(task)``; never among ``test_items``."""
    anc = cfg.fitness.anchors
    seed = anc.seed if seed is None else seed
    if calibration is not None:
        a = select_anchors(anc.method, anc.n, calibration, seed, tasks=list(cfg.tasks), exclude=test_items)
        missing = [t for t in cfg.tasks if t not in a.items]
        if missing:
            raise ValueError(f"the calibration {calibration.root} has no anchors for task(s) {missing}")
        return a
    rng = random.Random(f"anchors-{seed}")
    items = {}
    for t in cfg.tasks:
        held = set((test_items or {}).get(t, ()))
        ids = [i for i in item_ids(t) if i not in held]
        items[t] = sorted(rng.sample(ids, min(anc.n, len(ids))))
    return Anchors.uniform(items, method="random", seed=seed)


def draw_test_split(cfg: SearchConfig, item_ids) -> dict[str, list[str]]:
    """``fitness.test_fraction`` of each task's items, drawn from the run seed: held out from the search."""
    rng = random.Random(f"test-split-{cfg.seed}")
    out = {}
    for t in cfg.tasks:
        ids = item_ids(t)
        k = int(round(cfg.fitness.test_fraction * len(ids)))
        if len(ids) - k < cfg.fitness.anchors.n:
            raise ValueError(f"config key 'fitness.test_fraction': task {t} keeps {len(ids) - k} of its {len(ids)} "
                             f"items for the search, fewer than fitness.anchors.n = {cfg.fitness.anchors.n}")
        out[t] = sorted(rng.sample(ids, k))
    return out


def held_out_split(cfg: SearchConfig, rd: RunDir, item_ids) -> dict[str, list[str]] | None:
    """The run's held-out items (drawn and written once, read back on resume), or None without a split."""
    if cfg.fitness.type == "full" or not cfg.fitness.test_fraction:
        return None
    saved = rd.read_split()
    if saved is not None:
        return saved
    split = draw_test_split(cfg, item_ids)
    rd.write_split(split)
    return split


def prepare(cfg: SearchConfig, rd: RunDir, pool_factory, say) -> tuple[ScorerSpec, dict, FitnessState]:
    """Calibrates (auto), picks anchors and writes meta.json on the first run; re-reads them on resume."""
    meta = rd.read_meta()
    if meta and meta.get("config_digest") != cfg.digest():
        raise ValueError(f"{rd / CONFIG} was changed after the search started (its digest is not the one in "
                         f"{rd / 'meta.json'}); restore it, or start a new run directory")
    suites = []

    def suite():  # the tasks' items, loaded only when anchors must be drawn or meta.json written
        if not suites:
            from ..evaluation.lmeval import EvalOptions, TaskSuite

            suites.append(TaskSuite(cfg.tasks, include_path=cfg.include_path,
                                    options=EvalOptions.from_dict(cfg.evaluation), cache_dir=str(rd.path)))
        return suites[0]

    held_out = held_out_split(cfg, rd, lambda t: suite().item_ids(t))
    cal_dir = ensure_calibration(cfg, rd, pool_factory, say)
    calibration = Calibration.load(cal_dir) if cal_dir else None
    saved = rd.read_anchor_items()
    anchors = None
    adaptive = cfg.fitness.anchors.method == "adaptive"
    if cfg.fitness.type != "full" and not adaptive:
        if saved is not None and not cal_dir:
            anchors = Anchors.uniform(saved, method="random", seed=cfg.fitness.anchors.seed)
        else:
            anchors = choose_anchors(cfg, calibration, lambda task: suite().item_ids(task), test_items=held_out)
            if saved is None:
                rd.write_anchor_items(anchors.items)
            elif saved != anchors.items:
                raise ValueError(f"{rd / ANCHORS} does not match the calibration's anchor selection")
    if not meta:
        genome = make_genome(cfg)
        n_items = suite().n_items()
        meta = {"config_digest": cfg.digest(), "genome_names": list(genome.names()), "genome_dim": int(genome.dim),
                "n_items": n_items, "calibration": cal_dir,
                "anchor_counts": {t: len(v) for t, v in (anchors.items if anchors else {}).items()},
                "objective_names": cfg.objective_names, "n_objectives": cfg.n_objectives, "budget": cfg.budget,
                "calibration_items": calibration_items(cfg, cal_dir, n_items), "created": time.time()}
        rd.write_meta(meta)
    w = cfg.workers
    spec = ScorerSpec(base=cfg.base, models=list(cfg.models), genome=cfg.genome_config(), tasks=list(cfg.tasks),
                      include_path=cfg.include_path, evaluation=dict(cfg.evaluation), fitness=cfg.fitness.type,
                      estimator=cfg.fitness.estimator, calibration=cal_dir, anchors=anchors,
                      cache_dir=str(rd.path.resolve()), adaptive=adaptive_settings(cfg) if adaptive else None,
                      test_items=held_out, **w.materializer_options())
    fitness = FitnessState(cfg, spec, lambda seed: choose_anchors(cfg, calibration, lambda t: suite().item_ids(t),
                                                                  seed, held_out), calibration)
    return spec, meta, fitness


def adaptive_settings(cfg: SearchConfig) -> dict:
    """merge3.irt.adaptive.AdaptiveSettings of an adaptive fitness."""
    a = cfg.fitness.anchors
    return {"target_sd": a.target_sd, "max_items": a.n, "min_items": min(a.batch, a.n), "batch": a.batch,
            "exposure": a.exposure}


def calibration_items(cfg: SearchConfig, cal_dir: str | None, n_items: dict) -> int:
    """Items the run's own calibration evaluated (0 when it used none, or one made before it)."""
    if not cal_dir or cfg.fitness.calibration != "auto":
        return 0
    try:
        return int(read_json(f"{cal_dir}/calibration.json", "calibration file")["cost"]["items_total"])
    except (KeyError, TypeError, ValueError):
        n_models = len(cfg.models) + 1 + cfg.fitness.calibration_settings.n_random_merges
        return n_models * sum(n_items.values())
