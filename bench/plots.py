"""Plots for the reports people look at (PNG next to the JSON results)."""

from __future__ import annotations

from pathlib import Path


def latency_over_time(
    path: Path,
    series: dict[str, list[tuple[float, float]]],
    title: str,
    target_s: float | None = None,
) -> Path:
    """One scatter per series of (event time, latency s), with each series' p95 and the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    start = min((t for points in series.values() for t, _ in points), default=0.0)
    for name, points in series.items():
        if not points:
            continue
        xs, ys = [t - start for t, _ in points], [y for _, y in points]
        dots = ax.scatter(xs, ys, s=6, alpha=0.5, label=name)
        p95 = sorted(ys)[min(len(ys) - 1, int(0.95 * len(ys)))]
        ax.axhline(
            p95,
            color=dots.get_facecolor()[0],
            linestyle=":",
            linewidth=1,
            label=f"{name} p95 {p95:.0f} s",
        )
    if target_s is not None:
        ax.axhline(target_s, color="red", linewidth=1.2, label=f"target {target_s:g} s")
    ax.set_xlabel("event produced, s after the start of the load")
    ax.set_ylabel("latency, s")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
