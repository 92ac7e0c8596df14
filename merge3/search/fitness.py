"""Candidate evaluation: decode a genome, merge in memory, answer benchmark items, estimate accuracy.

A :class:`FitnessSpec` (plain data, sent to every worker) says what to evaluate; a :class:`CandidateEvaluator`
lives in one worker, holds the endpoints resident through the materializer and an lm-eval wrapper of the live
model, and turns a task ``{generation, index, x, seed}`` into a result record. Nothing a candidate does
(an invalid recipe, a NaN estimate, an exception in lm-eval) escapes as an exception: it becomes a result
with ``status`` ``invalid`` or ``failed`` and the run's penalty.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class FitnessSpec:
    base: str
    models: list[str]
    genome: dict
    n_layers: int
    tasks: list[str]
    include_path: str | None
    evaluation: dict
    type: str  # irt | anchor | full
    estimator: str
    calibration: str | None
    anchors: dict[str, list[str]] | None  # task -> item ids (None for full evaluation)
    penalty: float = 0.0
    device: str | None = None
    dtype: str | None = None
    offload_task_vectors: bool = False
    cache_dir: str | None = None
    threads: int | None = None
    anchor_obj: object = None  # the calibration's anchors object (from select_anchors), when there is one
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("anchor_obj")
        return d


def candidate_seed(run_seed: int, generation: int, index: int) -> int:
    """The merge seed of candidate (generation, index): independent of the worker that evaluates it."""
    return int(np.random.SeedSequence([int(run_seed), int(generation), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class CandidateEvaluator:
    """Materializer + lm-eval + estimator, built once per worker."""

    def __init__(self, spec: FitnessSpec | dict):
        if isinstance(spec, dict):
            spec = FitnessSpec(**spec)
        self.spec = spec
        if spec.threads:
            import torch

            torch.set_num_threads(int(spec.threads))
        from ..evaluation.lmeval import EvalOptions, TaskSuite, default_device
        from ..genome import Genome
        from ..merging.materializer import Materializer

        device = spec.device or default_device()
        opts = dict(spec.evaluation)
        opts.setdefault("device", device)
        self.suite = TaskSuite(spec.tasks, include_path=spec.include_path, options=EvalOptions.from_dict(opts),
                               cache_dir=spec.cache_dir)
        self.genome = Genome.from_config(spec.genome, len(spec.models), spec.n_layers)
        self.mat = Materializer(spec.base, spec.models, device=device, dtype=spec.dtype,
                                offload_task_vectors=spec.offload_task_vectors)
        self.lm = self.suite.wrap_model(self.mat.model, self.mat.tokenizer)
        self.cal = None
        if spec.type != "full" and spec.calibration:
            from ..calibration import Calibration

            self.cal = Calibration.load(spec.calibration)
        self._anchor_obj = None
        self.name = worker_name()

    def ping(self) -> str:
        return self.name

    def _anchors(self):
        """An anchors object for ``estimate`` built from the item lists (the estimator reads ``.items``)."""
        if self._anchor_obj is None and self.spec.anchor_obj is not None:
            self._anchor_obj = self.spec.anchor_obj
        if self._anchor_obj is None:
            from types import SimpleNamespace

            self._anchor_obj = SimpleNamespace(items=self.spec.anchors, method="given",
                                               weights={t: [1.0 / len(v)] * len(v) for t, v in self.spec.anchors.items()})
        return self._anchor_obj

    def estimate(self, responses: dict) -> dict[str, float]:
        s = self.spec
        if s.type == "full" or (s.type == "anchor" and self.cal is None):
            return {t: (sum(r.values()) / len(r)) if r else float("nan") for t, r in responses.items()}
        from ..irt import estimate

        name = "anchor" if s.type == "anchor" else s.estimator
        return {t: float(v) for t, v in estimate(name, responses, self.cal, self._anchors()).items()}

    def evaluate(self, task: dict) -> dict:
        """One candidate; never raises (except when told to crash the worker, for fault-injection tests)."""
        t0 = time.time()
        s = self.spec
        out = {"generation": task["generation"], "index": task["index"], "worker": self.name,
               "items_evaluated": 0, "status": "ok", "error": None, "objectives": None, "raw": None}
        if int(task.get("crash_attempts", 0)) > int(task.get("attempt", 0)):
            os._exit(13)  # simulates a worker killed mid-evaluation (tests only)
        if task.get("kind") == "model":  # a model from disk, every item (the calibration population)
            try:
                lm = self.suite.wrap_model(task["path"])
                responses = self.suite.evaluate(lm, items=None)
                del lm
                out.update(responses=responses, items_evaluated=sum(len(r) for r in responses.values()))
            except Exception as exc:
                out.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            out["seconds"] = time.time() - t0
            return out
        try:
            recipe = self.genome.decode(list(task["x"]), base=s.base, models=s.models, seed=int(task["seed"]))
            if hasattr(recipe, "validate"):
                recipe.validate()
        except Exception as exc:  # an invalid candidate: recorded with the penalty
            out.update(status="invalid", error=f"{type(exc).__name__}: {exc}", seconds=time.time() - t0)
            return out
        try:
            self.mat.apply(recipe)
            items = None if (s.type == "full" or task.get("full")) else s.anchors
            responses = self.suite.evaluate(self.lm, items=items)
            out["items_evaluated"] = sum(len(r) for r in responses.values())
            out["raw"] = {t: (sum(r.values()) / len(r) if r else None) for t, r in responses.items()}
            if s.type != "full" or task.get("full"):
                out["responses"] = responses
            if task.get("full"):  # calibration population: responses only, no estimate
                out["seconds"] = time.time() - t0
                return out
            est = self.estimate(responses)
            bad = [t for t in s.tasks if t not in est or not math.isfinite(float(est[t]))]
            if bad:
                raise ValueError(f"no finite estimate for task(s) {bad}")
            out["objectives"] = {t: float(est[t]) for t in s.tasks}
        except Exception as exc:
            out.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc(limit=5))
        out["seconds"] = time.time() - t0
        return out
