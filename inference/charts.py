"""A daily bar chart as plain numbers for an inline SVG: computed here, drawn by the template, no JavaScript.

Stacked bars per day: successful calls below, failed calls above. The template adds ``role="img"``, an
``aria-label`` summary and a data table, so the chart is never the only way to read the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date

WIDTH = 720
HEIGHT = 220
MARGIN_LEFT = 48
MARGIN_RIGHT = 8
MARGIN_TOP = 10
MARGIN_BOTTOM = 26
MAX_X_LABELS = 8


@dataclass(frozen=True)
class Bar:
    day: date
    x: float
    width: float
    calls_y: float
    calls_height: float
    errors_y: float
    errors_height: float
    calls: int
    errors: int


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class XLabel:
    x: float
    label: str


@dataclass
class DailyChart:
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = MARGIN_LEFT
    plot_right: int = WIDTH - MARGIN_RIGHT
    plot_top: int = MARGIN_TOP
    plot_bottom: int = HEIGHT - MARGIN_BOTTOM
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_labels: list[XLabel] = field(default_factory=list)
    summary: str = ""


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 × 10^k that is at least ``value`` (at least 1): a y-axis maximum people read."""
    if value <= 1:
        return 1
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        candidate = step * 10**exponent
        if candidate >= value:
            return int(candidate)
    return int(10 ** (exponent + 1))


def _count(value: int) -> str:
    return f"{value:,}"


def daily_chart(*, days: list[date], calls: dict[date, int], errors: dict[date, int]) -> DailyChart:
    """Bars for ``days`` (oldest first) from per-day calls and errors (missing days are 0)."""
    chart = DailyChart()
    plot_width = chart.plot_right - chart.plot_left
    plot_height = chart.plot_bottom - chart.plot_top
    totals = [calls.get(d, 0) + errors.get(d, 0) for d in days]
    # Whole-number ticks (counts): a step of 1, 2 or 5 × 10^k giving at most four intervals.
    highest = max(totals, default=0)
    step = nice_ceiling(highest / 4)
    top = step * max(1, math.ceil(highest / step))
    scale = plot_height / top
    slot = plot_width / max(1, len(days))
    bar_width = max(1.0, slot * 0.72)
    for i, day in enumerate(days):
        n_calls, n_errors = calls.get(day, 0), errors.get(day, 0)
        calls_height = n_calls * scale
        errors_height = n_errors * scale
        x = chart.plot_left + i * slot + (slot - bar_width) / 2
        calls_y = chart.plot_bottom - calls_height
        chart.bars.append(
            Bar(
                day=day,
                x=round(x, 2),
                width=round(bar_width, 2),
                calls_y=round(calls_y, 2),
                calls_height=round(calls_height, 2),
                errors_y=round(calls_y - errors_height, 2),
                errors_height=round(errors_height, 2),
                calls=n_calls,
                errors=n_errors,
            )
        )
    for value in range(0, top + 1, step):
        chart.y_ticks.append(Tick(y=round(chart.plot_bottom - value * scale, 2), label=_count(value)))
    every = max(1, math.ceil(len(days) / MAX_X_LABELS))
    for i in range(0, len(days), every):
        chart.x_labels.append(XLabel(x=round(chart.plot_left + (i + 0.5) * slot, 2), label=days[i].strftime("%b %-d")))
    total_calls, total_errors = sum(calls.get(d, 0) for d in days), sum(errors.get(d, 0) for d in days)
    if days:
        summary = (
            f"Calls per day from {days[0]:%b %-d} to {days[-1]:%b %-d, %Y}: {_count(total_calls)} successful "
            f"and {_count(total_errors)} failed in total"
        )
        busiest = max(range(len(days)), key=lambda i: totals[i])
        if totals[busiest]:
            calls_word = "call" if totals[busiest] == 1 else "calls"
            summary += f"; the busiest day was {days[busiest]:%b %-d} with {_count(totals[busiest])} {calls_word}"
        chart.summary = summary + ". The table below has the numbers."
    return chart
