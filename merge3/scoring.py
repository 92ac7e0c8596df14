"""Scoring a candidate: decode its genome, merge in memory, answer benchmark items, estimate full accuracy.

The one place where the pipeline genome -> recipe -> materializer -> lm-eval -> responses -> estimate is put
together. A :class:`ScorerSpec` (plain data, sent to every worker) says what to score; a
:class:`CandidateScorer` lives in one worker (or the calling process), keeps the endpoints resident through the
materializer and one lm-eval wrapper of the live model, and turns a job into a :class:`Score`:

* :class:`CandidateJob`: a genome scored on the fitness items (anchors, or every item for ``full`` fitness),
  or with ``full_responses`` its answers on every item and no estimate (the calibration population);
* :class:`ModelJob`: a model from disk, answered on every item (the base and endpoints of a calibration).

Nothing a candidate does (an invalid recipe, a non-finite estimate, an exception in lm-eval) escapes as an
exception: it becomes a ``Score`` with status ``invalid`` or ``failed``, which the search records with its
penalty. Search, calibration, export and the benchmarks all score through this class.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

FITNESS_TYPES = ("irt", "anchor", "full")


@dataclass(frozen=True)
class CandidateJob:
    generation: int
    index: int
    x: tuple[float, ...]            # genome in the unit cube
    seed: int                       # merge seed (random methods)
    full_responses: bool = False    # answer every item, return responses only (calibration population)
    attempt: int = 0                # set by the worker pool on retries
    anchors: object = None          # merge3.irt.Anchors of this candidate (refreshed anchors); None: the spec's


@dataclass(frozen=True)
class ModelJob:
    index: int
    name: str
    path: str
    attempt: int = 0
    generation: int = -1


@dataclass
class Score:
    generation: int
    index: int
    status: str = "ok"                    # ok | invalid | failed
    error: str | None = None
    objectives: dict | None = None        # task -> estimated (or measured) accuracy
    raw: dict | None = None               # task -> plain accuracy on the items answered
    responses: dict | None = None         # task -> item id -> 0/1
    test: dict | None = None              # task -> accuracy on the held-out test items (full_responses jobs)
    items_evaluated: int = 0
    seconds: float = 0.0
    worker: str | None = None
    attempts: int = 1
    traceback: str | None = None

    @classmethod
    def failure(cls, job, error: str, attempts: int) -> "Score":
        return cls(generation=job.generation, index=job.index, status="failed", error=error, attempts=attempts)


@dataclass
class ScorerSpec:
    base: str
    models: list[str]
    genome: dict                      # merge3.genome.Genome config
    tasks: list[str]
    include_path: str | None = None
    evaluation: dict = field(default_factory=dict)   # lm-eval options (EvalOptions)
    fitness: str = "full"             # irt | anchor | full
    estimator: str = "anchor"         # irt fitness: the estimator (merge3.irt.ESTIMATORS)
    calibration: str | None = None    # calibration directory (irt fitness, or anchors chosen with one)
    anchors: object = None            # merge3.irt.Anchors, when the fitness uses fixed anchors
    adaptive: dict | None = None      # merge3.irt.adaptive.AdaptiveSettings: items chosen per candidate instead
    test_items: dict | None = None    # task -> held-out item ids: kept out of responses, scored apart
    device: str | None = None
    dtype: str | None = None
    offload_task_vectors: bool = False
    fused_merge: bool | None = None  # Materializer(fused=...): None = on for GPUs
    rank_cache: str | bool = "auto"  # Materializer(rank_cache=...): cache the magnitude / DELLA ranks
    cache_dir: str | None = None
    threads: int | None = None

    def __post_init__(self):
        if self.fitness not in FITNESS_TYPES:
            raise ValueError(f"fitness type {self.fitness!r}: expected one of {', '.join(FITNESS_TYPES)}")
        if self.fitness != "full" and self.anchors is None and self.adaptive is None:
            raise ValueError(f"{self.fitness} fitness needs anchors (or adaptive items)")
        if self.adaptive is not None and (self.fitness != "irt" or not self.calibration):
            raise ValueError("adaptive items need irt fitness and a calibration")


def candidate_seed(run_seed: int, generation: int, index: int) -> int:
    """The merge seed of candidate (generation, index): independent of the worker that evaluates it."""
    return int(np.random.SeedSequence([int(run_seed), int(generation), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


class CandidateScorer:
    """Materializer + lm-eval + estimator, built once per worker."""

    def __init__(self, spec: ScorerSpec):
        self.spec = spec
        if spec.threads:
            import torch

            torch.set_num_threads(int(spec.threads))
        from .evaluation.lmeval import default_device
        from .genome import Genome, n_layers_of

        self.device = spec.device or default_device()
        self._suite = None  # lm-eval tasks, loaded on first use (writing a merge needs none)
        self.genome = Genome.from_config(spec.genome, len(spec.models), n_layers_of(spec.base)) \
            if spec.genome else None
        self._materializer = self._lm = None  # built on the first merge: scoring models from disk needs neither
        self.calibration = None
        if spec.fitness != "full" and spec.calibration:
            from .irt import Calibration

            self.calibration = Calibration.load(spec.calibration)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def suite(self):
        """The lm-eval tasks (``merge3.evaluation.lmeval.TaskSuite``)."""
        if self._suite is None:
            from .evaluation.lmeval import EvalOptions, TaskSuite

            opts = {"device": self.device, **self.spec.evaluation}
            self._suite = TaskSuite(self.spec.tasks, include_path=self.spec.include_path,
                                    options=EvalOptions.from_dict(opts), cache_dir=self.spec.cache_dir)
        return self._suite

    @property
    def materializer(self):
        """The endpoints resident on the device, merged in place into one live model."""
        if self._materializer is None:
            from .merging.materializer import Materializer

            s = self.spec
            self._materializer = Materializer(s.base, s.models, device=self.device, dtype=s.dtype,
                                              offload_task_vectors=s.offload_task_vectors, fused=s.fused_merge,
                                              rank_cache=s.rank_cache,
                                              tokenizer_source=(s.genome or {}).get("tokenizer_source"))
        return self._materializer

    @property
    def lm(self):
        """lm-eval's wrapper of the live merged model (built once: in-place merges show through it)."""
        if self._lm is None:
            self._lm = self.suite.wrap_model(self.materializer.model, self.materializer.tokenizer)
        return self._lm

    def warm_up(self) -> None:
        """Loads what the first job would (lm-eval tasks; with a genome, the resident endpoints and the live
        model), so that a job's time is the job's own."""
        self.suite
        if self.genome is not None:
            self.lm

    # ---------------------------------------------------------------- building blocks (benchmarks use these)

    def recipe(self, x, seed: int):
        """The merge recipe of genome ``x`` (validated)."""
        if self.genome is None:
            raise ValueError("this scorer has no genome: it scores models from disk only")
        recipe = self.genome.decode(list(x), base=self.spec.base, models=self.spec.models, seed=int(seed))
        recipe.validate()
        return recipe

    def answer(self, recipe, items: dict[str, list[str]] | None = None) -> dict:
        """Materializes ``recipe`` in place and answers ``items`` (every item when None): task -> id -> 0/1."""
        self.materializer.apply(recipe)
        bad = self.materializer.nonfinite()
        if bad:  # e.g. weights of 1e300: lm-eval would still pick answers from NaN log-probabilities
            raise _Invalid(f"the merged weights are not finite in {len(bad)} tensor(s), e.g. {bad[0]}")
        return self.suite.evaluate(self.lm, items=items)

    def answer_adaptively(self, recipe, seed: int = 0) -> dict:
        """Materializes ``recipe`` and tests it adaptively (``merge3.irt.adaptive``): its answers on the items
        chosen for it (``seed``: exposure control's draws, the candidate's merge seed)."""
        from .irt.adaptive import AdaptiveSettings, run_adaptive

        self.answer(recipe, {})  # materialize (and check) only: no item asked yet
        res = run_adaptive(self.calibration, self.spec.tasks, lambda want: self.suite.evaluate(self.lm, items=want),
                           AdaptiveSettings(**self.spec.adaptive), exclude=self.spec.test_items, seed=seed)
        return res.responses

    def answer_model(self, path: str, items: dict[str, list[str]] | None = None) -> dict:
        """A model from disk (not merged) answers ``items`` (every item when None)."""
        lm = self.suite.wrap_model(path)
        try:
            return self.suite.evaluate(lm, items=items)
        finally:
            del lm

    def fitness_items(self, anchors=None) -> dict[str, list[str]] | None:
        """The items a candidate answers for its fitness: the anchors (``anchors``, else the spec's), or None
        (every item) for full fitness."""
        return None if self.spec.fitness == "full" else (anchors or self.spec.anchors).items

    def estimate(self, responses: dict, anchors=None) -> dict[str, float]:
        """Full-benchmark accuracy per task from the fitness items' answers."""
        s = self.spec
        return estimate_accuracy(s.fitness, s.estimator, responses, self.calibration, anchors or s.anchors)

    # ---------------------------------------------------------------- jobs

    def score(self, job: CandidateJob | ModelJob) -> Score:
        """One job; never raises for anything the candidate does."""
        t0 = time.time()
        out = Score(generation=job.generation, index=job.index, worker=self.name)
        try:
            if isinstance(job, ModelJob):
                out.responses = self.answer_model(job.path)
                out.items_evaluated = sum(len(r) for r in out.responses.values())
            else:
                self._score_candidate(job, out)
        except _Invalid as exc:
            out.status, out.error = "invalid", str(exc)
        except Exception as exc:  # lm-eval, the materializer or the estimator failed on this candidate
            out.status, out.error = "failed", f"{type(exc).__name__}: {exc}"
            out.traceback = traceback.format_exc(limit=5)
        out.seconds = time.time() - t0
        return out

    def _score_candidate(self, job: CandidateJob, out: Score) -> None:
        try:
            recipe = self.recipe(job.x, job.seed)
        except (ValueError, KeyError, TypeError) as exc:
            raise _Invalid(f"{type(exc).__name__}: {exc}") from None
        if self.spec.adaptive is not None and not job.full_responses:
            responses = self.answer_adaptively(recipe, job.seed)
        else:
            responses = self.answer(recipe, None if job.full_responses else self.fitness_items(job.anchors))
        out.items_evaluated = sum(len(r) for r in responses.values())
        if job.full_responses and self.spec.test_items:  # every item answered; the held-out ones kept apart
            responses, held_out = split_responses(responses, self.spec.test_items)
            out.test = {t: (sum(r.values()) / len(r) if r else None) for t, r in held_out.items()}
        out.raw = {t: (sum(r.values()) / len(r) if r else None) for t, r in responses.items()}
        if job.full_responses or self.spec.fitness != "full":
            out.responses = responses
        if job.full_responses:
            return
        est = self.estimate(responses, job.anchors)
        bad = [t for t in self.spec.tasks if t not in est or not math.isfinite(float(est[t]))]
        if bad:
            raise ValueError(f"no finite estimate for task(s) {bad}")
        out.objectives = {t: float(est[t]) for t in self.spec.tasks}


def split_responses(responses: dict, test_items: dict) -> tuple[dict, dict]:
    """(answers on the search's items, answers on the held-out test items), per task."""
    search, test = {}, {}
    for t, r in responses.items():
        held = set(test_items.get(t, ()))
        search[t] = {i: y for i, y in r.items() if i not in held}
        test[t] = {i: y for i, y in r.items() if i in held}
    return search, test


def estimate_accuracy(fitness: str, estimator: str, responses: dict, calibration, anchors) -> dict[str, float]:
    """Accuracy per task from a candidate's ``responses``: plain accuracy for ``full`` fitness (or random anchors
    without a calibration), else the estimator (``anchor`` fitness: the weighted anchor accuracy)."""
    if fitness == "full" or calibration is None:
        from .evaluation.lmeval import accuracy

        return accuracy(responses)
    from .irt import Anchors, estimate

    if anchors is None:  # adaptive items: the estimator reads whichever items the candidate answered
        anchors = Anchors.uniform({t: list(r) for t, r in responses.items()}, method="adaptive")
    name = "anchor" if fitness == "anchor" else estimator
    return {t: float(v) for t, v in estimate(name, responses, calibration, anchors).items()}


class _Invalid(Exception):
    """The genome decodes to a recipe the merge engine rejects."""
