"""Draw docs/img/<name>.svg from docs/diagrams/diagrams.toml: ``python docs/diagrams/draw.py``.

Plain SVG, no dependency beyond Python 3.11's tomllib; the output depends
only on the source, so a redraw changes a picture only where its source did.
``--check`` exits 1 when a checked-in SVG is not what the source draws.
"""

from __future__ import annotations

import sys
import tomllib
from html import escape
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "diagrams.toml"
OUT = HERE.parent / "img"
FILL = {"box": "#e8eef9", "store": "#fdf3dc", "decision": "#e7f5ea", "bar": "#dfe7f7", "note": "none", "group": "none"}
STROKE = {"box": "#3c5a99", "store": "#a07a1a", "decision": "#2e7d43", "bar": "#3c5a99", "note": "none",
          "group": "#8a94a6"}


def _edge(box: dict, tx: float, ty: float) -> tuple[float, float]:
    """Where the line from the box's centre towards (tx, ty) leaves the box."""
    cx, cy = box["x"] + box["w"] / 2, box["y"] + box["h"] / 2
    dx, dy = tx - cx, ty - cy
    if dx == 0 and dy == 0:
        return cx, cy
    scale = min((box["w"] / 2) / abs(dx) if dx else float("inf"), (box["h"] / 2) / abs(dy) if dy else float("inf"))
    return cx + dx * scale, cy + dy * scale


def _text(x: float, y: float, text: str, size: int = 13, weight: str = "normal", anchor: str = "middle") -> str:
    lines = text.split("\n")
    first = y - (len(lines) - 1) * (size + 3) / 2
    spans = "".join(f'<tspan x="{x:.1f}" y="{first + i * (size + 3):.1f}">{escape(line)}</tspan>'
                    for i, line in enumerate(lines))
    return (f'<text font-family="system-ui, sans-serif" font-size="{size}" font-weight="{weight}" '
            f'text-anchor="{anchor}" dominant-baseline="middle" fill="#1d2433">{spans}</text>')


def draw(d: dict) -> str:
    boxes = {b["id"]: b for b in d["boxes"]}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {d["width"]} {d["height"] + 30}" '
             f'width="{d["width"]}" height="{d["height"] + 30}" role="img" aria-label="{escape(d["title"])}">',
             f'<title>{escape(d["title"])}</title>',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#1d2433"/></marker></defs>',
             '<rect width="100%" height="100%" fill="#ffffff"/>']
    for b in sorted(d["boxes"], key=lambda b: b.get("kind") != "group"):
        kind = b.get("kind", "box")
        x, y, w, h = b["x"], b["y"] + 30, b["w"], b["h"]
        if kind == "group":
            parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="10" fill="none" stroke="{STROKE[kind]}" '
                         'stroke-dasharray="6 4"/>')
            parts.append(_text(x + 10, y + 14, b["text"], 12, "bold", "start"))
            continue
        if kind == "decision":
            parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{h / 2}" fill="{FILL[kind]}" '
                         f'stroke="{STROKE[kind]}"/>')
        elif kind != "note":
            rx = 2 if kind == "store" else 6
            parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{FILL[kind]}" '
                         f'stroke="{STROKE[kind]}" stroke-width="{2 if kind == "store" else 1.2}"/>')
        parts.append(_text(x + w / 2, y + h / 2, b["text"], 12 if kind == "note" else 13))
    for a in d.get("arrows", []):
        src, dst = boxes[a["from"]], boxes[a["to"]]
        sx, sy = src["x"] + src["w"] / 2, src["y"] + src["h"] / 2 + 30
        tx, ty = dst["x"] + dst["w"] / 2, dst["y"] + dst["h"] / 2 + 30
        if a.get("side") == "top":  # route over the top: up, across, down
            y0 = min(src["y"], dst["y"]) + 30 - 18
            x1, y1 = sx, src["y"] + 30
            x2, y2 = tx, dst["y"] + 30
            path = f"M{x1:.1f},{y1:.1f} L{x1:.1f},{y0:.1f} L{x2:.1f},{y0:.1f} L{x2:.1f},{y2:.1f}"
            mid = ((x1 + x2) / 2, y0 - 8)
        else:
            x1, y1 = _edge({**src, "y": src["y"] + 30}, tx, ty)
            x2, y2 = _edge({**dst, "y": dst["y"] + 30}, sx, sy)
            path = f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}"
            mid = ((x1 + x2) / 2, (y1 + y2) / 2 - 8)
        dash = ' stroke-dasharray="5 4"' if a.get("dashed") else ""
        parts.append(f'<path d="{path}" fill="none" stroke="#1d2433" stroke-width="1.4"{dash} marker-end="url(#arrow)"/>')
        if a.get("label"):
            width = 7 * len(a["label"]) + 8
            parts.append(f'<rect x="{mid[0] - width / 2:.1f}" y="{mid[1] - 9:.1f}" width="{width}" height="18" '
                         'fill="#ffffff" opacity="0.9"/>')
            parts.append(_text(mid[0], mid[1], a["label"], 12))
    parts.append(_text(d["width"] / 2, 14, d["title"], 14, "bold"))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for d in tomllib.loads(SOURCE.read_text(encoding="utf-8"))["diagram"]:
        path = OUT / f"{d['name']}.svg"
        svg = draw(d)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != svg:
                stale.append(path.name)
        else:
            path.write_text(svg, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent.parent)}")
    if stale:
        print(f"stale, redraw with python docs/diagrams/draw.py: {', '.join(stale)}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
