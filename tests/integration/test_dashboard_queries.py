"""Every dashboard panel's PromQL, with its template variables substituted, runs in Prometheus.

`dashboard_queries()` (from streams.dashboards) lists (dashboard, panel, PromQL) with
`$__rate_interval` -> 1m and `$cause` -> a concrete cause; pass other values to it for a live
run. Here Prometheus scrapes nothing, so the test asserts only that every query is accepted
(no error status); against Prometheus scraping real workers the same list must return data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.dashboards import dashboard_queries
from streams.promstack import Prometheus, scrape_config

ROOT = Path(__file__).resolve().parents[2]
QUERIES = dashboard_queries(folder=ROOT / "deploy" / "grafana" / "dashboards")

__all__ = ["dashboard_queries"]


@pytest.fixture(scope="module")
def prometheus():
    with Prometheus(scrape_config({})) as server:
        yield server


@pytest.mark.parametrize(("uid", "title", "promql"), QUERIES,
                         ids=[f"{uid}:{title}" for uid, title, _ in QUERIES])
def test_every_dashboard_query_is_accepted(prometheus, uid, title, promql):
    prometheus.query(promql)  # raises PromQueryError on a syntax or evaluation error
