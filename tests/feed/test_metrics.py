"""The Prometheus registry: values, labels, and the exact text exposition format 0.0.4."""

from __future__ import annotations

import math
import re
import threading

import pytest

from feed.metrics import Registry, format_value

_SAMPLE_RE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Series = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> dict[Series, float]:
    """A strict little reader of the text format: every line must be a comment or a well-formed sample."""
    assert text.endswith("\n")
    samples: dict[Series, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP [^ ]+ .*|TYPE [^ ]+ (counter|gauge|histogram|summary|untyped))", line), line
            continue
        found = _SAMPLE_RE.fullmatch(line)
        assert found, line
        name, body, value = found.groups()
        labels: dict[str, str] = {}
        if body:
            pos = 0
            while pos < len(body):
                label = _LABEL_RE.match(body, pos)
                assert label, line
                labels[label[1]] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m[0]], label[2])
                pos = label.end()
        key = (name, frozenset(labels.items()))
        assert key not in samples, f"duplicate series {line}"
        samples[key] = float(value)
    return samples


def series(name: str, **labels: str) -> Series:
    return name, frozenset(labels.items())


def test_counter_and_gauge_render_exactly() -> None:
    registry = Registry()
    requests = registry.counter("app_requests_total", "Requests served.")
    temperature = registry.gauge("app_temperature", "Degrees.")
    requests.inc()
    requests.inc(2.5)
    temperature.set(20)
    temperature.inc()
    temperature.dec(0.25)
    assert registry.render() == (
        "# HELP app_requests_total Requests served.\n"
        "# TYPE app_requests_total counter\n"
        "app_requests_total 3.5\n"
        "# HELP app_temperature Degrees.\n"
        "# TYPE app_temperature gauge\n"
        "app_temperature 20.75\n"
    )


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    registry = Registry()
    latency = registry.histogram("app_latency_seconds", "Latency.", ("tier",), buckets=(1, 0.1))
    for value in (0.05, 0.1, 0.5, 2):  # 0.1 falls in le="0.1": the bounds are inclusive
        latency.labels("l1").observe(value)
    assert registry.render() == (
        "# HELP app_latency_seconds Latency.\n"
        "# TYPE app_latency_seconds histogram\n"
        'app_latency_seconds_bucket{tier="l1",le="0.1"} 2\n'
        'app_latency_seconds_bucket{tier="l1",le="1"} 3\n'
        'app_latency_seconds_bucket{tier="l1",le="+Inf"} 4\n'
        'app_latency_seconds_sum{tier="l1"} 2.65\n'
        'app_latency_seconds_count{tier="l1"} 4\n'
    )


def test_default_buckets_and_an_unobserved_histogram() -> None:
    registry = Registry()
    registry.histogram("app_wait_seconds", "Wait.")
    samples = parse(registry.render())
    buckets = [dict(labels)["le"] for name, labels in samples if name == "app_wait_seconds_bucket"]
    assert buckets[0] == "0.005" and buckets[-1] == "+Inf" and len(buckets) == 15
    assert samples[series("app_wait_seconds_count")] == 0 and samples[series("app_wait_seconds_sum")] == 0


def test_labels_give_one_cached_child_per_value_tuple() -> None:
    registry = Registry()
    hits = registry.counter("cache_hits_total", "Hits.", ("tier", "space"))
    assert hits.labels("l1", "post") is hits.labels("l1", "post")
    hits.labels("l1", "post").inc()
    hits.labels("l1", "post").inc()
    hits.labels("l2", "post").inc(5)
    samples = parse(registry.render())
    assert samples[series("cache_hits_total", tier="l1", space="post")] == 2
    assert samples[series("cache_hits_total", tier="l2", space="post")] == 5
    assert len(samples) == 2


def test_misuse_is_refused() -> None:
    registry = Registry()
    plain = registry.counter("plain_total", "Plain.")
    labelled = registry.counter("labelled_total", "Labelled.", ("tier",))
    gauge = registry.gauge("labelled_gauge", "Labelled.", ("tier",))
    histogram = registry.histogram("labelled_seconds", "Labelled.", ("tier",))
    with pytest.raises(ValueError, match="only goes up"):
        plain.inc(-1)
    with pytest.raises(ValueError, match="no labels"):
        plain.labels("x")
    with pytest.raises(ValueError, match=r"call \.labels"):
        labelled.inc()
    with pytest.raises(ValueError, match=r"call \.labels"):
        gauge.set(1)
    with pytest.raises(ValueError, match=r"call \.labels"):
        histogram.observe(1)
    with pytest.raises(ValueError, match="takes 1 label values, got 2"):
        labelled.labels("a", "b")
    with pytest.raises(TypeError, match="must be str"):
        labelled.labels(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buckets"):
        registry.histogram("bad_seconds", "Bad.", buckets=(1, 1))


def test_names_are_unique_and_well_formed() -> None:
    registry = Registry()
    registry.counter("app_events_total", "Events.")
    with pytest.raises(ValueError, match="already registered"):
        registry.counter("app_events_total", "Again.")
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("app_events_total", "Again, as another kind.")
    for name in ("app-events", "1app", "app events", ""):
        with pytest.raises(ValueError, match="invalid metric name"):
            registry.gauge(name, "Bad.")
    for label in ("le", "__reserved", "a-b"):
        with pytest.raises(ValueError, match="invalid label name"):
            registry.gauge("app_bad_label", "Bad.", (label,))
    assert registry.render().count("# TYPE") == 1


def test_help_and_label_values_are_escaped() -> None:
    registry = Registry()
    odd = 'back\\slash "quoted"\nnext line'
    gauge = registry.gauge("app_odd", 'Help with a \\ and a\nnewline and "quotes".', ("value",))
    gauge.labels(odd).set(1)
    text = registry.render()
    assert '# HELP app_odd Help with a \\\\ and a\\nnewline and "quotes".\n' in text
    assert 'app_odd{value="back\\\\slash \\"quoted\\"\\nnext line"} 1\n' in text
    assert parse(text) == {series("app_odd", value=odd): 1}


def test_gauge_callbacks_are_read_at_render_time() -> None:
    registry = Registry()
    size = {"bytes": 10.0}
    registry.gauge_callback("cache_l1_bytes", "Bytes in L1.", lambda: size["bytes"])
    registry.gauge_callback(
        "cache_entries", "Entries per tier.", lambda: {("l1",): 3, ("l2",): 7.5}, labelnames=("tier",)
    )
    size["bytes"] = 42
    samples = parse(registry.render())
    assert samples[series("cache_l1_bytes")] == 42
    assert samples[series("cache_entries", tier="l1")] == 3
    assert samples[series("cache_entries", tier="l2")] == 7.5
    registry.gauge_callback("cache_wrong", "Labelled, but returns a float.", lambda: 1.0, labelnames=("tier",))
    with pytest.raises(ValueError, match="must return a dict"):
        registry.render()


def test_values_are_formatted_like_prometheus() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(-2) == "-2"
    assert format_value(1e20) == "1e+20"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    for text in ("3", "0.25", "1e+20", "+Inf", "-Inf"):
        float(text)  # each one parses back


def test_concurrent_threads_lose_no_increments() -> None:
    """A smoke test (CPython seldom shows the race even without the lock) of sync code in threads sharing a child."""
    registry = Registry()
    counter = registry.counter("app_threads_total", "Increments.", ("worker",))
    histogram = registry.histogram("app_threads_seconds", "Observations.")

    def work() -> None:
        child = counter.labels("shared")
        for _ in range(20_000):
            child.inc()
            histogram.observe(0.01)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples = parse(registry.render())
    assert samples[series("app_threads_total", worker="shared")] == 160_000
    assert samples[series("app_threads_seconds_count")] == 160_000
    assert samples[series("app_threads_seconds_bucket", le="+Inf")] == 160_000
