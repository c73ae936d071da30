"""The worker's registry cache turns a batch's order attributes into value ids and record text
column by column; each order's answer must be what a plain per-order lookup gives."""

from __future__ import annotations

import pytest

from streams.events import OrderEvent
from streams.state import Registry, UniqueOrders
from streams.tally import ABSENT, OrderTally

DIMENSIONS = ("carrier", "region", "seller")
DIM_IDS = [3, 1, 2]  # registered in another order than configured: columns go by id


def registry(dimensions: tuple[str, ...] = DIMENSIONS, dim_ids: list[int] = DIM_IDS) -> Registry:
    by_id = sorted(dim_ids)
    known = Registry("epoch-1", dim_ids, dimensions, 50,
                     OrderTally(by_id, 50, 600, (60, 60), pairs=False))
    for name, values in {"carrier": ["dhl", "ups"], "region": ["eu"], "seller": ["s1", "s2"]}.items():
        if name in dimensions:
            for value_id, value in enumerate(values, start=1):
                known.learn(name, value, value_id)
    return known


def expected(known: Registry, attributes: dict[str, str]) -> tuple[list, str]:
    """One order, the plain way: its id per column (ascending dimension id) and its text."""
    dim_id = dict(zip(DIMENSIONS, DIM_IDS, strict=True))
    ids, text = [], ""
    for column, name in enumerate(known.names):
        value_id = known.ids[column].get(attributes.get(name))
        ids.append(value_id)
        if value_id not in (None, ABSENT):
            text += f",{dim_id[name]}:{value_id}"
    return ids, text


ORDERS = [
    {"carrier": "dhl", "region": "eu", "seller": "s2", "payment": "card"},
    {"carrier": "ups", "region": "eu", "seller": "s1"},
    {"carrier": "other", "region": "eu", "seller": ""},  # `other` is 0, "" is absent
    {"carrier": "dhl", "seller": "s1"},  # no region: the batch takes the per-name path
    {"carrier": "fedex", "region": "eu", "seller": "s9"},  # values without an id yet
]


@pytest.mark.parametrize("orders", [ORDERS[:3], ORDERS, ORDERS[4:], ORDERS[3:4]],
                         ids=["every dimension", "one lacks one", "unknown values", "one"])
def test_columns_and_texts_are_each_orders_own(orders: list[dict[str, str]]) -> None:
    known = registry()
    assert known.names == ("region", "seller", "carrier")
    columns = known.columns_of(orders)
    assert [list(row) for row in zip(*columns)] == [expected(known, o)[0] for o in orders]
    complete = [o for o, row in zip(orders, zip(*columns)) if None not in row]
    complete_columns = known.columns_of(complete)
    if complete:
        assert known.texts_of(complete_columns) == [expected(known, o)[1] for o in complete]


def test_one_dimension() -> None:
    known = registry(("carrier",), [3])
    orders = [{"carrier": "ups"}, {"carrier": ""}, {}]
    assert known.columns_of(orders) == [[2, ABSENT, ABSENT]]
    assert known.texts_of(known.columns_of(orders)) == [",3:2", "", ""]


@pytest.mark.parametrize("runs", [
    [[0, 1], [2, 3]],  # no order_id twice: each run is taken whole
    [[0, 1, 0], [2]],  # twice in one run
    [[3, 0, 1, 0, 2, 1, 1], [2, 4, 0]],  # several times, within and across runs
    [[0, 1], [1, 2], [4]],  # again in a later run, and an unknown value
    [[], [3, 3, 3]],
], ids=["distinct", "within a run", "across runs", "both", "empty run"])
def test_unique_orders_keep_each_first_order_and_its_ids(runs: list[list[int]]) -> None:
    """Orders added run by run: the first order of each order_id, with other attributes in
    each later occurrence, and the value ids the registry gives those first orders."""
    known = registry()
    unique = UniqueOrders(known)
    added = []
    for n, run in enumerate(runs):
        orders = [OrderEvent(f"o{i}", 0.0, {**ORDERS[i], "run": str(n)}, None) for i in run]
        unique.add(orders)
        added += orders
    first = {}
    for order in added:
        first.setdefault(order.order_id, order)
    assert list(map(id, unique.first.values())) == list(map(id, first.values()))
    assert unique.duplicates == len(added) - len(first)
    assert unique.columns() == known.columns_of([o.attributes for o in first.values()])
    assert UniqueOrders(None).columns() is None
