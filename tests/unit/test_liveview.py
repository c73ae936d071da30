"""The demo's live view and chart: aggregation and rendering from hand-made metrics, no servers."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from streams.chart import write_chart
from streams.liveview import (
    EXPORTER_METRICS,
    Comparison,
    LiveState,
    Point,
    Span,
    Throughput,
    dimension_counts,
    exporter_view,
    point,
    render,
    sparkline,
    status_line,
    versus_rest,
    worker_view,
    worst_values,
)
from streams.processes import parse_metrics, select

# Window 30s: 1000 cargox orders with 100 where_is_my_order contacts against 9000 other orders
# with 180 (rate 0.1 against 0.02); the 5m series must be ignored.
EXPORTER = """\
cpo_exporter_last_refresh_timestamp_seconds 1000.5
cpo_exporter_scrape_seconds 0.25
cpo_window_orders{window="30s"} 10000
cpo_window_orders{window="5m"} 60000
cpo_defect_rate{cause="all",window="30s"} 0.09
cpo_defect_rate{cause="where_is_my_order",window="30s"} 0.03
cpo_defect_rate{cause="where_is_my_order",window="5m"} 0.5
cpo_window_orders_by_attribute{dimension="carrier",value="cargox",window="30s"} 1000
cpo_window_orders_by_attribute{dimension="carrier",value="acme",window="30s"} 6000
cpo_window_orders_by_attribute{dimension="carrier",value="lynx",window="30s"} 3000
cpo_window_orders_by_attribute{dimension="carrier",value="cargox",window="5m"} 1
cpo_defect_rate_by_attribute{cause="where_is_my_order",dimension="carrier",value="cargox",window="30s"} 0.1
cpo_defect_rate_by_attribute{cause="where_is_my_order",dimension="carrier",value="acme",window="30s"} 0.03
cpo_defect_rate_by_attribute{cause="where_is_my_order",dimension="carrier",value="cargox",window="5m"} 0.9
"""
ROOT_CAUSES = """\
cpo_root_cause_score{cause="where_is_my_order",dimension="carrier",value="cargox",window="30s"} 0.9
cpo_root_cause_score{cause="where_is_my_order",dimension="carrier",value="acme",window="30s"} 0.1
cpo_root_cause_score{cause="late_delivery",dimension="region",value="uk",window="30s"} 0.5
cpo_root_cause_score{cause="other",dimension="region",value="uk",window="30s"} 0.05
cpo_root_cause_score{cause="other",dimension="region",value="apac",window="5m"} 9
"""
INCIDENT = Span("carrier=cargox gets 6x where_is_my_order, +20s to +60s", 20, 60,
                "where_is_my_order", "carrier", "cargox")


def view(text: str = EXPORTER, window: str = "30s"):
    return exporter_view(parse_metrics(text), window)


def worker(orders: float, contacts: float, ready: int = 1, lag: float = 0, pending: float = 3):
    return parse_metrics(f"""\
cpo_orders_total {orders}
cpo_contacts_total{{cause="other"}} {contacts / 2}
cpo_contacts_total{{cause="where_is_my_order"}} {contacts / 2}
cpo_consumer_lag_records{{topic="orders",partition="0"}} {lag}
cpo_records_rejected_total{{topic="orders",reason="invalid_json"}} 2
cpo_records_duplicate_total{{topic="contacts"}} 5
cpo_pending_contacts {pending}
cpo_worker_ready {ready}
""")


def test_exporter_view_keeps_one_window_and_ends_it_when_redis_was_read():
    v = view()
    assert v.orders == 10000
    assert v.rates == {"all": 0.09, "where_is_my_order": 0.03}
    assert v.orders_by_value == {("carrier", "cargox"): 1000, ("carrier", "acme"): 6000,
                                 ("carrier", "lynx"): 3000}
    assert v.rates_by_value[("where_is_my_order", "carrier", "cargox")] == 0.1
    assert (v.refreshed_at, v.read_at) == (1000.5, 1000.25)
    assert v.root_causes == ()


def test_select_keeps_only_the_metrics_and_the_window_the_view_reads():
    text = EXPORTER + ROOT_CAUSES + 'cpo_window_contacts{cause="all",window="30s"} 5\n'
    kept = parse_metrics(select(text, EXPORTER_METRICS, "30s"))
    assert exporter_view(kept, "30s") == view(EXPORTER + ROOT_CAUSES)
    assert {dict(labels).get("window", "30s") for _, labels in kept} == {"30s"}
    assert "cpo_window_contacts" not in {name for name, _ in kept}


def test_root_causes_are_the_top_three_scores_of_the_window():
    roots = view(EXPORTER + ROOT_CAUSES).root_causes
    assert [(r.cause, r.value, r.score) for r in roots] == [
        ("where_is_my_order", "cargox", 0.9), ("late_delivery", "uk", 0.5),
        ("where_is_my_order", "acme", 0.1)]


def test_worker_view_sums_counters_and_takes_the_global_gauge_once():
    w = worker_view([worker(100, 10, lag=4, pending=7), worker(50, 6, lag=1, pending=7), None])
    assert (w.orders, w.contacts, w.lag, w.rejected, w.duplicates) == (150, 16, 5, 4, 10)
    assert w.pending == 7
    assert (w.ready, w.workers) == (2, 3)  # a worker that did not answer is not ready


def test_throughput_is_the_rate_over_the_last_seconds_and_survives_a_counter_reset():
    meter = Throughput(span=5)
    assert meter.rates() is None
    for second in range(11):
        meter.add(float(second), 100.0 * second, 10.0 * second)
    assert meter.rates() == pytest.approx((100, 10))
    assert meter.history[0][0] >= 5  # older samples are dropped
    meter.add(11.0, 20.0, 1.0)  # a worker restarted: its counters began again
    assert meter.rates() is None
    meter.add(12.0, 220.0, 21.0)
    assert meter.rates() == pytest.approx((200, 20))


def test_a_value_is_compared_with_the_rest_of_its_dimension():
    counts = dimension_counts(view(), "where_is_my_order", "carrier")
    # lynx had no contact of the cause: no rate series, but its orders count
    assert counts == {"cargox": (100, 1000), "acme": (180, 6000), "lynx": (0, 3000)}
    c = versus_rest(counts, "cargox")
    assert c == Comparison(100, 1000, 180, 9000)
    assert (c.rate, c.rest_rate, c.lift) == pytest.approx((0.1, 0.02, 5.0))
    pooled = 280 / 10000
    assert c.expected == pytest.approx(1000 * pooled)
    assert c.z == pytest.approx((0.1 - 0.02) / math.sqrt(pooled * (1 / 1000 + 1 / 9000)))
    assert math.isnan(versus_rest({}, "cargox").z)


def test_worst_values_rank_the_surprising_excess_first_and_skip_thin_evidence():
    ranked = worst_values(view())
    assert [(r.cause, r.value) for r in ranked] == [("where_is_my_order", "cargox"),
                                                    ("where_is_my_order", "acme")]
    assert ranked[0].comparison.z > ranked[1].comparison.z > 0
    # cargox's 1000 orders predict 28 contacts at the pooled rate: too thin for a bar of 30
    assert [r.value for r in worst_values(view(), min_expected=30)] == ["acme"]


def test_sparkline_scales_from_zero_to_the_largest_value_shown():
    assert sparkline([0, 1, 2, 4, 8]) == "▁▂▃▅█"
    assert sparkline([1, None, 1]) == "█ █"
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 50, 100], width=2) == "▅█"  # the last `width` values
    assert sparkline([]) == ""


def test_the_incident_span_says_when_it_is_active():
    assert [INCIDENT.state(t) for t in (5, 20, 59.9, 60)] == ["in 15s", "ACTIVE", "ACTIVE", "over"]


def state_after_burst() -> LiveState:
    state = LiveState("30s", origin=990.0, rate=150, spans=[INCIDENT],
                      urls=[("exporter", "http://127.0.0.1:1/metrics")])
    # the warmup burst: 1000 orders/s, history must not start yet
    assert not state.update(980, view(), worker_view([worker(0, 0)]))
    assert not state.update(981, view(), worker_view([worker(1000, 80)]))
    assert not state.update(982, view(), worker_view([worker(2000, 160)]))
    assert not state.settled
    for second in range(1, 7):  # 150/s from here; the 5 s span forgets the burst
        state.update(982 + second, None, worker_view([worker(2000 + 150 * second, 12 * second)]))
    assert state.settled
    return state


def test_history_starts_after_the_warmup_burst_and_keeps_each_refresh_once():
    state = state_after_burst()
    assert not state.history
    assert state.update(989, view(), worker_view([worker(3000, 80)]))
    assert not state.update(990, view(), worker_view([worker(3150, 92)]))  # same refresh
    assert len(state.history) == 1
    assert state.causes() == ["all", "where_is_my_order"]


def test_render_and_status_line_show_rates_values_health_and_urls():
    state = state_after_burst()
    waiting = Console(record=True, width=120)
    waiting.print(render(state))
    assert "waiting for the exporter" in waiting.export_text()

    state.update(1010, view(EXPORTER + ROOT_CAUSES), worker_view([worker(3000, 80, lag=9)]))
    console = Console(record=True, width=120)
    console.print(render(state))
    text = console.export_text()
    for expected in ("+20s", "orders/s", "where_is_my_order", "0.0300", "carrier=cargox",
                     "5.0", "consumer lag 9", "rejected 2", "duplicates 5", "pending contacts 3",
                     "workers ready 1/1", "http://127.0.0.1:1/metrics", "ACTIVE",
                     "root cause  where_is_my_order: carrier=cargox (score 0.9)"):
        assert expected in text, expected
    line = status_line(state)
    assert "\n" not in line
    for expected in ("cpo demo +20s", "CPO(30s) 0.0900",
                     "worst where_is_my_order carrier=cargox 0.1000 (5.0x rest, 1,000 orders)",
                     "root cause where_is_my_order: carrier=cargox", "incident ACTIVE",
                     "workers ready 1/1"):
        assert expected in line, expected


def test_without_root_cause_series_the_view_shows_no_root_cause():
    state = state_after_burst()
    state.update(1010, view(), worker_view([worker(3000, 80)]))
    console = Console(record=True, width=120)
    console.print(render(state))
    assert "root cause" not in console.export_text()
    assert "root cause" not in status_line(state)


def test_a_point_holds_the_incident_dimension_on_the_demo_clock():
    p = point(view(), origin=990.0, focus=INCIDENT)
    assert p.t == pytest.approx(10.25)
    assert p.focus == {"cargox": (100, 1000), "acme": (180, 6000), "lynx": (0, 3000)}
    assert point(view(), 990.0, None).focus == {}


@pytest.mark.parametrize("spans", [[INCIDENT], [], [Span("open", 10, math.inf)]])
def test_the_chart_is_a_png_with_every_panel(tmp_path, spans):
    import matplotlib.image

    points = [Point(t, 1000.0 + t, 4500, {"all": 0.08, "where_is_my_order": 0.02 + t / 1000},
                    {"cargox": (5 + t, 500), "acme": (60, 4000)}) for t in range(-5, 60)]
    path = write_chart(tmp_path / "chart.png", points, "30s", spans)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 400 and image.shape[1] > 800


def test_the_chart_of_a_run_without_samples_is_still_written(tmp_path):
    path = write_chart(tmp_path / "empty.png", [], "30s", [INCIDENT])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
