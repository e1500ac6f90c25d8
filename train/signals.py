"""Stopping a run cleanly on SIGTERM / SIGINT: the loop finishes its step, checkpoints and returns.

Not for: what the loop does once stopped (:meth:`faceveil.train.recipe.FinetuneRecipe.train`).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger("faceveil.train")


class StopFlag:
    """SIGTERM / SIGINT set a flag that the loop checks after every step; a second signal interrupts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: finishing this step, saving a checkpoint, then stopping", signal.Signals(signum).name)

    def install(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
