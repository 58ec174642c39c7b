"""Progress on stderr for long jobs (registration, benchmarks): a bar redrawn in place on a
terminal; elsewhere (a log file, CI) a plain line every LOG_EVERY_SECONDS and at the end, since
carriage returns would pile up as one endless line there. Also `plural`, for the counts the
commands print."""

from __future__ import annotations

import sys
import time

LOG_EVERY_SECONDS = 10.0


def plural(n: int, word: str, words: str | None = None) -> str:
    """"1 song", "2 songs": counts in the command line's output as a person would write them."""
    return f"{n} {word if n == 1 else words or word + 's'}"


class Progress:
    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.label = label
        self.enabled = enabled
        self.done = 0
        self.audio_seconds = 0.0
        self.started = time.perf_counter()
        self._last_draw = 0.0
        self._terminal = sys.stderr.isatty()

    def step(self, audio_seconds: float = 0.0) -> None:
        self.done += 1
        self.audio_seconds += audio_seconds
        now = time.perf_counter()
        every = 0.2 if self._terminal else LOG_EVERY_SECONDS
        if self.enabled and (now - self._last_draw > every or self.done == self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        filled = int(30 * self.done / self.total)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (
            f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}"
            f"  {rate:.1f}/s  {self.audio_seconds / elapsed:.0f}x real time  ETA {eta:.0f}s"
        )
        sys.stderr.write(f"\r{line}" if self._terminal else f"{line}\n")
        if self._terminal and self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
