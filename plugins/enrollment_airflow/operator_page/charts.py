"""Small inline SVG charts, drawn on the server: the page shows them before (and without) any
script. Pure functions of the numbers; every label is escaped."""

from __future__ import annotations

from html import escape
from typing import Any


def bar_lengths(values: list[float], width: float) -> list[float]:
    """Each value's bar length on a scale where the largest fills ``width`` (all 0 when nothing)."""
    top = max((v for v in values if v), default=0)
    return [round(width * v / top, 1) if top and v else 0.0 for v in values]


def sparkline(
    series: list[dict[str, Any]], width: int = 180, height: int = 36, key: str = "events"
) -> str:
    """Columns per minute (the series from ``enrollment.view.reader.minute_series``), with a title
    per column."""
    if not series:
        return ""
    n = len(series)
    step = width / n
    heights = bar_lengths([float(p[key] or 0) for p in series], height - 2)
    bars = "".join(
        f'<rect x="{i * step:.1f}" y="{height - h:.1f}" '
        f'width="{max(step - 1, 1):.1f}" height="{h:.1f}">'
        f"<title>{escape(str(p['minute'])[11:16])} UTC: {int(p[key] or 0):,}</title></rect>"
        for i, (p, h) in enumerate(zip(series, heights, strict=True))
    )
    total = sum(int(p[key] or 0) for p in series)
    return (
        f'<svg class="spark" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f"<title>{total:,} in the last {n} minutes</title>"
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" class="axis"/>'
        f"{bars}</svg>"
    )


def hbars(
    items: list[tuple[str, float]], width: int = 260, row: int = 18, label_width: int = 230
) -> str:
    """Horizontal bars with labels (quarantine by reason)."""
    if not items:
        return ""
    lengths = bar_lengths([v for _, v in items], width)
    height = row * len(items)
    total = label_width + width + 60
    rows = "".join(
        f'<g transform="translate(0,{i * row})">'
        f'<text x="0" y="{row - 5}" class="label">{escape(label)}</text>'
        f'<rect x="{label_width}" y="3" width="{length}" height="{row - 6}"/>'
        f'<text x="{label_width + length + 4}" y="{row - 5}" class="value">{int(v):,}</text></g>'
        for i, ((label, v), length) in enumerate(zip(items, lengths, strict=True))
    )
    return (
        f'<svg class="hbars" role="img" width="{total}" height="{height}" '
        f'viewBox="0 0 {total} {height}">{rows}</svg>'
    )


def top(counts: dict[str, float], n: int = 15) -> list[tuple[str, float]]:
    """The ``n`` largest (label, value), largest first, the rest summed as one "other" bar."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    head, rest = ranked[:n], ranked[n:]
    if rest:
        head.append((f"{len(rest)} other reasons", sum(v for _, v in rest)))
    return head
