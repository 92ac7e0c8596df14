"""The search loop: pymoo ask-and-tell over merge genomes, scored by a worker pool, logged candidate by candidate.

Determinism: candidate (generation, index) is merged with a seed derived from (run seed, generation, index),
so its result does not depend on which worker scored it, and pymoo draws from its own generator seeded by the
run seed. So a resume needs no pickled state: it sets the algorithm up from the seed again and replays
ask-and-tell, taking every candidate the log already holds (same generation, index and genome) from the log
instead of scoring it again. Nothing in a run directory is unpickled or executed (see
:mod:`merge3.search.rundir`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..quiet import log_to
from ..scoring import CandidateJob, Score, candidate_seed
from .algorithms import make_problem, start_algorithm
from .config import SearchConfig
from .front import front_entry, objective_vector, pareto_front, to_verify, verified_ranking
from .prepare import prepare
from .resources import load_config
from .rundir import RunDir, RunDirectoryLocked, RunLock  # noqa: F401  (RunDirectoryLocked: part of the API)
from .workers import InlinePool, check_address, open_ray_pool


def _say(msg: str) -> None:
    print(f"merge3 search: {msg}", file=sys.stderr, flush=True)


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
    verified: list[dict] = field(default_factory=list)  # re-scored on every item, best first
    verification_items: int = 0
    extra: dict = field(default_factory=dict)


class Search:
    """One search in one run directory. ``Search.create`` for a new run, ``Search.open`` to resume one.

    Candidates are scored by a pool from ``pool_factory(spec, workers, address)`` (default: Ray workers,
    :func:`~merge3.search.workers.open_ray_pool`); ``evaluate``, a ``job -> Score`` callable, replaces the pool
    by an in-process one (narrow unit tests, benchmarks).
    """

    def __init__(self, cfg: SearchConfig, run_dir: Path, address: str | None = None, progress: bool = True,
                 evaluate=None, pool_factory=None):
        self.cfg, self.rd, self.address, self.show = cfg, RunDir(run_dir), address, progress
        self.run_dir = self.rd.path
        self.evaluate = evaluate
        self.pool_factory = pool_factory or open_ray_pool
        self.lock = RunLock(self.run_dir)
        self.meta: dict = {}

    @classmethod
    def create(cls, config, run_dir=None, config_name=None, base_dir=None, **kw) -> "Search":
        """Validates fully (raises before the run directory is touched), then creates the run directory."""
        cfg = load_config(config, name=config_name, base_dir=base_dir)
        rd = RunDir(run_dir if run_dir is not None else Path("runs") / cfg.name)
        if kw.get("address") and kw.get("evaluate") is None and kw.get("pool_factory") is None:
            check_address(kw["address"])  # before the run directory exists: a wrong address leaves nothing behind
        if rd.exists():
            with RunLock(rd.path):  # busy: the error names the process holding it
                if not rd.setup_unfinished():
                    raise FileExistsError(f"run directory {rd.path} already holds a search; continue it with "
                                          f"`merge3 resume {rd.path}` or choose another --run-dir")
            for name in ("anchors.json", "split.json"):  # chosen for the old config
                (rd / name).unlink(missing_ok=True)
            _say(f"{rd.path}: its set-up never finished (no meta.json, no evaluation); starting it again with "
                 "this config (evaluations of an auto calibration already made are kept)")
        if rd.path.exists() and not rd.path.is_dir():
            raise FileExistsError(f"run directory {rd.path} exists and is not a directory")
        rd.path.mkdir(parents=True, exist_ok=True)
        self = cls(cfg, rd.path, **kw)
        self.lock.acquire()
        try:
            if rd.exists() and not rd.setup_unfinished():  # lost a race with another process
                raise FileExistsError(f"run directory {rd.path} already holds a search")
            rd.write_config(cfg)
        except BaseException:
            self.lock.release()
            raise
        return self

    @classmethod
    def open(cls, run_dir, **kw) -> "Search":
        rd = RunDir(run_dir)
        self = cls(rd.read_config(), rd.path, **kw)
        self.lock.acquire()
        return self

    # ---------------------------------------------------------------- pools

    def _open_pool(self, spec):
        if self.evaluate is not None:
            return InlinePool(self.evaluate)
        return self.pool_factory(spec, self.cfg.workers, self.address, log=_say)

    def _calibration_pool_factory(self):
        """Workers for an auto calibration: the search's own (none with an in-process ``evaluate``)."""
        if self.evaluate is not None:
            return None
        return lambda spec: self.pool_factory(spec, self.cfg.workers, self.address, log=_say)

    # ---------------------------------------------------------------- the loop

    def run(self) -> SearchResult:
        t_start = time.time()
        try:
            with log_to(self.rd / "third_party.log"), _sigterm_interrupts():
                say = _say if self.show else (lambda msg: None)
                spec, self.meta, self.fitness = prepare(self.cfg, self.rd, self._calibration_pool_factory(), say)
                return self._loop(spec, t_start)
        except KeyboardInterrupt:
            _say(f"interrupted: {len(self.rd.records())} evaluation(s) are logged in {self.run_dir}; continue with "
                 f"`merge3 resume {self.run_dir}`")
            raise
        finally:
            self.lock.release()

    def _record(self, gen: int, idx: int, x: np.ndarray, res: Score) -> dict:
        cfg = self.cfg
        if res.status == "ok" and self.fitness.estimates_here:
            self._estimate_here(gen, res)
        if res.status == "ok" and res.objectives:
            objectives = res.objectives
        else:
            objectives = {t: float(cfg.penalty) for t in cfg.tasks}
        return {"candidate": f"g{gen:03d}-i{idx:03d}", "generation": gen, "index": idx,
                "genome": [float(v) for v in x], "seed": candidate_seed(cfg.seed, gen, idx),
                "status": res.status, "error": res.error, "objectives": objectives,
                "F": objective_vector(cfg, objectives), "raw_anchor_accuracy": res.raw, "responses": res.responses,
                "anchors": self.meta.get("anchor_counts") or None, "items_evaluated": int(res.items_evaluated),
                "worker": res.worker, "attempts": res.attempts, "seconds": round(float(res.seconds), 4),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}

    def _estimate_here(self, gen: int, res: Score) -> None:
        """The candidate's objectives from the driver's calibration (online calibration grows it)."""
        try:
            est = self.fitness.estimate(res.responses, gen)
            if not all(np.isfinite(float(est.get(t, float("nan")))) for t in self.cfg.tasks):
                raise ValueError(f"no finite estimate for every task: {est}")
            res.objectives = {t: float(est[t]) for t in self.cfg.tasks}
        except Exception as exc:  # like the worker's own estimate: the candidate fails, the search goes on
            res.status, res.error, res.objectives = "failed", f"{type(exc).__name__}: {exc}", None

    def _loop(self, spec, t_start: float) -> SearchResult:
        cfg = self.cfg
        n_obj = cfg.n_objectives
        problem = make_problem(int(self.meta["genome_dim"]), n_obj)
        a = cfg.algorithm
        algorithm = start_algorithm(a.name, a.pop_size, n_obj, a.options, problem, cfg.seed)
        pool = None
        try:
            if a.dispatch == "async":
                gen, done, logged, pool = self._run_async(spec, algorithm, problem)
            else:
                gen, done, logged, pool = self._run_generations(spec, algorithm, problem)
            if done:
                pool = self._verify(spec, list(logged.values()), pool)
        finally:
            if pool is not None:
                pool.close()
        records = sorted(logged.values(), key=lambda r: (r["generation"], r["index"]))
        front = pareto_front(records, n_obj)
        verified = self.rd.verified()
        ranking = verified_ranking(records, verified, cfg)
        if done:
            self.rd.write_result({"done": True, "generation": gen, "evaluations": len(records),
                                  "front": [front_entry(r, cfg.objective_names, verified) for r in front],
                                  "verified": ranking})
        return SearchResult(run_dir=self.run_dir, front=front, evaluations=records, n_evaluations=len(records),
                            items_evaluated=sum(r["items_evaluated"] for r in records),
                            full_items_per_candidate=sum(self.meta["n_items"].values()),
                            wall_seconds=time.time() - t_start, generations=gen, done=done, verified=ranking,
                            verification_items=sum(v["items_evaluated"] for v in verified.values()))

    def _say_resuming(self, n_logged: int, where: str) -> None:
        if self.show and self.rd.is_done():
            _say(f"the search in {self.run_dir} has already finished ({n_logged} evaluations)")
        elif n_logged and self.show:
            _say(f"resuming: replaying {n_logged} logged evaluation(s), then {where}")

    def _log_result(self, gen: int, x, res: Score, bar, **extra) -> dict:
        rec = {**self._record(gen, res.index, x, res), **extra}
        self.rd.log.append(rec)
        bar.update(1)
        if rec["status"] != "ok":
            _say(f"candidate {rec['candidate']} {rec['status']}: {rec['error']} (penalty {self.cfg.penalty})")
        return rec

    def _run_generations(self, spec, algorithm, problem):
        """Generational dispatch: ask a generation, score it on every worker, tell it whole."""
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        from ..progress import progress as _progress

        cfg = self.cfg
        G, n_obj = cfg.algorithm.generations, cfg.n_objectives
        logged = {(r["generation"], r["index"]): r for r in self.rd.records(repair=True)}
        if logged:
            self._say_resuming(len(logged), f"generation {1 + max(g for g, _ in logged)}/{G} onwards")
        gen, done, pool = 0, False, None
        while gen < G and not done:
            pop = algorithm.ask()
            if pop is None or len(pop) == 0:
                done = True
                break
            X = np.clip(pop.get("X").astype(float), 0.0, 1.0)
            F = np.full((len(X), n_obj), np.nan)
            jobs = []
            for i, x in enumerate(X):
                rec = logged.get((gen, i))
                if rec is not None and np.array_equal(np.array(rec["genome"], dtype=float), x):
                    F[i] = rec["F"]
                    continue
                jobs.append(CandidateJob(generation=gen, index=i, x=tuple(float(v) for v in x),
                                         seed=candidate_seed(cfg.seed, gen, i), anchors=self.fitness.job_anchors(gen)))
            replayed = not jobs
            bar = _progress(len(X), f"generation {gen + 1}/{G}", self.show and not replayed, unit="candidates")
            if len(X) > len(jobs):
                bar.update(len(X) - len(jobs))
            if jobs:
                pool = pool or self._open_pool(spec)
                for res in pool.run(jobs):
                    rec = self._log_result(gen, X[res.index], res, bar)
                    logged[(gen, res.index)] = rec
                    F[res.index] = rec["F"]
            bar.close()
            if self.fitness.online_due(gen):
                pool = self._online_step(spec, gen, [logged[(gen, i)] for i in range(len(X))], F, pool)
            Evaluator().eval(StaticProblem(problem, F=F), pop)
            algorithm.tell(infills=pop)
            gen += 1
            done = gen >= G or algorithm.termination.has_terminated()
            self._write_progress(gen, done, logged)
            if self.show and not replayed:
                _say(self._summary_line(gen, logged))
        return gen, done, logged, pool

    def _run_async(self, spec, algorithm, problem):
        """Asynchronous dispatch (:mod:`merge3.search.steady`): a free worker gets the next proposal at once;
        results are told in the order they come back. Returns (batches asked, done, logged, pool)."""
        from ..progress import progress as _progress
        from .steady import SteadyState

        cfg = self.cfg
        in_order = self.rd.log.read(repair=True)
        logged: dict = {}
        for r in in_order:
            logged.setdefault((r["generation"], r["index"]), r)
        state = SteadyState(algorithm, problem, cfg.budget, log_name=str(self.rd.log.path))
        self._say_resuming(len(logged), f"{cfg.budget - len(logged)} more")
        pending = state.replay(list(logged.values()))

        def job(p):
            b, i, x = p
            return CandidateJob(generation=b, index=i, x=tuple(float(v) for v in x),
                                seed=candidate_seed(cfg.seed, b, i), anchors=self.fitness.job_anchors(b))

        def more():
            return [job(p) for p in state.next_batch()]

        pool, jobs = None, [job(p) for p in pending]
        if jobs or not state.finished:
            bar = _progress(cfg.budget, "candidates", self.show, unit="candidates")
            bar.update(len(logged))
            pool = self._open_pool(spec)
            for res in pool.run(jobs, more=more):
                x = state.proposed[(res.generation, res.index)]
                rec = state.came_back(self._log_result(res.generation, x, res, bar, told=state.tells))
                logged[(res.generation, res.index)] = rec
                if len(logged) % cfg.algorithm.pop_size == 0 or len(logged) == cfg.budget:
                    self._write_progress(state.tells, False, logged)
                    if self.show:
                        _say(self._summary_line(state.tells, logged, async_=True))
            bar.close()
        done = state.finished and all((b, i) in logged for b, i in state.proposed)
        self._write_progress(state.tells, done, logged)
        return state.batch + 1, done, logged, pool

    def _verify(self, spec, records: list[dict], pool):
        """Scores the best candidates by estimate on every item (``fitness.verify_top_k``), once each; returns
        the pool (opened here when the search itself needed none)."""
        k = self.cfg.fitness.verify_top_k if self.cfg.fitness.type != "full" else 0
        done = self.rd.verified()
        chosen = [r for r in to_verify(records, self.cfg.n_objectives, k)
                  if (r["generation"], r["index"]) not in done]
        if chosen and self.show:
            _say(f"verifying the {len(chosen)} best candidate(s) by estimate on every item")
        _, pool = self._score_fully(spec, chosen, pool, "final")
        return pool

    def _online_step(self, spec, gen: int, records: list[dict], F: np.ndarray, pool):
        """Online calibration after generation ``gen``: its best candidates by estimate are scored on every item
        (or taken from ``verified.jsonl`` on a resume), the search is told those scores, and the calibration
        population grows with their answers."""
        chosen = self.fitness.online_choice(records)
        done = self.rd.verified()
        todo = [r for r in chosen if (r["generation"], r["index"]) not in done]
        if todo and self.show:
            _say(f"online calibration: scoring generation {gen + 1}'s {len(todo)} best candidate(s) on every item")
        fresh, pool = self._score_fully(spec, todo, pool, "online", keep_responses=True)
        done.update(fresh)
        scored = [done[(r["generation"], r["index"])] for r in chosen]
        for v in scored:
            if v.get("status") == "ok":
                F[v["index"]] = objective_vector(self.cfg, v["full"])
        self.fitness.grow(scored)
        return pool

    def _score_fully(self, spec, chosen: list[dict], pool, stage: str, keep_responses: bool = False):
        """Scores logged candidates on every item and appends them to ``verified.jsonl``; returns the new
        verified records by (generation, index) and the pool (opened here when none was)."""
        out = {}
        if not chosen:
            return out, pool
        pool = pool or self._open_pool(spec)
        by_key = {(r["generation"], r["index"]): r for r in chosen}
        jobs = [CandidateJob(generation=r["generation"], index=r["index"], x=tuple(r["genome"]), seed=r["seed"],
                             full_responses=True) for r in chosen]
        for res in pool.run(jobs):
            rec = by_key[(res.generation, res.index)]
            v = {"candidate": rec["candidate"], "generation": res.generation, "index": res.index, "stage": stage,
                 "status": res.status, "error": res.error, "full": res.raw if res.status == "ok" else None,
                 "estimates": rec["objectives"], "items_evaluated": int(res.items_evaluated),
                 "seconds": round(float(res.seconds), 4)}
            if res.test is not None:
                v["test"] = res.test
            if keep_responses and res.status == "ok":
                v["responses"] = res.responses
            self.rd.verified_log.append(v)
            out[(res.generation, res.index)] = v
            if self.show and res.status == "ok":
                _say(f"verified {rec['candidate']}: " + ", ".join(
                    f"{t} estimated {rec['objectives'][t]:.3f}, every item {res.raw[t]:.3f}" for t in self.cfg.tasks))
        return out, pool

    def _summary_line(self, gen: int, logged: dict, async_: bool = False) -> str:
        front = pareto_front(list(logged.values()), self.cfg.n_objectives)
        names = self.cfg.objective_names
        best = {n: max(-r["F"][k] for r in front) for k, n in enumerate(names)} if front else {}
        best_s = ", ".join(f"{n} {v:.3f}" for n, v in best.items())
        where = (f"{len(logged)}/{self.cfg.budget} evaluations ({gen} tells)" if async_ else
                 f"generation {gen}/{self.cfg.algorithm.generations}: {len(logged)} evaluations")
        return f"{where}, front {len(front)}, best {best_s}"

    def _write_progress(self, gen: int, done: bool, logged: dict) -> None:
        records = sorted(logged.values(), key=lambda r: (r["generation"], r["index"]))
        front = pareto_front(records, self.cfg.n_objectives)
        self.rd.write_progress({"generation": gen, "evaluations": len(records), "done": done,
                                "front": [front_entry(r, self.cfg.objective_names) for r in front]})


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a scheduler stopping the job) ends the search like Ctrl-C: what is logged stays, in-flight
    candidates are scored again on resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# --------------------------------------------------------------------------------------------- entry points


def run(config, run_dir=None, address=None, progress=True, evaluate=None, pool_factory=None, config_name=None,
        base_dir=None) -> SearchResult:
    """Library entry: run a search from a config (dict, YAML path or SearchConfig) into ``run_dir``.

    Each record of ``result.evaluations`` holds ``items_evaluated`` and ``seconds`` (per-candidate cost).
    """
    s = Search.create(config, run_dir=run_dir, config_name=config_name, base_dir=base_dir, address=address,
                      progress=progress, evaluate=evaluate, pool_factory=pool_factory)
    return s.run()


def resume(run_dir, address=None, progress=True, evaluate=None, pool_factory=None) -> SearchResult:
    return Search.open(run_dir, address=address, progress=progress, evaluate=evaluate,
                       pool_factory=pool_factory).run()


def _report(res: SearchResult) -> None:
    full = res.full_items_per_candidate * res.n_evaluations
    saved = f"{res.items_evaluated} items evaluated vs {full} for full evaluation" if full else ""
    print(f"search {'done' if res.done else 'stopped'}: {res.n_evaluations} evaluations, "
          f"{res.generations} generation(s), front of {len(res.front)}; {saved}; run directory {res.run_dir}")


def run_search(config_path, run_dir=None, address=None, progress=True) -> SearchResult:
    """``merge3 search CONFIG``."""
    res = run(config_path, run_dir=run_dir, address=address, progress=progress)
    _report(res)
    return res


def resume_search(run_dir, address=None, progress=True) -> SearchResult:
    """``merge3 resume RUN_DIR``."""
    res = resume(run_dir, address=address, progress=progress)
    _report(res)
    return res
