"""Builds the tiny world: tokenizer, base model, endpoint models and benchmarks, cached by a hash of its spec.

A world is a directory::

    world.json              spec, spec hash, models, tasks, sha256 of every weight and data file
    models/<name>/          Hugging Face folders (safetensors, config.json, tokenizer files)
    tasks/<task>.yaml       lm-eval task files
    tasks/data/<task>.jsonl their items

It is written into a temporary sibling directory and renamed into place only when complete, so a crash
never leaves a half-built world where a later run would take it for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import language as L
from . import tasks as T
from ..progress import progress as _progress

WORLD_VERSION = 3  # bump when generators or training change, so old caches are not reused


@dataclass(frozen=True)
class WorldSpec:
    size: str
    seed: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    block: int
    batch: int
    base_steps: int
    endpoint_steps: int
    base_lr: float
    endpoint_lr: float
    items_per_task: int
    creatures: int
    version: int = WORLD_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


SIZES = {
    # micro: for tests, builds in about a minute on a free core. Fewer items keep test evaluations quick; a higher
    # endpoint learning rate lets its small math endpoint learn enough arithmetic for a merge to pay off.
    "micro": dict(hidden=64, intermediate=160, layers=2, heads=4, kv_heads=2, block=64, batch=32,
                  base_steps=400, endpoint_steps=500, base_lr=3e-3, endpoint_lr=4e-3,
                  items_per_task=200, creatures=70),
    # small: the demo's world, at least 1000 items per task.
    "small": dict(hidden=96, intermediate=256, layers=4, heads=4, kv_heads=2, block=64, batch=32,
                  base_steps=1200, endpoint_steps=1000, base_lr=3e-3, endpoint_lr=2e-3,
                  items_per_task=1000, creatures=340),
}
ENDPOINTS = {
    "math_en": "arithmetic word problems in English",
    "lang_vl": "general text in Veltic, the second language",
    "facts_en": "facts about made-up creatures (the distractor)",
}


# Fine-tuning steps per endpoint, as a fraction of ``endpoint_steps``: arithmetic takes the longest to learn.
STEP_SHARE = {"math_en": 1.5, "lang_vl": 1.2, "facts_en": 0.5}
# Learning rate per endpoint, as a multiple of ``endpoint_lr``: the language endpoint learns only vocabulary rows.
LR_SCALE = {"math_en": 1.0, "lang_vl": 1.5, "facts_en": 1.0}
# Parameters an endpoint's fine-tune leaves fixed. The math endpoint keeps the base's word embeddings, so its
# circuits read the features the base gave the words (e.g. the direction of gets/loses), which the language
# endpoint also gives the Veltic words: the two endpoints' skills compose in a merge.
FROZEN = {"math_en": ("embed_tokens",), "lang_vl": ("layers", "model.norm"), "facts_en": ()}


def endpoint_steps(spec: "WorldSpec", name: str) -> int:
    return max(1, round(spec.endpoint_steps * STEP_SHARE[name]))


def is_world_name(ref) -> bool:
    """Whether ``ref`` names a world merge3 builds (micro, small, smollm2) rather than a path."""
    from .real import REAL_SIZES

    return str(ref) in SIZES or str(ref) in REAL_SIZES


def world_spec(size: str, seed: int = 0):
    """The spec of a tiny world (micro, small) or of a real-model world (smollm2: ``merge3.world.real``)."""
    from .real import REAL_SIZES, real_world_spec

    if size in REAL_SIZES:
        return real_world_spec(size, seed)
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r}: expected one of {', '.join([*SIZES, *REAL_SIZES])}")
    return WorldSpec(size=size, seed=seed, **SIZES[size])


def _spec_from_json(spec: dict):
    from .real import RealWorldSpec

    return RealWorldSpec(**spec) if spec.get("kind") == "real" else WorldSpec(**spec)


@dataclass
class World:
    """A built world on disk."""

    root: Path
    spec: WorldSpec
    files: dict = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.root / "models" / "base"

    @property
    def endpoints(self) -> dict[str, Path]:
        return {name: self.root / "models" / name for name in ENDPOINTS}

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def task_names(self) -> list[str]:
        return list(T.TASKS)

    def model(self, name: str) -> Path:
        if name == "base":
            return self.base
        if name not in ENDPOINTS:
            raise ValueError(f"world has no model {name!r}: expected base or one of {', '.join(ENDPOINTS)}")
        return self.endpoints[name]


def default_cache() -> Path:
    return Path(os.environ.get("MERGE3_HOME", Path.home() / ".cache" / "merge3"))


def world_dir(spec: WorldSpec, out: Path | None = None) -> Path:
    return Path(out) if out is not None else default_cache() / "worlds" / f"{spec.size}-{spec.digest()}"


VERIFIED = ".verified.json"  # size and mtime of each file when its sha256 last matched world.json


def load_world(root: Path, verify: bool = True) -> World:
    """The world at ``root``; with ``verify``, each weight and data file is checked against the sha256 that
    world.json records (once: a file whose size and mtime are unchanged since it last matched is not hashed
    again)."""
    meta_path = Path(root) / "world.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a merge3 world (no world.json); build one with `merge3 world build`")
    try:
        meta = json.loads(meta_path.read_text())
        world = World(root=Path(root), spec=_spec_from_json(meta["spec"]), files=dict(meta["files"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path}: malformed world file ({exc})") from None
    if verify:
        verify_world(world)
    return world


def verify_world(world: World) -> None:
    """Each file world.json lists has its recorded sha256 (an error naming the first that does not)."""
    root = world.root
    stamp_path = root / VERIFIED
    try:
        stamps = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
    except (OSError, ValueError):
        stamps = {}
    fresh = {}
    for rel, sha in sorted(world.files.items()):
        p = root / rel
        try:
            st = p.stat()
        except OSError:
            raise FileNotFoundError(f"{p}: missing from the world at {root}; delete {root} and build it "
                                    "again") from None
        sig = [st.st_size, st.st_mtime_ns, sha]
        if stamps.get(rel) != sig:
            if _sha256(p) != sha:
                raise ValueError(f"{p}: sha256 differs from the one recorded in {root / 'world.json'} (the file is "
                                 f"damaged or was changed); delete {root} and build it again")
        fresh[rel] = sig
    if fresh != stamps:
        try:  # a read-only shared cache is verified each time instead
            from ..files import atomic_write

            atomic_write(stamp_path, json.dumps(fresh, sort_keys=True))
        except OSError:
            pass


def resolve_world(name_or_path: str) -> World:
    """``micro``/``small``/``smollm2`` (built or reused from the cache) or the path of a built world."""
    if is_world_name(name_or_path):
        return build_world(name_or_path)
    return load_world(Path(name_or_path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_writable(root: Path) -> None:
    parent = root.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise PermissionError(f"cannot write the world to {root}: {probe} is not a writable directory")


def build_world(size: str = "small", out: str | Path | None = None, seed: int = 0, progress: bool = True) -> World:
    """Builds the world (or reuses a complete one with the same spec) and returns it."""
    spec = world_spec(size, seed)
    root = world_dir(spec, Path(out) if out is not None else None)
    if (root / "world.json").is_file():
        world = load_world(root)
        if world.spec != spec:
            raise ValueError(f"{root} holds a different world ({world.spec.size}, seed {world.spec.seed}, "
                             f"version {world.spec.version}); choose another --out")
        return world
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a merge3 world; choose an empty or new --out")
    _check_writable(root)
    if getattr(spec, "kind", None) == "real":  # the checkpoint first: a missing package is said before any work
        from ..pretrained import pretrained_folder

        pretrained_folder(spec.pretrained, dtype="float32", progress=print if progress else (lambda m: None))

    from ..files import publish_dir

    # world.json is written last; another process may build the same world meanwhile (same files)
    publish_dir(root, lambda tmp: _build_into(tmp, root, spec, progress), "world.json")
    return load_world(root)


def _build_into(tmp: Path, final: Path, spec, progress: bool) -> None:
    if getattr(spec, "kind", None) == "real":
        from .real import build_into

        _write_meta(tmp, build_into(tmp, final, spec, progress))
        return
    from .train import make_tokenizer  # torch is imported only when building

    lexicon = L.Lexicon.build(spec.seed, spec.creatures)
    for task in T.TASKS:
        T.write_task(task, T.make_items(task, lexicon, spec.seed, spec.items_per_task), tmp / "tasks", final / "tasks")

    import torch

    tokenizer = make_tokenizer(lexicon.vocabulary())
    # One thread: the same floating-point reductions on every machine with the same kind of CPU (so the same
    # weights; other vector units pick other kernels), and no thread contention on a busy machine (two threads
    # competing with other work ran ten times slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_all(tmp, spec, lexicon, tokenizer, progress)
    finally:
        torch.set_num_threads(threads)

    _write_meta(tmp, {"spec": asdict(spec), "hash": spec.digest(), "tasks": T.TASKS, "endpoints": ENDPOINTS})


def _write_meta(tmp: Path, meta: dict) -> None:
    """world.json, written last: the spec and the sha256 of every weight and data file."""
    meta["files"] = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*"))
                     if p.is_file() and (p.suffix in (".safetensors", ".jsonl"))}
    (tmp / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _train_all(tmp: Path, spec: WorldSpec, lexicon, tokenizer, progress: bool) -> None:
    from .train import new_model, train_model

    total = spec.base_steps + sum(endpoint_steps(spec, name) for name in ENDPOINTS)
    bar = _progress(total, f"building {spec.size} world", progress)
    try:
        base = new_model(spec, len(tokenizer))
        docs = T.corpus_documents("base", lexicon, spec.seed, spec.base_steps * spec.batch)
        train_model(base, tokenizer, docs, spec, spec.base_steps, spec.base_lr, seed=spec.seed, bar=bar, label="base")
        _save(base, tokenizer, tmp / "models" / "base")
        jobs = [(str(tmp), asdict(spec), name, i, tokenizer, base.state_dict()) for i, name in enumerate(ENDPOINTS)]
        workers = min(len(jobs), build_processes())
        if workers == 1:
            for job in jobs:
                _train_endpoint(*job, bar=bar)
        else:
            _train_in_processes(jobs, workers, bar)
    finally:
        bar.close()


def build_processes() -> int:
    """Cores this process may use: the endpoints' fine-tunes run on that many processes (at most one each)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _train_endpoint(tmp: str, spec: dict, name: str, index: int, tokenizer, base_state: dict, bar=None) -> None:
    """Fine-tunes one endpoint from the base on one thread (in this process or a worker process: the same
    bits either way, since each fine-tune is single-threaded and seeded by its index) and saves it."""
    import torch

    from .train import new_model, train_model

    torch.set_num_threads(1)
    spec = WorldSpec(**spec)
    lexicon = L.Lexicon.build(spec.seed, spec.creatures)
    model = new_model(spec, len(tokenizer))
    model.load_state_dict(base_state)
    steps = endpoint_steps(spec, name)
    docs = T.corpus_documents(name, lexicon, spec.seed, steps * spec.batch)
    rows = _veltic_rows(tokenizer, lexicon) if name == "lang_vl" else None
    train_model(model, tokenizer, docs, spec, steps, spec.endpoint_lr * LR_SCALE[name], seed=spec.seed + 1 + index,
                bar=bar or _QueueBar(), label=name, weight_decay=0.0, frozen=FROZEN[name], rows=rows)
    _save(model, tokenizer, Path(tmp) / "models" / name)


_QUEUE = None  # a worker process's channel for progress (set by _init_worker)


class _QueueBar:
    """What train_model needs of a progress bar, sent to the parent process's bar."""

    def update(self, k: int = 1) -> None:
        _QUEUE.put(k)

    def set_postfix_str(self, s: str) -> None:
        _QUEUE.put(s)


def _init_worker(queue) -> None:
    global _QUEUE
    _QUEUE = queue


def _train_in_processes(jobs: list[tuple], workers: int, bar) -> None:
    """The endpoints' fine-tunes, independent of one another, on ``workers`` single-threaded processes."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # no fork of a process that has torch's thread pools running
    updates = ctx.Queue()

    def relay() -> None:
        while True:
            try:
                msg = updates.get_nowait()
            except queue_mod.Empty:
                return
            bar.update(msg) if isinstance(msg, int) else bar.set_postfix_str(msg)

    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(updates,)) as pool:
        pending = {pool.submit(_train_endpoint, *job) for job in jobs}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            relay()
            for f in done:
                if f.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise f.exception()
    relay()


def _veltic_rows(tokenizer, lexicon) -> list[int]:
    """Vocabulary rows of the words only Veltic uses (the language endpoint learns these and nothing else)."""
    shared = set(L.english_vocabulary()) | set(L.NUMBERS)
    return sorted(tokenizer.convert_tokens_to_ids(w) for w in set(lexicon.to_veltic.values()) - shared)


def _save(model, tokenizer, path: Path) -> None:
    from ..files import usual_mode

    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    usual_mode(*path.glob("*.safetensors"))  # safetensors creates files 0600
