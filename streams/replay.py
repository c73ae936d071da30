"""`cpo replay FILE...`: load JSONL files into the input topics, byte for byte.

Each non-blank line is one record, sent as-is, so malformed lines reach the DLQ just as they
would from a faulty producer. A file named `orders*.jsonl` goes to the orders topic and
`contacts*.jsonl` to the contacts topic, unless `--topic` says otherwise. Records are keyed by
order_id / contact_id when the line is JSON with that field, like `cpo simulate` keys them.
Replaying a file twice changes no count: the pipeline deduplicates by order_id / contact_id.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TOPIC_CHOICES = ("orders", "contacts")


def topic_for(path: Path, chosen: str | None) -> str:
    """'orders' or 'contacts' from --topic, else from the file name; ValueError names the fix."""
    if chosen:
        return chosen
    for topic in TOPIC_CHOICES:
        if path.name.startswith(topic):
            return topic
    raise ValueError(f"{path}: cannot tell the topic from the name; name it orders*.jsonl or "
                     "contacts*.jsonl, or pass --topic orders|contacts")


def line_key(topic: str, line: bytes) -> bytes | None:
    """The id field of a JSON line as the record key; None when the line has none."""
    import orjson

    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    key = record.get("order_id" if topic == "orders" else "contact_id") if isinstance(
        record, dict) else None
    return key.encode() if isinstance(key, str) else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", type=Path,
                        help="JSONL files, one record per line")
    parser.add_argument("--topic", choices=TOPIC_CHOICES,
                        help="input topic for every file (default: from each file's name)")


def run(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from streams.settings import load_settings
    from streams.simulate import STOP_TIMEOUT, KafkaSink

    try:
        plan = [(path, topic_for(path, args.topic), path.stat().st_size) for path in args.files]
    except ValueError as exc:
        print(f"cpo replay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cpo replay: {exc.filename}: cannot read the file ({exc.strerror})",
              file=sys.stderr)
        return 2
    settings = load_settings()
    try:
        sink = KafkaSink(settings)
    except KafkaError as exc:
        print(f"cpo replay: cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); start a "
              "broker or set CPO_KAFKA_BOOTSTRAP", file=sys.stderr)
        return 1
    counts = {topic: 0 for topic in TOPIC_CHOICES}
    began = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("replay", total=sum(size for _, _, size in plan))
            for path, topic, _ in plan:
                bar.update(task, description=f"{path.name} -> {topic}")
                with path.open("rb") as handle:
                    for line in handle:
                        bar.advance(task, len(line))
                        record = line.rstrip(b"\r\n")
                        if record.strip():
                            sink.send(topic, line_key(topic, record), record)
                            counts[topic] += 1
            bar.update(task, description="flushing")
            sink.close()
    except BaseException:  # Ctrl-C: deliver what is buffered, but do not hang
        sink.close(timeout=STOP_TIMEOUT)
        raise
    elapsed = time.monotonic() - began
    summary = ", ".join(f"{count:,} to {getattr(settings, 'topic_' + topic)}"
                        for topic, count in counts.items())
    print(f"cpo replay: {summary} in {elapsed:.1f} s", file=sys.stderr)
    if sink.failed:
        print(f"cpo replay: {sink.failed:,} records were not delivered "
              f"(last error: {sink.last_error})", file=sys.stderr)
        return 1
    return 0
