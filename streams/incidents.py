"""Injected incidents: what the pipeline should detect, declared in one line or a YAML file.

Two kinds, both limited to orders placed in a window of event time measured from the
simulation's start:
- rate: matching orders get `x` times the contacts of one cause
  (`carrier=acme,cause=where_is_my_order,x=6,start=2m,duration=10m`);
- mix: the share of orders with one attribute value changes, every rate stays
  (`carrier=acme,share=0.6,start=2m,duration=10m`). Together with a permanent rate incident
  (no start, no duration) it moves the overall rate without any segment getting worse, which is
  what root-cause analysis must tell apart from a real rate change.
Every parse error is one line naming the bad field and an example of a good value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.population import CAUSE_NAMES, Population
from streams.settings import parse_duration

_RESERVED = ("name", "cause", "x", "share", "start", "duration")


class IncidentError(ValueError):
    """An incident declaration is invalid; the message is one line naming the field."""


@dataclass(frozen=True)
class Incident:
    """One incident; `start`/`duration` are seconds of event time after the simulation start."""

    name: str
    match: tuple[tuple[str, str], ...]  # (attribute, value) pairs, all must hold
    start: float = 0.0
    duration: float = math.inf
    cause: str | None = None  # rate incidents
    multiplier: float = 1.0  # rate incidents
    share: float | None = None  # mix incidents

    @property
    def kind(self) -> str:
        return "mix" if self.share is not None else "rate"

    @property
    def end(self) -> float:
        return self.start + self.duration

    def active(self, offset: float) -> bool:
        """True for an order placed `offset` seconds after the simulation start."""
        return self.start <= offset < self.end

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(attributes.get(key) == value for key, value in self.match)

    def describe(self) -> str:
        """The incident in its own command-line syntax, for logs and chart legends."""
        parts = [f"{key}={value}" for key, value in self.match]
        if self.kind == "rate":
            parts += [f"cause={self.cause}", f"x={self.multiplier:g}"]
        else:
            parts.append(f"share={self.share:g}")
        parts.append(f"start={self.start:g}s")
        if self.duration != math.inf:
            parts.append(f"duration={self.duration:g}s")
        return ",".join(parts)


def _offset(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s") else parse_duration(text)


def _number(text: str, low: float, high: float, example: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low < value <= high:
        raise ValueError(f"is not a number in ({low:g}, {high:g}], e.g. {example}")
    return value


def incident_from_fields(
    fields: Mapping[str, Any], populations: Mapping[str, Population], where: str
) -> Incident:
    """Build an incident from key=value fields; `where` prefixes errors (the source)."""

    def fail(key: str, problem: str) -> IncidentError:
        shown = f"{key}={fields[key]!r}: " if key in fields else ""
        return IncidentError(f"{where}: {shown}{problem}")

    values = {str(key).strip(): str(value).strip() for key, value in fields.items()}
    match: list[tuple[str, str]] = []
    for key, value in values.items():
        if key in _RESERVED:
            continue
        if key not in populations:
            known = ", ".join((*populations, *_RESERVED))
            raise fail(key, f"unknown field {key!r}; fields are {known}")
        if value not in populations[key].values:
            sample = ", ".join(populations[key].values[:5])
            raise fail(key, f"not a {key} of the simulation (e.g. {sample})")
        match.append((key, value))
    if not match:
        raise IncidentError(f"{where}: no attribute to match; add one such as carrier=acme")
    parsed: dict[str, Any] = {}
    for key, parse in (("start", _offset), ("duration", parse_duration)):
        if key in values:
            try:
                parsed[key] = parse(values[key])
            except ValueError as exc:
                raise fail(key, str(exc)) from None
    try:
        if "share" in values:
            parsed["share"] = _number(values["share"], 0, 1, "share=0.6")
        if "x" in values:
            parsed["multiplier"] = _number(values["x"], 0, 1e6, "x=6")
    except ValueError as exc:
        raise fail("share" if "share" in values else "x", str(exc)) from None
    if "share" in values:
        if "cause" in values or "x" in values:
            raise fail("share", "a mix incident (share=) takes no cause= or x=")
        if len(match) != 1:
            raise IncidentError(f"{where}: a mix incident changes one attribute value, not "
                                f"{len(match)}; keep one such as carrier=acme")
    else:
        if "cause" not in values:
            raise IncidentError(f"{where}: missing cause=; e.g. cause=where_is_my_order "
                                "(or share= for a mix incident)")
        if values["cause"] not in CAUSE_NAMES:
            raise fail("cause", f"not a simulated cause; one of {', '.join(CAUSE_NAMES)}")
        if "x" not in values:
            raise IncidentError(f"{where}: missing x= (the contact-rate multiplier), e.g. x=6")
        parsed["cause"] = values["cause"]
    name = values.get("name") or ",".join(f"{k}={v}" for k, v in match)
    return Incident(name=name, match=tuple(match), **parsed)


def parse_incident(text: str, populations: Mapping[str, Population]) -> Incident:
    """`carrier=acme,cause=where_is_my_order,x=6,start=2m,duration=10m` -> Incident."""
    where = f"--incident {text!r}"
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise IncidentError(f"{where}: {part.strip()!r} is not key=value")
        if key.strip() in fields:
            raise IncidentError(f"{where}: {key.strip()}= is given twice")
        fields[key.strip()] = value
    return incident_from_fields(fields, populations, where)


def load_incidents(path: str | Path, populations: Mapping[str, Population]) -> list[Incident]:
    """Read `incidents:` (a list of mappings with the command-line fields) from a YAML file."""
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise IncidentError(f"{path}: cannot read the file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise IncidentError(f"{path}: not valid YAML{at}") from None
    items = document.get("incidents") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise IncidentError(f"{path}: expected a top-level `incidents:` list")
    incidents = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise IncidentError(f"{path}: incident {number}: expected a mapping of fields")
        incidents.append(incident_from_fields(item, populations, f"{path}: incident {number}"))
    return incidents
