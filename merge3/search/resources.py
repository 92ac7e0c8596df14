"""A search config resolved against the disk: world names to paths, models, genome, tasks and calibration.

:func:`load_config` is the one way in: it reads a YAML (or takes a dict), normalizes it
(:mod:`merge3.search.config`), resolves world model names and relative paths, and (``check``) checks that the
models exist and are mergeable, the genome decodes, lm-eval knows every task, and a given calibration covers
the tasks. Every problem is one line naming the key, file or task, raised before anything is written.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from .config import SearchConfig, normalize, read_yaml


def _resolve_model(ref: str, key_: str, world, base_dir: Path | None) -> str:
    if world is not None and ref in (["base"] + list(world.endpoints)):
        return str(world.model(ref).resolve())
    p = Path(ref).expanduser()
    if not p.is_absolute() and base_dir is not None and not p.exists():
        p = base_dir / p
    if not p.exists():
        hint = f" (world models: base, {', '.join(world.endpoints)})" if world is not None else ""
        raise FileNotFoundError(f"config key {key_!r}: model {ref!r} not found{hint}")
    if not (p / "config.json").is_file():
        raise ValueError(f"config key {key_!r}: {p} is not a Hugging Face model folder (no config.json)")
    return str(p.resolve())


def resolve_paths(cfg: SearchConfig, base_dir: Path | None = None) -> SearchConfig:
    """Turns world names into absolute paths (building or reusing the world when named by size)."""
    world, world_ref = None, cfg.world
    if cfg.world is not None:
        from ..world import is_world_name, load_world, resolve_world

        ref = str(cfg.world)
        if is_world_name(ref):
            world = resolve_world(ref)
        else:
            p = Path(ref).expanduser()
            if not p.is_absolute() and base_dir is not None and not p.exists():
                p = base_dir / p
            world = load_world(p)
        world_ref = str(world.root.resolve())
    base = _resolve_model(cfg.base, "base", world, base_dir)
    models = [_resolve_model(m, f"models[{i}]", world, base_dir) for i, m in enumerate(cfg.models)]
    if len(set(models + [base])) != len(models) + 1:
        raise ValueError("config key 'models': the same model is listed twice (or is also the base)")
    include = cfg.include_path
    if include is None and world is not None:
        include = str(world.tasks_dir.resolve())
    elif include is not None:
        p = Path(include).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_dir():
            raise FileNotFoundError(f"config key 'include_path': {p} is not a directory")
        include = str(p.resolve())
    return dataclasses.replace(cfg, world=world_ref, base=base, models=models, include_path=include)


def make_genome(cfg: SearchConfig):
    from ..genome import Genome, n_layers_of

    try:
        return Genome.from_config(cfg.genome_config(), len(cfg.models), n_layers_of(cfg.base))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"config key 'merge': {exc}") from None


def validate_resources(cfg: SearchConfig) -> None:
    """Disk-level checks on a resolved config: models compatible, genome valid, tasks known, calibration."""
    from ..evaluation.lmeval import unknown_tasks
    from ..merging.checks import check_compatible

    try:
        source = cfg.merge.tokenizer_source
        if source is None:
            check_compatible(cfg.base, cfg.models)
        else:  # the vocabularies may differ: tokenizers loaded and rows checked now, before any evaluation
            from ..merging.vocab import Vocabulary, check_rows

            vocab = Vocabulary.build(source, cfg.base, list(cfg.models) + [cfg.base], cfg.base)
            check_rows(vocab, check_compatible(cfg.base, cfg.models, vocab_tensors=vocab.tensors))
    except ValueError as exc:
        raise ValueError(f"config key 'models': incompatible models: {exc}") from None
    g = make_genome(cfg)
    if g.dim < 1:
        raise ValueError("config key 'merge.parameters': the genome has no free genes")
    # a decode of the centre of the cube checks method/parameter combinations before any evaluation
    try:
        g.decode([0.5] * g.dim, base=cfg.base, models=cfg.models, seed=0).validate()
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"config key 'merge': {exc}") from None
    missing = unknown_tasks(cfg.tasks, cfg.include_path)
    if missing:
        where = f" (include path {cfg.include_path})" if cfg.include_path else ""
        raise ValueError(f"config key 'tasks': lm-eval does not know task(s) {missing}{where}")
    if cfg.fitness.type != "full":
        check_anchor_count(cfg)
    cal = cfg.fitness.calibration
    if cal not in (None, "auto"):
        p = Path(cal)
        if not p.is_dir():
            raise FileNotFoundError(f"config key 'fitness.calibration': {p} is not a directory "
                                    "(use auto to calibrate inside the run directory)")
        from ..irt import Calibration

        lacking = [t for t in cfg.tasks if t not in Calibration.load(p).tasks]
        if lacking:
            raise ValueError(f"config key 'fitness.calibration': {p} has no calibration for task(s) {lacking}")


def check_anchor_count(cfg: SearchConfig) -> None:
    """More anchors than a task has items is a config error, not a silent full evaluation."""
    from ..evaluation.lmeval import EvalOptions, TaskSuite

    n_items = TaskSuite(cfg.tasks, include_path=cfg.include_path,
                        options=EvalOptions.from_dict(cfg.evaluation)).n_items()
    for t in cfg.tasks:
        if cfg.fitness.anchors.n > n_items[t]:
            raise ValueError(f"config key 'fitness.anchors.n': {cfg.fitness.anchors.n} anchors per task, but task {t} "
                             f"has {n_items[t]} items")


def load_config(path_or_config, name: str | None = None, base_dir: Path | None = None,
                check: bool = True) -> SearchConfig:
    """Reads (if a path), normalizes, resolves and (``check``) validates a search config. Writes nothing."""
    if isinstance(path_or_config, SearchConfig):
        cfg = path_or_config
    elif isinstance(path_or_config, (str, Path)):
        p = Path(path_or_config)
        base_dir = base_dir or p.resolve().parent
        cfg = normalize(read_yaml(p), name=name or p.stem, base_dir=base_dir)
    else:
        cfg = normalize(copy.deepcopy(path_or_config), name=name, base_dir=base_dir)
    cfg = resolve_paths(cfg, base_dir=base_dir or Path.cwd())
    if check:
        validate_resources(cfg)
    return cfg
