"""The fitness as the search's driver sees it while the search runs: which anchors each generation answers, and a
calibration that grows with the search.

* **Anchor refresh** (``fitness.anchors.refresh``): generation g's candidates answer anchor set g, drawn from a
  stream seeded by (anchor seed, g); generation 0 keeps the run's anchors. A candidate lucky on one set of items
  is not lucky on the next generation's, so the population cannot specialise on a fixed handful of items.
* **Online calibration** (``fitness.online_calibration``): after a generation is scored, its ``top_k`` best
  candidates by estimate are scored on every item (logged in ``verified.jsonl`` with their answers). The search
  is told those measured scores instead of the estimates, and (irt fitness) their answers join the calibration
  population (:meth:`merge3.irt.Calibration.with_models`), so the estimates of later generations come from a
  population that looks like the candidates the search now proposes. With online calibration the driver
  estimates every candidate itself, with the calibration of the moment.

Everything here is a function of the run seed and the logged evaluations: a resumed search replays the same
anchor sets and grows the same calibration from ``verified.jsonl``, so it ends where an uninterrupted one does.
"""

from __future__ import annotations

import numpy as np

from ..scoring import estimate_accuracy
from .front import best_by_estimate


def generation_seed(anchor_seed: int, generation: int) -> int:
    """The anchor seed of a refreshed generation (generation 0 keeps ``anchor_seed``)."""
    if generation == 0:
        return int(anchor_seed)
    return int(np.random.SeedSequence([int(anchor_seed), int(generation), 7]).generate_state(1)[0] & 0x7FFFFFFF)


class FitnessState:
    """Per-generation anchors and the (growing) calibration of one search, held by its driver."""

    def __init__(self, cfg, spec, draw_anchors, calibration=None):
        """``draw_anchors(seed) -> Anchors``: the run's anchor method with another seed; ``calibration``: the
        loaded :class:`~merge3.irt.Calibration` the fitness uses (None: none)."""
        self.cfg, self.spec = cfg, spec
        self.draw_anchors = draw_anchors
        self.calibration = calibration
        self.online = cfg.fitness.online_calibration
        self.refresh = cfg.fitness.type != "full" and cfg.fitness.anchors.refresh
        self._anchors = {0: spec.anchors} if spec.anchors is not None else {}
        self.added: list[str] = []   # candidates whose answers joined the calibration population, in order

    # ---------------------------------------------------------------- anchors

    def anchors(self, generation: int):
        """The anchors generation ``generation`` answers (None for full fitness)."""
        if self.spec.anchors is None:
            return None
        g = generation if self.refresh else 0
        if g not in self._anchors:
            self._anchors[g] = self.draw_anchors(generation_seed(self.cfg.fitness.anchors.seed, g))
        return self._anchors[g]

    def job_anchors(self, generation: int):
        """What a job carries: its generation's anchors when they differ from the spec's, else None."""
        return self.anchors(generation) if self.refresh and generation else None

    def anchor_items(self, generation: int) -> int:
        a = self.anchors(generation)
        return a.total() if a is not None else 0

    # ---------------------------------------------------------------- estimates

    @property
    def estimates_here(self) -> bool:
        """Whether the driver re-estimates candidates (its calibration grows; the workers' does not)."""
        return self.cfg.fitness.type == "irt" and self.online.top_k > 0 and self.calibration is not None

    def estimate(self, responses: dict, generation: int) -> dict[str, float]:
        f = self.cfg.fitness
        return estimate_accuracy(f.type, f.estimator, responses, self.calibration, self.anchors(generation))

    # ---------------------------------------------------------------- online calibration

    def online_due(self, generation: int) -> bool:
        o = self.online
        return self.cfg.fitness.type != "full" and o.top_k > 0 and (generation + 1) % o.every == 0

    def online_choice(self, records: list[dict]) -> list[dict]:
        """The generation's ``top_k`` best candidates by estimate (a function of the logged records only, so a
        resume chooses the same ones)."""
        ok = [r for r in records if r.get("status") == "ok" and r.get("F") is not None]
        return best_by_estimate(ok, self.online.top_k)

    def grow(self, verified_records: list[dict]) -> None:
        """Adds the answers of these (newly verified) candidates to the calibration population."""
        if self.calibration is None or self.cfg.fitness.type != "irt":
            return
        new = {r["candidate"]: r["responses"] for r in sorted(verified_records, key=lambda r: r["candidate"])
               if r.get("status") == "ok" and r.get("responses")}
        if new:
            self.calibration = self.calibration.with_models(new)
            self.added.extend(new)
