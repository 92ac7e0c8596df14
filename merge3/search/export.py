"""``merge3 export RUN_DIR OUT_DIR``: chosen candidates as Hugging Face folders, checked on the full benchmarks.

Each candidate's recipe is decoded from its logged genome and merge seed (the very merge the search scored),
materialized in memory, evaluated on every item of every task (the held-out check: the search only saw
anchors), and written with the merge engine's export, its model card carrying the estimated and the full
scores. ``OUT_DIR/summary.md`` and ``summary.json`` hold the table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def choose(info_records: list[dict], cfg, front: bool, top: int | None, verified: dict | None = None) -> list[dict]:
    """The candidates to export: the K best by estimate (``top``), the estimated Pareto front (``front``), or
    by default the verified ranking when the search verified candidates (else the estimated front)."""
    from .front import best_by_estimate, objective_vector, pareto_front

    records = [r for r in info_records if r.get("status") == "ok"]
    checked = {k: v for k, v in (verified or {}).items() if v.get("status") == "ok"}
    if checked and top is None and not front:
        keyed = [(r, checked.get((r["generation"], r["index"]))) for r in records]
        return pareto_front([dict(r, F=objective_vector(cfg, v["full"])) for r, v in keyed if v], cfg.n_objectives)
    if top is not None:
        if top < 1:
            raise ValueError("--top K: K must be at least 1")
        return best_by_estimate(records, top)
    return pareto_front(records, cfg.n_objectives)


def thin(front: list[dict], k: int) -> list[dict]:
    """At most ``k`` members of a front, spread evenly along its first objective (extremes kept)."""
    if k is None or len(front) <= k:
        return front
    order = sorted(front, key=lambda r: r["F"][0])
    import numpy as np

    picks = sorted(set(int(round(v)) for v in np.linspace(0, len(order) - 1, k)))
    return [order[i] for i in picks]


EXPORTED = "merge3_candidate.json"  # in each exported folder: what was exported, and its scores


def _exported(folder: Path, rec: dict) -> dict:
    """The summary row of a candidate exported by an earlier (stopped) export into the same OUT_DIR. A folder
    appears only when complete (written to a temporary sibling, then renamed)."""
    try:
        row = json.loads((folder / EXPORTED).read_text())
    except (OSError, ValueError):
        raise FileExistsError(f"{folder} exists and was not written by merge3 export; choose another OUT_DIR or "
                              "remove it") from None
    if row.get("genome") != rec["genome"] or row.get("seed") != rec["seed"]:
        raise FileExistsError(f"{folder} holds another model than candidate {rec['candidate']} of this run; choose "
                              "another OUT_DIR or remove it")
    return row


def export_run(run_dir, out_dir, front: bool = False, top: int | None = None, evaluate: bool = True,
               progress: bool = True, max_candidates: int | None = None) -> dict:
    from ..evaluation.lmeval import accuracy
    from ..merging.export import export_merged
    from ..scoring import CandidateScorer, ScorerSpec, split_responses
    from ..files import atomic_write, write_error
    from .rundir import RunDir

    rd, out = Path(run_dir), Path(out_dir)
    run = RunDir(rd)
    cfg, meta, records, verified = run.read_config(), run.read_meta(), run.records(), run.verified()
    chosen = thin(choose(records, cfg, front, top, verified), max_candidates)
    if not chosen:
        raise ValueError(f"{rd}: no successfully evaluated candidate to export yet")
    done = {c["candidate"]: _exported(out / c["candidate"], c) for c in chosen if (out / c["candidate"]).exists()}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from None
    if done and progress:
        print(f"{out}: {len(done)} of {len(chosen)} candidate(s) already exported there; continuing", flush=True)

    w = cfg.workers
    scorer = CandidateScorer(ScorerSpec(
        base=cfg.base, models=list(cfg.models), genome=cfg.genome_config(), tasks=list(cfg.tasks),
        include_path=cfg.include_path, evaluation=dict(cfg.evaluation), fitness="full",
        cache_dir=str(rd.resolve()), **w.materializer_options()))
    fit = cfg.fitness
    used = sum((meta.get("anchor_counts") or {}).values()) or "all"
    held_out = run.read_split()
    rows = []
    for k, rec in enumerate(chosen):
        if rec["candidate"] in done:
            rows.append(done[rec["candidate"]])
            continue
        t0 = time.time()
        recipe = scorer.recipe(rec["genome"], rec["seed"])
        test = None
        if evaluate:
            answers = scorer.answer(recipe)
            full = accuracy(answers)
            if held_out:
                test = accuracy(split_responses(answers, held_out)[1])
        else:
            full = None
            scorer.materializer.apply(recipe)
        est = rec["objectives"]
        lines = [f"## merge3 search candidate {rec['candidate']}", "",
                 f"From run `{cfg.name}` (generation {rec['generation']}, index {rec['index']}); fitness "
                 f"{fit.type}" + (f" with estimator {fit.estimator}" if fit.type == "irt" else "")
                 + f" on {used} items." + (f" Held out from the search: {fit.test_fraction:.0%} of each task's items "
                                          "(split.json), scored in the last column." if test else ""), "",
                 "| task | estimated (search) | full benchmark |" + (" held-out test items |" if test else ""),
                 "|---|---|---|" + ("---|" if test else "")]
        for t in cfg.tasks:
            f = f"{full[t]:.4f}" if full else "not evaluated"
            lines.append(f"| {t} | {est.get(t, float('nan')):.4f} | {f} |" + (f" {test[t]:.4f} |" if test else ""))
        lines += ["", f"Genome: `{[round(v, 6) for v in rec['genome']]}`, merge seed {rec['seed']}."]
        row = {"candidate": rec["candidate"], "path": str(out / rec["candidate"]), "genome": rec["genome"],
               "seed": rec["seed"], "estimated": est, "full": full, "seconds": time.time() - t0}
        if test:
            row["test"] = test
        export_merged(scorer.materializer, recipe, out / rec["candidate"], extra_card_text="\n".join(lines) + "\n",
                      extra_files={EXPORTED: json.dumps(row, indent=1, sort_keys=True)})
        rows.append(row)
        if progress:
            fs = ", ".join(f"{t} est {est[t]:.3f}" + (f" / full {full[t]:.3f}" if full else "") for t in cfg.tasks)
            print(f"exported {rec['candidate']} ({k + 1}/{len(chosen)}): {fs}", flush=True)
    summary = {"run_dir": str(rd), "tasks": list(cfg.tasks), "candidates": rows,
               "full_items_per_model": sum(scorer.suite.n_items().values()) if evaluate else None}
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    atomic_write(out / "summary.md", summary_table(rows, cfg.tasks))
    print(summary_table(rows, cfg.tasks))
    return summary


def summary_table(rows: list[dict], tasks: list[str]) -> str:
    test = any(r.get("test") for r in rows)
    cols = ("est", "full", "test") if test else ("est", "full")
    head = "| candidate | " + " | ".join(f"{t} {c}" for t in tasks for c in cols) + " |"
    sep = "|---|" + "---|" * (len(cols) * len(tasks))
    lines = [head, sep]
    for r in rows:
        cells = []
        for t in tasks:
            cells.append(f"{r['estimated'][t]:.3f}")
            cells.append(f"{r['full'][t]:.3f}" if r.get("full") else "-")
            if test:
                cells.append(f"{r['test'][t]:.3f}" if r.get("test") else "-")
        lines.append(f"| {r['candidate']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
