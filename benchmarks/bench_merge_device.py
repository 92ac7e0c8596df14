"""Merge speed and memory at real model shapes on one device (a GPU), with weights synthesized on the device.

Merge speed does not depend on the values, so no checkpoint is read: a Llama-shaped base (1B: Llama 3.2 1B's
shapes; 8B: Llama 3.1 8B's) and N endpoints (base + small noise, kept as task vectors) are drawn on the device,
and every tensor is merged exactly as ``Materializer.apply`` merges it (``kernels.merge_tensor`` into the live
tensor, rank caches, reused scratch), eager and fused. The copy bound copies the bytes a merge reads (the base
and the task vectors) into the live tensors. Peak memory is compared with the README's memory table:
2·P·b (live model + resident base) + N·P·b (task vectors) + scratch + rank caches.

Runs without Ray, transformers or a world; on a GPU machine with torch only:

    python benchmarks/bench_merge_device.py --shape 1b --device cuda
    python benchmarks/bench_merge_device.py --shape 8b --device cuda --endpoints 2 --methods task_arithmetic,ties,slerp

(``--shape tiny --device cpu`` checks the script anywhere.) Appends its rows to results/merge.json (rows with the
same model, device and threads are replaced). ``--profile`` instead profiles each method (torch.profiler over
the timed applies: where a candidate's time goes, by operation) and writes results/merge_profile.json. First it
checks that DARE/DELLA's draws on the device (eager and compiled) equal the CPU's bit for bit (``meta.draws``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from merge3.merging import draws  # noqa: E402
from merge3.merging.kernels import Workspace, merge_tensor  # noqa: E402
from merge3.merging.materializer import Materializer  # noqa: E402
from merge3.merging.recipe import MergeRecipe  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_merge import _cpu_name  # noqa: E402  (no heavy imports: transformers loads lazily there)

SHAPES = {  # hidden, layers, intermediate, kv heads x head dim, vocab, tied embeddings
    "tiny": (256, 2, 688, 128, 4096, False),
    "57m": (512, 8, 1536, 128, 32000, False),  # bench_merge.py's synthetic llama-57M
    "1b": (2048, 16, 8192, 512, 128256, True),
    "8b": (4096, 32, 14336, 1024, 128256, False),
}
METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
           "della", "della_linear", "slerp", "model_stock"]


def llama_tensors(shape: str) -> dict[str, tuple[int, ...]]:
    h, layers, inter, kv, vocab, tied = SHAPES[shape]
    out = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                    p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                    p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                    p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                    p + "post_attention_layernorm.weight": (h,)})
    out["model.norm.weight"] = (h,)
    if not tied:
        out["lm_head.weight"] = (vocab, h)
    return out


def recipe_for(method: str, n_models: int) -> MergeRecipe:
    models = [f"/ep{i}" for i in range(n_models)]
    per = [{"weight": w, "density": d} for w, d in zip([0.5, 0.3, 0.2, 0.1], [0.5, 0.7, 0.3, 0.6])][:n_models]
    if method in ("linear", "task_arithmetic"):
        return MergeRecipe(method, "/base", models, model_parameters=[{"weight": p["weight"]} for p in per])
    if method == "slerp":
        return MergeRecipe(method, "/base", models[:1], parameters={"t": [0.2, 0.8]})
    if method == "model_stock":
        return MergeRecipe(method, "/base", models)
    if method in ("della", "della_linear"):
        per = [dict(p, epsilon=0.1) for p in per]
    return MergeRecipe(method, "/base", models, model_parameters=per, seed=0)


class SyntheticMerge:
    """The materializer's resident state and apply loop over synthesized tensors."""

    def __init__(self, shape: str, n_models: int, device, dtype, fused: bool):
        self.shapes = llama_tensors(shape)
        self.n_layers = SHAPES[shape][1]
        self.device, self.fused = torch.device(device), fused
        g = torch.Generator(device=self.device).manual_seed(0)
        self.base, self.live, self.tv = {}, {}, [{} for _ in range(n_models)]
        for name, s in self.shapes.items():
            self.base[name] = (torch.randn(s, generator=g, device=self.device) * 0.02).to(dtype)
            self.live[name] = self.base[name].clone()
            for tv in self.tv:
                tv[name] = (torch.randn(s, generator=g, device=self.device) * 0.002).to(dtype)
        self.params = sum(t.numel() for t in self.base.values())
        self.work, self.ranks = Workspace(), {}

    def _ranks(self, kind, name, i):
        key = (kind, name, i)
        if key not in self.ranks:
            self.ranks[key] = Materializer._RANKERS[kind](self.tv[i][name].to(torch.float32))
        return self.ranks[key]

    @torch.no_grad()
    def apply(self, recipe: MergeRecipe) -> None:
        spec = recipe.spec
        n = len(recipe.inputs())
        for name in self.shapes:
            shared, per_model = recipe.resolve(name, self.n_layers)
            deltas = [tv[name] for tv in self.tv[:n]]
            ranks = ([self._ranks(spec.sparsify, name, i) for i in range(n)]
                     if spec.sparsify in Materializer._RANKERS else None)
            merge_tensor(spec, name, self.base[name], deltas, shared, per_model, seed=recipe.seed,
                         out=self.live[name], ranks=ranks, work=self.work, fused=self.fused)

    @torch.no_grad()
    def copy(self, n_inputs: int) -> None:
        for name, dst in self.live.items():
            for src in [self.base] + self.tv[:n_inputs]:
                dst.copy_(src[name])


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def draws_agree(device, n: int = 1 << 20) -> dict:
    """DARE/DELLA masks must not depend on the device or the kernels: the eager draws on ``device``, the
    compiled ones there (what the fused kernels compute) and the CPU's, compared bit for bit."""
    key = draws.key(0, "model.layers.0.mlp.up_proj.weight", 1)
    cpu = draws.uniform(key, n)
    eager = draws.uniform(key, n, device).cpu()
    compiled = torch.compile(lambda k: draws.uniform_at(draws.index(n, k.device), k[0], k[1]))
    fused = compiled(draws.key_tensor(key, device)).cpu()
    return {"eager_equals_cpu": bool(torch.equal(eager, cpu)), "compiled_equals_cpu": bool(torch.equal(fused, cpu))}


def profile_ops(apply, repeats: int, cuda: bool, top: int = 15) -> list[dict]:
    """Time per operation over ``repeats`` applies, largest first: each fused kernel (``merge3.fused.*``, with
    its guards and wrapper), each eager operation by self time. ``share``: of the profiled total."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            apply()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1

    def row(e, time_us):
        return {"op": e.key, "calls_per_candidate": e.count / repeats,
                "seconds_per_candidate": round(time_us / 1e6 / repeats, 5), "share": round(time_us / total, 4)}

    # each fused kernel (merge3.fused.*) with everything it ran (the compiled graph, dynamo's guards)
    fused = [row(e, e.device_time_total if cuda else e.cpu_time_total) for e in events if e.key.startswith("merge3.")]
    rest = [row(e, getattr(e, attr)) for e in events if not e.key.startswith("merge3.")
            and "Compiled" not in e.key and "Dynamo" not in e.key and "Pregraph" not in e.key
            and "AOTDispatcher" not in e.key]
    return sorted(fused + rest, key=lambda r: r["seconds_per_candidate"], reverse=True)[:top]


def _meta(a, argv, device_name, agree) -> dict:
    return {"command": " ".join(["benchmarks/bench_merge_device.py"] + (argv if argv is not None else sys.argv[1:])),
            "draws": agree,
            "torch": torch.__version__, "device": device_name, "cpu_count": os.cpu_count(),
            "processor": _cpu_name()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="1b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--endpoints", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--kernels", default="eager,fused")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="default results/merge.json (--profile: results/merge_profile.json)")
    ap.add_argument("--profile", action="store_true", help="profile each method by operation instead of appending "
                                                           "rows to merge.json")
    a = ap.parse_args(argv)
    a.out = a.out or str(ROOT / "benchmarks" / "results" / ("merge_profile.json" if a.profile else "merge.json"))
    dtype = getattr(torch, a.dtype)
    cuda = torch.device(a.device).type == "cuda"
    device_name = torch.cuda.get_device_name(a.device) if cuda else "cpu"
    agree = draws_agree(a.device)
    print(f"DARE/DELLA draws on {device_name}: {agree}", flush=True)
    rows = []
    for kernel in a.kernels.split(","):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(a.device)
        sm = SyntheticMerge(a.shape, a.endpoints, a.device, dtype, fused=kernel == "fused")
        b = torch.tensor([], dtype=dtype).element_size()
        resident = (2 + a.endpoints) * sm.params * b
        print(f"[{a.shape}, {sm.params / 1e9:.2f}B params, {a.dtype}, {a.endpoints} endpoints, {device_name}, "
              f"{kernel}] resident {resident / 2**30:.1f} GiB", flush=True)
        for method in a.methods.split(","):
            recipe = recipe_for(method, a.endpoints)
            row = {"method": method, "model": f"synthetic-llama-{a.shape}", "params": sm.params, "dtype": a.dtype,
                   "device": device_name, "threads": torch.get_num_threads(), "kernel": kernel,
                   "endpoints": a.endpoints}
            try:
                first = _timed(lambda: sm.apply(recipe), a.device)
                ours = min(_timed(lambda: sm.apply(recipe), a.device) for _ in range(a.repeats))
                n_in = len(recipe.inputs())
                bound = min(_timed(lambda: sm.copy(n_in), a.device) for _ in range(a.repeats))
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                rows.append(row)
                print(f"  {method:17s} out of memory", flush=True)
                sm.ranks.clear()
                continue
            row.update({"seconds_per_candidate": round(ours, 5), "first_call_seconds": round(first, 4),
                        "copy_bound_seconds": round(bound, 5), "ratio_to_copy_bound": round(ours / bound, 2),
                        "speedup_vs_mergekit": None,  # mergekit is not installed on the device machine
                        "copy_bandwidth_GBps": round((n_in + 1) * sm.params * b / bound / 1e9, 1)})
            if cuda:
                row["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated(a.device) / 2**30, 2)
                row["readme_formula_GiB"] = round((resident + sum(
                    t.numel() * t.element_size() for t in sm.ranks.values())) / 2**30, 2)
            if a.profile:
                row["profile"] = profile_ops(lambda: sm.apply(recipe), a.repeats, cuda)
                for op in row["profile"][:8]:
                    print(f"      {op['share']:6.1%}  {op['seconds_per_candidate']:8.4f}s  {op['op']}")
            rows.append(row)
            print(f"  {method:17s} {ours:8.4f}s/candidate  copy {bound:.4f}s  /copy {row['ratio_to_copy_bound']}x"
                  + (f"  peak {row['peak_memory_GiB']} GiB" if cuda else ""), flush=True)
            sm.ranks.clear()  # one method's rank cache at a time, as a search uses one method
        del sm
    out = Path(a.out)
    if a.profile:
        out.write_text(json.dumps({"rows": rows, "meta": _meta(a, argv, device_name, agree)}, indent=2) + "\n")
        print(f"wrote {out}")
        return 0
    data = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    keys = {(r["model"], r["device"], r["threads"]) for r in rows}
    data["rows"] = [r for r in data["rows"] if (r["model"], r["device"], r.get("threads")) not in keys] + rows
    data.setdefault("meta", {})[f"device_{a.shape}"] = _meta(a, argv, device_name, agree)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
