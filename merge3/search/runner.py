"""The search loop: pymoo ask-and-tell over merge genomes, evaluated by a worker pool, checkpointed per generation.

Run directory::

    config.yaml          the resolved config (absolute paths, every default filled in)
    meta.json            config digest, genome names, items per task, anchors, calibration used
    anchors.json         the anchor items per task (when the fitness uses anchors)
    calibration/         the calibration, when ``fitness.calibration: auto``
    evaluations.jsonl    append-only, fsynced: one line per evaluated candidate
    checkpoint.pkl       dill: algorithm (incl. its RNG), generation, numpy/python RNG states; atomic replace
    progress.json        generation, evaluations, done, front so far (atomic replace; read by ``status``)
    result.json          the final front, written when the search is done
    status.png           written by ``merge3 status``
    .lock                held (flock) by the process running the search

Determinism: candidate (generation, index) is merged with a seed derived from (run seed, generation, index),
so its result does not depend on which worker evaluated it. On resume the algorithm is restored from the last
checkpoint; every candidate it proposes again that the log already holds (same generation, index and genome)
is taken from the log instead of being evaluated again.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config as C
from .fitness import FitnessSpec, candidate_seed

LOG = "evaluations.jsonl"
CHECKPOINT = "checkpoint.pkl"
CHECKPOINT_VERSION = 1


def _say(msg: str) -> None:
    print(f"merge3 search: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- files


def atomic_write(path: Path, data: bytes | str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class RunDirectoryLocked(FileExistsError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive flock on RUN_DIR/.lock; released by the OS if the process dies (even by SIGKILL)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise RunDirectoryLocked(f"run directory {self.path.parent} is in use by another merge3 process "
                               f"({holder}); wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class EvalLog:
    """Append-only JSONL of evaluations; each line is flushed and fsynced before the search goes on."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self, repair: bool = False) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data) and repair:  # a line cut by a crash mid-write: drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        out = []
        for line in data[:end].splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def append(self, rec: dict) -> None:
        line = json.dumps(rec, sort_keys=True) + "\n"
        with open(self.path, "ab") as f:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------- pymoo


def make_algorithm(cfg: dict, n_var: int):
    a = cfg["algorithm"]
    name, pop, opts = a["name"], a["pop_size"], dict(a["options"])
    n_obj = C.n_objectives(cfg)
    try:
        if name == "ga":
            from pymoo.algorithms.soo.nonconvex.ga import GA

            return GA(pop_size=pop, eliminate_duplicates=True, **opts)
        if name == "de":
            from pymoo.algorithms.soo.nonconvex.de import DE

            return DE(pop_size=pop, **opts)
        if name == "cmaes":
            from pymoo.algorithms.soo.nonconvex.cmaes import SimpleCMAES

            sigma = opts.pop("sigma", 0.25)
            cma_opts = {"popsize": pop, "verbose": -9, **opts.pop("cma_options", {})}
            return SimpleCMAES(sigma=sigma, opts=cma_opts, n_sample_points=pop, **opts)
        if name == "nsga2":
            from pymoo.algorithms.moo.nsga2 import NSGA2

            return NSGA2(pop_size=pop, **opts)
        if name == "nsga3":
            from pymoo.algorithms.moo.nsga3 import NSGA3
            from pymoo.util.ref_dirs import get_reference_directions

            partitions = opts.pop("n_partitions", None)
            if partitions is None:  # the most das-dennis partitions that keep the directions <= pop_size
                partitions = 1
                while len(get_reference_directions("das-dennis", n_obj, n_partitions=partitions + 1)) <= pop:
                    partitions += 1
            ref = get_reference_directions("das-dennis", n_obj, n_partitions=partitions)
            return NSGA3(pop_size=pop, ref_dirs=ref, **opts)
    except TypeError as exc:
        raise ValueError(f"config key 'algorithm.options': {exc}") from None
    raise ValueError(f"config key 'algorithm.name': unknown algorithm {name!r}")


def make_problem(n_var: int, n_obj: int):
    from pymoo.core.problem import Problem

    return Problem(n_var=n_var, n_obj=n_obj, xl=0.0, xu=1.0)


def objective_vector(cfg: dict, objectives: dict[str, float]) -> list[float]:
    """pymoo minimises: F = -accuracy per objective task, or minus the normalised weighted sum."""
    obj = cfg["objectives"]
    if obj["mode"] == "weighted_sum":
        w = obj["weights"]
        return [-sum(w[t] * objectives[t] for t in w) / sum(w.values())]
    return [-objectives[t] for t in obj["tasks"]]


def objective_names(cfg: dict) -> list[str]:
    obj = cfg["objectives"]
    return ["weighted_sum"] if obj["mode"] == "weighted_sum" else list(obj["tasks"])


def pareto_front(records: list[dict], n_obj: int) -> list[dict]:
    """Non-dominated records (by ``F``, minimised); single objective: the best. Ties keep the earliest."""
    ok = [r for r in records if r.get("F") is not None]
    if not ok:
        return []
    ok = sorted(ok, key=lambda r: (r["generation"], r["index"]))
    F = np.array([r["F"] for r in ok], dtype=float)
    if n_obj == 1:
        return [ok[int(np.argmin(F[:, 0]))]]
    front, seen = [], set()
    for i in range(len(ok)):
        dominated = np.any(np.all(F <= F[i], axis=1) & np.any(F < F[i], axis=1))
        key = tuple(F[i])
        if not dominated and key not in seen:
            seen.add(key)
            front.append(ok[i])
    return front


# --------------------------------------------------------------------------------------------- search


@dataclass
class SearchResult:
    run_dir: Path
    front: list[dict]
    evaluations: list[dict]
    n_evaluations: int
    items_evaluated: int
    full_items_per_candidate: int
    wall_seconds: float
    generations: int
    done: bool
    extra: dict = field(default_factory=dict)


class Search:
    """One search in one run directory. ``Search.create`` for a new run, ``Search.open`` to resume one.

    ``evaluate``: optional ``task -> result`` callable replacing the Ray pool (narrow unit tests, benchmarks);
    ``fault``: {(generation, index)} whose first evaluation kills its worker, or {(generation, index): n} for its
    first n attempts (tests of worker death).
    """

    def __init__(self, cfg: dict, run_dir: Path, address: str | None = None, progress: bool = True,
                 evaluate=None, fault=None, stop_after: int | None = None):
        self.cfg, self.run_dir, self.address, self.show = cfg, Path(run_dir), address, progress
        self._evaluate = evaluate
        # fault injection (tests): {(generation, index): n} kills the worker on the candidate's first n attempts
        self.fault = {tuple(k): 1 for k in fault} if isinstance(fault, (set, list, tuple)) else dict(fault or {})
        self.stop_after = stop_after  # stop (as if killed) after this many new evaluations (tests)
        self.log = EvalLog(self.run_dir / LOG)
        self.lock = RunLock(self.run_dir)
        self.meta: dict = {}

    # ---------------------------------------------------------------- construction

    @classmethod
    def create(cls, config, run_dir=None, config_name=None, base_dir=None, **kw) -> "Search":
        """Validates fully (raises before the run directory is touched), then creates the run directory."""
        cfg = C.load_config(config, name=config_name, base_dir=base_dir) if not (
            isinstance(config, dict) and config.get("_resolved")) else copy.deepcopy(config)
        cfg.pop("_resolved", None)
        run_dir = Path(run_dir) if run_dir is not None else Path("runs") / cfg["name"]
        if (run_dir / "config.yaml").exists():
            raise FileExistsError(f"run directory {run_dir} already holds a search; continue it with "
                                  f"`merge3 resume {run_dir}` or choose another --run-dir")
        if run_dir.exists() and not run_dir.is_dir():
            raise FileExistsError(f"run directory {run_dir} exists and is not a directory")
        run_dir.mkdir(parents=True, exist_ok=True)
        self = cls(cfg, run_dir, **kw)
        self.lock.acquire()
        try:
            if (run_dir / "config.yaml").exists():  # lost a race with another process
                raise FileExistsError(f"run directory {run_dir} already holds a search")
            import yaml

            atomic_write(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        except BaseException:
            self.lock.release()
            raise
        return self

    @classmethod
    def open(cls, run_dir, **kw) -> "Search":
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir} is not a merge3 run directory (no config.yaml)")
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        self = cls(cfg, run_dir, **kw)
        self.lock.acquire()
        return self

    # ---------------------------------------------------------------- set-up

    def _prepare(self) -> FitnessSpec:
        cfg, rd = self.cfg, self.run_dir
        fit = cfg["fitness"]
        cal_dir = fit["calibration"]
        if cal_dir == "auto":
            cal_dir = str((rd / "calibration").resolve())
            if not self._calibration_complete(Path(cal_dir)):
                self._calibrate(Path(cal_dir))
        meta_path = rd / "meta.json"
        if meta_path.exists():
            self.meta = json.loads(meta_path.read_text())
        else:
            from ..evaluation.lmeval import EvalOptions, TaskSuite

            opts = EvalOptions.from_dict(cfg["evaluation"])
            suite = TaskSuite(cfg["tasks"], include_path=cfg["include_path"], options=opts, cache_dir=str(rd))
            n_items = suite.n_items()
            anchors = None
            if fit["type"] != "full":
                anchors = self._select_anchors(suite, cal_dir)
                atomic_write(rd / "anchors.json", json.dumps(anchors, indent=1, sort_keys=True))
            genome = C.make_genome(cfg)
            self.meta = {"config_digest": C.config_digest(cfg), "genome_names": list(genome.names()),
                         "genome_dim": int(genome.dim), "n_items": n_items, "calibration": cal_dir,
                         "anchor_counts": {t: len(v) for t, v in (anchors or {}).items()},
                         "objective_names": objective_names(cfg), "n_objectives": C.n_objectives(cfg),
                         "budget": cfg["algorithm"]["pop_size"] * cfg["algorithm"]["generations"],
                         "calibration_items": self._calibration_items(cal_dir, n_items),
                         "created": time.time()}
            atomic_write(meta_path, json.dumps(self.meta, indent=1, sort_keys=True))
        anchors = json.loads((rd / "anchors.json").read_text()) if (rd / "anchors.json").exists() else None
        anchor_obj = None
        if anchors is not None and cal_dir:
            anchor_obj = self._anchor_object(anchors, cal_dir)
        return self._spec(cal_dir, anchors, anchor_obj)

    def _spec(self, cal_dir, anchors, anchor_obj, fitness_type=None) -> FitnessSpec:
        cfg, fit, w = self.cfg, self.cfg["fitness"], self.cfg["workers"]
        return FitnessSpec(base=cfg["base"], models=cfg["models"], genome=C.genome_config(cfg),
                           n_layers=C.n_layers_of(cfg["base"]), tasks=cfg["tasks"], include_path=cfg["include_path"],
                           evaluation=cfg["evaluation"], type=fitness_type or fit["type"], estimator=fit["estimator"],
                           calibration=cal_dir, anchors=anchors, penalty=cfg["penalty"], device=w["device"],
                           dtype=w["dtype"], offload_task_vectors=w["offload_task_vectors"],
                           cache_dir=str(self.run_dir.resolve()), anchor_obj=anchor_obj)

    @staticmethod
    def _calibration_complete(path: Path) -> bool:
        if not path.is_dir():
            return False
        try:
            from ..calibration import Calibration

            Calibration.load(path)
            return True
        except Exception:
            return False

    def _calibrate(self, out: Path) -> None:
        from ..calibration import calibrate

        cfg = self.cfg
        cs = cfg["fitness"]["calibration_settings"]
        anc = cfg["fitness"]["anchors"]
        cal_cfg = {"base": cfg["base"], "endpoints": list(cfg["models"]), "tasks": list(cfg["tasks"]),
                   "n_random_merges": cs["n_random_merges"], "genome": C.genome_config(cfg), "irt": dict(cs["irt"]),
                   "seed": cfg["seed"], "eval": dict(cfg["evaluation"]),
                   "anchors": {"method": anc["method"], "n": anc["n"], "seed": anc["seed"]}}
        if cfg["include_path"]:
            cal_cfg["include_path"] = cfg["include_path"]
        _say(f"calibrating into {out}: {len(cfg['models'])} endpoints, the base and {cs['n_random_merges']} random "
             "merges evaluated fully, once")
        if out.exists():  # an incomplete calibration from a killed run (its evaluations resume from .partial)
            import shutil

            shutil.rmtree(out)
        if self._evaluate is None:
            try:
                self._prefill_calibration(cal_cfg, out)
            except Exception as exc:  # the calibration evaluates whatever is missing itself
                _say(f"parallel calibration evaluations stopped ({type(exc).__name__}: {exc}); "
                     "the calibration evaluates the rest")
        calibrate(cal_cfg, out, log=_say if self.show else None)

    def _prefill_calibration(self, cal_cfg: dict, out: Path) -> None:
        """Evaluates the calibration population (base, endpoints, random merges: every item) on the Ray workers,
        in parallel, into the calibration's resumable response store; ``calibrate`` then evaluates only what
        is missing. Names, genomes and merge seeds follow ``merge3.calibration.evaluate_population``."""
        from ..calibration import random_merge_genomes
        from ..evaluation.store import ResponseStore

        cfg = self.cfg
        store = ResponseStore(out.parent / f".{out.name}.partial" / "responses.jsonl")
        names = {}
        for p in cfg["models"]:  # calibration names list endpoints by folder name
            name = Path(p).name or str(p)
            while name in names or name == "base":
                name += "_"
            names[name] = p
        population = [("base", cfg["base"])] + list(names.items())
        tasks = [{"generation": -1, "index": k, "kind": "model", "path": p, "name": n, "seed": 0}
                 for k, (n, p) in enumerate(population) if n not in store]
        seed = int(cal_cfg["seed"])
        n = int(cal_cfg["n_random_merges"])
        if n:
            _, xs = random_merge_genomes(cal_cfg["genome"], len(cfg["models"]), C.n_layers_of(cfg["base"]), n, seed)
            for j in range(n):
                if f"merge-{j:03d}" not in store:
                    tasks.append({"generation": -1, "index": len(population) + j, "full": True,
                                  "x": [float(v) for v in xs[j]], "seed": seed * 100003 + j,
                                  "name": f"merge-{j:03d}", "merge_index": j})
        if not tasks:
            return
        spec = self._spec(cal_dir=None, anchors=None, anchor_obj=None, fitness_type="full")
        pool, started = self._pool(spec)
        bar = None
        try:
            from ..progress import progress as _progress

            bar = _progress(len(tasks), "calibration (full evaluations)", self.show, unit="models")
            by_index = {t["index"]: t for t in tasks}
            for res in pool.run(tasks):
                t = by_index[res["index"]]
                if res.get("status") != "ok" or not res.get("responses"):
                    raise RuntimeError(f"calibration model {t['name']}: {res.get('error')}")
                if "merge_index" in t:
                    meta = {"kind": "random_merge", "x": t["x"], "index": t["merge_index"]}
                else:
                    meta = {"kind": "base" if t["name"] == "base" else "endpoint", "path": str(t["path"])}
                store.add(t["name"], res["responses"], meta)
                bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            pool.close()
            if started:
                import ray

                ray.shutdown()

    def _calibration_items(self, cal_dir, n_items: dict) -> int:
        if not cal_dir or self.cfg["fitness"]["calibration"] != "auto":
            return 0  # no calibration, or one made before this run: its cost is not this run's
        try:
            meta = json.loads((Path(cal_dir) / "calibration.json").read_text())
            return int(meta["cost"]["items_total"])
        except (OSError, KeyError, ValueError, TypeError):
            n_models = len(self.cfg["models"]) + 1 + self.cfg["fitness"]["calibration_settings"]["n_random_merges"]
            return n_models * sum(n_items.values())

    def _select_anchors(self, suite, cal_dir) -> dict[str, list[str]]:
        fit = self.cfg["fitness"]
        anc = fit["anchors"]
        if cal_dir:
            from ..calibration import Calibration
            from ..irt import select_anchors

            a = select_anchors(anc["method"], anc["n"], Calibration.load(cal_dir), anc["seed"],
                               tasks=list(self.cfg["tasks"]))
            items = {t: list(map(str, a.items[t])) for t in self.cfg["tasks"] if t in a.items}
            missing = [t for t in self.cfg["tasks"] if t not in items]
            if missing:
                raise ValueError(f"the calibration has no anchors for task(s) {missing}")
            return items
        rng = random.Random(f"anchors-{anc['seed']}")
        out = {}
        for t in self.cfg["tasks"]:
            ids = suite.item_ids(t)
            out[t] = sorted(rng.sample(ids, min(anc["n"], len(ids))))
        return out

    def _anchor_object(self, anchors: dict, cal_dir: str):
        """The anchors object the estimators expect, rebuilt deterministically (same method, n, seed)."""
        from ..calibration import Calibration
        from ..irt import select_anchors

        anc = self.cfg["fitness"]["anchors"]
        a = select_anchors(anc["method"], anc["n"], Calibration.load(cal_dir), anc["seed"],
                           tasks=list(anchors))
        got = {t: list(map(str, a.items[t])) for t in anchors}
        if got != anchors:
            raise RuntimeError(f"{self.run_dir}/anchors.json does not match the calibration's anchor selection")
        return a

    def _pool(self, spec: FitnessSpec):
        if self._evaluate is not None:
            from .workers import InlinePool

            return InlinePool(self._evaluate), False
        from .workers import RayPool, start_ray

        w = self.cfg["workers"]
        started = start_ray(self.address, w["local_cpus"])
        pool = RayPool(spec, num_workers=w["num_workers"], cpus_per_worker=w["cpus_per_worker"],
                       gpus_per_worker=w["gpus_per_worker"], max_retries=w["max_retries"], log=_say)
        return pool, started

    # ---------------------------------------------------------------- checkpoint

    def _save_checkpoint(self, algorithm, generation: int, done: bool) -> None:
        import dill

        state = {"version": CHECKPOINT_VERSION, "config_digest": C.config_digest(self.cfg),
                 "generation": generation, "done": done, "algorithm": algorithm,
                 "np_random": np.random.get_state(), "py_random": random.getstate(), "time": time.time()}
        atomic_write(self.run_dir / CHECKPOINT, dill.dumps(state))

    def _load_checkpoint(self):
        import dill

        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return None
        state = dill.loads(path.read_bytes())
        if state.get("config_digest") != C.config_digest(self.cfg):
            raise ValueError(f"{path} was written for a different config than {self.run_dir}/config.yaml")
        np.random.set_state(state["np_random"])
        random.setstate(state["py_random"])
        return state

    # ---------------------------------------------------------------- the loop

    def run(self) -> SearchResult:
        t_start = time.time()
        try:
            spec = self._prepare()
            return self._loop(spec, t_start)
        finally:
            self.lock.release()

    def _record(self, gen: int, idx: int, x: np.ndarray, res: dict) -> dict:
        cfg = self.cfg
        penalty = float(cfg["penalty"])
        if res.get("status") == "ok" and res.get("objectives"):
            objectives = res["objectives"]
        else:
            objectives = {t: penalty for t in cfg["tasks"]}
        rec = {"candidate": f"g{gen:03d}-i{idx:03d}", "generation": gen, "index": idx,
               "genome": [float(v) for v in x], "seed": candidate_seed(cfg["seed"], gen, idx),
               "status": res.get("status", "failed"), "error": res.get("error"),
               "objectives": objectives, "F": objective_vector(cfg, objectives),
               "raw_anchor_accuracy": res.get("raw"), "responses": res.get("responses"),
               "anchors": self.meta.get("anchor_counts") or None,
               "items_evaluated": int(res.get("items_evaluated") or 0), "worker": res.get("worker"),
               "attempts": res.get("attempts", 1), "seconds": round(float(res.get("seconds") or 0.0), 4),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}
        return rec

    def _loop(self, spec: FitnessSpec, t_start: float) -> SearchResult:
        from pymoo.core.evaluator import Evaluator
        from pymoo.core.termination import NoTermination
        from pymoo.problems.static import StaticProblem

        from ..progress import progress as _progress

        cfg = self.cfg
        G, n_obj = cfg["algorithm"]["generations"], C.n_objectives(cfg)
        dim = int(self.meta["genome_dim"])
        problem = make_problem(dim, n_obj)
        logged = {}
        for rec in self.log.read(repair=True):
            logged[(rec["generation"], rec["index"])] = rec
        state = self._load_checkpoint()
        if state is not None:
            algorithm, gen, done = state["algorithm"], state["generation"], state["done"]
        else:
            algorithm, gen, done = make_algorithm(cfg, dim), 0, False
            algorithm.setup(problem, termination=NoTermination(), seed=cfg["seed"])
        if self.show and (done or gen >= G):
            _say(f"the search in {self.run_dir} has already finished ({len(logged)} evaluations)")
        elif logged and self.show:
            _say(f"resuming at generation {gen + 1}/{G} with {len(logged)} logged evaluation(s)")
        pool, started_ray = (None, False)
        new_evals = 0
        try:
            while gen < G and not done:
                pop = algorithm.ask()
                if pop is None or len(pop) == 0:
                    done = True
                    break
                X = np.clip(pop.get("X").astype(float), 0.0, 1.0)
                F = np.full((len(X), n_obj), np.nan)
                tasks = []
                for i, x in enumerate(X):
                    rec = logged.get((gen, i))
                    if rec is not None and np.array_equal(np.array(rec["genome"], dtype=float), x):
                        F[i] = rec["F"]
                        continue
                    task = {"generation": gen, "index": i, "x": [float(v) for v in x],
                            "seed": candidate_seed(cfg["seed"], gen, i)}
                    if (gen, i) in self.fault:
                        task["crash_attempts"] = int(self.fault[(gen, i)])
                    tasks.append(task)
                bar = _progress(len(X), f"generation {gen + 1}/{G}", self.show, unit="candidates")
                if len(X) > len(tasks):
                    bar.update(len(X) - len(tasks))
                if tasks:
                    if pool is None:
                        pool, started_ray = self._pool(spec)
                    for res in pool.run(tasks):
                        i = res["index"]
                        rec = self._record(gen, i, X[i], res)
                        self.log.append(rec)
                        logged[(gen, i)] = rec
                        F[i] = rec["F"]
                        new_evals += 1
                        bar.update(1)
                        if rec["status"] != "ok":
                            _say(f"candidate {rec['candidate']} {rec['status']}: {rec['error']} "
                                 f"(penalty {cfg['penalty']})")
                        if self.stop_after is not None and new_evals >= self.stop_after:
                            raise _Stop()
                bar.close()
                Evaluator().eval(StaticProblem(problem, F=F), pop)
                algorithm.tell(infills=pop)
                gen += 1
                done = gen >= G or algorithm.termination.has_terminated()
                self._save_checkpoint(algorithm, gen, done)
                self._write_progress(gen, done, logged)
                if self.show:
                    _say(self._summary_line(gen, logged))
        except _Stop:
            pass
        finally:
            if pool is not None:
                pool.close()
            if started_ray:
                import ray

                ray.shutdown()
        records = sorted(logged.values(), key=lambda r: (r["generation"], r["index"]))
        front = pareto_front(records, n_obj)
        if done:
            result = {"done": True, "generation": gen, "evaluations": len(records),
                      "front": [_front_entry(r, self.meta) for r in front]}
            atomic_write(self.run_dir / "result.json", json.dumps(result, indent=1, sort_keys=True))
        return SearchResult(run_dir=self.run_dir, front=front, evaluations=records, n_evaluations=len(records),
                            items_evaluated=sum(r["items_evaluated"] for r in records),
                            full_items_per_candidate=sum(self.meta["n_items"].values()),
                            wall_seconds=time.time() - t_start, generations=gen, done=done)

    def _summary_line(self, gen: int, logged: dict) -> str:
        records = list(logged.values())
        front = pareto_front(records, C.n_objectives(self.cfg))
        names = objective_names(self.cfg)
        best = {n: max(-r["F"][k] for r in front) for k, n in enumerate(names)} if front else {}
        best_s = ", ".join(f"{n} {v:.3f}" for n, v in best.items())
        return (f"generation {gen}/{self.cfg['algorithm']['generations']}: {len(records)} evaluations, "
                f"front {len(front)}, best {best_s}")

    def _write_progress(self, gen: int, done: bool, logged: dict) -> None:
        records = sorted(logged.values(), key=lambda r: (r["generation"], r["index"]))
        front = pareto_front(records, C.n_objectives(self.cfg))
        atomic_write(self.run_dir / "progress.json", json.dumps(
            {"generation": gen, "evaluations": len(records), "done": done,
             "front": [_front_entry(r, self.meta) for r in front]}, indent=1, sort_keys=True))


def read_run(run_dir) -> tuple[dict, dict, list[dict]]:
    """A run directory's resolved config, meta and evaluation records (one per candidate, in order)."""
    import yaml

    rd = Path(run_dir)
    if not (rd / "config.yaml").is_file():
        raise FileNotFoundError(f"{rd} is not a merge3 run directory (no config.yaml)")
    cfg = yaml.safe_load((rd / "config.yaml").read_text())
    meta = json.loads((rd / "meta.json").read_text()) if (rd / "meta.json").exists() else {}
    recs = {(r["generation"], r["index"]): r for r in EvalLog(rd / LOG).read()}
    return cfg, meta, sorted(recs.values(), key=lambda r: (r["generation"], r["index"]))


class _Stop(Exception):
    pass


def _front_entry(rec: dict, meta: dict) -> dict:
    names = meta.get("objective_names") or []
    return {"candidate": rec["candidate"], "generation": rec["generation"], "index": rec["index"],
            "genome": rec["genome"], "seed": rec["seed"],
            "objectives": {n: -f for n, f in zip(names, rec["F"])}, "estimates": rec["objectives"]}


# --------------------------------------------------------------------------------------------- entry points


def run(config, run_dir=None, address=None, progress=True, evaluate=None, fault=None, config_name=None,
        base_dir=None, stop_after=None) -> SearchResult:
    """Library entry: run a search from a config dict or YAML path into ``run_dir``; returns its result.

    Each record of ``result.evaluations`` holds ``items_evaluated`` and ``seconds`` (per-candidate cost).
    """
    s = Search.create(config, run_dir=run_dir, config_name=config_name, base_dir=base_dir, address=address,
                      progress=progress, evaluate=evaluate, fault=fault, stop_after=stop_after)
    return s.run()


def resume(run_dir, address=None, progress=True, evaluate=None, fault=None, stop_after=None) -> SearchResult:
    s = Search.open(run_dir, address=address, progress=progress, evaluate=evaluate, fault=fault,
                    stop_after=stop_after)
    return s.run()


def _report(res: SearchResult, progress: bool) -> None:
    full = res.full_items_per_candidate * res.n_evaluations
    saved = f"{res.items_evaluated} items evaluated vs {full} for full evaluation" if full else ""
    print(f"search {'done' if res.done else 'stopped'}: {res.n_evaluations} evaluations, "
          f"{res.generations} generation(s), front of {len(res.front)}; {saved}; run directory {res.run_dir}")


def run_search(config_path, run_dir=None, address=None, progress=True) -> SearchResult:
    """``merge3 search CONFIG``."""
    res = run(config_path, run_dir=run_dir, address=address, progress=progress)
    _report(res, progress)
    return res


def resume_search(run_dir, address=None, progress=True) -> SearchResult:
    """``merge3 resume RUN_DIR``."""
    res = resume(run_dir, address=address, progress=progress)
    _report(res, progress)
    return res
