"""The sweep report: one table and three plots for a Hydra multirun sweep of transferlab-train
(`build_report`; `transferlab-report` is it from the command line).

Every job of the sweep is read from its `summary.json` alone (how the run was asked for, from its
first moment, and how it went); jobs that differ only
in `seed` and `data.fold` (its replicate) form one configuration. Jobs that failed, never finished
or never started are listed, not dropped, so a half-broken sweep still gives an honest report.

Per configuration: the monitor at its best epoch (optimistic: that epoch was picked on the same
data), at the last epoch, and on test at the selected checkpoint when the runs have a test split.
Rows are compared on test when every run has it, else on the best epoch's monitor: each row with
its baseline row (default: He init, the same other settings) by the mean paired difference over
the replicates both have, with a 95 % t-interval and a paired t-test, and the top row with every
other row the same way, so a winner is named only when no interval reaches it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from transferlab.report.jobs import SWEEPS_ROOT, Job, _name, latest_sweep, monitor_mode, read_jobs
from transferlab.report.plots import plot_best, plot_curves, plot_tradeoff
from transferlab.report.select import compare_selected
from transferlab.report.stats import Paired, paired
from transferlab.report.table import (
    BASELINE,
    Row,
    compare_with_top,
    compared_kind,
    mark_baselines,
    sort_rows,
    summarise,
    to_markdown,
    write_csv,
)

HE_NOTE = ("Rows with `init=he` start from random weights: their frozen stages are random features, "
           "which with a trained head separate a few hundred images surprisingly well, so they are a "
           "strong baseline, not a floor; a source model has to beat them to have transferred.")

__all__ = ["BASELINE", "SWEEPS_ROOT", "Paired", "ReportResult", "Row", "build_report",
           "latest_sweep", "paired"]


@dataclass
class ReportResult:
    sweep_dir: Path
    monitor: str
    mode: str
    common: dict[str, str]
    rows: list[Row]
    problems: list[Job]
    markdown: str
    files: list[Path]
    selected: list[Row] = field(default_factory=list)  # with `compare`: one row per compared value


def build_report(sweep_dir: Path, plots: bool = True, baseline: tuple[str, str] = BASELINE,
                 compare: tuple[str, ...] = ()) -> ReportResult:
    """Reads the sweep, writes report.csv, report.md and (unless plots=False) the PNGs into it.
    `compare`: keys whose configurations are compared each at its own selected setting
    (`transferlab.report.select`), in a section of report.md and selected.csv of their own."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} does not exist")
    jobs, common = read_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} has no job dirs (subdirs with .hydra/)")
    monitors = Counter(j.summary["monitor"] for j in jobs if j.summary.get("monitor"))
    if not monitors:
        monitors["val/acc"] += 1  # no job recorded one: nothing to rank, only problems to list
    monitor = monitors.most_common(1)[0][0]
    mode = monitor_mode(jobs, monitor)

    rows = summarise(jobs, monitor)
    kind = compared_kind(rows, monitor)
    rows = sort_rows(rows, mode, kind)
    mark_baselines(rows, kind, monitor, baseline)
    verdict = compare_with_top(rows, kind, monitor, mode)
    problems = [j for j in jobs if not j.ok]
    notes = [f"Common to all jobs: `{_name(common)}`."] if common else []
    if any(r.setting("init") == "he" for r in rows):
        notes.append(HE_NOTE)
    if len(monitors) > 1:
        notes.append(f"**Warning:** the jobs monitor different metrics {dict(monitors)}; "
                     f"their `best` values are not comparable.")
    markdown = to_markdown(sweep_dir, rows, problems, monitor, mode, notes, kind, verdict, baseline)
    files = [sweep_dir / "report.csv", sweep_dir / "report.md"]
    selected = []
    if compare:
        selected, section = compare_selected(rows, tuple(compare), monitor, mode, baseline)
        markdown += section
        write_csv(selected, monitor, sweep_dir / "selected.csv")
        files.append(sweep_dir / "selected.csv")

    plot_fns = {"curves.png": plot_curves, "best.png": partial(plot_best, kind=kind),
                "tradeoff.png": plot_tradeoff}
    if plots:
        for name, plot in plot_fns.items():
            plot(rows, monitor, sweep_dir / name)
            files.append(sweep_dir / name)
        markdown += "\n" + "\n".join(f"![{n[:-4]}]({n})" for n in plot_fns) + "\n"
    write_csv(rows, monitor, files[0])
    files[1].write_text(markdown)
    return ReportResult(sweep_dir, monitor, mode, common, rows, problems, markdown, files, selected)


