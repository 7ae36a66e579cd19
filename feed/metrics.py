"""Metrics with prometheus-client: a :class:`Registry` per process (per app, in tests) that every layer (cache, bus,
relay, hub, jobs) registers its counters, gauges and histograms in; the HTTP side (request timing, ``/metrics``) is
in ``feed.web.metrics``, the worker's endpoint in ``jobs.worker``.

**Several processes, one view.** ``cipherfeed serve --workers N`` runs N processes behind one port, and a scrape
reaches any one of them. So serve runs prometheus-client in its multiprocess mode (:func:`use_directory`, before
the library is imported): each process writes its values to files in one directory, and whichever process answers
``/metrics`` reads them all. Counters and histograms are summed; a gauge says how it is combined (``mode``): the
sum over live processes (``livesum``: L1 bytes, open streams) or the latest value written (``mostrecent``: queue
depth, outbox age, the same figure seen from every process). Without the directory (tests, embedded use of the
app) a registry is the process's own.

Gauges whose value is read from an object (``gauge_callback``) are written when ``/metrics`` is read and every
:data:`REFRESH_SECONDS` by :meth:`Registry.run_refresh`, so that processes not scraped are current too.

Privacy: metric names and label values must never carry user input (paths, usernames, ids, text). Names are
checked here; label values are the caller's duty: use closed sets (a route template, a tier, a status code).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
REFRESH_SECONDS = 5.0
DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_NAME_RE = re.compile(r"cipherfeed_[a-z0-9_]+")
_LABEL_RE = re.compile(r"[a-z][a-z0-9_]*")

Read = Callable[[], float | dict[tuple[str, ...], float]]


def use_directory(directory: Path | None) -> None:
    """Before any metric is made: share metrics through ``directory`` (emptied first: files of processes that
    ended would count), or, with None, keep them in this process. Child processes inherit the choice."""
    if directory is None:
        os.environ.pop(DIRECTORY_VARIABLE, None)
    else:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, mode=0o700)
        os.environ[DIRECTORY_VARIABLE] = str(directory)
    if "prometheus_client.values" in sys.modules:  # imported already: its value class follows the variable again
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _multiprocess() -> bool:
    return bool(os.environ.get(DIRECTORY_VARIABLE))


class Registry:
    """The metrics of one process (or app). Names are unique: registering one twice is an error."""

    def __init__(self) -> None:
        import prometheus_client

        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self._callbacks: list[tuple[Any, Read, set[tuple[str, ...]]]] = []
        self._publishers: list[Callable[[], None]] = []

    @staticmethod
    def _check(name: str, labelnames: Sequence[str]) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_RE.fullmatch(label) or label == "le":
                raise ValueError(f"invalid label name {label!r}")

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Any:
        from prometheus_client import Counter

        self._check(name, labelnames)
        return Counter(name, help, labelnames, registry=self.registry)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = (), mode: str = "mostrecent") -> Any:
        from prometheus_client import Gauge

        self._check(name, labelnames)
        return Gauge(name, help, labelnames, registry=self.registry, multiprocess_mode=mode)  # type: ignore[arg-type]

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Any:
        from prometheus_client import Histogram

        self._check(name, labelnames)
        return Histogram(name, help, labelnames, registry=self.registry, buckets=buckets)

    def gauge_callback(
        self, name: str, help: str, fn: Read, labelnames: Sequence[str] = (), mode: str = "livesum"
    ) -> Any:
        """A gauge written from ``fn`` (a float, or with ``labelnames`` a dict from label values to floats). ``fn``
        runs in the event loop, or in the worker's metrics thread: it must be cheap and must not fail."""
        gauge = self.gauge(name, help, labelnames, mode)
        self._callbacks.append((gauge, fn, set()))
        return gauge

    def before_reading(self, publish: Callable[[], None]) -> None:
        """``publish`` adds what its owner counted in plain numbers to its metrics, on each :meth:`refresh`."""
        self._publishers.append(publish)

    def refresh(self) -> None:
        """Write every callback gauge's current value, and what was counted outside the metrics."""
        for publish in self._publishers:
            publish()
        for gauge, fn, seen in self._callbacks:
            result = fn()
            if not isinstance(result, dict):
                gauge.set(float(result))
                continue
            for values in seen - set(result):
                gauge.labels(*values).set(0)  # a label set no longer reported is zero, not its last value
            for values, value in result.items():
                gauge.labels(*values).set(float(value))
                seen.add(values)

    async def run_refresh(self) -> None:
        """Refresh every :data:`REFRESH_SECONDS` until cancelled (only needed with several processes)."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            with contextlib.suppress(Exception):
                self.refresh()

    def render(self) -> str:
        """The exposition text of this process or, in the multiprocess mode, of every process sharing the
        directory."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        self.refresh()
        if not _multiprocess():
            return bytes(generate_latest(self.registry)).decode()
        every = CollectorRegistry()
        multiprocess.MultiProcessCollector(every)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(every)).decode()

    def names(self) -> list[str]:
        """The metric family names registered here."""
        return sorted({metric.name for metric in self.registry.collect()})

    def process_ended(self) -> None:
        """This process stops: its live gauges leave the shared view."""
        if _multiprocess():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # of what render() returns
