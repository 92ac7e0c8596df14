"""Worker pools: evaluate a batch of candidates, results as they complete.

``RayPool``: one actor per GPU (per CPU slot when the cluster has none), each holding a
:class:`~merge3.search.fitness.CandidateEvaluator` (endpoints resident, model wrapped once). A candidate goes to
whichever actor is free. When an actor dies mid-evaluation its candidate is retried on another worker (at most
``max_retries`` times, then it is recorded as failed with the penalty), the dead actor is replaced, and the
search goes on.

``InlinePool``: the same interface in this process (no Ray), for narrow unit tests and debugging; it takes
any ``evaluate(task) -> result`` callable.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from typing import Callable, Iterator


class InlinePool:
    def __init__(self, evaluate: Callable[[dict], dict], name: str = "inline"):
        self._evaluate, self.name = evaluate, name
        self.n_workers = 1

    def run(self, tasks: list[dict]) -> Iterator[dict]:
        for task in tasks:
            res = self._evaluate(task)
            res.setdefault("worker", self.name)
            res.setdefault("attempts", 1)
            yield res

    def close(self) -> None:
        pass


def start_ray(address: str | None, local_cpus: int | None = None) -> bool:
    """Connects to ``address`` or starts a private local cluster; returns True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=local_cpus or os.cpu_count() or 1, include_dashboard=False,
             log_to_driver=False)
    return True


class _Actor:
    """The Ray actor body: a CandidateEvaluator in a worker process."""

    def __init__(self, spec: dict):
        from .fitness import CandidateEvaluator, FitnessSpec

        self.ev = CandidateEvaluator(FitnessSpec(**spec))

    def ping(self) -> str:
        return self.ev.name

    def evaluate(self, task: dict) -> dict:
        return self.ev.evaluate(task)


class RayPool:
    def __init__(self, spec, num_workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, max_retries: int = 2, log=None):
        import ray

        self.ray = ray
        self.spec = spec
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
        spec_dict = dict(spec.__dict__)
        if spec_dict.get("threads") is None and not gpus_per_worker:
            spec_dict["threads"] = max(1, int(cpus_per_worker))
        self._spec_dict = spec_dict
        self._cls = ray.remote(_Actor).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0,
                                               max_task_retries=0)
        self.actors = [self._new_actor() for _ in range(num_workers)]
        self.replacements = 0
        self.max_replacements = 4 * num_workers + 4 * max(1, max_retries)

    def _new_actor(self):
        return self._cls.remote(self._spec_dict)

    def run(self, tasks: list[dict]) -> Iterator[dict]:
        ray = self.ray
        queue = deque((dict(t), 0) for t in tasks)  # (task, attempts so far)
        idle = deque(self.actors)
        running: dict = {}  # ObjectRef -> (actor, task, attempts)
        while queue or running:
            while queue and idle:
                actor = idle.popleft()
                task, attempts = queue.popleft()
                sent = dict(task, attempt=attempts)
                running[actor.evaluate.remote(sent)] = (actor, task, attempts)
            if not running:
                raise RuntimeError("no live Ray worker left to evaluate candidates")
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            actor, task, attempts = running.pop(ref)
            try:
                res = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.log(f"worker died while evaluating candidate g{task['generation']}-i{task['index']} "
                         f"(attempt {attempts + 1}): {type(exc).__name__}: {first[:200]}")
                self._replace(actor, idle)
                if attempts < self.max_retries:
                    queue.appendleft((task, attempts + 1))
                else:
                    yield {"generation": task["generation"], "index": task["index"], "status": "failed",
                           "error": f"worker died {attempts + 1} times evaluating this candidate",
                           "worker": None, "items_evaluated": 0, "objectives": None, "raw": None,
                           "seconds": 0.0, "attempts": attempts + 1}
                continue
            except ray.exceptions.RayTaskError as exc:  # the evaluator raised (should not happen): a failure
                idle.append(actor)
                yield {"generation": task["generation"], "index": task["index"], "status": "failed",
                       "error": str(exc).strip().splitlines()[-1][:500], "worker": None, "items_evaluated": 0,
                       "objectives": None, "raw": None, "seconds": 0.0, "attempts": attempts + 1}
                continue
            idle.append(actor)
            res["attempts"] = attempts + 1
            yield res

    def _replace(self, dead, idle: deque) -> None:
        try:
            self.actors.remove(dead)
        except ValueError:
            pass
        try:
            self.ray.kill(dead)
        except Exception:
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
            except Exception:
                pass
        self.actors = []
