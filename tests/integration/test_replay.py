"""JSONL files and `cpo simulate` reach the real broker byte for byte, malformed records too.

Each test reads its topics back from the beginning to the end offsets it finds after the
command returned, and compares the records, as multisets, with the lines of the files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import orjson

from streams.settings import Settings
from streams.simulate import JsonlSink, Progress, SimConfig, run_simulation
from tests.integration.support import consume_all

START = datetime.fromisoformat("2026-01-01T00:00:00Z").timestamp()


def cpo(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.as_env()}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, check=False,
                          capture_output=True, text=True, timeout=120)


def read_topic(settings: Settings, topic: str, expected: int) -> list[tuple[bytes | None, bytes]]:
    """Every record of `topic`: at least `expected`, then until nothing more arrives.

    Not "up to the end offsets": Tansu's in-memory broker can report end offsets below the
    records it holds, and a reader stopping there misses the last batches."""
    return [(record.key, record.value) for record in consume_all(settings, topic, expected)]


def lines(path: Path) -> Counter:
    return Counter(line for line in path.read_bytes().splitlines() if line.strip())


def assert_topics_equal_files(settings: Settings, directory: Path) -> None:
    for topic, name in ((settings.topic_orders, "orders"),
                        (settings.topic_contacts, "contacts")):
        expected = lines(directory / f"{name}.jsonl")
        records = read_topic(settings, topic, sum(expected.values()))
        assert Counter(value for _, value in records) == expected
        id_field = "order_id" if name == "orders" else "contact_id"
        keys = {key: value for key, value in records if key is not None}
        assert all(orjson.loads(value)[id_field].encode() == key for key, value in keys.items())
        assert len(keys) < len(records)  # malformed records have no key


def test_replay_loads_every_line(pipeline_settings: Settings, tmp_path: Path) -> None:
    config = SimConfig(rate=40, seed=21, time_scale=3600, duplicate_share=0.02,
                       malformed_share=0.02)
    sink = JsonlSink(tmp_path)
    run_simulation(config, START, 120, [sink], pace=False, progress=Progress("test", False))
    sink.close()
    with (tmp_path / "orders.jsonl").open("ab") as handle:
        handle.write(b"\n")  # a blank line is skipped, not sent

    result = cpo(pipeline_settings, "replay", str(tmp_path / "orders.jsonl"),
                 str(tmp_path / "contacts.jsonl"))
    assert result.returncode == 0, result.stderr

    assert_topics_equal_files(pipeline_settings, tmp_path)
    orders = sum(lines(tmp_path / "orders.jsonl").values())
    contacts = sum(lines(tmp_path / "contacts.jsonl").values())
    assert (f"{orders:,} to {pipeline_settings.topic_orders}, "
            f"{contacts:,} to {pipeline_settings.topic_contacts}") in result.stderr


def test_simulate_produces_what_it_writes(pipeline_settings: Settings, tmp_path: Path) -> None:
    result = cpo(pipeline_settings, "simulate", "--no-pace", "--duration", "2m", "--seed", "5",
                 "--rate", "40", "--time-scale", "3600", "--malformed-share", "0.02",
                 "--start", "2026-01-01T00:00:00Z", "--jsonl-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert_topics_equal_files(pipeline_settings, tmp_path)


def test_replay_refuses_a_file_without_a_topic(pipeline_settings: Settings,
                                               tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"{}\n")
    result = cpo(pipeline_settings, "replay", str(path))
    assert result.returncode == 2
    assert "--topic" in result.stderr and len(result.stderr.strip().splitlines()) == 1
