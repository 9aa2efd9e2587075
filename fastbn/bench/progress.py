"""Progress messages on stderr, with an estimate of the time left.

On a terminal one status line is rewritten in place
("[sweep 12/699 0:41, ETA 9:30] train-NCHW-...: round 2/5"); otherwise one
line per item, so that a log stays short.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, Sequence


def fmt_duration(seconds: float) -> str:
    """'1:05' (minutes:seconds) or '1:02:05'."""
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return "%d:%02d:%02d" % (h, m, s) if h else "%d:%02d" % (m, s)


def eta(elapsed: float, done_cost: float, remaining_cost: float
        ) -> Optional[float]:
    """Seconds left, extrapolating the time per unit of cost so far; None
    before anything is done."""
    if done_cost <= 0:
        return None
    return elapsed / done_cost * remaining_cost


class Progress:
    """Progress of a run made of parts (kernels, sweep, ...), each a list
    of items with an estimated relative cost."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.t0 = time.perf_counter()
        self.part_name, self.costs, self.k, self.key = "", [1.0], 0, ""
        self.part_t0 = self.t0

    def part(self, name: str, costs: Sequence[float]) -> None:
        """Begin a part of len(costs) items."""
        self.part_name, self.costs = name, list(costs) or [1.0]
        self.k, self.key, self.part_t0 = 0, "", time.perf_counter()

    def start(self, key: str) -> None:
        """Begin the next item of the current part."""
        self.k += 1
        self.key = key
        if not self.tty:
            self._write(self._prefix() + key + "\n")

    def _prefix(self) -> str:
        now = time.perf_counter()
        done = sum(self.costs[:self.k - 1])
        left = eta(now - self.part_t0, done, sum(self.costs[self.k - 1:]))
        return "[%s %d/%d %s, ETA %s] " % (
            self.part_name, self.k, len(self.costs),
            fmt_duration(now - self.t0),
            "?" if left is None else fmt_duration(left))

    def __call__(self, msg: str) -> None:
        """A status message about the current item (terminal only)."""
        if self.tty:
            self._write("\r\033[K" + self._prefix() + self.key + ": " + msg)

    def note(self, msg: str) -> None:
        """A message that stays (e.g. a warning), on its own line."""
        self._write(("\r\033[K" if self.tty else "") + msg + "\n")

    def done(self) -> None:
        self.note("done in %s" % fmt_duration(time.perf_counter() - self.t0))

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
