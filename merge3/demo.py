"""``merge3 demo``: the whole MERGE3 pipeline on the small world, end to end, on a local Ray.

1. build (or reuse) the world; 2. calibrate (inside the run directory, once); 3. a short two-objective search
(Veltic math, the target no endpoint was trained on, vs Veltic language) with the endpoints on local Ray
workers; 4. export the Pareto front as Hugging Face folders, each evaluated on the full benchmarks;
5. a table: every endpoint and every exported merge on the full benchmarks, and what the search's evaluations
cost against evaluating every candidate fully. Re-running reuses every finished step.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_CONFIG = {
    "name": "demo",
    "seed": 0,
    "base": "base",
    "models": ["math_en", "lang_vl", "facts_en"],
    "tasks": ["tw_arith_vl", "tw_lang_vl"],
    "objectives": {"mode": "per_task"},
    "merge": {"method": "task_arithmetic", "parameters": {"weight": [0.0, 1.5]},
              "filters": ["embed_tokens", "lm_head"], "layer_granularity": 0},
    "fitness": {"type": "irt", "estimator": "mpirt", "calibration": "auto",
                "calibration_settings": {"n_random_merges": 6}, "anchors": {"method": "random", "n": 20}},
    "algorithm": {"name": "nsga2", "pop_size": 8, "generations": 4},
    "evaluation": {"batch_size": 64},
    "workers": {"cpus_per_worker": 1, "local_cpus": 2},
}
QUICK = {"algorithm": {"name": "nsga2", "pop_size": 6, "generations": 2},
         "fitness_calibration": {"n_random_merges": 4}}
MAX_EXPORT = 3  # front members exported and evaluated fully (spread along the front)


def demo_config(world: str = "small", quick: bool = False) -> dict:
    import copy

    cfg = copy.deepcopy(DEMO_CONFIG)
    cfg["world"] = world
    if quick:
        cfg["algorithm"] = dict(QUICK["algorithm"])
        cfg["fitness"]["calibration_settings"] = dict(QUICK["fitness_calibration"])
    return cfg


def _endpoint_scores(cfg, run_dir: Path) -> dict:
    """Full-benchmark accuracy of the base and each endpoint: from the calibration's full responses when it
    has them (it evaluated them fully), else evaluated here; cached in the run directory."""
    path = run_dir / "endpoint_scores.json"
    if path.exists():
        return json.loads(path.read_text())
    names = {"base": cfg.base, **{Path(m).name: m for m in cfg.models}}
    scores = {}
    cal_dir = run_dir / "calibration"
    if (cal_dir / "calibration.json").exists():
        from .irt import Calibration

        cal = Calibration.load(cal_dir)
        by_path = {str(Path(p).resolve()): n for n, p in _calibration_paths(cal_dir).items()}
        for name, p in names.items():
            key = by_path.get(str(Path(p).resolve()))
            if cal.store is not None and key is not None and key in cal.store:
                resp = cal.store.get(key)
                scores[name] = {t: sum(resp[t].values()) / len(resp[t]) for t in cfg.tasks}
    missing = [n for n in names if n not in scores]
    if missing:
        from .evaluation.lmeval import accuracy
        from .scoring import CandidateScorer, ScorerSpec

        scorer = CandidateScorer(ScorerSpec(base=cfg.base, models=list(cfg.models), genome=None,
                                            tasks=list(cfg.tasks), include_path=cfg.include_path,
                                            evaluation=dict(cfg.evaluation), cache_dir=str(run_dir)))
        for n in missing:
            scores[n] = accuracy(scorer.answer_model(names[n]))
    path.write_text(json.dumps(scores, indent=1, sort_keys=True))
    return scores


def _calibration_paths(cal_dir: Path) -> dict[str, str]:
    """{model name: path} of the base and endpoints a calibration evaluated."""
    meta = json.loads((cal_dir / "calibration.json").read_text())
    out = dict(meta.get("endpoint_paths") or {})
    if meta.get("base_path"):
        out["base"] = meta["base_path"]
    return out


def run_demo(run_dir="runs/demo", world: str = "small", quick: bool = False) -> dict:
    from .search.export import export_run
    from .search.runner import Search
    from .search.status import status
    from .world import resolve_world

    run_dir = Path(run_dir)
    w = resolve_world(world)
    print(f"demo: world {w.spec.size} at {w.root}", flush=True)
    search_dir = run_dir / "search"
    if (search_dir / "config.yaml").exists():
        print(f"demo: continuing the search in {search_dir}", flush=True)
        res = Search.open(search_dir).run()
    else:
        res = Search.create(demo_config(str(w.root), quick), run_dir=search_dir, config_name="demo",
                            base_dir=Path.cwd()).run()
    from .search.rundir import RunDir

    cfg = RunDir(search_dir).read_config()
    export_dir = run_dir / "export"
    if (export_dir / "summary.json").exists():
        summary = json.loads((export_dir / "summary.json").read_text())
    else:
        if export_dir.exists():
            import shutil

            shutil.rmtree(export_dir)  # an interrupted export
        summary = export_run(search_dir, export_dir, evaluate=True, progress=True,
                             max_candidates=MAX_EXPORT)
    scores = _endpoint_scores(cfg, search_dir)
    info = status(search_dir, plot_png=True)
    tasks = cfg.tasks
    lines = ["", "| model | " + " | ".join(tasks) + " | estimated (search) |",
             "|---|" + "---|" * len(tasks) + "---|"]
    for name, s in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[t]:.3f}" for t in tasks) + " | |")
    for row in summary["candidates"]:
        est = ", ".join(f"{row['estimated'][t]:.3f}" for t in tasks)
        lines.append(f"| merge {row['candidate']} | " + " | ".join(f"{row['full'][t]:.3f}" for t in tasks)
                     + f" | {est} |")
    c = info["cost"]
    used = c["items_evaluated"] + c["verification_items"]
    lines.append("")
    lines.append(f"search: {info['evaluations']} candidates in {info['generation']} generations; fitness evaluated "
                 f"{c['items_evaluated']} items"
                 + (f", plus {c['verification_items']} to verify the best {len(info['verified'])} on every item"
                    if c["verification_items"] else "")
                 + f", vs {c['items_full_evaluation']} for full evaluation "
                 f"({c['items_full_evaluation'] / max(used, 1):.0f}x fewer"
                 + (f"; {(c['items_full_evaluation']) / max(used + c['calibration_items'], 1):.1f}x "
                    f"counting the one-off calibration of {c['calibration_items']} items" if c["calibration_items"]
                    else "") + ")")
    lines.append(f"exported merges: {export_dir}; plot: {info.get('plot')}")
    table = "\n".join(lines)
    print(table)
    (run_dir / "demo.md").write_text(table + "\n")
    return {"scores": scores, "summary": summary, "status": info, "result": res}
