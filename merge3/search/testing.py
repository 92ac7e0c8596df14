"""Test support for the search machinery (loop, checkpoint, resume, lock, worker death), kept out of the
production path: a synthetic fitness, a stop that acts like a kill, and Ray workers that crash on chosen jobs.
"""

from __future__ import annotations

import functools
import math
import os
import time

from ..scoring import CandidateScorer, Score
from .workers import open_ray_pool


class SyntheticFitness:
    """Deterministic in (genome, seed), costs ``delay`` seconds, no model involved; also times the loop's own
    overhead. ``fail_every``: candidates whose seed it divides fail."""

    def __init__(self, tasks: list[str], delay: float = 0.0, fail_every: int = 0):
        self.tasks, self.delay, self.fail_every = list(tasks), delay, fail_every

    def __call__(self, job) -> Score:
        if self.delay:
            time.sleep(self.delay)
        out = Score(generation=job.generation, index=job.index, worker="synthetic",
                    items_evaluated=10 * len(self.tasks), seconds=self.delay)
        if self.fail_every and (job.seed % self.fail_every == 0):
            out.status, out.error = "failed", "synthetic failure"
            return out
        obj = {}
        for k, t in enumerate(self.tasks):
            c = (k + 1) / (len(self.tasks) + 1)
            d = sum((v - c) ** 2 for v in job.x) / max(len(job.x), 1)
            obj[t] = 0.25 + 0.7 * math.exp(-4 * d) + 1e-3 * ((job.seed % 97) / 97)
        out.objectives, out.raw = obj, dict(obj)
        return out


class SimulatedKill(BaseException):
    """Raised by :class:`StopAfter`: escapes the search like a kill (nothing after it is written)."""


class StopAfter:
    """Wraps a fitness: after ``n`` jobs the next one raises :class:`SimulatedKill`."""

    def __init__(self, fitness, n: int):
        self.fitness, self.left = fitness, int(n)

    def __call__(self, job) -> Score:
        if self.left <= 0:
            raise SimulatedKill()
        self.left -= 1
        return self.fitness(job)


class CrashingScorer(CandidateScorer):
    """A real scorer whose worker process dies (``os._exit``) on the first ``plan[(generation, index)]``
    attempts of a job: the worker death a pool must survive."""

    def __init__(self, spec, plan: dict):
        super().__init__(spec)
        self.plan = dict(plan)

    def score(self, job) -> Score:
        if self.plan.get((job.generation, job.index), 0) > job.attempt:
            os._exit(13)
        return super().score(job)


class HangingScorer(CandidateScorer):
    """A real scorer that hangs (sleeps far past any time limit) on the first ``plan[(generation, index)]``
    attempts of a job: a worker stuck in a CUDA call or a deadlock, which a pool must time out."""

    def __init__(self, spec, plan: dict):
        super().__init__(spec)
        self.plan = dict(plan)

    def score(self, job) -> Score:
        if self.plan.get((job.generation, job.index), 0) > job.attempt:
            time.sleep(10 ** 6)
        return super().score(job)


def crashing_ray_pool(plan: dict, scorer=CrashingScorer):
    """A pool factory whose Ray workers crash (or, with ``scorer=HangingScorer``, hang) as ``plan`` says:
    {(generation, index): attempts that crash}."""
    scorer_cls = functools.partial(scorer, plan=dict(plan))

    def factory(spec, workers, address=None, log=None):
        return open_ray_pool(spec, workers, address, scorer_cls=scorer_cls, log=log)

    return factory


class OrderedPool:
    """``n_workers`` simulated workers in this process whose completion order is a function of what is running:
    of the jobs in flight, the one with the smallest ``finish(job)`` (then generation, index) comes back next,
    and is scored only then. So a search stopped and resumed with the same jobs in flight sees the same order
    of results as one never stopped: what "the same completion order" means for asynchronous dispatch."""

    def __init__(self, score, n_workers: int, finish=None, name: str = "ordered"):
        self._score, self.n_workers, self.name = score, int(n_workers), name
        self._finish = finish or (lambda job: job.generation + 2.5 * ((job.seed * 2654435761) % 1000) / 1000)

    def run(self, jobs, more=None):
        queue, running = list(jobs), []
        while True:
            while len(running) < self.n_workers:
                if not queue and more is not None:
                    queue.extend(more())
                if not queue:
                    break
                running.append(queue.pop(0))
            if not running:
                return
            job = min(running, key=lambda j: (self._finish(j), j.generation, j.index))
            running.remove(job)
            res = self._score(job)
            res.worker = res.worker or self.name
            yield res

    def close(self) -> None:
        pass


def ordered_pool(score, n_workers: int, finish=None):
    """A pool factory for :class:`OrderedPool`."""
    return lambda spec, workers, address=None, log=None: OrderedPool(score, n_workers, finish)
