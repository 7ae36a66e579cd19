"""A small Prometheus client: counters, gauges, histograms and callback gauges in a ``Registry``, rendered in the
text exposition format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/).

It imports nothing of ours and no web framework, so every layer (cache, bus, services) can register metrics; the
HTTP side (request timing middleware, the ``/metrics`` endpoint) is in ``feed.web.metrics``.

Privacy: metric names and label values must never carry user input (paths, usernames, ids, text). Names are
checked here; label values are the caller's duty: use closed sets (a route template, a tier, a status code).
"""

from __future__ import annotations

import copy
import math
import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import ClassVar, Self, TypeVar

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # of what render() returns
_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]
Read = Callable[[], float | dict[tuple[str, ...], float]]
F = TypeVar("F", bound="_Family")


def format_value(value: float) -> str:
    """A float as Prometheus writes it: ``+Inf``, ``-Inf``, ``NaN``, integers without ``.0``."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape(text: str, quote: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _sample_line(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}"
    inner = ",".join(f'{key}="{_escape(val, quote=True)}"' for key, val in labels)
    return f"{name}{{{inner}}} {format_value(value)}"


class _Family:
    """One metric: with ``labelnames`` it is a family of children made by ``labels()``, else a single series."""

    kind: ClassVar[str]

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()  # one per family, shared with its children
        self._children: dict[tuple[str, ...], Self] = {}
        self._reset()

    def _reset(self) -> None:
        self._value = 0.0

    def _child(self) -> Self:
        child = copy.copy(self)  # same name, help, kind, buckets and lock
        child.labelnames = ()
        child._children = {}
        child._reset()
        return child

    def labels(self, *values: str) -> Self:
        """The child for these label values (in ``labelnames`` order), made once and then reused."""
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels")
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes {len(self.labelnames)} label values, got {len(values)}")
        if not all(isinstance(value, str) for value in values):
            raise TypeError("label values must be str")
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = self._child()
        return child

    def _unlabelled(self) -> None:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: call .labels(...) first")

    def _own_samples(self, labels: Labels) -> list[Sample]:
        return [(self.name, labels, self._value)]

    def samples(self) -> list[Sample]:
        with self._lock:
            if not self.labelnames:
                return self._own_samples(())
            out: list[Sample] = []
            for values, child in self._children.items():
                out.extend(child._own_samples(tuple(zip(self.labelnames, values, strict=True))))
            return out


class Counter(_Family):
    kind = "counter"

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._unlabelled()
        with self._lock:
            self._value += amount


class Gauge(_Family):
    kind = "gauge"

    def set(self, value: float) -> None:
        self._unlabelled()
        with self._lock:
            self._value = float(value)

    def inc(self, amount: float = 1) -> None:
        self._unlabelled()
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1) -> None:
        self.inc(-amount)


class Histogram(_Family):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be distinct and at least one must be finite")
        self.buckets = (*bounds, math.inf)
        super().__init__(name, help, labelnames)

    def _reset(self) -> None:
        self._counts = [0] * len(self.buckets)  # per bucket, not cumulative; summed when rendered
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._unlabelled()
        with self._lock:
            self._counts[bisect_left(self.buckets, value)] += 1  # bounds are inclusive: le="0.1" counts 0.1
            self._sum += value

    def _own_samples(self, labels: Labels) -> list[Sample]:
        out: list[Sample] = []
        total = 0
        for bound, count in zip(self.buckets, self._counts, strict=True):
            total += count
            out.append((f"{self.name}_bucket", (*labels, ("le", format_value(bound))), total))
        out.append((f"{self.name}_sum", labels, self._sum))
        out.append((f"{self.name}_count", labels, total))
        return out


class GaugeCallback(_Family):
    """A gauge read at render time from ``fn``: a float, or a dict from label values to floats with labelnames.

    ``fn`` runs on every scrape, in the event loop: it must be cheap, must not block and must not fail.
    """

    kind = "gauge"

    def __init__(self, name: str, help: str, fn: Read, labelnames: Sequence[str]) -> None:
        super().__init__(name, help, labelnames)
        self.fn = fn

    def samples(self) -> list[Sample]:
        result = self.fn()
        if not isinstance(result, dict):
            if self.labelnames:
                raise ValueError(f"{self.name} has labels: its callback must return a dict")
            return [(self.name, (), float(result))]
        out: list[Sample] = []
        for values, value in result.items():
            if len(values) != len(self.labelnames) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"{self.name}: callback returned bad label values {values!r}")
            out.append((self.name, tuple(zip(self.labelnames, values, strict=True)), float(value)))
        return out


class Registry:
    """The metrics of one process, in registration order. Names are unique: registering one twice is an error."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def _add(self, family: F) -> F:
        if not _NAME_RE.fullmatch(family.name):
            raise ValueError(f"invalid metric name {family.name!r}")
        for label in family.labelnames:
            if not _LABEL_RE.fullmatch(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r}")
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"metric {family.name!r} is already registered")
            self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labelnames))

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        return self._add(Histogram(name, help, labelnames, buckets))

    def gauge_callback(self, name: str, help: str, fn: Read, labelnames: Sequence[str] = ()) -> GaugeCallback:
        return self._add(GaugeCallback(name, help, fn, labelnames))

    def render(self) -> str:
        with self._lock:
            families = list(self._families.values())
        lines: list[str] = []
        for family in families:
            lines.append(f"# HELP {family.name} {_escape(family.help, quote=False)}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            lines.extend(_sample_line(*sample) for sample in family.samples())
        return "\n".join(lines) + "\n"
