"""Progress on stderr: a bar on a terminal, a line every few seconds in a log.

A log (stderr redirected to a file, a CI job, a scheduler) has no use for a bar's
redraws, which arrive as thousands of carriage-return fragments; it gets one plain
line every ``LogProgress.every`` seconds instead, and none at all for work that
ends sooner. Both count images (fractions while a batch runs) and show a phase,
e.g. ``t1.jpg: detecting``, set with ``set_postfix_str``.
"""

from __future__ import annotations

import sys
import time


class LogProgress:
    """tqdm's few methods the CLI uses, printing ``faceveil DESC: N/TOTAL img, S s (phase)`` lines."""

    every = 5.0

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n, self.phase = total, desc, 0.0, ""
        self.started = self._last = time.monotonic()
        self.printed = ""

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            phase = f" ({self.phase})" if self.phase else ""
            text = f"faceveil {self.desc}: {self.n:.1f}/{self.total} img, {now - self.started:.0f} s{phase}"
            if text != self.printed:
                print(text, file=sys.stderr, flush=True)
            self.printed = text

    def update(self, n: float = 1) -> None:
        self.n += n
        self._line()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.phase = text
        self._line()

    def close(self) -> None:
        if self.printed:  # a log that saw progress also sees the end
            self._line(force=True)


def progress(total: int, desc: str):
    """A bar counted in images on a terminal, else a :class:`LogProgress`; the pipeline advances it by
    fractions as each network call ends."""
    if not sys.stderr.isatty():
        return LogProgress(total, desc)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}, {rate_fmt}]{postfix}")
