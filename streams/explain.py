"""`cpo explain --cause X`: the root cause of a cause's defect-rate change, in one sentence and
a table.

It asks the exporter (`/api/v1/root-causes`) rather than reading Redis itself: the exporter
holds the one implementation of windows and baselines, so the command prints exactly what the
alert and `cpo_root_cause_score` say, and it needs only the exporter's address, not the Redis
credentials. The default address is this host's exporter (http://127.0.0.1:CPO_EXPORTER_PORT).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 30.0  # an analysis with pairs takes well under a second; Redis may be slow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cause", required=True,
                        help="contact cause, e.g. where_is_my_order, or `all`")
    parser.add_argument("--window", help="one of CPO_WINDOWS (default: the exporter's, the "
                        "shortest window analysed with pairs of values)")
    parser.add_argument("--exporter", metavar="URL",
                        help="the exporter's base URL (default http://127.0.0.1:"
                        "CPO_EXPORTER_PORT)")
    parser.add_argument("--json", action="store_true", help="print the endpoint's JSON as is")


def fetch(base_url: str, cause: str, window: str | None) -> dict:
    """The endpoint's JSON; raises RuntimeError with a readable message."""
    query = {"cause": cause, **({"window": window} if window else {})}
    url = f"{base_url.rstrip('/')}/api/v1/root-causes?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]
        except (ValueError, KeyError):
            message = exc.reason
        raise RuntimeError(f"{url}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeError(f"cannot reach the exporter at {base_url} ({reason}); is `cpo "
                           "exporter` running? pass its address with --exporter URL") from None


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def table(body: dict) -> str:
    """The ranked candidates, one line each, as plain text (greppable, no terminal needed):
    defects first, then the values whose share of orders grew (mix, not a defect)."""
    header = ("#", "segment", "kind", "score", "CPO now", "baseline", "orders", "share now",
              "share base", "excess", "z", "expl.power")
    rows = [header]
    for i, c in enumerate(body["candidates"], 1):
        kind = "defect" if c["is_defect"] else "mix"
        rows.append((str(i), c["label"], kind, _num(c["score"], ".2f"),
                     _num(c["current_rate"]), _num(c["baseline_rate"]),
                     _num(c["current_orders"], ",.0f"), _num(c["current_share"], ".1%"),
                     _num(c["baseline_share"], ".1%"), _num(c["excess_contacts"], ",.1f"),
                     _num(c["z_score"], ".1f"), _num(c["explanatory_power"], ".0%")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if i not in (1, 2) else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)


def render(body: dict) -> str:
    baseline = body["baseline"]
    recent, parts = baseline["recent_windows"], []
    if recent:
        parts.append("the previous window" if recent == 1 else f"the {recent} previous windows")
    if baseline["week_ago"]:
        parts.append("the same window a week ago")
    scope = "values and pairs of values" if body["pairs"] else "single values"
    detail = (f"window {body['window']}: {_num(body['current_orders'], ',.0f')} orders, CPO "
              f"{_num(body['current_rate'])} vs {_num(body['baseline_rate'])} baseline "
              f"(z {body['z_score']:.1f}); baseline: {' and '.join(parts) or 'none yet'}; {scope}")
    lines = [body["summary"], "", detail]
    if body["candidates"]:
        lines += ["", table(body)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    base_url = args.exporter
    if base_url is None:
        from streams.settings import load_settings

        base_url = f"http://127.0.0.1:{load_settings().exporter_port}"
    try:
        body = fetch(base_url, args.cause, args.window)
    except RuntimeError as exc:
        print(f"cpo explain: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2) if args.json else render(body))
    return 0
