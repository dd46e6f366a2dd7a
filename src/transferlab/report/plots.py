"""The report's figures: curves per epoch, the compared metric per configuration, quality
against cost. Rendered with Agg, whatever pyplot backend the caller has set."""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from transferlab.report.jobs import _number
from transferlab.report.table import Row, mean_of
from transferlab.summary import test_metric


def _label(name: str, width: int = 40) -> str:
    return textwrap.fill(name, width)


# Each row gets a colour, a marker and a line style of its own (by its place in the table, so a
# row looks the same in every plot): the first 40 rows differ in colour and marker together.
# Rows with identical results sort next to each other, so sizes cycle too: of three neighbours,
# one is large and hollow, one medium and hollow and one small and filled, on thick, medium and
# thin lines, the thinner drawn on top, so identical curves and points nest instead of hiding.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
SIZES = ((12.0, 3.5, "none"), (8.0, 2.0, "none"), (5.5, 1.0, None))  # marker, line, face


def _style(index: int) -> dict:
    markersize, linewidth, face = SIZES[index % len(SIZES)]
    color = f"C{index % 10}"
    return {"color": color, "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index % len(LINESTYLES)], "markersize": markersize,
            "linewidth": linewidth, "markerfacecolor": face or color, "markeredgewidth": 1.5,
            "zorder": 2 + index % len(SIZES)}


def _legend_label(index: int, row: Row) -> str:
    # Numbered as in the table (best first), so a plot entry is easy to find there.
    tag = " (baseline)" if row.is_baseline else ""
    return _label(f"{index + 1}. {row.configuration}{tag}")


def _legend(ax) -> None:
    # Outside the axes, to the right: it never hides data, whatever the number of rows.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0,
              handlelength=3, labelspacing=0.8)


def _save(fig: Figure, path: Path, has_data: bool) -> None:
    if not has_data:
        fig.text(0.5, 0.5, "no completed runs", ha="center", va="center")
    FigureCanvasAgg(fig)  # render with Agg, whatever pyplot backend the caller has set
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_curves(rows: list[Row], monitor: str, path: Path) -> None:
    fig = Figure(figsize=(9, 5))
    ax = fig.add_subplot()
    drawn = False
    for index, r in enumerate(rows):
        per_epoch: dict[int, list[float]] = defaultdict(list)
        for job in r.ok_jobs:
            for h in job.summary.get("history") or []:
                if _number(h.get(monitor)) is not None and "epoch" in h:
                    per_epoch[int(h["epoch"])].append(float(h[monitor]))
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        values = [np.array(per_epoch[e]) for e in epochs]
        style = _style(index)
        ax.plot(epochs, [v.mean() for v in values], **style, alpha=0.85,
                label=_legend_label(index, r))
        # Seeds may stop at different epochs; each epoch's band covers the seeds that reached it.
        ax.fill_between(epochs, [v.min() for v in values], [v.max() for v in values],
                        color=style["color"], alpha=0.12, linewidth=0)
        drawn = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set(xlabel="epoch", ylabel=monitor,
           title=f"{monitor} per epoch (mean, min–max over seeds)")
    if drawn:
        _legend(ax)
    _save(fig, path, drawn)


def plot_best(rows: list[Row], monitor: str, path: Path, kind: str = "best") -> None:
    """The compared metric per configuration: a bar at the mean and every run as a point, so a
    reader sees how far the seeds (folds) spread, not only a mean."""
    done = [r for r in rows if mean_of(r, kind) is not None]
    labels = [_label(r.configuration, 50) for r in done]
    # Room for every line of the wrapped names, so long ones do not run into each other.
    n_lines = sum(label.count("\n") + 1 for label in labels)
    fig = Figure(figsize=(9, 1.5 + 0.3 * max(len(done), 1) + 0.15 * n_lines))
    ax = fig.add_subplot()
    y = np.arange(len(done))
    ax.barh(y, [mean_of(r, kind) for r in done], height=0.6, alpha=0.35,
            color=["tab:orange" if r.is_baseline else "tab:blue" for r in done])
    for i, r in enumerate(done):
        values = r.values(kind, monitor)
        # Spread vertically inside the bar so equal values stay countable.
        offsets = np.linspace(-0.2, 0.2, len(values)) if len(values) > 1 else [0.0]
        ax.plot(values, i + np.asarray(offsets), "o", color="black", markersize=5,
                label="one run (seed / fold)" if i == 0 else None)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()  # best row on top, as in the table
    ax.grid(axis="x", alpha=0.3)
    what = f"{test_metric(monitor)} at the selected checkpoint" if kind == "test" \
        else f"best {monitor}"
    key = "; orange: baseline" if any(r.is_baseline for r in done) else ""
    ax.set(xlabel=f"{what} (bar: mean; dots: runs{key})", title="per configuration")
    if done:
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, path, bool(done))


def plot_tradeoff(rows: list[Row], monitor: str, path: Path) -> None:
    fig = Figure(figsize=(9, 5))
    ax = fig.add_subplot()
    drawn = False
    for index, r in enumerate(rows):
        if r.best_mean is None or r.time_per_epoch_s is None:
            continue
        # A legend instead of labels at the points: close or identical points cannot make it
        # unreadable, and their nested markers (see _style) stay visible.
        style = {**_style(index), "linestyle": "none", "markeredgewidth": 2.0}
        ax.plot([r.time_per_epoch_s], [r.best_mean], **style, label=_legend_label(index, r))
        drawn = True
    ax.grid(alpha=0.3)
    ax.margins(0.1)
    ax.set(xlabel="time per epoch (s)", ylabel=f"mean best {monitor}", title="quality vs cost")
    if drawn:
        _legend(ax)
    _save(fig, path, drawn)


