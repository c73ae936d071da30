"""`cpo dashboards`: the Grafana dashboards (overview, drill-down by attribute, pipeline health).

Hand-written JSON models, generated so that every panel follows the same rules the tests lint:
one `datasource` template variable used by every panel and query, `$__rate_interval` in every
rate and increase, and a unit on every panel. Job names come from deploy/rules.yaml, like the
alert rules'. Output is deterministic: the committed files must equal a fresh generation.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("deploy/grafana/dashboards")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
ROW_HEIGHT = 8
GRID_WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "stat", "table"
    width: int = 12
    description: str = ""
    decimals: int | None = None

    def model(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {"unit": self.unit}
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        targets = []
        for ref, query in zip("ABCDEFGH", self.queries, strict=False):
            target: dict[str, Any] = {"refId": ref, "datasource": DATASOURCE, "expr": query.expr,
                                      "legendFormat": query.legend or "__auto"}
            if self.kind != "timeseries":
                target |= {"instant": True, "range": False}
            if self.kind == "table":
                target["format"] = "table"
            targets.append(target)
        model: dict[str, Any] = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": ROW_HEIGHT, "w": self.width, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": _OPTIONS[self.kind],
            "targets": targets,
        }
        return model


_OPTIONS: dict[str, dict[str, Any]] = {
    "timeseries": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}},
    "stat": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
             "colorMode": "value", "graphMode": "area", "textMode": "auto"},
    "table": {"showHeader": True, "cellHeight": "sm"},
}


def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "includeAll": False, "multi": False,
            "refresh": 1, "regex": "", "options": []}


def query_variable(name: str, label: str, query: str, multi: bool = False) -> dict[str, Any]:
    """A variable filled from `label_values(...)`; `multi` adds All (matching any value)."""
    variable: dict[str, Any] = {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
        "current": {}, "hide": 0, "includeAll": multi, "multi": multi, "refresh": 2,
        "regex": "", "sort": 1, "options": [],
    }
    if multi:
        variable["allValue"] = ".*"
    return variable


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]
    variables: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def model(self) -> dict[str, Any]:
        placed, x, y = [], 0, 0
        for panel_id, panel in enumerate(self.panels, start=1):
            if x + panel.width > GRID_WIDTH:
                x, y = 0, y + ROW_HEIGHT
            placed.append(panel.model(panel_id, x, y))
            x += panel.width
        builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                   "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                   "name": "Annotations & Alerts", "type": "dashboard"}
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["cpo"],
            "timezone": "browser",
            "editable": False,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": "now-6h", "to": "now"},
            "annotations": {"list": [builtin, *self.annotations]},
            "templating": {"list": [datasource_variable(), *self.variables]},
            "links": [{"title": "CPO dashboards", "type": "dashboards", "tags": ["cpo"],
                       "asDropdown": True, "includeVars": True, "keepTime": True}],
            "panels": placed,
        }


def _rate(metric: str, selector: str, by: str = "") -> str:
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(rate({metric}{{{selector}}}[$__rate_interval]))"


def dashboards(jobs: dict[str, str]) -> list[Dashboard]:
    """The three dashboards, for the worker and exporter job names in `jobs`."""
    w = f'job="{jobs["worker"]}"'
    e = f'job="{jobs["exporter"]}"'
    window = query_variable("window", "Window", f"label_values(cpo_defect_rate{{{e}}}, window)")
    cpo_by_cause = (f"{_rate('cpo_contacts_total', w, 'cause')}\n  / ignoring(cause) group_left()\n"
                    f"  {_rate('cpo_orders_total', w)}")
    firing = 'ALERTS{alertstate="firing", alertname=~"CPO.*"}'
    overview = Dashboard(
        "cpo-overview", "CPO / Overview",
        "Contacts per order overall and per cause, what moved, and the alerts that fired.",
        [
            Panel("Contacts per order, all causes", "none", (Query(
                f"{_rate('cpo_contacts_total', w)} / {_rate('cpo_orders_total', w)}"),),
                kind="stat", width=6, decimals=4,
                description="Processing time: contacts counted per order counted."),
            Panel("Orders with a contact", "percentunit", (Query(
                f"{_rate('cpo_orders_contacted_total', w)} / {_rate('cpo_orders_total', w)}"),),
                kind="stat", width=6, decimals=2,
                description="The bounded SLI of the overall budget (docs/alerting.md)."),
            Panel("Orders", "ops", (Query(_rate("cpo_orders_total", w)),), kind="stat", width=6),
            Panel("Firing CPO alerts", "none",
                  (Query(f"count({firing}) or vector(0)"),), kind="stat", width=6),
            Panel("Contacts per order by cause (event time)", "none", (Query(
                f'cpo_defect_rate{{{e}, cause!="all", window="$window"}}', "{{cause}}"),),
                decimals=4,
                description="The exporter's event-time window: contacts and orders whose "
                            "occurred_at falls in the last $window."),
            Panel("Contacts per order by cause (processing time)", "none",
                  (Query(cpo_by_cause, "{{cause}}"),), decimals=4,
                  description="From the worker counters, as the alert rules see it."),
            Panel("Contacts per order, all causes (event time)", "none", (Query(
                f'cpo_defect_rate{{{e}, cause="all", window="$window"}}', "all causes"),),
                decimals=4),
            Panel("Budget burn rate by cause (1h)", "suffix:x", (Query(
                "cause:cpo_defect_rate:ratio_rate1h / cause:cpo_defect_budget:ratio",
                "{{cause}}"),), decimals=1,
                description="1x spends the defect budget exactly over the SLO period; the "
                            "pages start at 14.4x (1h) and 6x (6h)."),
            Panel("Top movers: causes above their recent average", "none", (Query(
                "topk(5, cause:cpo_defect_rate:ratio_rate5m"
                " - cause:cpo_defect_rate:ratio_rate1h_avg1d)", "{{cause}}"),),
                kind="table", decimals=4,
                description="Last 5m minus the average of the day before the last hour, in "
                            "contacts per order (the spike alert's baseline)."),
            Panel("Top movers: attribute values above their recent average", "none", (Query(
                "topk(10, cause_dimension_value:cpo_defect_rate:ratio_rate5m"
                " - cause_dimension_value:cpo_defect_rate:ratio_rate1h_avg1d)",
                "{{cause}} {{dimension}}={{value}}"),), kind="table", decimals=4),
            Panel("Root-cause candidates", "none", (Query(
                f"topk(10, cpo_root_cause_score{{{e}}})",
                "{{cause}} {{dimension}}={{value}}"),), kind="table", decimals=2,
                description="The exporter's ranking of attribute values that explain a change."),
            Panel("Firing alerts", "none", (Query(firing),), kind="table"),
        ],
        [window],
        [{"name": "CPO alerts", "datasource": DATASOURCE, "enable": True, "hide": False,
          "iconColor": "red", "expr": firing, "step": "60s", "titleFormat": "{{alertname}}",
          "textFormat": "{{cause}} {{dimension}} {{value}} {{window}}",
          "tagKeys": "severity,cause", "useValueForTime": False}],
    )

    scope = 'cause="$cause", dimension="$dimension", value=~"$value"'
    attribute_orders = _rate("cpo_orders_by_attribute_total",
                             f'{w}, dimension="$dimension", value=~"$value"', "value")
    drilldown = Dashboard(
        "cpo-drilldown", "CPO / Drill-down by attribute",
        "One cause's contacts per order split by the values of one order attribute.",
        [
            Panel("Contacts per order of $cause by $dimension (event time)", "none", (Query(
                f'cpo_defect_rate_by_attribute{{{e}, {scope}, window="$window"}}', "{{value}}"),),
                decimals=4),
            Panel("Contacts per order of $cause by $dimension (processing time)", "none", (Query(
                f"{_rate('cpo_contacts_attributed_total', f'{w}, {scope}', 'value')}\n  / "
                f"{attribute_orders}", "{{value}}"),), decimals=4),
            Panel("Orders by $dimension", "ops", (Query(attribute_orders, "{{value}}"),)),
            Panel("Share of orders by $dimension (event time)", "percentunit", (Query(
                f'cpo_window_orders_by_attribute{{{e}, dimension="$dimension", value=~"$value", '
                f'window="$window"}}\n  / ignoring(dimension, value) group_left()\n'
                f'  cpo_window_orders{{{e}, window="$window"}}', "{{value}}"),),
                description="A rising share with a flat rate is a mix change, not a defect."),
            Panel("Contacts of $cause by $dimension", "ops", (Query(
                _rate("cpo_contacts_attributed_total", f"{w}, {scope}", "value"), "{{value}}"),)),
            Panel("$cause by $dimension against the spike baseline", "none", (
                Query(f"cause_dimension_value:cpo_defect_rate:ratio_rate5m{{{scope}}}",
                      "{{value}} last 5m"),
                Query(f"cause_dimension_value:cpo_defect_rate:ratio_rate1h_avg1d{{{scope}}}",
                      "{{value}} recent average"),
            ), decimals=4, description="The inputs of CPOAttributeSpike."),
            Panel("Root-cause candidates for $cause", "none", (Query(
                f'cpo_root_cause_score{{{e}, cause="$cause"}}',
                "{{dimension}}={{value}} {{window}}"),), kind="table", width=24, decimals=2),
        ],
        [
            window,
            query_variable("cause", "Cause", f"label_values(cpo_defect_rate_by_attribute{{{e}}}, "
                                             "cause)"),
            query_variable("dimension", "Dimension", "label_values(cpo_defect_rate_by_attribute"
                                                     f'{{{e}, cause="$cause"}}, dimension)'),
            query_variable("value", "Value", "label_values(cpo_defect_rate_by_attribute"
                                             f'{{{e}, cause="$cause", dimension="$dimension"}}, '
                                             "value)", multi=True),
        ],
    )

    records_read = ('{__name__=~"cpo_orders_total|cpo_contacts_total|cpo_records_duplicate_total'
                    f'|cpo_records_rejected_total", {w}}}')
    pipeline = Dashboard(
        "cpo-pipeline", "CPO / Pipeline health",
        "Is the pipeline counting: input rates, lag, rejected records, Redis and batch latency.",
        [
            Panel("Orders per worker", "ops", (Query(_rate("cpo_orders_total", w, "instance"),
                                                     "{{instance}}"),)),
            Panel("Contacts per worker", "ops", (Query(_rate("cpo_contacts_total", w, "instance"),
                                                       "{{instance}}"),)),
            Panel("Consumer lag by topic", "short", (Query(
                f"sum by (topic) (max by (topic, partition) (cpo_consumer_lag_records{{{w}}}))",
                "{{topic}}"),), description="Records behind the high watermark, each "
                                            "partition counted once."),
            Panel("Event lag p99 by topic", "s", (Query(
                "histogram_quantile(0.99, "
                f"{_rate('cpo_event_lag_seconds_bucket', w, 'le, topic')})", "{{topic}}"),),
                description="Processing time minus occurred_at."),
            Panel("Records rejected to the DLQ", "ops", (Query(
                _rate("cpo_records_rejected_total", w, "topic, reason"),
                "{{topic}}: {{reason}}"),)),
            Panel("Share of records rejected", "percentunit", (Query(
                f"{_rate('cpo_records_rejected_total', w)}\n  / "
                f"sum(rate({records_read}[$__rate_interval]))", "rejected"),)),
            Panel("Duplicate records", "ops", (Query(
                _rate("cpo_records_duplicate_total", w, "topic"), "{{topic}}"),)),
            Panel("Share of contacts unattributed", "percentunit", (Query(
                f"{_rate('cpo_contacts_unattributed_total', w, 'reason')}\n"
                "  / ignoring(reason) group_left()\n"
                f"  {_rate('cpo_contacts_total', w)}", "{{reason}}"),)),
            Panel("Contacts waiting for their order", "short", (Query(
                f"max(cpo_pending_contacts{{{w}}})", "pending"),)),
            Panel("Redis and Kafka errors", "ops", (
                Query(_rate("cpo_redis_errors_total", w), "redis"),
                Query(_rate("cpo_kafka_errors_total", w), "kafka"),
            ), description="Failed calls; the worker retries them."),
            Panel("Batch latency", "s", (
                Query("histogram_quantile(0.5, "
                      f"{_rate('cpo_batch_seconds_bucket', w, 'le')})", "p50"),
                Query("histogram_quantile(0.99, "
                      f"{_rate('cpo_batch_seconds_bucket', w, 'le')})", "p99"),
            )),
            Panel("Batches", "ops", (Query(_rate("cpo_batches_total", w, "instance"),
                                           "{{instance}}"),)),
            Panel("Targets up", "none", (Query(
                f'sum by (job) (up{{job=~"{jobs["worker"]}|{jobs["exporter"]}"}})', "{{job}}"),),
                width=8),
            Panel("Workers ready", "none", (Query(f"sum(cpo_worker_ready{{{w}}})", "ready"),),
                  width=8, description="Workers that reach Kafka and Redis."),
            Panel("Exporter scrape time", "s", (Query(f"max(cpo_exporter_scrape_seconds{{{e}}})",
                                                      "scrape"),), width=8),
        ],
    )
    return [overview, drilldown, pipeline]


def render(jobs: dict[str, str]) -> dict[str, str]:
    """{file name: JSON text} of every dashboard."""
    return {f"{d.uid}.json": json.dumps(d.model(), indent=2, sort_keys=False) + "\n"
            for d in dashboards(jobs)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("deploy/rules.yaml"),
                        help="the rules config, for the job names (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory for the dashboard JSON files (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from streams.rules import RulesConfigError, load_config, write

    try:
        jobs = load_config(args.config)["jobs"]
    except RulesConfigError as exc:
        print(f"cpo dashboards: {args.config}: {exc}", file=sys.stderr)
        return 2
    for path in write(render(jobs), args.out):
        print(path)
    return 0


EXAMPLE_VALUES = {"datasource": "prometheus", "__rate_interval": "1m", "window": "1h",
                  "cause": "where_is_my_order", "dimension": "carrier", "value": ".*"}


def dashboard_queries(values: dict[str, str] | None = None,
                      folder: Path = DEFAULT_OUT) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) of every panel target and annotation in `folder`,
    with the template variables replaced by `values` (default: EXAMPLE_VALUES).

    For running what Grafana would run against a real Prometheus: `$__rate_interval` becomes
    a fixed range and `$cause` a concrete cause. Variables missing from `values` raise KeyError.
    """
    values = {**EXAMPLE_VALUES, **(values or {})}
    variable = re.compile(r"\$\{(\w+)\}|\$(\w+)")

    def substitute(text: str) -> str:
        return variable.sub(lambda m: values[m.group(1) or m.group(2)], text)

    queries = []
    for path in sorted(Path(folder).glob("*.json")):
        model = json.loads(path.read_text(encoding="utf-8"))
        for panel in model["panels"]:
            for target in panel["targets"]:
                queries.append((model["uid"], panel["title"], substitute(target["expr"])))
        for annotation in model["annotations"]["list"]:
            if "expr" in annotation:
                queries.append((model["uid"], annotation["name"], substitute(annotation["expr"])))
    return queries
