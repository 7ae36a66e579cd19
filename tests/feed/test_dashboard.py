"""The Grafana dashboard shipped in ``scripts/grafana/cipherfeed.json``: current with its generator, a valid dashboard
of Grafana's schema (grafana-foundation-sdk's models, generated from it), and graphing only metrics we export."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.conftest import client_for

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "grafana_dashboard.py"
DASHBOARD = ROOT / "scripts" / "grafana" / "cipherfeed.json"


def generator() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_dashboard", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_the_shipped_dashboard_is_what_its_generator_writes() -> None:
    assert DASHBOARD.read_text() == generator().build(), "run scripts/grafana_dashboard.py"


def test_the_dashboard_loads_in_grafanas_schema() -> None:
    shipped = json.loads(DASHBOARD.read_text())
    model = Dashboard.from_json(shipped)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == shipped, "nothing outside the schema, nothing lost"
    panels = shipped["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    assert {p["type"] for p in panels} == {"row", "timeseries"}
    for panel in panels:
        if panel["type"] == "timeseries":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and panel["targets"]
    assert [v["name"] for v in shipped["templating"]["list"]] == ["datasource"]
    for expr in expressions(shipped):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


@pytest.mark.anyio
async def test_every_graphed_metric_is_one_the_processes_export(redis_app: Any) -> None:
    async with client_for(redis_app) as http:  # request metrics are made at the first request
        assert (await http.get("/healthz")).status_code == 200
    exported = set(redis_app.state.metrics.names())  # a web process with Redis: every family (feed.runtime)
    graphed = {re.sub(r"_(bucket|total|count|sum)$", "", name)
               for expr in expressions(json.loads(DASHBOARD.read_text()))
               for name in re.findall(r"cipherfeed_[a-z0-9_]+", expr)}  # fmt: skip
    assert graphed and graphed <= exported, graphed - exported
    wanted = {"cipherfeed_http_requests", "cipherfeed_cache_hits", "cipherfeed_invalidation_lag_seconds",
              "cipherfeed_jobs_waiting", "cipherfeed_job_failures", "cipherfeed_streams_open",
              "cipherfeed_stream_delivery_seconds", "cipherfeed_outbox_oldest_seconds"}  # fmt: skip
    assert wanted <= graphed, wanted - graphed
