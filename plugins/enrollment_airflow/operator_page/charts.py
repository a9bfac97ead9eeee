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


def seconds(value: float | None) -> str:
    """A duration as the page writes it: seconds under two minutes, then minutes, then hours."""
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.0f} s"
    return f"{value / 60:.0f} min" if value < 7200 else f"{value / 3600:.1f} h"


def scale_top(values: list[float | None], goal_s: float) -> float:
    """The y axis's top: the largest value, never less than 1.25 × the goal (the goal line always
    shows, a little below the top, when everything is well within it)."""
    return max([goal_s * 1.25, *(v for v in values if v is not None)]) or 1.0


def freshness_chart(
    points: list[dict[str, Any]],
    goal_s: float,
    label: str,
    width: int = 240,
    height: int = 72,
) -> str:
    """p95 and p50 per bucket as two lines (a gap where no batch was measured, never a zero),
    the goal as a dashed line with its label, a title per bucket (``points`` from
    ``enrollment.view.freshness.freshness_series``)."""
    if not points:
        return ""
    top = scale_top([p[k] for p in points for k in ("p50_s", "p95_s")], goal_s)
    pad = 12.0  # room for the chart's label above the plot
    plot = height - pad - 1

    def y(value: float) -> float:
        return round(pad + plot * (1 - min(value, top) / top), 1)

    step = width / len(points)
    xs = [round((i + 0.5) * step, 1) for i in range(len(points))]

    def line(key: str) -> str:
        d, pen = [], "M"
        for x, p in zip(xs, points, strict=True):
            if p[key] is None:
                pen = "M"
                continue
            d.append(f"{pen}{x} {y(p[key])}")
            pen = "L"
        return f'<path class="{key[:3]}" d="{" ".join(d)}"/>' if d else ""

    dots = "".join(
        f"<g><title>{escape(str(p['at'])[5:16].replace('T', ' '))} UTC: "
        f"p50 {seconds(p['p50_s'])}, p95 {seconds(p['p95_s'])} "
        f"({int(p.get('batches') or 0):,} batches)</title>"
        + "".join(
            f'<circle class="{k[:3]}" cx="{x}" cy="{y(p[k])}" r="2"/>'
            for k in ("p95_s", "p50_s")
            if p[k] is not None
        )
        + "</g>"
        for x, p in zip(xs, points, strict=True)
        if p["p50_s"] is not None or p["p95_s"] is not None
    )
    goal = y(goal_s)
    empty = (
        ""
        if dots
        else f'<text x="{width / 2}" y="{pad + plot / 2}" class="value" text-anchor="middle">'
        "no batch in this window</text>"
    )
    return (
        f'<svg class="fresh" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f"<title>{escape(label)}: p50 and p95 per bucket; goal {seconds(goal_s)}</title>"
        f'<text x="0" y="9" class="label">{escape(label)}</text>'
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" class="axis"/>'
        f'<line x1="0" y1="{goal}" x2="{width}" y2="{goal}" class="goal" '
        'stroke-dasharray="4 3"/>'
        f'<text x="{width}" y="{goal - 2}" class="goal" text-anchor="end">'
        f"goal {seconds(goal_s)}</text>"
        f"{line('p95_s')}{line('p50_s')}{dots}{empty}</svg>"
    )


def top(counts: dict[str, float], n: int = 15) -> list[tuple[str, float]]:
    """The ``n`` largest (label, value), largest first, the rest summed as one "other" bar."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    head, rest = ranked[:n], ranked[n:]
    if rest:
        head.append((f"{len(rest)} other reasons", sum(v for _, v in rest)))
    return head
