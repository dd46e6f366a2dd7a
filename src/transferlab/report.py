"""`transferlab-report`: one table and three plots for a Hydra multirun sweep of transferlab-train.

Every job of the sweep is read from its `.hydra/` files and `summary.json`; jobs that differ only
in `seed` form one configuration. Jobs that failed, never finished or never started are listed,
not dropped, so a half-broken sweep still gives an honest report.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import OmegaConf

SWEEPS_ROOT = Path("outputs/multirun")
BASELINE = ("init", "he")


@dataclass
class Job:
    path: Path
    settings: dict[str, str]  # overrides without seed, else the init/freeze/backbone choices
    status: str  # completed | failed | unfinished | missing | unreadable | whatever the file said
    error: str | None
    summary: dict
    configuration: str = ""  # named once all jobs are known, see read_jobs
    init: str | None = None  # the init choice, overridden or Hydra's default; None: unknown

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.error is None


@dataclass
class Row:
    configuration: str
    settings: dict[str, str]
    jobs: list[Job]
    best_mean: float | None = None
    best_std: float | None = None
    best_epoch_mean: float | None = None
    time_per_epoch_s: float | None = None
    time_total_s: float | None = None
    params_trainable: int | None = None
    params_total: int | None = None
    peak_memory: dict[str, float] = field(default_factory=dict)
    init: str | None = None
    is_baseline: bool = False  # some other row is compared with this (He) row
    baseline: str | None = None  # the He row this row is compared with
    diff: float | None = None

    @property
    def ok_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.ok]

    @property
    def n_unfinished(self) -> int:
        return sum(j.status in ("unfinished", "missing") for j in self.jobs)

    @property
    def n_failed(self) -> int:
        return len(self.jobs) - len(self.ok_jobs) - self.n_unfinished


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


def monitor_mode(jobs: list[Job], monitor: str) -> str:
    """As the runs recorded it (summary.json's monitor_mode); older summaries lack it, and then a
    loss is taken to be minimised and anything else maximised."""
    recorded = {j.summary["monitor_mode"] for j in jobs
                if j.summary.get("monitor") == monitor and j.summary.get("monitor_mode")}
    if len(recorded) == 1:
        return recorded.pop()
    return "min" if "loss" in monitor.lower() else "max"


def latest_sweep(root: Path = SWEEPS_ROOT) -> Path:
    # Hydra names sweeps <date>/<time> with zero-padded fields, so name order is time order.
    sweeps = sorted(p for p in root.glob("*/*") if p.is_dir())
    if not sweeps:
        raise FileNotFoundError(f"no sweep found under {root.resolve()}; pass SWEEP_DIR explicitly")
    return sweeps[-1]


def _yaml(path: Path):
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a missing or damaged .hydra file costs the job its name, not the report
        return None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _choices(path: Path) -> dict:
    """Hydra's config-group choices of the job (init, freeze, ...), overridden or default."""
    hydra = (_yaml(path / ".hydra/hydra.yaml") or {}).get("hydra") or {}
    return (hydra.get("runtime") or {}).get("choices") or {}


def read_job(path: Path) -> Job:
    overrides = _yaml(path / ".hydra/overrides.yaml") or []
    settings = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") != "seed":
            settings[key] = value
    choices = _choices(path)
    if not settings:
        # A job with only a seed override is the defaults; name it by what those defaults are.
        settings = {k: str(choices[k]) for k in ("init", "freeze", "backbone") if k in choices}
    init = settings.get("init", choices.get("init"))
    init = None if init is None else str(init)

    summary_path = path / "summary.json"
    if not summary_path.is_file():
        return Job(path, settings, "missing", "no summary.json (job never started)", {}, init=init)
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as err:
        return Job(path, settings, "unreadable", f"summary.json: {err}", {}, init=init)
    status, error = str(summary.get("status")), summary.get("error")
    if status == "running":
        # Nothing is left running when the report is made, so a `running` job was killed.
        status = "unfinished"
        error = error or f"stopped after {summary.get('epochs_completed', 0)} epoch(s)"
    elif status == "completed" and _number(summary.get("best")) is None:
        error = error or f"no value of {summary.get('monitor') or 'the monitor'} was recorded"
    return Job(path, settings, status, error, summary, init=init)


def _name(settings: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def read_jobs(sweep_dir: Path) -> tuple[list[Job], dict[str, str]]:
    """The jobs in Hydra's order and the settings they all share."""
    dirs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()]
    dirs.sort(key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    jobs = [read_job(p) for p in dirs]
    # Overrides that every job shares (data.root=..., trainer.max_epochs=...) do not tell
    # configurations apart; names leave them out and the report states them once.
    common = dict(set.intersection(*(set(j.settings.items()) for j in jobs))) if jobs else {}
    for job in jobs:
        varying = {k: v for k, v in job.settings.items() if k not in common}
        job.configuration = _name(varying or job.settings) or "(defaults)"
    return jobs, common


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(jobs: list[Job]) -> list[Row]:
    groups: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        groups[job.configuration].append(job)
    rows = []
    for name, group in groups.items():
        row = Row(name, group[0].settings, group, init=group[0].init)
        ok = row.ok_jobs
        bests = [float(j.summary["best"]) for j in ok]
        if bests:
            row.best_mean = float(np.mean(bests))
            row.best_std = float(np.std(bests, ddof=1)) if len(bests) > 1 else None
        row.best_epoch_mean = _mean(_number(j.summary.get("best_epoch")) for j in ok)
        row.time_per_epoch_s = _mean(_number(j.summary.get("time_per_epoch_s")) for j in ok)
        row.time_total_s = _mean(_number(j.summary.get("time_total_s")) for j in ok)
        # Parameter counts depend on the configuration only, so a failed job's count is as good.
        for job in group:
            if row.params_total is None and job.summary.get("params_total") is not None:
                row.params_trainable = job.summary.get("params_trainable")
                row.params_total = job.summary.get("params_total")
            for kind, mb in (job.summary.get("peak_memory") or {}).items():
                if _number(mb) is not None:
                    row.peak_memory[kind] = max(row.peak_memory.get(kind, 0.0), float(mb))
        rows.append(row)
    return rows


def sort_rows(rows: list[Row], mode: str) -> list[Row]:
    sign = -1 if mode == "max" else 1
    # Rows without a result (every job failed) go last, still in name order.
    return sorted(
        rows, key=lambda r: (r.best_mean is None, sign * (r.best_mean or 0), r.configuration)
    )


def mark_baselines(rows: list[Row]) -> None:
    """Compares every non-He row with a He row; a He row is a baseline only if one is compared
    with it. A sweep without both (all He, or init never He) has no baselines and no Δ."""
    key, value = BASELINE
    he = [r for r in rows if r.init == value]
    # A row whose init is unknown (damaged .hydra files) might be He itself: leave it out.
    others = [r for r in rows if r.init is not None and r.init != value]
    if not he or not others:
        return
    # With several He rows, compare against the one with results that shares most of the
    # other settings; max keeps the first, i.e. best-ranked, of equally close ones.
    candidates = [b for b in he if b.best_mean is not None] or he
    for row in others:
        base = max(candidates, key=lambda b: sum(
            b.settings.get(k) == v for k, v in row.settings.items() if k != key))
        base.is_baseline = True
        row.baseline = base.configuration
        if row.best_mean is not None and base.best_mean is not None:
            row.diff = row.best_mean - base.best_mean


def _fmt(value, spec: str = ".4f") -> str:
    return "" if value is None else format(value, spec)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n:,}"


def write_csv(rows: list[Row], monitor: str, path: Path) -> None:
    records = []
    for r in rows:
        values = {
            "configuration": r.configuration, "is_baseline": int(r.is_baseline),
            "n_seeds": len(r.ok_jobs), "n_failed": r.n_failed, "n_unfinished": r.n_unfinished,
            "monitor": monitor, "best_mean": r.best_mean, "best_std": r.best_std,
            "diff_vs_baseline": r.diff, "baseline": r.baseline,
            "best_epoch_mean": r.best_epoch_mean, "time_per_epoch_s": r.time_per_epoch_s,
            "time_total_s": r.time_total_s, "params_trainable": r.params_trainable,
            "params_total": r.params_total, "peak_cpu_rss_mb": r.peak_memory.get("cpu_rss_mb"),
            "peak_gpu_mb": r.peak_memory.get("gpu_mb"),
        }
        records.append({k: "" if v is None else v for k, v in values.items()})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def to_markdown(sweep_dir: Path, rows: list[Row], problems: list[Job], monitor: str, mode: str,
                notes: list[str]) -> str:
    n_jobs = sum(len(r.jobs) for r in rows)
    direction = "higher" if mode == "max" else "lower"
    # Δ only means something when some row is compared with a He row (see mark_baselines).
    compared = any(r.baseline is not None for r in rows)
    lines = [
        f"# Sweep report: {sweep_dir}", "",
        f"Monitor `{monitor}` ({direction} is better). {n_jobs} jobs, "
        f"{n_jobs - len(problems)} completed, {len(problems)} failed or unfinished.",
        "n counts completed seeds." + (
            " Baseline rows use He init (`init=he`); Δ is a row's mean best minus its baseline's."
            if compared else ""),
        *notes, "",
        f"| configuration | n | best {monitor} (mean ± std) |"
        + (" Δ vs He |" if compared else "")
        + " best epoch | s/epoch | total s | params trainable / total | peak memory MB |",
        "|---|---:|---:|" + ("---:|" if compared else "") + "---:|---:|---:|---:|---|",
    ]
    for r in rows:
        name = _cell(r.configuration) + (" **(baseline)**" if r.is_baseline else "")
        best = _fmt(r.best_mean) + (f" ± {r.best_std:.4f}" if r.best_std is not None else "")
        params = (
            f"{_count(r.params_trainable)} / {_count(r.params_total)}" if r.params_total else ""
        )
        memory = ", ".join(f"{k.removesuffix('_mb').removesuffix('_rss')} {v:.0f}"
                           for k, v in sorted(r.peak_memory.items()))
        n = len(r.ok_jobs)
        seeds = str(n) if n == len(r.jobs) else f"{n} of {len(r.jobs)}"
        diff = f" {_fmt(r.diff, '+.4f')} |" if compared else ""
        lines.append(
            f"| {name} | {seeds} | {best} |{diff} "
            f"{_fmt(r.best_epoch_mean, '.1f')} | {_fmt(r.time_per_epoch_s, '.2f')} | "
            f"{_fmt(r.time_total_s, '.1f')} | {params} | {memory} |"
        )
    if problems:
        lines += ["", "## Failed or unfinished jobs", "",
                  "| job | configuration | status | error |", "|---|---|---|---|"]
        for job in problems:
            lines.append(f"| {job.path.name} | {_cell(job.configuration)} | {job.status} "
                         f"| {_cell(job.error or '')} |")
    return "\n".join(lines) + "\n"


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
    tag = " (He baseline)" if row.is_baseline else ""
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


def plot_best(rows: list[Row], monitor: str, path: Path) -> None:
    done = [r for r in rows if r.best_mean is not None]
    labels = [_label(r.configuration, 50) for r in done]
    # Room for every line of the wrapped names, so long ones do not run into each other.
    n_lines = sum(label.count("\n") + 1 for label in labels)
    fig = Figure(figsize=(9, 1.5 + 0.3 * max(len(done), 1) + 0.15 * n_lines))
    ax = fig.add_subplot()
    y = np.arange(len(done))
    ax.barh(y, [r.best_mean for r in done], xerr=[r.best_std or 0 for r in done], capsize=3,
            color=["tab:orange" if r.is_baseline else "tab:blue" for r in done])
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()  # best row on top, as in the table
    ax.grid(axis="x", alpha=0.3)
    key = "; orange: He baseline" if any(r.is_baseline for r in done) else ""
    ax.set(xlabel=f"best {monitor} (mean ± std{key})", title="best per configuration")
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


def build_report(sweep_dir: Path, plots: bool = True) -> ReportResult:
    """Reads the sweep, writes report.csv, report.md and (unless plots=False) the PNGs into it."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} does not exist")
    jobs, common = read_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} has no job dirs (subdirs with .hydra/)")
    monitors = Counter(j.summary["monitor"] for j in jobs if j.summary.get("monitor"))
    if not monitors:
        config = _yaml(jobs[0].path / ".hydra/config.yaml") or {}
        monitors[str(config.get("monitor", "val/acc"))] += 1
    monitor = monitors.most_common(1)[0][0]
    mode = monitor_mode(jobs, monitor)

    rows = sort_rows(summarise(jobs), mode)
    mark_baselines(rows)
    problems = [j for j in jobs if not j.ok]
    notes = [f"Common to all jobs: `{_name(common)}`."] if common else []
    if len(monitors) > 1:
        notes.append(f"**Warning:** the jobs monitor different metrics {dict(monitors)}; "
                     f"their `best` values are not comparable.")
    markdown = to_markdown(sweep_dir, rows, problems, monitor, mode, notes)

    files = [sweep_dir / "report.csv", sweep_dir / "report.md"]
    plot_fns = {"curves.png": plot_curves, "best.png": plot_best, "tradeoff.png": plot_tradeoff}
    if plots:
        for name, plot in plot_fns.items():
            plot(rows, monitor, sweep_dir / name)
            files.append(sweep_dir / name)
        markdown += "\n" + "\n".join(f"![{n[:-4]}]({n})" for n in plot_fns) + "\n"
    write_csv(rows, monitor, files[0])
    files[1].write_text(markdown)
    return ReportResult(sweep_dir, monitor, mode, common, rows, problems, markdown, files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transferlab-report",
        description="Summarise a Hydra multirun sweep of transferlab-train.",
    )
    parser.add_argument("sweep_dir", nargs="?", type=Path,
                        help=f"sweep folder (default: the latest under {SWEEPS_ROOT}/)")
    args = parser.parse_args(argv)
    try:
        result = build_report(args.sweep_dir or latest_sweep())
    except FileNotFoundError as err:
        print(f"transferlab-report: {err}", file=sys.stderr)
        return 2
    print(result.markdown)
    print(f"wrote {', '.join(str(p) for p in result.files)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
