"""A synthetic fitness for tests of the search machinery (loop, checkpoint, resume, lock) and for timing the
loop's own overhead: deterministic in (genome, seed), costs ``delay`` seconds, no model involved."""

from __future__ import annotations

import math
import time


class SyntheticFitness:
    def __init__(self, tasks: list[str], delay: float = 0.0, fail_every: int = 0):
        self.tasks, self.delay, self.fail_every = list(tasks), delay, fail_every

    def __call__(self, task: dict) -> dict:
        if self.delay:
            time.sleep(self.delay)
        x = task["x"]
        out = {"generation": task["generation"], "index": task["index"], "worker": "synthetic",
               "items_evaluated": 10 * len(self.tasks), "seconds": self.delay, "status": "ok", "error": None}
        if self.fail_every and (task["seed"] % self.fail_every == 0):
            out.update(status="failed", error="synthetic failure", objectives=None)
            return out
        obj = {}
        for k, t in enumerate(self.tasks):
            c = (k + 1) / (len(self.tasks) + 1)
            d = sum((v - c) ** 2 for v in x) / max(len(x), 1)
            obj[t] = 0.25 + 0.7 * math.exp(-4 * d) + 1e-3 * ((task["seed"] % 97) / 97)
        out["objectives"] = obj
        out["raw"] = dict(obj)
        return out
