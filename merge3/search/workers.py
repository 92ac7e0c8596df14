"""Worker pools: score a batch of jobs, results as they complete.

``RayPool``: one actor per GPU (per CPU slot when the cluster has none), each holding a
:class:`~merge3.scoring.CandidateScorer` (endpoints resident, model wrapped once). A job goes to whichever
actor is free. When an actor dies mid-job its job is retried on another worker (at most ``max_retries`` times,
then it is reported as failed), the dead actor is replaced, and the search goes on.

``InlinePool``: the same interface in this process (no Ray), for narrow unit tests, benchmarks and debugging;
it takes any ``score(job) -> Score`` callable.

A job still running after its time limit (``timeout_s``; 10x for jobs that answer every item) is treated like a
worker death: the actor is killed and replaced, and the job retried or reported as failed.

A pool is opened by a *pool factory* ``factory(spec, workers_config, address) -> pool``; :func:`open_ray_pool`
is the default, tests pass their own (e.g. one whose workers crash on chosen jobs: ``merge3.search.testing``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import deque
from typing import Callable, Iterator

from ..scoring import CandidateScorer, Score


class InlinePool:
    def __init__(self, score: Callable, name: str = "inline"):
        self._score, self.name = score, name
        self.n_workers = 1

    def run(self, jobs: list) -> Iterator[Score]:
        for job in jobs:
            res = self._score(job)
            res.worker = res.worker or self.name
            yield res

    def close(self) -> None:
        pass


def start_ray(address: str | None, local_cpus: int | None = None) -> bool:
    """Connects to ``address`` or starts a private local cluster; returns True when this call started Ray."""
    import ray

    from ..quiet import ray_logging_level

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=ray_logging_level())
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=local_cpus or os.cpu_count() or 1, include_dashboard=False,
             log_to_driver=False, logging_level=ray_logging_level())
    return True


class _Actor:
    """The Ray actor body: a scorer (``CandidateScorer`` or a subclass) in a worker process."""

    def __init__(self, scorer_cls, spec):
        self.scorer = scorer_cls(spec)

    def score(self, job) -> Score:
        return self.scorer.score(job)


class RayPool:
    def __init__(self, spec, num_workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, max_retries: int = 2, log=None,
                 scorer_cls=CandidateScorer, owns_ray: bool = False, timeout_s: float | None = None):
        import ray

        self.ray = ray
        self.owns_ray = owns_ray  # shut Ray down on close (this pool's opener started it)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        res = ray.cluster_resources()
        n_gpu = res.get("GPU", 0)
        if gpus_per_worker is None:
            gpus_per_worker = 1 if n_gpu >= 1 else 0
        if num_workers is None:
            if gpus_per_worker:
                num_workers = max(1, int(n_gpu // gpus_per_worker))
            else:
                num_workers = max(1, int(res.get("CPU", 1) // max(cpus_per_worker, 1e-9)))
        self.n_workers = num_workers
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        if spec.threads is None and not gpus_per_worker:
            spec = dataclasses.replace(spec, threads=max(1, int(cpus_per_worker)))
        self._spec, self._scorer_cls = spec, scorer_cls
        self._cls = ray.remote(_Actor).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0,
                                               max_task_retries=0)
        self.actors = [self._new_actor() for _ in range(num_workers)]
        self.replacements = 0
        self.max_replacements = 4 * num_workers + 4 * max(1, max_retries)

    def _new_actor(self):
        return self._cls.remote(self._scorer_cls, self._spec)

    def _limit(self, job) -> float | None:
        """Seconds ``job`` may run: ``timeout_s``, 10x for jobs that answer every item."""
        if self.timeout_s is None:
            return None
        return self.timeout_s * (10 if getattr(job, "full_responses", True) else 1)

    def run(self, jobs: list) -> Iterator[Score]:
        ray = self.ray
        queue = deque((job, 0) for job in jobs)  # (job, attempts so far)
        idle = deque(self.actors)
        running: dict = {}  # ObjectRef -> (actor, job, attempts, deadline)
        while queue or running:
            while queue and idle:
                actor = idle.popleft()
                job, attempts = queue.popleft()
                limit = self._limit(job)
                deadline = None if limit is None else time.monotonic() + limit
                running[actor.score.remote(dataclasses.replace(job, attempt=attempts))] = (actor, job, attempts,
                                                                                          deadline)
            if not running:
                raise RuntimeError("no live Ray worker left to evaluate candidates")
            deadlines = [d for *_, d in running.values() if d is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            done, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            if not done:  # a job ran past its limit: cancel it like a dead worker's
                ref = min((r for r, v in running.items() if v[3] is not None), key=lambda r: running[r][3])
                actor, job, attempts, _ = running.pop(ref)
                yield from self._retry_or_fail(actor, job, attempts, idle, queue,
                                               f"timed out after {self._limit(job):g} s")
                continue
            ref = done[0]
            actor, job, attempts, _ = running.pop(ref)
            try:
                res = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                yield from self._retry_or_fail(actor, job, attempts, idle, queue,
                                               f"worker died: {type(exc).__name__}: {first[:200]}")
                continue
            except ray.exceptions.RayTaskError as exc:  # the scorer raised (it should not): a failure
                idle.append(actor)
                yield Score.failure(job, str(exc).strip().splitlines()[-1][:500], attempts + 1)
                continue
            idle.append(actor)
            res.attempts = attempts + 1
            yield res

    def _retry_or_fail(self, actor, job, attempts: int, idle: deque, queue: deque, why: str) -> Iterator[Score]:
        """The job's worker is lost (it died, or is killed here for running too long): replace the worker and
        queue the job again, or report it failed once its retries are spent."""
        self.log(f"candidate g{job.generation}-i{job.index} (attempt {attempts + 1}): {why}")
        self._replace(actor, idle)
        if attempts < self.max_retries:
            queue.appendleft((job, attempts + 1))
        else:
            yield Score.failure(job, f"{why.split(':')[0]} on each of its {attempts + 1} attempts", attempts + 1)

    def _replace(self, dead, idle: deque) -> None:
        if dead in self.actors:
            self.actors.remove(dead)
        try:
            self.ray.kill(dead)
        except Exception:  # best effort: the actor is gone already; a failed kill must not stop the search
            pass
        if self.replacements < self.max_replacements:
            self.replacements += 1
            actor = self._new_actor()
            self.actors.append(actor)
            idle.append(actor)
        elif not self.actors:
            raise RuntimeError(f"Ray workers keep dying ({self.replacements} replaced); giving up")

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # best effort: close() runs in finally blocks and must not hide their error
                pass
        self.actors = []
        if self.owns_ray:
            self.ray.shutdown()
            self.owns_ray = False


def open_ray_pool(spec, workers, address: str | None = None, scorer_cls=CandidateScorer, log=None) -> RayPool:
    """The default pool factory: Ray workers as ``workers`` (the config's ``workers`` section) says."""
    started = start_ray(address, workers.local_cpus)
    try:
        return RayPool(spec, num_workers=workers.num_workers, cpus_per_worker=workers.cpus_per_worker,
                       gpus_per_worker=workers.gpus_per_worker, max_retries=workers.max_retries, log=log,
                       scorer_cls=scorer_cls, owns_ray=started, timeout_s=workers.candidate_timeout_s)
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        raise
