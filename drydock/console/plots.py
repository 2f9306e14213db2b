"""Line charts drawn on the server as inline SVG: no script, no chart library in the browser.

A chart is one or more series of (time, value) points over a shared time axis; a missing value
(None) breaks its line. Labels are escaped: repository names and task names come from users."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 70, 12, 12, 28
COLOURS = ("#2f6fdb", "#d9822b", "#1f7a3a", "#b3261e", "#7a4bc2", "#5d6675")


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[datetime, float | None]]


def _number(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def line_chart(
    series: Sequence[Series],
    *,
    unit: str,
    title: str,
    between: tuple[datetime, datetime] | None = None,
) -> Markup:
    """An SVG chart of ``series`` over ``between`` (default: the points' own span); says so in
    words when there is nothing to draw."""
    times = [t for s in series for t, v in s.points if v is not None]
    values = [v for s in series for _, v in s.points if v is not None]
    if not times:
        return Markup('<p class="no-data">No data for {} yet.</p>').format(title)
    first, last = between or (min(times), max(times))
    t0, t1 = first.timestamp(), last.timestamp()
    top = max(values) or 1.0
    span = (t1 - t0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(moment: datetime) -> float:
        return LEFT + (moment.timestamp() - t0) / span * plot_w

    def y(value: float) -> float:
        return TOP + plot_h - value / top * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
        'stroke="#9aa3b2"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#9aa3b2"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end" font-size="11">'
        f"{escape(_number(top))} {escape(unit)}</text>",
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end" font-size="11">0</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 8}" font-size="11">{_clock(t0)}</text>',
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end" font-size="11">'
        f"{_clock(t1)} UTC</text>",
    ]
    for index, one in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        for run in _runs(one.points):
            if len(run) == 1:
                (moment, value) = run[0]
                parts.append(
                    f'<circle cx="{x(moment):.1f}" cy="{y(value):.1f}" r="2.5" fill="{colour}"/>'
                )
            else:
                path = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in run)
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{path}"/>'
                )
    parts.append("</svg>")
    legend = "".join(
        f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
        f'fill="{COLOURS[i % len(COLOURS)]}"/></svg> {escape(s.label)}</li>'
        for i, s in enumerate(series)
    )
    return Markup("".join(parts) + f'<ul class="legend">{legend}</ul>')


def _runs(points: Sequence[tuple[datetime, float | None]]) -> list[list[tuple[datetime, float]]]:
    runs: list[list[tuple[datetime, float]]] = [[]]
    for moment, value in points:
        if value is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((moment, value))
    return [run for run in runs if run]


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%H:%M")
