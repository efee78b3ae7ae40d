"""A bar chart as inline SVG, drawn on the server: no JavaScript, nothing to build.

One bar per day, days without writes included (a gap is news too); each
bar's value appears above it on hover (CSS only) and in its tooltip.  The
y axis is as wide as its longest label, so a count of 1,000,003 is never
clipped.
"""

from __future__ import annotations

from datetime import date, timedelta
from html import escape

#: Width of one character of the axis labels (10 px system-ui digits are narrower), in SVG units.
CHAR_WIDTH = 6.5


def thousands(n: int | float | None) -> str:
    """``1000003`` as ``1,000,003`` (the pages' number format); None as an empty string."""
    if n is None:
        return ""
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def every_day(points: list[tuple[str, int]], days: int, today: date | None = None) -> list[tuple[str, int]]:
    """``points`` (ISO day, count) with a zero for each missing day of the ``days`` ending today."""
    counts = dict(points)
    last = today or max([date.fromisoformat(d) for d in counts] + [date.today()])
    return [((day := last - timedelta(days=back)).isoformat(), counts.get(day.isoformat(), 0))
            for back in range(days - 1, -1, -1)]


def bar_chart(points: list[tuple[str, int]], width: int = 640, height: int = 170, days: int = 14,
              today: date | None = None) -> str:
    """Bars for the last ``days`` days of ``(ISO day, count)`` pairs, scaled to the largest."""
    points = every_day(points, days, today)
    peak = max((n for _, n in points), default=0)
    top = peak or 1
    ticks = [(0, "0")] + ([(top / 2, thousands(top // 2)), (top, thousands(top))] if peak else [])
    pad_left = 10 + CHAR_WIDTH * max(len(label) for _, label in ticks)
    pad_bottom, pad_top = 22, 18  # room for the day labels, and for a value shown over the tallest bar
    inner_w, inner_h = width - pad_left - 4, height - pad_bottom - pad_top
    step = inner_w / max(len(points), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="revocations written per day" class="chart">',
        f'<line x1="{pad_left:.1f}" y1="{pad_top + inner_h}" x2="{width - 4}" y2="{pad_top + inner_h}" class="base"/>',
    ]
    for value, label in ticks:
        y = pad_top + inner_h - inner_h * value / top
        parts.append(f'<text x="{pad_left - 6:.1f}" y="{y + 3.5:.1f}" text-anchor="end" class="axis">{label}</text>')
    for i, (day, count) in enumerate(points):
        bar_h = inner_h * count / top
        x = pad_left + i * step + step * 0.15
        middle = x + step * 0.35
        parts.append(
            f'<g class="bar"><title>{escape(day)}: {thousands(count)} revocations</title>'
            f'<rect x="{x:.1f}" y="{pad_top + inner_h - bar_h:.1f}" width="{step * 0.7:.1f}" height="{max(bar_h, 0):.1f}"/>'
            # the hover target covers the whole column, so a day with few (or no) writes can be pointed at
            f'<rect class="hit" x="{pad_left + i * step:.1f}" y="{pad_top}" width="{step:.1f}" height="{inner_h}"/>'
            f'<text x="{middle:.1f}" y="{pad_top + inner_h - bar_h - 4:.1f}" text-anchor="middle" class="value">'
            f'{thousands(count)}</text></g>'
        )
        if len(points) <= 16 or i % max(1, len(points) // 8) == 0:
            parts.append(f'<text x="{middle:.1f}" y="{height - 6}" text-anchor="middle" class="axis">'
                         f'{escape(day[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)
