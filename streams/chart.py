"""The PNG `cpo demo` leaves behind: CPO over time per cause, with the incident shaded.

Three panels on one time axis (seconds since the traffic began): the overall rate, the rate of
every cause, and, for a rate incident, the incident's cause on its attribute value against the
rest of that dimension, where the injected factor shows undiluted. matplotlib's Agg backend
draws without a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from streams.liveview import Point, Span, versus_rest
from streams.windows import ALL


def write_chart(path: str | Path, points: Sequence[Point], window: str,
                spans: Sequence[Span], title: str = "cpo demo") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    focus = next((s for s in spans if s.cause and s.dimension and s.value), None)
    rows = 3 if focus else 2
    figure, axes = plt.subplots(rows, 1, figsize=(11, 3.2 * rows), sharex=True,
                                constrained_layout=True)
    times = [p.t for p in points]

    def series(values: Sequence[float | None]) -> list[float]:
        return [math.nan if v is None else v for v in values]

    overall, by_cause = axes[0], axes[1]
    overall.plot(times, series([p.rates.get(ALL) for p in points]), color="black", lw=2)
    overall.set_title(f"{title}: contacts per order, all causes ({window} event-time window)")
    causes = sorted({c for p in points for c in p.rates} - {ALL})
    colors = plt.get_cmap("tab20").colors
    for i, cause in enumerate(causes):
        by_cause.plot(times, series([p.rates.get(cause) for p in points]), label=cause,
                      color=colors[i % len(colors)], lw=1.5)
    by_cause.set_title("per cause")
    if causes:
        by_cause.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

    if focus:
        segment = axes[2]
        value = [versus_rest(p.focus, focus.value) for p in points]
        segment.plot(times, [c.rate for c in value], color="tab:red", lw=2,
                     label=f"{focus.dimension}={focus.value}")
        segment.plot(times, [c.rest_rate for c in value], color="tab:blue", lw=1.5,
                     label=f"other {focus.dimension} values")
        segment.set_title(f"{focus.cause} by {focus.dimension}")
        segment.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

    left = min([0.0, *times[:1]])
    right = max([left + 1, *times[-1:]])
    for i, ax in enumerate(axes):
        ax.set_ylabel("contacts / order")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        for span in spans:  # an incident without an end is shaded to the end of the run
            ax.axvspan(span.start, min(span.end, right), color="tab:red", alpha=0.12,
                       label=f"incident: {span.label}" if i == 0 else None)
    if spans:
        overall.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlim(left, right)
    axes[-1].set_xlabel("seconds since the traffic began")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
