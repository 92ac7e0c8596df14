"""Asynchronous (steady-state) dispatch: pymoo ask-and-tell without a generation barrier.

A batch of ``pop_size`` proposals is asked; workers take them one by one. Whenever a worker is free and no
proposal is left, every result that has come back since the last tell is told (in the order it came back) and
the next batch is asked, so workers never wait for a generation's slowest candidate; a result that returns
later is told with a later batch (overlapping generations). This needs an algorithm whose ``tell`` takes a
batch of any size (survival over population + results: ga, nsga2, nsga3).

A proposal is named by its batch (the record's ``generation``) and its index in the batch; its merge seed
depends on those only. Each logged record carries ``told``: how many tells had happened when it came back,
i.e. the tell that takes it. The log's line order is the order results came back, so a resume replays exactly:
tells 0 .. T-1 with their batches in log order, each followed by its ask; the records of the last group T are
results not told yet. Replaying needs no pickled state (the algorithm is set up again from the run seed).
"""

from __future__ import annotations

from collections import deque

import numpy as np


class LogMismatch(ValueError):
    pass


class SteadyState:
    """The ask/tell state of an asynchronous search: proposals not yet scored, results not yet told."""

    def __init__(self, algorithm, problem, budget: int, log_name: str = "evaluations.jsonl"):
        self.alg, self.problem, self.budget, self.log_name = algorithm, problem, int(budget), log_name
        self.batch = -1               # last batch asked
        self.n_proposed = 0           # proposals asked so far (at most the budget)
        self.exhausted = False        # the algorithm proposed nothing: the search ends with what is running
        self.tells = 0
        self.untold: list[dict] = []  # results back, not told yet (in the order they came back)
        self.proposed: dict[tuple[int, int], np.ndarray] = {}

    # ---------------------------------------------------------------- the two steps

    def ask(self) -> list[tuple[int, int, np.ndarray]]:
        """The next batch of proposals as (batch, index, x); empty once the budget is proposed."""
        if self.exhausted or self.n_proposed >= self.budget:
            return []
        pop = self.alg.ask()
        if pop is None or len(pop) == 0:
            self.exhausted = True
            return []
        self.batch += 1
        X = np.clip(pop.get("X").astype(float), 0.0, 1.0)[: self.budget - self.n_proposed]
        self.n_proposed += len(X)
        out = [(self.batch, i, x) for i, x in enumerate(X)]
        self.proposed.update({(b, i): x for b, i, x in out})
        return out

    def tell(self) -> None:
        """Tells every result not told yet, as one batch."""
        from pymoo.core.evaluator import Evaluator
        from pymoo.core.population import Population
        from pymoo.problems.static import StaticProblem

        if not self.untold:
            return
        pop = Population.new("X", np.array([r["genome"] for r in self.untold], dtype=float))
        Evaluator().eval(StaticProblem(self.problem, F=np.array([r["F"] for r in self.untold], dtype=float)), pop)
        self.alg.tell(infills=pop)
        self.untold = []
        self.tells += 1

    def next_batch(self) -> list[tuple[int, int, np.ndarray]]:
        """A worker is free and no proposal is left: tell what came back, ask again (nothing to tell: wait)."""
        if not self.untold:
            return []
        self.tell()
        return self.ask()

    def came_back(self, rec: dict) -> dict:
        """A result came back: ``rec`` gets its ``told`` and waits for the next tell."""
        rec["told"] = self.tells
        self.untold.append(rec)
        return rec

    @property
    def finished(self) -> bool:
        return self.exhausted or self.n_proposed >= self.budget

    # ---------------------------------------------------------------- resume

    def replay(self, records: list[dict]) -> list[tuple[int, int, np.ndarray]]:
        """Re-derives the state from the log (records in line order); returns the proposals asked but not logged,
        in the order they were asked (those running when the search stopped first)."""
        queue = deque(self.ask())
        groups: dict[int, list[dict]] = {}
        for r in records:
            if "told" not in r:
                raise LogMismatch(f"{self.log_name}: {r.get('candidate')} has no 'told' field; the log was not "
                                  "written by an async search (algorithm.dispatch)")
            groups.setdefault(int(r["told"]), []).append(r)
        last = max(groups, default=0)
        for t in range(last + 1):
            group = groups.get(t, [])
            if not group and t < last:
                raise LogMismatch(f"{self.log_name}: no result was told at step {t}; the log is incomplete")
            for r in group:
                key = (r["generation"], r["index"])
                x = self.proposed.get(key)
                if x is None or not np.array_equal(np.array(r["genome"], dtype=float), x):
                    raise LogMismatch(f"{self.log_name}: {r.get('candidate')} is not what the search proposes "
                                      "at that point (the log does not belong to this config and seed)")
            self.untold = list(group)
            if t < last:
                self.tell()
                queue.extend(self.ask())
        logged = {(r["generation"], r["index"]) for r in records}
        return [p for p in queue if (p[0], p[1]) not in logged]
