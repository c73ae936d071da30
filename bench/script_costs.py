"""Where the Redis script's CPU goes: the same events through the full script and through
copies with one part disabled, measured as Redis CPU (`INFO cpu`) per record.

    python -m bench.script_costs [--orders-per-second 40] [--seconds 3000]

The variants are diagnostics only (they do not count correctly); the difference to the full
script is what that part costs. Runs on an embedded redis-server, or CPO_REDIS_URL (flushed!).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis

from streams.events import Rejection, decode_contact, decode_order
from streams.lane import ScriptLane
from streams.local import redis_url
from streams.retry import Health, Retrying
from streams.settings import load_settings
from streams.simulate import SimConfig, encode, generate
from streams.state import SCRIPT, RedisState, connect, redis_permanent


def _without(old: str, new: str) -> str:
    """The script with one part replaced; fails loudly if the part is not in the script."""
    assert old in SCRIPT, f"not in state.lua any more: {old!r}"
    return SCRIPT.replace(old, new)


VARIANTS = {
    "full script": SCRIPT,
    "without the order identity HSETNX": _without(
        "if redis.call('HSETNX', key, order_id, record) == 1 then", "if key then"),
    "without the order counts' HINCRBY": _without(
        "for j = i + 3, i + 2 + 2 * n, 2 do redis.call('HINCRBY', key, D[j], D[j + 1]) end",
        ""),
    "without the contact join": _without(
        "          attribute(contact_id, cause, t, t_text, order_id, key, record)\n", ""),
    "without the pair queue": _without(
        "    redis.call('RPUSH', 'cpo:pbq', table.concat(entry, '\\n'))", ""),
}


def events(rate: float, seconds: float, now: float) -> tuple[list, list]:
    """The benchmark's mix: about 0.2 contacts per order, most within the hour."""
    config = SimConfig(rate=rate, seed=1, time_scale=600, diurnal_amplitude=0, total_cpo=0.25)
    orders, contacts = [], []
    for topic, event in generate(config, now - seconds, seconds):
        decoded = (decode_order if topic == "orders" else decode_contact)(encode(event), now)
        if not isinstance(decoded, Rejection):
            (orders if topic == "orders" else contacts).append(decoded)
    return orders, contacts


async def redis_cpu_per_record(url: str, script: str, pairs: str, orders: list, contacts: list,
                               now: float) -> float:
    settings = load_settings({"CPO_REDIS_URL": url, "CPO_RCA_PAIRS": pairs})
    state = RedisState(connect(settings), settings)
    lane = ScriptLane(state, Retrying(Health(), "redis", lambda: None, redis_permanent),
                      script=script)
    client = redis.Redis.from_url(url)
    client.flushdb()
    before, records = client.info("cpu"), 0
    for i in range(0, len(orders), 5000):
        batch = orders[i:i + 5000]
        joined = [c for c in contacts if batch[0].occurred_at <= c.occurred_at
                  < batch[-1].occurred_at]
        await lane.count(state.prepare(state.unique_orders(batch), joined, now))
        await state.fold_pairs()  # as a worker's timer
        records += len(batch) + len(joined)
    after = client.info("cpu")
    await lane.close()
    await state.client.aclose()
    used = sum(after[k] - before[k] for k in ("used_cpu_user", "used_cpu_sys"))
    return used / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders-per-second", type=float, default=40)
    parser.add_argument("--seconds", type=float, default=3000)
    args = parser.parse_args()
    now = time.time()
    orders, contacts = events(args.orders_per_second, args.seconds, now)
    print(f"{len(orders)} orders, {len(contacts)} contacts, batches of 5000 orders")

    def measure(url: str) -> None:
        for pairs in ("off", "on"):
            for name, script in VARIANTS.items():
                cpu = asyncio.run(redis_cpu_per_record(url, script, pairs, orders, contacts, now))
                print(f"pairs {pairs:3}  {name:32} {cpu:6.1f} µs of Redis CPU per record")

    with redis_url() as url:
        measure(url)


if __name__ == "__main__":
    main()
