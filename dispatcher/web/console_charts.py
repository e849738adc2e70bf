"""Geometry for the console's delivery chart: 24 hourly stacked bars, laid out on the server.

The template (`_chart.html`) draws these numbers as SVG shapes with classes; nothing here knows
about colours or markup, so the layout is testable as plain values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dispatcher.manage.insights import HourOutcomes

WIDTH = 720
HEIGHT = 200
# Room for the y-axis labels on the left and the hour labels below.
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 26
PLOT_WIDTH = WIDTH - LEFT - RIGHT
PLOT_HEIGHT = HEIGHT - TOP - BOTTOM
MAX_TICKS = 4
BAR_GAP = 0.22  # the share of each hour's slot left empty between bars
HOUR_LABEL_EVERY = 3


@dataclass(frozen=True)
class Bar:
    """One hour: a succeeded segment on the baseline and a failed segment stacked on top."""

    x: float
    width: float
    succeeded_y: float
    succeeded_height: float
    failed_y: float
    failed_height: float
    label: str  # what the bar says in words, for its <title> tooltip


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class HourLabel:
    x: float
    label: str


@dataclass(frozen=True)
class HourlyChart:
    width: int
    height: int
    left: int
    right: float
    baseline: float
    bars: list[Bar]
    ticks: list[Tick]
    hours: list[HourLabel]
    succeeded: int
    failed: int
    summary: str  # the whole chart in one sentence, for its <desc>

    @property
    def empty(self) -> bool:
        return self.succeeded + self.failed == 0


def axis_top(largest: int) -> tuple[int, int]:
    """Return (top, step): the y-axis maximum and its tick step, a 1-2-5 step in at most 4 ticks."""
    largest = max(largest, 1)
    magnitude = 10 ** max(0, math.floor(math.log10(largest)) - 1)
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if math.ceil(largest / step) <= MAX_TICKS:
                return step * math.ceil(largest / step), step
        magnitude *= 10


def hourly_chart(series: Sequence[HourOutcomes]) -> HourlyChart:
    """Lay out `series` (oldest hour first) as stacked bars on a shared y-axis."""
    top, step = axis_top(max((h.succeeded + h.failed for h in series), default=0))
    baseline = TOP + PLOT_HEIGHT
    slot = PLOT_WIDTH / max(len(series), 1)
    width = slot * (1 - BAR_GAP)

    def height_of(count: int) -> float:
        return round(PLOT_HEIGHT * count / top, 2)

    bars: list[Bar] = []
    hours: list[HourLabel] = []
    for index, hour in enumerate(series):
        x = LEFT + index * slot
        ok_height = height_of(hour.succeeded)
        failed_height = height_of(hour.failed)
        start = hour.hour.strftime("%H:00")
        bars.append(
            Bar(
                x=round(x + (slot - width) / 2, 2),
                width=round(width, 2),
                succeeded_y=round(baseline - ok_height, 2),
                succeeded_height=ok_height,
                failed_y=round(baseline - ok_height - failed_height, 2),
                failed_height=failed_height,
                label=f"{start} UTC: {hour.succeeded} succeeded, {hour.failed} failed",
            )
        )
        if (len(series) - 1 - index) % HOUR_LABEL_EVERY == 0:
            hours.append(HourLabel(round(x + slot / 2, 2), start))
    ticks = [
        Tick(round(baseline - PLOT_HEIGHT * value / top, 2), f"{value:,}")
        for value in range(0, top + 1, step)
    ]
    succeeded = sum(h.succeeded for h in series)
    failed = sum(h.failed for h in series)
    return HourlyChart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=WIDTH - RIGHT,
        baseline=baseline,
        bars=bars,
        ticks=ticks,
        hours=hours,
        succeeded=succeeded,
        failed=failed,
        summary=_summary(series, succeeded, failed),
    )


def _summary(series: Sequence[HourOutcomes], succeeded: int, failed: int) -> str:
    if not succeeded + failed:
        return "No deliveries finished in the last 24 hours."
    busiest = max(series, key=lambda h: h.succeeded + h.failed)
    return (
        f"{succeeded:,} succeeded and {failed:,} failed in the last 24 hours; the busiest hour"
        f" was {busiest.hour:%H:00} UTC with {busiest.succeeded + busiest.failed:,} deliveries."
    )
