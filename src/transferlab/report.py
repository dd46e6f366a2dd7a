"""`transferlab-report`: one table and three plots for a Hydra multirun sweep of transferlab-train.

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

import argparse
import csv
import json
import math
import sys
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from scipy import stats
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

SWEEPS_ROOT = Path("outputs/multirun")
BASELINE = ("init", "he")  # --baseline KEY=VALUE changes it
REPLICATE_KEYS = ("seed", "data.fold")  # jobs differing only in these repeat one configuration
CONFIDENCE = 0.95


@dataclass
class Job:
    path: Path
    settings: dict[str, str]  # overrides without seed, else the init/freeze/backbone choices
    status: str  # completed | failed | unfinished | missing | unreadable | whatever the file said
    error: str | None
    summary: dict
    configuration: str = ""  # named once all jobs are known, see read_jobs
    init: str | None = None  # the init choice, overridden or Hydra's default; None: unknown
    choices: dict[str, str] = field(default_factory=dict)  # Hydra's group choices
    replicate: tuple = ()  # (seed, fold) as overridden: pairs it with other rows' jobs

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.error is None

    def value(self, kind: str, monitor: str) -> float | None:
        """`best`: the monitor at the best epoch; `last`: at the last epoch; `test`: the monitor's
        test metric (val/acc -> test/acc) at the selected checkpoint."""
        if kind == "best":
            return _number(self.summary.get("best"))
        if kind == "last":
            history = [h for h in self.summary.get("history") or [] if monitor in h]
            return _number(history[-1][monitor]) if history else None
        metrics = (self.summary.get("test") or {}).get("metrics") or {}
        return _number(metrics.get(test_metric(monitor)))


def test_metric(monitor: str) -> str:
    return "test/" + monitor.split("/", 1)[-1]


@dataclass
class Paired:
    """A mean paired difference over n replicates, its 95 % t-interval and paired t-test p-value
    (None below two pairs; a zero spread gives the point as interval and no p-value)."""

    n: int
    mean: float | None
    low: float | None = None
    high: float | None = None
    p: float | None = None

    def verdict(self, mode: str) -> str:
        if self.low is None:
            return "not distinguishable at this n"
        better = self.low > 0 if mode == "max" else self.high < 0
        worse = self.high < 0 if mode == "max" else self.low > 0
        return "better" if better else "worse" if worse else "not distinguishable at this n"


def paired(diffs: list[float]) -> Paired:
    n = len(diffs)
    if n == 0:
        return Paired(0, None)
    mean = float(np.mean(diffs))
    if n < 2:
        return Paired(n, mean)
    se = float(np.std(diffs, ddof=1)) / math.sqrt(n)
    if se == 0:
        return Paired(n, mean, mean, mean)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    return Paired(n, mean, mean - half, mean + half, p)


def paired_difference(a: list[Job], b: list[Job], kind: str, monitor: str) -> Paired:
    """a minus b over the replicates (seed, fold) both completed with a value."""
    b_by = {j.replicate: j.value(kind, monitor) for j in b if j.ok}
    diffs = [va - b_by[j.replicate] for j in a if j.ok
             for va in [j.value(kind, monitor)]
             if va is not None and b_by.get(j.replicate) is not None]
    return paired(diffs)


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
    choices: dict[str, str] = field(default_factory=dict)
    last_mean: float | None = None
    last_std: float | None = None
    test_mean: float | None = None
    test_std: float | None = None
    is_baseline: bool = False  # some other row is compared with this row
    baseline: str | None = None  # the baseline row this row is compared with
    diff: float | None = None  # mean paired difference to the baseline (compared metric)
    vs_baseline: Paired | None = None
    vs_top: Paired | None = None  # the top row minus this row, paired

    def values(self, kind: str, monitor: str) -> list[float]:
        found = (j.value(kind, monitor) for j in self.ok_jobs)
        return [v for v in found if v is not None]

    def setting(self, key: str) -> str | None:
        """The row's value of `key`: an override, else the group choice (init=he by default)."""
        value = self.settings.get(key, self.choices.get(key))
        return None if value is None else str(value)

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


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_job(path: Path) -> Job:
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        return Job(path, {}, "missing", "no summary.json (job never started)", {})
    try:
        summary = json.loads(summary_path.read_text())
        overrides, choices = list(summary.get("overrides") or []), dict(summary.get("choices") or {})
    except (OSError, ValueError, TypeError) as err:
        return Job(path, {}, "unreadable", f"summary.json: {err}", {})
    settings, replicate = {}, dict.fromkeys(REPLICATE_KEYS)
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") in REPLICATE_KEYS:
            replicate[key.lstrip("+~")] = value
        else:
            settings[key] = value
    if not settings:
        # A job with only a seed override is the defaults; name it by what those defaults are.
        settings = {k: str(choices[k]) for k in ("init", "freeze", "backbone") if k in choices}
    init = settings.get("init", choices.get("init"))
    job_args = {"init": None if init is None else str(init),
                "choices": {k: str(v) for k, v in choices.items()},
                "replicate": tuple(replicate.values())}
    status, error = str(summary.get("status")), summary.get("error")
    if status == "running":
        # Nothing is left running when the report is made, so a `running` job was killed.
        status = "unfinished"
        error = error or f"stopped after {summary.get('epochs_completed', 0)} epoch(s)"
    elif status == "completed" and _number(summary.get("best")) is None:
        error = error or f"no value of {summary.get('monitor') or 'the monitor'} was recorded"
    return Job(path, settings, status, error, summary, **job_args)


def _name(settings: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def read_jobs(sweep_dir: Path) -> tuple[list[Job], dict[str, str]]:
    """The jobs in Hydra's order and the settings they all share."""
    # Hydra makes .hydra/ in every job dir before the job starts: it marks the jobs, even those
    # that never wrote a summary.json.
    dirs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir() or (p / "summary.json").is_file()]
    dirs.sort(key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    jobs = [read_job(p) for p in dirs]
    # Overrides that every job shares (data.root=..., trainer.max_epochs=...) do not tell
    # configurations apart; names leave them out and the report states them once. A job without
    # a readable summary.json has no settings to compare, and is named by its dir.
    named = [j for j in jobs if j.settings]
    common = dict(set.intersection(*(set(j.settings.items()) for j in named))) if named else {}
    for job in jobs:
        varying = {k: v for k, v in job.settings.items() if k not in common}
        job.configuration = _name(varying or job.settings) or f"(job {job.path.name})"
    return jobs, common


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (None for fewer than two values)."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarise(jobs: list[Job], monitor: str) -> list[Row]:
    groups: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        groups[job.configuration].append(job)
    rows = []
    for name, group in groups.items():
        row = Row(name, group[0].settings, group, init=group[0].init, choices=group[0].choices)
        ok = row.ok_jobs
        row.best_mean, row.best_std = _spread(row.values("best", monitor))
        row.last_mean, row.last_std = _spread(row.values("last", monitor))
        row.test_mean, row.test_std = _spread(row.values("test", monitor))
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


def compared_kind(rows: list[Row], monitor: str) -> str:
    """What rows are ranked and compared on: test at the selected checkpoint when every completed
    run has it (held out from selection), else the monitor at the best epoch."""
    ok = [j for r in rows for j in r.ok_jobs]
    return "test" if ok and all(j.value("test", monitor) is not None for j in ok) else "best"


def mean_of(row: Row, kind: str) -> float | None:
    return {"best": row.best_mean, "last": row.last_mean, "test": row.test_mean}[kind]


def sort_rows(rows: list[Row], mode: str, kind: str = "best") -> list[Row]:
    sign = -1 if mode == "max" else 1
    # Rows without a result (every job failed) go last, still in name order.
    return sorted(rows, key=lambda r: (mean_of(r, kind) is None, sign * (mean_of(r, kind) or 0),
                                       r.configuration))


def mark_baselines(rows: list[Row], kind: str = "best", monitor: str = "",
                   baseline: tuple[str, str] = BASELINE) -> None:
    """Compares every row whose `baseline` key differs with a row that has the baseline value
    (default init=he); such a row is a baseline only if one is compared with it. A sweep without
    both kinds of row has no baselines and no Δ."""
    key, value = baseline
    bases = [r for r in rows if r.setting(key) == value]
    # A row whose value is unknown (no readable summary.json) might be a baseline itself: leave it out.
    others = [r for r in rows if r.setting(key) is not None and r.setting(key) != value]
    if not bases or not others:
        return
    # With several baseline rows, compare against the one with results that shares most of the
    # other settings (He init with the same freeze strategy); max keeps the first, i.e.
    # best-ranked, of equally close ones.
    candidates = [b for b in bases if mean_of(b, kind) is not None] or bases
    for row in others:
        base = max(candidates, key=lambda b: sum(
            b.settings.get(k) == v for k, v in row.settings.items() if k != key))
        base.is_baseline = True
        row.baseline = base.configuration
        row.vs_baseline = paired_difference(row.jobs, base.jobs, kind, monitor)
        row.diff = row.vs_baseline.mean


def compare_with_top(rows: list[Row], kind: str, monitor: str, mode: str) -> str:
    """The sentence under the table: the top row is named the winner only when its paired
    interval against every other row excludes zero in its favour; else the rows it cannot be told
    from are named as tied at this n."""
    done = [r for r in rows if mean_of(r, kind) is not None]
    if len(done) < 2:
        return ""
    top = done[0]
    tied = []
    for row in done[1:]:
        row.vs_top = paired_difference(top.jobs, row.jobs, kind, monitor)
        if row.vs_top.verdict(mode) != "better":
            tied.append(row)
    what = test_metric(monitor) if kind == "test" else f"best {monitor}"
    if not tied:
        runner = done[1].vs_top
        return (f"**Winner: {top.configuration}** on {what}: its paired {CONFIDENCE:.0%} interval "
                f"excludes every other row (vs the runner-up {done[1].configuration}: "
                f"{runner.mean:+.4f} [{runner.low:+.4f}, {runner.high:+.4f}], n={runner.n}).")
    names = ", ".join(r.configuration for r in [top, *tied])
    details = "; ".join(f"{r.configuration}: {_interval(r.vs_top)}" for r in tied)
    return (f"**Tied at this n** on {what}: {names}. The top row's paired difference to each "
            f"({CONFIDENCE:.0%} interval) includes zero or has too few matched runs: {details}.")


def _interval(pair: Paired | None) -> str:
    if pair is None or pair.mean is None:
        return "no matched runs"
    if pair.low is None:
        return f"{pair.mean:+.4f}, n={pair.n}: no interval"
    return f"{pair.mean:+.4f} [{pair.low:+.4f}, {pair.high:+.4f}], n={pair.n}"


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
        pair = r.vs_baseline or Paired(0, None)
        values = {
            "configuration": r.configuration, "is_baseline": int(r.is_baseline),
            "n_seeds": len(r.ok_jobs), "n_failed": r.n_failed, "n_unfinished": r.n_unfinished,
            "monitor": monitor, "best_mean": r.best_mean, "best_std": r.best_std,
            "last_mean": r.last_mean, "last_std": r.last_std,
            "test_metric": test_metric(monitor) if r.test_mean is not None else None,
            "test_mean": r.test_mean, "test_std": r.test_std,
            "diff_vs_baseline": r.diff, "baseline": r.baseline, "n_pairs": pair.n or None,
            "diff_ci_low": pair.low, "diff_ci_high": pair.high, "diff_p_value": pair.p,
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


def _spread_cell(mean: float | None, std: float | None) -> str:
    return _fmt(mean) + (f" ± {std:.4f}" if std is not None else "")


def to_markdown(sweep_dir: Path, rows: list[Row], problems: list[Job], monitor: str, mode: str,
                notes: list[str], kind: str = "best", verdict: str = "",
                baseline: tuple[str, str] = BASELINE) -> str:
    n_jobs = sum(len(r.jobs) for r in rows)
    direction = "higher" if mode == "max" else "lower"
    # Δ only means something when some row is compared with a baseline row (see mark_baselines).
    compared = any(r.baseline is not None for r in rows)
    tested = any(r.test_mean is not None for r in rows)
    what = test_metric(monitor) if kind == "test" else f"best {monitor}"
    key, value = baseline
    lines = [
        f"# Sweep report: {sweep_dir}", "",
        f"Monitor `{monitor}` ({direction} is better). {n_jobs} jobs, "
        f"{n_jobs - len(problems)} completed, {len(problems)} failed or unfinished.",
        "n counts completed runs (seeds and folds). Best is the monitor at the epoch it picked, so "
        "it flatters every row; last is the final epoch"
        + ("; test is the held-out split at the checkpoint val picked." if tested else ".")
        + f" Rows are ranked and compared on {what}.",
        *([f"Baseline rows have `{key}={value}`; Δ is a row's mean paired difference to its "
           f"baseline over the replicates both completed, with its {CONFIDENCE:.0%} t-interval "
           "and paired t-test p."] if compared else []),
        *notes, "",
    ]
    header = ["configuration", "n", f"best {monitor} (mean ± std)", f"last {monitor}"]
    align = ["---", "---:", "---:", "---:"]
    if tested:
        header.append(f"{test_metric(monitor)} (selected checkpoint)")
        align.append("---:")
    if compared:
        header += [f"Δ vs {key}={value}", f"{CONFIDENCE:.0%} CI", "p", "verdict"]
        align += ["---:", "---:", "---:", "---"]
    header += ["best epoch", "s/epoch", "total s", "params trainable / total", "peak memory MB"]
    align += ["---:", "---:", "---:", "---:", "---"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        name = _cell(r.configuration) + (" **(baseline)**" if r.is_baseline else "")
        params = (
            f"{_count(r.params_trainable)} / {_count(r.params_total)}" if r.params_total else ""
        )
        memory = ", ".join(f"{k.removesuffix('_mb').removesuffix('_rss')} {v:.0f}"
                           for k, v in sorted(r.peak_memory.items()))
        n = len(r.ok_jobs)
        cells = [name, str(n) if n == len(r.jobs) else f"{n} of {len(r.jobs)}",
                 _spread_cell(r.best_mean, r.best_std), _spread_cell(r.last_mean, r.last_std)]
        if tested:
            cells.append(_spread_cell(r.test_mean, r.test_std))
        if compared:
            pair = r.vs_baseline
            ci = f"[{pair.low:+.4f}, {pair.high:+.4f}]" if pair and pair.low is not None else ""
            cells += [_fmt(r.diff, "+.4f"), ci, _fmt(pair.p if pair else None, ".3f"),
                      pair.verdict(mode) if pair and pair.mean is not None else ""]
        cells += [_fmt(r.best_epoch_mean, ".1f"), _fmt(r.time_per_epoch_s, ".2f"),
                  _fmt(r.time_total_s, ".1f"), params, memory]
        lines.append("| " + " | ".join(cells) + " |")
    if verdict:
        lines += ["", verdict]
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


def build_report(sweep_dir: Path, plots: bool = True,
                 baseline: tuple[str, str] = BASELINE) -> ReportResult:
    """Reads the sweep, writes report.csv, report.md and (unless plots=False) the PNGs into it."""
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
    if len(monitors) > 1:
        notes.append(f"**Warning:** the jobs monitor different metrics {dict(monitors)}; "
                     f"their `best` values are not comparable.")
    markdown = to_markdown(sweep_dir, rows, problems, monitor, mode, notes, kind, verdict, baseline)

    files = [sweep_dir / "report.csv", sweep_dir / "report.md"]
    plot_fns = {"curves.png": plot_curves, "best.png": partial(plot_best, kind=kind),
                "tradeoff.png": plot_tradeoff}
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
    parser.add_argument("--baseline", default="=".join(BASELINE), metavar="KEY=VALUE",
                        help="the rows others are compared with, e.g. init=he (default) or "
                             "freeze=full; each row gets the closest one")
    args = parser.parse_args(argv)
    key, sep, value = args.baseline.partition("=")
    if not (key and sep and value):
        parser.error(f"--baseline={args.baseline}: expected KEY=VALUE, e.g. init=he")
    try:
        result = build_report(args.sweep_dir or latest_sweep(), baseline=(key, value))
    except FileNotFoundError as err:
        print(f"transferlab-report: {err}", file=sys.stderr)
        return 2
    print(result.markdown)
    print(f"wrote {', '.join(str(p) for p in result.files)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
