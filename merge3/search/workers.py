"""Worker pools: score a batch of jobs, results as they complete.

``RayPool``: one actor per GPU (per CPU slot when the cluster has none), each holding a
:class:`~merge3.scoring.CandidateScorer` (endpoints resident, model wrapped once). A job goes to whichever
actor is free. When an actor dies mid-job its job is retried on another worker (at most ``max_retries`` times,
then it is reported as failed), the dead actor is replaced, and the search goes on.

``InlinePool``: the same interface in this process (no Ray), for narrow unit tests, benchmarks and debugging;
it takes any ``score(job) -> Score`` callable.

A job still running after its time limit (``timeout_s``; 10x for jobs that answer every item) is treated like a
worker death: the actor is killed and replaced, and the job retried or reported as failed.

``pool.run(jobs, more)`` yields each result as it completes; ``more()``, when given, is called whenever a
worker is free and no job is queued, and returns further jobs (asynchronous dispatch: the search asks for a
new candidate as soon as a worker is free); the run ends when nothing is queued or running and ``more()``
returns nothing.

``ThreadPool``: ``n_workers`` threads in this process calling one ``score(job)``: for evaluators that wait
rather than compute (simulated ones in the benchmarks, a remote service).

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

    def run(self, jobs: list, more: Callable | None = None) -> Iterator[Score]:
        queue = deque(jobs)
        while True:
            if not queue and more is not None:
                queue.extend(more())
            if not queue:
                return
            res = self._score(queue.popleft())
            res.worker = res.worker or self.name
            yield res

    def close(self) -> None:
        pass


def inline_pool(spec, workers=None, address=None, log=None) -> InlinePool:
    """A search's ``pool_factory`` that scores every candidate in this process with one scorer (no Ray)."""
    return InlinePool(CandidateScorer(spec).score)


class ThreadPool:
    def __init__(self, score: Callable, n_workers: int, name: str = "thread"):
        from concurrent.futures import ThreadPoolExecutor

        self._score, self.name, self.n_workers = score, name, int(n_workers)
        self._ex = ThreadPoolExecutor(max_workers=self.n_workers, thread_name_prefix="merge3-worker")

    def run(self, jobs: list, more: Callable | None = None) -> Iterator[Score]:
        from concurrent.futures import FIRST_COMPLETED, wait

        queue, running = deque(jobs), set()
        try:
            while True:
                while len(running) < self.n_workers:
                    if not queue and more is not None:
                        queue.extend(more())
                    if not queue:
                        break
                    running.add(self._ex.submit(self._score, queue.popleft()))
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                fut = min(done, key=lambda f: id(f))
                running.remove(fut)
                res = fut.result()
                res.worker = res.worker or self.name
                yield res
        finally:
            for fut in running:
                fut.cancel()

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)


ADDRESS_TIMEOUT_S = 10.0  # how long a --address may take to answer before merge3 gives up


def check_address(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """Fails with one line when nothing answers at a Ray ``address`` (``HOST:PORT``, ``ray://HOST:PORT``; ``auto``
    and ``local`` are left to Ray) within ``timeout_s``: ``ray.init`` itself would retry forever."""
    import socket

    if address in ("auto", "local"):
        return
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        host, port = rest, "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise ConnectionError(f"--address {address}: no Ray cluster answers at {host}:{port} ({why}, waited at "
                              f"most {timeout_s:g} s); start one there (ray start --head) or fix the address") from None


SINGLE_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch for single-node use: "0" binds to loopback


def local_ray_options(local_cpus: int | None) -> dict:
    """ray.init options of the private local cluster. Every Ray process (GCS, raylet, workers, dashboard agent)
    binds to 127.0.0.1: node address 127.0.0.1 with Ray's single-node switch off (on Linux Ray would otherwise
    replace 127.0.0.1 by the host's address and listen on every interface). Authentication is left as Ray sets
    it: Ray 2.x turns token authentication on for a new local cluster unless ``RAY_AUTH_MODE`` says otherwise;
    merge3 never turns it off."""
    return {"address": "local", "num_cpus": local_cpus or os.cpu_count() or 1, "include_dashboard": False,
            "dashboard_host": "127.0.0.1", "_node_ip_address": "127.0.0.1"}


def start_ray(address: str | None, local_cpus: int | None = None) -> bool:
    """Connects to ``address`` or starts a private local cluster; returns True when this call started Ray."""
    if not address:  # read by Ray when imported, and by the processes it starts
        os.environ[SINGLE_NODE] = "0"
    import ray
    import ray._private.ray_constants as ray_constants

    from ..quiet import ray_logging_level

    if ray.is_initialized():
        return False
    if address:
        check_address(address)
        ray.init(address=address, log_to_driver=False, logging_level=ray_logging_level())
        return True
    ray_constants.ENABLE_RAY_CLUSTER = False  # Ray imported before: the same switch
    ray.init(log_to_driver=False, logging_level=ray_logging_level(), **local_ray_options(local_cpus))
    return True


class _Actor:
    """The Ray actor body: a scorer (``CandidateScorer`` or a subclass) in a worker process."""

    def __init__(self, scorer_cls, spec):
        self.scorer = scorer_cls(spec)

    def score(self, job) -> Score:
        return self.scorer.score(job)

    def ready(self) -> bool:
        """Answers once the scorer is set up (models loaded): a job's time limit starts then."""
        warm_up = getattr(self.scorer, "warm_up", None)
        if warm_up is not None:
            warm_up()
        return True


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
        self._starting: dict = {}  # ready() ObjectRef -> actor still setting up its scorer
        self._ready: set = set()
        self._cls = ray.remote(_Actor).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0,
                                               max_task_retries=0)
        self.actors = [self._new_actor() for _ in range(num_workers)]
        self.replacements = 0
        self.max_replacements = 4 * num_workers + 4 * max(1, max_retries)

    def _new_actor(self):
        actor = self._cls.remote(self._scorer_cls, self._spec)
        self._starting[actor.ready.remote()] = actor
        return actor

    def _deadline(self, actor, job) -> tuple[float | None, bool]:
        """(deadline, counting): a job's limit counts from when its worker is set up; a worker still starting
        gets 10x the limit to finish starting (a worker that never starts is treated like a hung one)."""
        limit = self._limit(job)
        if limit is None:
            return None, True
        if actor in self._ready:
            return time.monotonic() + limit, True
        return time.monotonic() + 10 * limit, False

    def _limit(self, job) -> float | None:
        """Seconds ``job`` may run: ``timeout_s``, 10x for jobs that answer every item."""
        if self.timeout_s is None:
            return None
        return self.timeout_s * (10 if getattr(job, "full_responses", True) else 1)

    def run(self, jobs: list, more: Callable | None = None) -> Iterator[Score]:
        ray = self.ray
        queue = deque((job, 0) for job in jobs)  # (job, attempts so far)
        idle = deque(self.actors)
        running: dict = {}  # ObjectRef -> (actor, job, attempts, deadline, counting)
        while True:
            while idle:
                if not queue and more is not None:
                    queue.extend((job, 0) for job in more())
                if not queue:
                    break
                actor = idle.popleft()
                job, attempts = queue.popleft()
                running[actor.score.remote(dataclasses.replace(job, attempt=attempts))] = (
                    actor, job, attempts, *self._deadline(actor, job))
            if not running:
                if queue:
                    raise RuntimeError("no live Ray worker left to evaluate candidates")
                return
            deadlines = [v[3] for v in running.values() if v[3] is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            done, _ = ray.wait(list(running) + list(self._starting), num_returns=1, timeout=wait_s)
            if not done:  # a job ran past its limit: cancel it like a dead worker's
                ref = min((r for r, v in running.items() if v[3] is not None), key=lambda r: running[r][3])
                actor, job, attempts, _, counting = running.pop(ref)
                why = (f"timed out after {self._limit(job):g} s" if counting else
                       f"timed out: its worker did not start within {10 * self._limit(job):g} s")
                yield from self._retry_or_fail(actor, job, attempts, idle, queue, why)
                continue
            ref = done[0]
            if ref in self._starting:  # a worker finished setting up: its job's time limit starts now
                actor = self._starting.pop(ref)
                self._ready.add(actor)
                for r, (a, job, attempts, _, counting) in list(running.items()):
                    if a == actor and not counting:
                        running[r] = (a, job, attempts, *self._deadline(a, job))
                continue
            actor, job, attempts, _, _ = running.pop(ref)
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
        self._ready.discard(dead)
        self._starting = {r: a for r, a in self._starting.items() if a != dead}
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
