"""A bar chart as inline SVG, drawn on the server: no JavaScript, nothing to build."""

from __future__ import annotations

from html import escape


def bar_chart(points: list[tuple[str, int]], width: int = 640, height: int = 160) -> str:
    """Bars for ``(label, count)`` pairs, scaled to the largest; an empty list draws an empty frame."""
    pad_left, pad_bottom, pad_top = 40, 22, 10
    inner_w, inner_h = width - pad_left - 4, height - pad_bottom - pad_top
    peak = max((n for _, n in points), default=0) or 1
    step = inner_w / max(len(points), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="revocations written per day" class="chart">',
        f'<text x="{pad_left - 6}" y="{pad_top + 8}" text-anchor="end" class="axis">{peak}</text>',
        f'<text x="{pad_left - 6}" y="{pad_top + inner_h}" text-anchor="end" class="axis">0</text>',
        f'<line x1="{pad_left}" y1="{pad_top + inner_h}" x2="{width - 4}" y2="{pad_top + inner_h}" class="base"/>',
    ]
    for i, (label, count) in enumerate(points):
        bar_h = inner_h * count / peak
        x = pad_left + i * step + step * 0.15
        parts.append(
            f'<rect x="{x:.1f}" y="{pad_top + inner_h - bar_h:.1f}" width="{step * 0.7:.1f}" height="{bar_h:.1f}">'
            f'<title>{escape(label)}: {count}</title></rect>'
        )
        if len(points) <= 16 or i % max(1, len(points) // 8) == 0:
            parts.append(f'<text x="{x + step * 0.35:.1f}" y="{height - 6}" text-anchor="middle" class="axis">'
                         f'{escape(label[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)
