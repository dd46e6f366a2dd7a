"""The report's rows (one per configuration), how they are ranked and compared, and the table
as Markdown and CSV."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab.report.jobs import Job, _number
from transferlab.report.stats import CONFIDENCE, Paired, paired_difference
from transferlab.summary import test_metric

BASELINE = ("init", "he")  # --baseline KEY=VALUE changes it


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
    selected: str | None = None  # `--compare`: the tuning settings this row won its group with
    candidates: int = 0  # `--compare`: how many configurations it was selected from

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
    names = "; ".join(r.configuration for r in [top, *tied])
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
        if r.selected is not None:
            values |= {"selected_setting": r.selected, "selected_of": r.candidates}
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


