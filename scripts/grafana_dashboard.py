"""Writes ``scripts/grafana/cipherfeed.json``: the Grafana dashboard of the figures an operator watches, built with
Grafana's own SDK (grafana-foundation-sdk, whose types are generated from Grafana's dashboard schema).

    .venv/bin/python scripts/grafana_dashboard.py      # after changing a panel; a test checks the file is current

Import the JSON in Grafana (Dashboards, New, Import) and pick the Prometheus data source that scrapes every
``cipherfeed serve`` (``/metrics``) and ``cipherfeed worker`` (``CIPHERFEED_WORKER_METRICS``) process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common, prometheus, timeseries
from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, SortOrder, TooltipDisplayMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parent / "grafana" / "cipherfeed.json"
SOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
WINDOW = "[$__rate_interval]"


def _p(quantile: float, histogram: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({group}) (rate({histogram}_bucket{WINDOW})))"


# (row, [(panel title, unit, [(expression, legend)])])
PANELS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    ("Requests", [
        ("Request rate by route", "reqps",
         [(f"sum by (route) (rate(cipherfeed_http_requests_total{WINDOW}))", "{{route}}")]),
        ("p99 latency by route", "s", [(_p(0.99, "cipherfeed_http_request_duration_seconds", "route"), "{{route}}")]),
        ("Errors (5xx) by status", "reqps",
         [(f'sum by (status) (rate(cipherfeed_http_requests_total{{status=~"5.."}}{WINDOW}))', "{{status}}")]),
    ]),
    ("Caches", [
        ("Hit ratio by tier", "percentunit",
         [(f"sum by (tier) (rate(cipherfeed_cache_hits_total{WINDOW})) / ignoring(tier) group_left "
           f"(sum(rate(cipherfeed_cache_hits_total{WINDOW})) + sum(rate(cipherfeed_cache_misses_total{WINDOW})))",
           "{{tier}}")]),
        ("L1 bytes", "bytes", [("sum(cipherfeed_cache_l1_bytes)", "L1")]),
        ("Invalidation lag, p99", "s", [(_p(0.99, "cipherfeed_invalidation_lag_seconds"), "p99")]),
        ("Redis errors", "ops", [(f"sum(rate(cipherfeed_redis_errors_total{WINDOW}))", "errors")]),
    ]),
    ("Jobs", [
        ("Queue depth", "short", [("max(cipherfeed_jobs_waiting)", "waiting")]),
        ("Job failures by job", "ops", [(f"sum by (job) (rate(cipherfeed_job_failures_total{WINDOW}))", "{{job}}")]),
        ("Job run time p95 by job", "s", [(_p(0.95, "cipherfeed_job_seconds", "job"), "{{job}}")]),
        ("Post to last home feed, p99", "s", [(_p(0.99, "cipherfeed_fanout_seconds"), "p99")]),
    ]),
    ("Live push", [
        ("Open streams by kind", "short", [("sum by (kind) (cipherfeed_streams_open)", "{{kind}}")]),
        ("Commit to delivery, p99", "s", [(_p(0.99, "cipherfeed_stream_delivery_seconds"), "p99")]),
        ("Events sent and streams dropped", "ops",
         [(f"sum(rate(cipherfeed_stream_events_sent_total{WINDOW}))", "sent"),
          (f"sum(rate(cipherfeed_stream_drops_total{WINDOW}))", "dropped")]),
    ]),
    ("Outbox", [
        ("Oldest row waiting", "s", [("max(cipherfeed_outbox_oldest_seconds)", "age")]),
        ("Rows waiting", "short", [("max(cipherfeed_outbox_depth)", "rows")]),
        ("Commit to relayed, p99", "s", [(_p(0.99, "cipherfeed_outbox_relay_seconds"), "p99")]),
    ]),
]  # fmt: skip


def build() -> str:
    """The dashboard as Grafana's JSON."""
    dash = (
        board.Dashboard("cipherfeed")
        .uid("cipherfeed")
        .tags(["cipherfeed"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(board.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    ids = iter(range(1, 1000))
    key = common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
    key = key.placement(LegendPlacement.BOTTOM)
    tooltip = common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)
    for row, panels in PANELS:
        dash = dash.with_row(board.Row(row).id(next(ids)))
        for title, unit, queries in panels:
            panel = timeseries.Panel().id(next(ids)).title(title).unit(unit).datasource(SOURCE).height(8).span(8)
            panel = panel.legend(key).tooltip(tooltip)
            for n, (expr, legend) in enumerate(queries):
                query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id("ABCDEFGH"[n])
                panel = panel.with_target(query.datasource(SOURCE))
            dash = dash.with_panel(panel)
    return json.dumps(dash.build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(build())
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
