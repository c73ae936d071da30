"""The `cpo` command: one sub-command per module, imported only when it runs.

Each command module defines `add_arguments(parser)` and `run(args) -> int`. A bad setting
ends the command with one readable line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from streams.settings import SettingsError

COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("streams.worker", "run the stream processors (scale out by running more)"),
    "exporter": ("streams.exporter", "serve event-time windowed defect rates for Prometheus"),
    "simulate": ("streams.simulate", "produce realistic order and contact streams with incidents"),
    "replay": ("streams.replay", "load JSONL event files into the input topics"),
    "demo": ("streams.demo", "the whole system on this machine, with a live view"),
    "topics": ("streams.topics", "create the project's topics (idempotent)"),
    "rules": ("streams.rules", "generate Prometheus recording and alerting rules"),
    "dashboards": ("streams.dashboards", "generate the Grafana dashboards"),
    "explain": ("streams.explain", "print the root cause of a cause's defect-rate change"),
}


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    """All commands are listed; only the chosen one's module is imported."""
    parser = argparse.ArgumentParser(prog="cpo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    try:
        return int(args.module.run(args) or 0)
    except SettingsError as exc:
        print(f"cpo {args.command}: invalid setting: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
