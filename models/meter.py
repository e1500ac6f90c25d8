"""Progress and per-phase timing of one anonymize / recover batch (what the CLI bar and the benchmark read)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class Meter:
    """Counts network calls against the expected number per image and times named phases.

    ``on_progress(images)`` receives fractions of images as calls finish, never more than
    the batch in total. Phase times (seconds, summed over calls) are kept only when
    ``timings`` is a dict; timing waits for the device at each phase end, so it is off by default.
    """

    def __init__(self, on_progress: Callable[[float], None] | None = None) -> None:
        self.on_progress = on_progress
        self.timings: dict[str, float] | None = None
        self.calls = 0  # network calls (each at the bucket size)
        self._images, self._reported, self._per_image = 0, 0.0, 1.0

    def start(self, images: int, calls_per_image: float) -> None:
        self._images, self._reported, self._per_image = images, 0.0, max(calls_per_image, 1.0)

    def tick(self, images: int) -> None:
        self.calls += 1
        if self.on_progress is None:
            return
        step = min(images / self._per_image, self._images - self._reported)
        if step > 0:
            self._reported += step
            self.on_progress(step)

    def finish(self) -> None:
        """Report what early stops left unreported."""
        if self.on_progress is not None and self._images - self._reported > 0:
            self.on_progress(self._images - self._reported)
        self._reported = self._images

    @contextmanager
    def phase(self, name: str, device: torch.device) -> Iterator[None]:
        if self.timings is None:
            yield
            return
        t0 = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
