"""Dead letters by reason over time, as the console itself sees them.

The dead-letter store keeps no history, and a metrics registry in the console's
process holds only what that process counted (workers count dead letters in
theirs). So the console samples the store's counts by reason every
``interval`` seconds and keeps the newest ``size`` samples in memory (a ring
buffer): the overview draws them. A daemon thread samples while the console
runs under the ASGI lifespan (as ``versioned-tasks web`` serves it); pages
served also take a sample when the newest is older than ``interval`` (all
there is when the console is mounted in an app whose lifespan does not reach
it). The history starts with the console and goes with it; Prometheus
(``contrib.prometheus``, the gauge ``versioned_tasks_dead_letters_stored``)
keeps it for longer.

Each sample reads the counts by reason: on SQL a ``group by``, on Redis the
counts the store keeps (a handful of values); on memory and files a read of
every entry's metadata. A sample that fails (storage unreachable) is skipped.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..messages.readwrite import REASONS

__all__ = ["ReasonHistory", "Sample"]

log = logging.getLogger("versioned_tasks.web")

#: A colour per reason, in the order of REASONS (distinct in print and for
#: the common colour-vision deficiencies).
COLOURS: Final = ("#1a55b0", "#d1495b", "#2e8b57", "#8a5300", "#6a3d9a", "#00798c", "#5f6368")

#: The chart's size in SVG user units, and its margins for the labels.
WIDTH: Final = 640
HEIGHT: Final = 180
LEFT: Final = 56
BOTTOM: Final = 22
TOP: Final = 8
#: Samples the table under the chart shows, newest first.
TABLE_ROWS: Final = 12


@dataclass(frozen=True, slots=True)
class Sample:
    """The counts by reason at one moment.

    Attributes:
        at: when it was taken (Unix time).
        by_reason: reason -> entries (reasons with none left out).
    """

    at: float
    by_reason: Mapping[str, int]


class ReasonHistory:
    """The newest ``size`` samples of ``read()``, one every ``interval`` seconds
    (0: none), from a thread between :meth:`start` and :meth:`stop`, or from
    :meth:`tick` as pages are served."""

    def __init__(self, read: Callable[[], Mapping[str, int]], interval: float, size: int) -> None:
        self.interval = interval
        self._read = read
        self._samples: deque[Sample] = deque(maxlen=max(size, 1))
        self._lock = threading.Lock()
        self._sampling = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def start(self) -> None:
        """Sample every ``interval`` seconds from a daemon thread, the first now."""
        with self._lock:
            if self._thread is not None or not self.enabled:
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="versioned-tasks-console-history", daemon=True
            )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, once a sample under way is kept."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def _run(self) -> None:
        self.tick()
        while not self._stop.wait(self.interval):
            self.sample()

    def tick(self) -> None:
        """Take a sample when the newest is older than ``interval`` (or there is none)."""
        if not self.enabled:
            return
        with self._lock:
            newest = self._samples[-1].at if self._samples else None
        if newest is None or time.time() - newest >= self.interval:
            self.sample()

    def sample(self) -> None:
        """Read the counts now and keep them (a failed read is logged and skipped)."""
        with self._sampling:  # one read at a time, in the order kept
            try:
                counts = dict(self._read())
            except Exception as exc:  # storage unreachable: no sample this time
                log.warning("The console could not count dead letters by reason: %s", exc)
                return
            with self._lock:
                self._samples.append(Sample(time.time(), counts))

    def samples(self) -> list[Sample]:
        """The kept samples, oldest first."""
        with self._lock:
            return list(self._samples)

    def view(self) -> dict[str, Any]:
        """What the overview draws: the chart's lines and labels, and a table."""
        samples = self.samples()
        reasons = [r for r in REASONS if any(s.by_reason.get(r) for s in samples)]
        top = max((n for s in samples for n in s.by_reason.values()), default=0)
        scale = _nice(top)
        first, last = (samples[0].at, samples[-1].at) if samples else (0.0, 0.0)
        span = last - first

        def x(at: float) -> float:
            inner = WIDTH - LEFT - 8
            return LEFT + (inner * (at - first) / span if span > 0 else inner)

        def y(n: int) -> float:
            inner = HEIGHT - TOP - BOTTOM
            return TOP + inner * (1 - n / scale)

        lines = []
        for reason in reasons:
            points = [(x(s.at), y(s.by_reason.get(reason, 0))) for s in samples]
            lines.append(
                {
                    "reason": reason,
                    "colour": COLOURS[REASONS.index(reason) % len(COLOURS)],
                    "points": " ".join(f"{px:.1f},{py:.1f}" for px, py in points),
                    "last": points[-1],
                    "now": samples[-1].by_reason.get(reason, 0),
                }
            )
        rows = [
            {
                "at": _when(s.at),
                "counts": [s.by_reason.get(r, 0) for r in reasons],
                "total": sum(s.by_reason.values()),
            }
            for s in reversed(samples[-TABLE_ROWS:])
        ]
        return {
            "enabled": self.enabled,
            "interval": self.interval,
            "size": self._samples.maxlen,
            "count": len(samples),
            "reasons": reasons,
            "lines": lines,
            "rows": rows,
            "width": WIDTH,
            "height": HEIGHT,
            "left": LEFT,
            "plot_bottom": HEIGHT - BOTTOM,
            "right": WIDTH - 8,
            "top": TOP,
            "scale": scale,
            "first": _when(first) if samples else "",
            "last": _when(last) if samples else "",
        }


def _nice(top: int) -> int:
    """The chart's top: ``top`` rounded up to 1, 2 or 5 times a power of ten."""
    if top <= 0:
        return 1
    step = 1
    while True:
        for factor in (1, 2, 5):
            if top <= step * factor:
                return step * factor
        step *= 10


def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
