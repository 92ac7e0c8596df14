"""Progress output: a tqdm bar on a terminal, a plain line every 10% otherwise (logs, CI)."""

from __future__ import annotations

import sys


class LineProgress:
    """Plain progress lines for logs (no terminal)."""

    def __init__(self, total: int, desc: str, unit: str = "steps"):
        self.total, self.n, self.desc, self.unit, self.last = max(total, 1), 0, desc, unit, -1

    def update(self, k: int = 1) -> None:
        self.n += k
        pct = 100 * self.n // self.total
        if pct // 10 != self.last // 10:
            self.last = pct
            print(f"{self.desc}: {pct}% ({self.n}/{self.total} {self.unit})", file=sys.stderr, flush=True)

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


class NoProgress(LineProgress):
    def update(self, k: int = 1) -> None:
        pass


def progress(total: int, desc: str, enabled: bool = True, unit: str = "steps"):
    if not enabled:
        return NoProgress(total, desc, unit)
    if sys.stderr.isatty():
        from tqdm import tqdm

        # disable=False explicitly: quiet mode turns third-party bars off through TQDM_DISABLE (merge3.quiet)
        return tqdm(total=total, desc=desc, unit=unit.rstrip("s") or unit, disable=False)
    return LineProgress(total, desc, unit)
