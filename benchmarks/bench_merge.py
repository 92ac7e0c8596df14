"""Per-candidate materialization time of every merge method, side by side with mergekit and a copy bound.

For each model (the tiny world's small models and a synthetic Llama whose size is a flag), thread count and method:
  ours      Materializer.apply(recipe): merged weights written in place into the live model (minimum of --repeats
            after one warm-up call, which also fills the magnitude/DELLA rank caches and compiles the fused
            kernels), once per kernel: eager (one pass per operation) and fused (one compiled pass per tensor);
  mergekit  mergekit 0.1.5 run_merge of the same recipe: merge and write to disk (one run; when that run takes
            under MERGEKIT_REPEAT_BELOW seconds, the minimum of --repeats runs, as for ours: a short run is
            mostly fixed cost and noise);
  copy      a plain copy of the bytes the merge reads (the resident base and the method's task vectors) into the
            live model's parameters: the memory-bandwidth bound (timed interleaved with ours, minimum too).
``--rank-cache on,off`` times the methods that rank (TIES, breadcrumbs, DELLA) with the rank cache and without it
(ranks recomputed per candidate, ``Materializer(rank_cache=False)``); each row says which (``rank_cache``; null for
methods without ranks). Prints a table and writes {"rows": [...]} JSON (``--append``: merged into the file's rows).
Runs without Ray. GPU shapes (1B, 8B): bench_merge_device.py.

    .venv/bin/python benchmarks/bench_merge.py --world small --hidden 512 --layers 8 --intermediate 1536 --threads 1,2
    .venv/bin/python benchmarks/bench_merge.py --world '' --hidden 512 --layers 8 --intermediate 1536 \
        --methods ties,breadcrumbs,della --rank-cache on,off --threads 1 --series rank_cache --append
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from merge3.merging.materializer import Materializer  # noqa: E402
from merge3.merging.recipe import MergeRecipe  # noqa: E402

METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
           "della", "della_linear", "slerp", "model_stock"]


def recipe_for(method: str, base: str, models: list[str], dtype: str) -> MergeRecipe:
    per = [{"weight": w, "density": d} for w, d in zip([0.5, 0.3, 0.2], [0.5, 0.7, 0.3])]
    if method == "linear":
        return MergeRecipe(method, base, models, model_parameters=[{"weight": p["weight"]} for p in per], dtype=dtype)
    if method == "task_arithmetic":
        return MergeRecipe(method, base, models, model_parameters=[{"weight": p["weight"]} for p in per], dtype=dtype)
    if method == "slerp":
        return MergeRecipe(method, base, models[:1], parameters={"t": [0.2, 0.8]}, dtype=dtype)
    if method == "model_stock":
        return MergeRecipe(method, base, models, dtype=dtype)
    if method in ("della", "della_linear"):
        per = [dict(p, epsilon=0.1) for p in per]
    return MergeRecipe(method, base, models, model_parameters=per, dtype=dtype, seed=0)


def synthetic_llama(out: Path, hidden: int, layers: int, intermediate: int, vocab: int, n_endpoints: int = 3,
                    dtype=torch.bfloat16) -> tuple[Path, list[Path], int]:
    """A random Llama base and endpoints = base + small noise, saved as safetensors (cached by size)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base_dir = out / "base"
    eps = [out / f"ep{i}" for i in range(n_endpoints)]
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 256),
                      vocab_size=vocab, max_position_embeddings=512, tie_word_embeddings=False)
    if not all((p / "config.json").is_file() for p in [base_dir] + eps):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(dtype)
        model.save_pretrained(base_dir, safe_serialization=True)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for i, ep in enumerate(eps):
            g = torch.Generator().manual_seed(100 + i)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.002
                    p.copy_((state[name].float() + noise).to(dtype))
            model.save_pretrained(ep, safe_serialization=True)
        del model, state
    return base_dir, eps, count_params(base_dir)


def perturbed_endpoints(base: Path, out: Path, n_endpoints: int = 3) -> list[Path]:
    """Endpoints of a real checkpoint for timing: its weights plus small noise, saved beside its config and
    tokenizer (cached in ``out``; merge speed does not depend on the values)."""
    import shutil

    from safetensors.torch import load_file, save_file

    eps = [out / f"ep{i}" for i in range(n_endpoints)]
    if all((p / "model.safetensors").is_file() for p in eps):
        return eps
    weights = {}
    for f in sorted(base.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    for i, ep in enumerate(eps):
        tmp = ep.with_name(ep.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
        g = torch.Generator().manual_seed(100 + i)
        save_file({k: (v.float() + torch.randn(v.shape, generator=g) * 0.002).to(v.dtype) for k, v in weights.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.rmtree(ep, ignore_errors=True)
        tmp.rename(ep)
    return eps


def count_params(path: Path) -> int:
    from merge3.merging.checkpoint import Checkpoint

    total = 0
    for shape, _ in Checkpoint(path).meta.values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def _copy_once(mat: Materializer, srcs: list) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for name, dst in mat._targets.items():
            for src in srcs:
                dst.data.copy_(src[name])
    return time.perf_counter() - t0


def time_side_by_side(mat: Materializer, recipe: MergeRecipe, repeats: int) -> tuple[float, float, float]:
    """(ours, copy bound, first call): one warm-up apply (it fills the rank caches), then ``repeats`` rounds of
    apply and copy back to back, so both see the same machine load; the minimum of each over the rounds.

    The copy bound copies the bytes this recipe's merge reads (the resident base and its task vectors) into the
    live parameters."""
    inputs = [p for p, _ in recipe.inputs()]
    srcs = [mat._base] + [mat._tv[next(m for m in mat.models if Path(m).resolve() == Path(p).resolve())]
                          for p in inputs if Path(p).resolve() != Path(mat.base_path).resolve()]
    t0 = time.perf_counter()
    mat.apply(recipe)
    first = time.perf_counter() - t0
    _copy_once(mat, srcs)
    ours, copy = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mat.apply(recipe)
        ours.append(time.perf_counter() - t0)
        copy.append(_copy_once(mat, srcs))
    mat.restore_base()
    return min(ours), min(copy), first


# A mergekit run shorter than this is timed --repeats times (minimum); longer ones once (they take up to 30 s).
MERGEKIT_REPEAT_BELOW = 2.0


def time_mergekit(recipe: MergeRecipe, repeats: int = 1) -> float | None:
    try:
        import yaml
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions
    except ImportError:
        return None
    cfg = MergeConfiguration.model_validate(yaml.safe_load(recipe.to_mergekit_yaml()))
    has_tok = (Path(recipe.base_model) / "tokenizer_config.json").is_file()  # synthetic models have none
    options = MergeOptions(device="cpu", quiet=True, copy_tokenizer=has_tok, random_seed=recipe.seed,
                           lazy_unpickle=False)
    times = []
    while not times or (len(times) < repeats and min(times) < MERGEKIT_REPEAT_BELOW):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_merge(cfg, str(Path(tmp) / "out"), options)
            times.append(time.perf_counter() - t0)
    return min(times)


def bench_model(label: str, base: Path, eps: list[Path], n_params: int, methods: list[str], repeats: int,
                device: str, with_mergekit: bool, kernels: list[str], threads: int,
                rank_caches: tuple = (True,), series: str | None = None) -> list[dict]:
    base = str(base.resolve())
    eps = [str(p.resolve()) for p in eps]
    mats = {}
    for kernel in kernels:
        for cache in rank_caches:
            t0 = time.perf_counter()
            mats[kernel, cache] = Materializer(base, eps, device=device, fused=kernel == "fused", rank_cache=cache)
            load = time.perf_counter() - t0
    mat = next(iter(mats.values()))
    dtype = str(mat.dtype).replace("torch.", "")
    print(f"[{label}, {threads} thread(s)] {n_params / 1e6:.1f}M params, {dtype}, loaded in {load:.1f}s, "
          f"resident {sum(mat.memory_bytes().values()) / 2**30:.2f} GiB per materializer", flush=True)
    rows = []
    for method in methods:
        recipe = recipe_for(method, base, eps, dtype)
        mk = time_mergekit(recipe, repeats) if with_mergekit else None
        for (kernel, cache), m in mats.items():
            uses = m.caches_ranks(recipe)
            if uses is None and cache != rank_caches[0]:
                continue  # a method without ranks: the cache setting changes nothing
            ours, bound, first = time_ours_any(m, recipe, repeats)
            row = {"method": method, "model": label, "params": n_params, "dtype": dtype, "device": str(m.device),
                   "threads": threads, "kernel": kernel, "rank_cache": uses,
                   "seconds_per_candidate": round(ours, 5), "first_call_seconds": round(first, 5),
                   "mergekit_seconds": None if mk is None else round(mk, 4), "copy_bound_seconds": round(bound, 5),
                   "speedup_vs_mergekit": None if mk is None else round(mk / ours, 2),
                   "ratio_to_copy_bound": round(ours / bound, 2)}
            if series:
                row["series"] = series
            rows.append(row)
            print(f"  {method:17s} {kernel:5s} ranks {_on_off(uses):3s} ours {ours:8.4f}s  mergekit {row['mergekit_seconds']}s  "
                  f"copy {bound:.4f}s  speedup {row['speedup_vs_mergekit']}x  /copy {row['ratio_to_copy_bound']}x",
                  flush=True)
    del mats, mat
    return rows


def _on_off(cache: bool | None) -> str:
    return "-" if cache is None else ("on" if cache else "off")


def time_ours_any(mat: Materializer, recipe: MergeRecipe, repeats: int):
    """slerp takes one endpoint: a materializer over all endpoints applies it through a sub-recipe."""
    if recipe.method != "slerp":
        return time_side_by_side(mat, recipe, repeats)
    # The materializer checks that a recipe lists its models; slerp's single endpoint is its first model.
    orig = mat.models
    mat.models = orig[:1]
    try:
        return time_side_by_side(mat, recipe, repeats)
    finally:
        mat.models = orig


def table(rows: list[dict]) -> str:
    head = (f"| {'model':20s} | {'thr':>3s} | {'method':17s} | {'kernel':6s} | {'ranks':5s} | {'ours s/cand':>11s} | "
            f"{'mergekit s':>10s} | {'copy s':>8s} | {'speedup':>8s} | {'/copy':>6s} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        mk = "n/a" if r["mergekit_seconds"] is None else f"{r['mergekit_seconds']:.3f}"
        sp = "n/a" if r["speedup_vs_mergekit"] is None else f"{r['speedup_vs_mergekit']:.1f}x"
        lines.append(f"| {r['model']:20s} | {r['threads']:3d} | {r['method']:17s} | {r['kernel']:6s} | "
                     f"{_on_off(r.get('rank_cache')):5s} | "
                     f"{r['seconds_per_candidate']:11.4f} | {mk:>10s} | "
                     f"{r['copy_bound_seconds']:8.4f} | {sp:>8s} | {r['ratio_to_copy_bound']:5.2f}x |")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _rank_caches(value: str) -> tuple:
    choices = {"on": True, "off": False}
    names = [v for v in value.split(",") if v]
    if not names or any(v not in choices for v in names):
        raise ValueError(f"--rank-cache: expected on, off or on,off, got {value!r}")
    return tuple(choices[v] for v in names)


_IDENTITY = ("model", "threads", "method", "kernel", "device", "rank_cache", "series")


def _appended(path: Path, rows: list[dict], meta: dict) -> dict:
    """The results already in ``path`` with ``rows`` merged in (a row of the same identity replaced) and this
    run's meta kept under meta["appended"], so that a few new rows need not re-run the whole benchmark."""
    old = json.loads(path.read_text()) if path.is_file() else {"rows": [], "meta": {}}
    new_ids = {tuple(r.get(k) for k in _IDENTITY) for r in rows}
    kept = [r for r in old["rows"] if tuple(r.get(k) for k in _IDENTITY) not in new_ids]
    old_meta = dict(old.get("meta", {}))
    old_meta["appended"] = [m for m in old_meta.get("appended", []) if m["command"] != meta["command"]] + [meta]
    return {"rows": kept + rows, "meta": old_meta}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="small", help="world size (micro/small) or path of a built world; '' to skip")
    ap.add_argument("--hidden", type=int, default=768, help="synthetic Llama hidden size (0: skip the synthetic model)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--synthetic-dir", default=None, help="cache for the synthetic models (default $MERGE3_HOME/bench)")
    ap.add_argument("--pretrained", default="", help="also a real checkpoint: smollm2 (SmolLM2-135M-Instruct, bf16, "
                                                      "from merge3 pretrained), with perturbed endpoints")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", default="1",
                    help="comma-separated torch CPU thread counts, each measured in turn for ours, the copy and "
                         "mergekit alike (0: torch's default)")
    ap.add_argument("--kernels", default="eager,fused", help="materializer kernels to time: eager, fused or both")
    ap.add_argument("--rank-cache", default="on", help="magnitude / DELLA rank cache: on, off or on,off (each "
                                                       "timed; off recomputes the ranks per candidate)")
    ap.add_argument("--series", default=None, help="a name stored in each row (tells a separate run's rows apart)")
    ap.add_argument("--append", action="store_true",
                    help="merge the rows into --out: keep its rows, replacing only those with the same model, "
                         "threads, method, kernel, rank cache and series")
    ap.add_argument("--no-mergekit", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "merge.json"))
    a = ap.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    kernels = [k for k in a.kernels.split(",") if k]
    rank_caches = _rank_caches(a.rank_cache)
    models = []
    if a.world:
        from merge3.world import resolve_world

        world = resolve_world(a.world)
        models.append((f"world-{world.spec.size}", world.base, list(world.endpoints.values()), count_params(world.base)))
    if a.hidden:
        home = Path(os.environ.get("MERGE3_HOME", Path.home() / ".cache" / "merge3"))
        d = Path(a.synthetic_dir) if a.synthetic_dir else home / "bench"
        d = d / f"llama-h{a.hidden}-l{a.layers}-i{a.intermediate}-v{a.vocab}"
        base, eps, n = synthetic_llama(d, a.hidden, a.layers, a.intermediate, a.vocab)
        models.append((f"llama-{n / 1e6:.0f}M", base, eps, n))
    if a.pretrained:
        from merge3.pretrained import MODELS, pretrained_folder

        home = Path(os.environ.get("MERGE3_HOME", Path.home() / ".cache" / "merge3"))
        base = pretrained_folder(a.pretrained)
        eps = perturbed_endpoints(base, home / "bench" / f"{base.name}-endpoints")
        n = count_params(base)
        models.append((f"{MODELS[a.pretrained]['name'].replace('-Instruct', '')} ({n / 1e6:.0f}M)", base, eps, n))
    rows = []
    for threads in [int(t) for t in a.threads.split(",")]:
        if threads:
            torch.set_num_threads(threads)
        for label, base, eps, n in models:
            rows += bench_model(label, base, eps, n, methods, a.repeats, a.device, not a.no_mergekit, kernels,
                                torch.get_num_threads(), rank_caches, a.series)
    print()
    print(table(rows))
    meta = {"torch": torch.__version__, "machine": platform.machine(), "processor": _cpu_name(),
            "cpu_count": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "timing": f"min over {a.repeats} interleaved repeats of ours and the copy, after one warm-up apply "
                      "(first_call_seconds, which fills the rank caches); mergekit: one run, or the min of "
                      f"{a.repeats} runs where one takes under {MERGEKIT_REPEAT_BELOW:g} s",
            "load_average": os.getloadavg(),
            "command": shlex.join(["benchmarks/bench_merge.py"] + (argv if argv is not None else sys.argv[1:]))}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    result = _appended(Path(a.out), rows, meta) if a.append else {"rows": rows, "meta": meta}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
