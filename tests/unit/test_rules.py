"""The generated Prometheus rules, their promtool unit tests and the Alertmanager example."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams import rules
from streams.cli import main

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
UNIT_TESTS = sorted((RULES_DIR / "tests").glob("*.yaml"))
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
NOT_IN_PROMETHEUS_2_42 = ("mad_over_time", "limitk", "limit_ratio", "double_exponential_smoothing",
                          "query_offset")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: run scripts/bootstrap (Debian package prometheus / " \
                 "prometheus-alertmanager)"
    return path


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; the test asserts on its exit status and shows its output on failure."""
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def config() -> dict:
    return rules.load_config(ROOT / "deploy" / "rules.yaml")


@pytest.fixture(scope="module")
def alerts() -> list[dict]:
    document = yaml.safe_load((RULES_DIR / rules.ALERTING_FILE).read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    document = yaml.safe_load((RULES_DIR / rules.RECORDING_FILE).read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def promtool_runs() -> dict[Path, subprocess.Popen[str]]:
    """Every promtool unit-test file, started at once: they run in parallel (minutes of rules)."""
    promtool = tool("promtool")
    runs = {path: subprocess.Popen([promtool, "test", "rules", path.name], cwd=path.parent,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for path in UNIT_TESTS}
    yield runs
    for process in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_committed_rule_files_equal_a_fresh_generation(config):
    for name, text in rules.render(config).items():
        committed = (RULES_DIR / name).read_text(encoding="utf-8")
        assert committed == text, f"deploy/prometheus/{name} is stale: run `cpo rules`"


def test_generation_is_deterministic(config):
    assert rules.render(copy.deepcopy(config)) == rules.render(config)


def test_promtool_accepts_the_rules_and_the_example_config():
    promtool = tool("promtool")
    result = run(promtool, "check", "rules", rules.RECORDING_FILE, rules.ALERTING_FILE,
                 cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "check", "config", "prometheus.yml", cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool_runs, path):
    output, _ = promtool_runs[path].communicate(timeout=540)
    assert promtool_runs[path].returncode == 0, output


def test_every_alert_has_unit_tests_that_fire_and_stay_silent(alerts):
    fires: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {alert["alert"] for alert in alerts}
    assert names - fires == set(), "alerts without a test where they fire"
    assert names - silent == set(), "alerts without a test where they stay silent"


def test_unit_tests_feed_at_least_eight_days_to_the_spike_alerts():
    spike = yaml.safe_load((RULES_DIR / "tests" / "spike.yaml").read_text(encoding="utf-8"))
    for group in spike["tests"]:
        for series in group["input_series"]:
            points = sum(int(n) + 1 for n in re.findall(r"x(\d+)", series["values"]))
            assert points >= 8 * 24 * 60, series["series"]


def test_every_alert_is_documented_and_routable(alerts, config):
    anchors = {re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
               for line in RUNBOOKS.read_text(encoding="utf-8").splitlines()
               if line.startswith("## ")}
    for alert in alerts:
        name, annotations = alert["alert"], alert["annotations"]
        assert alert["labels"]["severity"] in ("page", "ticket"), name
        assert annotations["summary"], name
        description = annotations["description"]
        assert "$value" in description or name in ("CPOWorkerDown", "CPOWorkersAbsent",
                                                   "CPOExporterDown", "CPONoOrders"), name
        assert "query" in description or name in ("CPOWorkersAbsent", "CPOExporterDown"), name
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base == config["runbook_base_url"], name
        assert anchor == name.lower() and anchor in anchors, f"docs/runbooks.md lacks ## {name}"
        assert alert["for"], name


def test_spike_descriptions_show_the_baselines_and_the_top_explanation(alerts):
    spike = next(a for a in alerts if a["alert"] == "CPOCauseSpike")
    description = spike["annotations"]["description"]
    assert "offset 1w" in description and "_avg1d" in description
    assert "topk(1, cpo_root_cause_score{" in description


def test_rules_use_only_prometheus_2_42_features():
    for name in (rules.RECORDING_FILE, rules.ALERTING_FILE):
        text = (RULES_DIR / name).read_text(encoding="utf-8")
        for word in NOT_IN_PROMETHEUS_2_42:
            assert word not in text, f"{name} uses {word}, which Prometheus 2.42 lacks"
        assert "$__rate_interval" not in text, "$__rate_interval is for dashboards only"


def test_record_names_follow_level_metric_operations(records):
    for record in records:
        assert re.fullmatch(r"[a-z_]*:cpo_[a-z_]+:[a-z0-9_]+", record["record"]), record["record"]
    names = {record["record"] for record in records}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert f"cause:cpo_defect_rate:ratio_rate{window}" in names
        assert f":cpo_orders_contacted:ratio_rate{window}" in names
    assert "cause_dimension_value:cpo_defect_rate:ratio_rate1h" in names


def test_short_windows_scale_every_duration_and_keep_every_name(config, tmp_path):
    short = {name: yaml.safe_load(text) for name, text in rules.render(config, 30).items()}
    default = {name: yaml.safe_load(text) for name, text in rules.render(config).items()}

    def names(documents):
        return [rule.get("record") or rule.get("alert") for doc in documents.values()
                for group in doc["groups"] for rule in group["rules"]]

    assert names(short) == names(default)
    alerts_short = [r for g in short[rules.ALERTING_FILE]["groups"] for r in g["rules"]]
    spike = next(r for r in alerts_short if r["alert"] == "CPOCauseSpike")
    assert spike["for"] == "20s"
    assert "offset 5h36m" in spike["expr"]
    assert all(g["interval"] == "2s" for doc in short.values() for g in doc["groups"])
    recording = (rules.render(config, 30)[rules.RECORDING_FILE])
    assert "[5m]" not in recording and "[10s]" in recording and "[2h24m]" in recording
    assert "[48m] offset 2m" in recording  # the 1d average, 1h before now
    rules.write(rules.render(config, 30), tmp_path)
    result = run(tool("promtool"), "check", "rules", *map(str, tmp_path.iterdir()))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("seconds", "text"), [(300, "5m"), (604800 / 30, "5h36m"), (2, "2s"),
                                               (0.5, "500ms"), (86400 * 3, "3d"), (5400, "1h30m")])
def test_format_duration(seconds, text):
    assert rules.format_duration(seconds) == text


def test_config_errors_name_the_key_and_the_fix(config):
    broken = copy.deepcopy(config)
    del broken["spike"]["z"]
    with pytest.raises(rules.RulesConfigError, match=r"spike\.z: missing"):
        rules.validate(broken)
    broken = copy.deepcopy(config)
    broken["slo"]["contacted_budget"] = 0.1
    with pytest.raises(rules.RulesConfigError, match="could never fire: lower the budget"):
        rules.validate(broken)
    broken = copy.deepcopy(config)
    broken["slo"]["burn_rates"][0]["long"] = "4h"
    with pytest.raises(rules.RulesConfigError, match="add 4h to windows"):
        rules.validate(broken)


def test_cli_writes_a_short_copy_and_rejects_a_bad_config(tmp_path, capsys):
    assert main(["rules", "--out", str(tmp_path / "short"), "--short-windows", "30",
                 "--config", str(ROOT / "deploy" / "rules.yaml")]) == 0
    written = sorted(p.name for p in (tmp_path / "short").iterdir())
    assert written == sorted([rules.ALERTING_FILE, rules.RECORDING_FILE])
    assert "windows divided by 30" in (tmp_path / "short" / rules.RECORDING_FILE).read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("time_scale: 1\n")
    assert main(["rules", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "missing" in capsys.readouterr().err


def test_alertmanager_config_is_valid():
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=page", "cause=late_delivery", "alertname=CPOCauseSpike"], "pager"),
    (["severity=ticket", "cause=late_delivery", "alertname=CPOAttributeSpike"], "ticket"),
    (["severity=ticket", "alertname=CPOWorkerDown"], "ticket"),
])
def test_alertmanager_routes_page_and_ticket(labels, receiver):
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                 *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_alertmanager_groups_by_cause_and_inhibits_tickets_under_a_page():
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    assert config["route"]["group_by"] == ["alertname", "cause"]
    inhibit = config["inhibit_rules"][0]
    assert 'severity="page"' in inhibit["source_matchers"]
    assert 'severity="ticket"' in inhibit["target_matchers"]
    assert inhibit["equal"] == ["cause"]


def test_a_short_copy_never_overwrites_the_committed_rules(capsys):
    committed = (ROOT / "deploy" / "prometheus" / rules.RECORDING_FILE).read_text()
    assert main(["rules", "--short-windows", "30",
                 "--config", str(ROOT / "deploy" / "rules.yaml")]) == 2
    assert "--out" in capsys.readouterr().err
    assert (ROOT / "deploy" / "prometheus" / rules.RECORDING_FILE).read_text() == committed
