"""The Grafana dashboards: fresh generation equals the committed JSON, and the lint rules hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from streams import dashboards, rules

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
RANGE_FUNCTIONS = re.compile(r"\b(?:rate|irate|increase)\(")
RANGE = re.compile(r"\[([^\]]+)\]")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def committed() -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((GRAFANA / "dashboards").glob("*.json"))]


def exprs(model: dict) -> list[str]:
    return [t["expr"] for panel in model["panels"] for t in panel["targets"]]


@pytest.fixture(scope="module")
def jobs() -> dict[str, str]:
    return rules.load_config(ROOT / "deploy" / "rules.yaml")["jobs"]


def test_committed_dashboards_equal_a_fresh_generation(jobs):
    generated = dashboards.render(jobs)
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == generated, "deploy/grafana/dashboards is stale: run `cpo dashboards`"


def test_three_dashboards_overview_drilldown_pipeline():
    assert sorted(m["uid"] for m in committed()) == ["cpo-drilldown", "cpo-overview", "cpo-pipeline"]


@pytest.mark.parametrize("model", committed(), ids=lambda m: m["uid"])
def test_exactly_one_datasource_variable_used_by_every_panel_and_query(model):
    variables = model["templating"]["list"]
    sources = [v for v in variables if v["type"] == "datasource"]
    assert len(sources) == 1 and sources[0]["query"] == "prometheus"
    reference = "${" + sources[0]["name"] + "}"
    for panel in model["panels"]:
        assert panel["datasource"]["uid"] == reference, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == reference, panel["title"]
    for variable in variables:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == reference, variable["name"]
    for annotation in model["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"]["uid"] == reference


@pytest.mark.parametrize("model", committed(), ids=lambda m: m["uid"])
def test_every_rate_and_increase_uses_rate_interval(model):
    for expr in exprs(model):
        for match in RANGE_FUNCTIONS.finditer(expr):
            ranged = RANGE.search(expr, match.end())
            assert ranged and ranged.group(1) == "$__rate_interval", expr
        for ranged in RANGE.finditer(expr):
            assert ranged.group(1) == "$__rate_interval", f"a range other than a rate's: {expr}"


@pytest.mark.parametrize("model", committed(), ids=lambda m: m["uid"])
def test_every_panel_has_a_unit_and_a_query(model):
    for panel in model["panels"]:
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize("model", committed(), ids=lambda m: m["uid"])
def test_every_variable_in_a_query_is_defined(model):
    defined = {v["name"] for v in model["templating"]["list"]} | {"__rate_interval"}
    texts = exprs(model) + [p["title"] for p in model["panels"]]
    for text in texts:
        for match in VARIABLE.finditer(text):
            assert (match.group(1) or match.group(2)) in defined, text


def test_panels_do_not_overlap():
    for model in committed():
        cells = set()
        for panel in model["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
            mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                    for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & mine, panel["title"]
            cells |= mine


def test_drilldown_has_cause_dimension_value_variables():
    model = next(m for m in committed() if m["uid"] == "cpo-drilldown")
    names = [v["name"] for v in model["templating"]["list"]]
    assert names == ["datasource", "window", "cause", "dimension", "value"]
    joined = "\n".join(exprs(model))
    assert '"$cause"' in joined and '"$dimension"' in joined and '"$value"' in joined


def test_overview_shows_firing_alerts_as_annotations():
    model = next(m for m in committed() if m["uid"] == "cpo-overview")
    annotation = next(a for a in model["annotations"]["list"] if "expr" in a)
    assert annotation["expr"].startswith('ALERTS{alertstate="firing"')
    assert annotation["enable"] is True


def test_recording_rules_used_by_dashboards_exist():
    document = yaml.safe_load(
        (ROOT / "deploy" / "prometheus" / rules.RECORDING_FILE).read_text(encoding="utf-8"))
    recorded = {r["record"] for g in document["groups"] for r in g["rules"]}
    for model in committed():
        for expr in exprs(model):
            for name in re.findall(r"[a-z_]*:[a-z_]+:[a-z0-9_]+", expr):
                assert name in recorded, f"{model['uid']} uses {name}, which no rule records"


def test_provisioning_files():
    sources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text(encoding="utf-8"))
    assert [s["type"] for s in sources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "cpo.yaml").read_text(encoding="utf-8"))
    assert providers["providers"][0]["type"] == "file"
    assert providers["providers"][0]["options"]["path"]


def test_dashboard_queries_substitute_every_variable():
    queries = dashboards.dashboard_queries(folder=GRAFANA / "dashboards")
    assert len(queries) == sum(len(exprs(m)) for m in committed()) + 1  # + the alert annotation
    for uid, title, promql in queries:
        assert "$" not in promql, (uid, title)
    assert any('cause="late_delivery"' in q for _, _, q in
               dashboards.dashboard_queries({"cause": "late_delivery"}, GRAFANA / "dashboards"))
