"""``merge3 status RUN_DIR``: progress, front, cost saved; a Pareto-front / convergence plot.

Reads only files (config.yaml, meta.json, evaluations.jsonl, checkpoint generation via progress.json), takes no
lock, so it works while a search runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from .front import front_entry, pareto_front, verified_ranking
from .rundir import RunDir


def collect(run_dir) -> dict:
    rd = RunDir(run_dir)
    cfg, meta, records = rd.read_config(), rd.read_meta(), rd.records()
    prog = rd.read_progress()
    done = rd.is_done()
    front = pareto_front(records, cfg.n_objectives)
    budget = cfg.budget
    full_per = sum((meta.get("n_items") or {}).values())
    verified = rd.verified()
    search_items = sum(r.get("items_evaluated", 0) for r in records)
    ver_items = sum(v.get("items_evaluated", 0) for v in verified.values())
    items = search_items + ver_items
    full = full_per * len(records)
    cal_items = int(meta.get("calibration_items") or 0)
    cost = {"items_evaluated": search_items, "verification_items": ver_items, "items_full_evaluation": full,
            "fraction_of_full": (items / full) if full else None,
            "saved_fraction": (1 - items / full) if full else None,
            "calibration_items": cal_items,
            "saved_fraction_incl_calibration": (1 - (items + cal_items) / full) if full else None,
            "evaluation_seconds": sum(r.get("seconds", 0.0) for r in records)
            + sum(v.get("seconds", 0.0) for v in verified.values())}
    return {"run_dir": str(rd.path), "name": cfg.name, "algorithm": cfg.algorithm.name,
            "generation": prog.get("generation", 0), "generations": cfg.algorithm.generations,
            "evaluations": len(records), "budget": budget, "budget_left": max(0, budget - len(records)),
            "failed": sum(1 for r in records if r.get("status") != "ok"), "done": done,
            "objective_names": cfg.objective_names,
            "front": [front_entry(r, cfg.objective_names, verified) for r in front],
            "verified": verified_ranking(records, verified, cfg), "cost": cost, "_records": records}


def plot(info: dict, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = [r for r in info["_records"] if r.get("F") is not None]
    if not records:
        return None
    names = info["objective_names"] or ["objective"]
    F = -np.array([r["F"] for r in records], dtype=float)
    gens = np.array([r["generation"] for r in records])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ax = axes[0]
    front = info["front"]
    if F.shape[1] >= 2:
        sc = ax.scatter(F[:, 0], F[:, 1], c=gens + 1, cmap="viridis", s=18, alpha=0.7)
        fig.colorbar(sc, ax=ax, label="generation")
        P = np.array([[e["objectives"][names[0]], e["objectives"][names[1]]] for e in front])
        order = np.argsort(P[:, 0])
        ax.plot(P[order, 0], P[order, 1], "r-o", ms=5, label="Pareto front")
        ax.set_xlabel(f"{names[0]} (estimated)")
        ax.set_ylabel(f"{names[1]} (estimated)")
        ax.set_title("candidates and Pareto front" + (" (first two objectives)" if F.shape[1] > 2 else ""))
        ax.legend()
    else:
        ax.scatter(np.arange(len(F)), F[:, 0], c=gens + 1, cmap="viridis", s=18)
        ax.set_xlabel("evaluation")
        ax.set_ylabel(f"{names[0]} (estimated)")
        ax.set_title("all candidates")
    ax = axes[1]
    G = int(gens.max()) + 1
    for k, n in enumerate(names):
        best = [F[gens <= g, k].max() for g in range(G)]
        mean = [F[gens == g, k].mean() for g in range(G)]
        line = ax.plot(range(1, G + 1), best, "-o", label=f"{n} best so far")[0]
        ax.plot(range(1, G + 1), mean, "--", color=line.get_color(), alpha=0.6, label=f"{n} generation mean")
    ax.set_xlabel("generation")
    ax.set_xticks(range(1, G + 1))
    ax.set_ylabel("estimated accuracy")
    ax.set_title("convergence")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def status(run_dir, plot_png: bool = True) -> dict:
    info = collect(run_dir)
    if plot_png:
        try:
            p = plot(info, Path(run_dir) / "status.png")
            info["plot"] = str(p) if p else None
        except PermissionError:
            info["plot"] = None
    info.pop("_records")
    return info


def print_status(run_dir, as_json: bool = False, plot: bool = True) -> dict:
    info = status(run_dir, plot_png=plot)
    if as_json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return info
    c = info["cost"]
    state = "done" if info["done"] else "not finished"
    print(f"run {info['run_dir']} ({info['name']}, {info['algorithm']}): {state}")
    print(f"generation {info['generation']}/{info['generations']}, {info['evaluations']} evaluations "
          f"({info['failed']} failed), budget left {info['budget_left']} of {info['budget']}")
    if c["items_full_evaluation"]:
        ver = f" + {c['verification_items']} verifying" if c["verification_items"] else ""
        print(f"cost: {c['items_evaluated']} items evaluated{ver} vs {c['items_full_evaluation']} for full evaluation "
              f"({100 * c['saved_fraction']:.1f}% saved"
              + (f"; {100 * c['saved_fraction_incl_calibration']:.1f}% counting the calibration's "
                 f"{c['calibration_items']} items" if c["calibration_items"] else "") + ")")
    names = info["objective_names"]
    print(("Pareto front" if len(names) > 1 else "best") + f" ({len(info['front'])}):")
    print("  candidate      " + "  ".join(f"{n:>14}" for n in names) + "   genome")
    for e in info["front"]:
        g = ", ".join(f"{v:.3f}" for v in e["genome"])
        print(f"  {e['candidate']:<14} " + "  ".join(f"{e['objectives'][n]:>14.4f}" for n in names) + f"   [{g}]")
    if info["verified"]:
        test = all("test_objectives" in e for e in info["verified"])
        print(f"verified on every item ({len(info['verified'])}), best first"
              + (" (test: the held-out items, never used by the search):" if test else ":"))
        print("  candidate      " + "  ".join(f"{n + (' est/all/test' if test else ' est/all'):>34}" for n in names))
        for e in info["verified"]:
            print(f"  {e['candidate']:<14} " + "  ".join(
                f"{e['objectives'][n]:>11.4f} / {e['verified_objectives'][n]:<10.4f}"
                + (f" / {e['test_objectives'][n]:<8.4f}" if test else "") for n in names))
    if info.get("plot"):
        print(f"plot: {info['plot']}")
    return info
