"""`transferlab-report --compare KEY[,KEY...]`: each compared configuration (a strategy) at its
own selected setting. A sweep that varies tuning keys (the LR, the weight decay, ...) inside each
compared configuration gets, per value of the compared keys, the setting with the best mean of the
val monitor over the replicates; the selected rows are then compared on test at the checkpoint val
chose, with the paired statistics of the full table. Selection reads val only."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from transferlab.report.jobs import _name
from transferlab.report.stats import CONFIDENCE
from transferlab.report.table import (
    BASELINE,
    Row,
    _cell,
    _fmt,
    _spread_cell,
    compare_with_top,
    compared_kind,
    mark_baselines,
    sort_rows,
)
from transferlab.summary import test_metric


def select(rows: list[Row], keys: tuple[str, ...], mode: str) -> list[Row]:
    """Per value of `keys`, the row with the best mean val monitor at its best epoch (ties: the
    first by name), as a row named by those keys alone, saying what it was selected from."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        if row.best_mean is not None:
            groups[tuple(row.setting(k) for k in keys)].append(row)
    sign = -1 if mode == "max" else 1
    # What every job shares (the experiment, a source's path) is no part of a selected setting.
    names = {k for row in rows for k in row.settings}
    varying = {k for k in names if len({row.settings.get(k) for row in rows}) > 1}
    chosen = []
    for values, candidates in groups.items():
        best = min(candidates, key=lambda r: (sign * r.best_mean, r.configuration))
        compared = dict(zip(keys, values))
        tuning = {k: v for k, v in best.settings.items() if k not in keys and k in varying}
        chosen.append(dataclasses.replace(
            best, configuration=_name(compared), settings=compared, selected=_name(tuning) or "-",
            candidates=len(candidates), is_baseline=False, baseline=None, diff=None,
            vs_baseline=None, vs_top=None))
    return chosen


def compare_selected(rows: list[Row], keys: tuple[str, ...], monitor: str, mode: str,
                     baseline: tuple[str, str] = BASELINE) -> tuple[list[Row], str]:
    """The selected rows, ranked and compared (on test when every run has it), and their section
    of report.md."""
    selected = select(rows, keys, mode)
    kind = compared_kind(selected, monitor)
    selected = sort_rows(selected, mode, kind)
    mark_baselines(selected, kind, monitor, baseline)
    verdict = compare_with_top(selected, kind, monitor, mode)
    return selected, selection_markdown(selected, keys, monitor, mode, kind, verdict, baseline)


def selection_markdown(rows: list[Row], keys: tuple[str, ...], monitor: str, mode: str, kind: str,
                       verdict: str, baseline: tuple[str, str]) -> str:
    what = ", ".join(keys)
    judged = (f"then compared on {test_metric(monitor)}, the held-out test split, at the checkpoint "
              "val chose in the selected setting's runs" if kind == "test" else
              f"then compared on the same best {monitor}: **there is no test split, so this "
              "comparison is optimistic** (the setting and the epoch were both picked on val)")
    key, value = baseline
    compared = any(r.baseline is not None for r in rows)
    lines = ["", f"## Each {what} at its own selected setting", "",
             f"Per {what}, the setting with the best mean {monitor} over the replicates was selected "
             f"on val only, {judged}."]
    header = [what, "selected setting", "of", "n", f"best {monitor} (mean ± std)",
              f"{test_metric(monitor)} (mean ± std)"]
    if compared:
        header += [f"Δ vs {key}={value}", f"{CONFIDENCE:.0%} CI", "p", "verdict"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in rows:
        cells = [_cell(r.configuration) + (" **(baseline)**" if r.is_baseline else ""),
                 _cell(r.selected or ""), str(r.candidates), str(len(r.ok_jobs)),
                 _spread_cell(r.best_mean, r.best_std), _spread_cell(r.test_mean, r.test_std)]
        if compared:
            pair = r.vs_baseline
            ci = f"[{pair.low:+.4f}, {pair.high:+.4f}]" if pair and pair.low is not None else ""
            cells += [_fmt(r.diff, "+.4f"), ci, _fmt(pair.p if pair else None, ".3f"),
                      pair.verdict(mode) if pair and pair.mean is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if verdict:
        lines += ["", verdict]
    return "\n".join(lines) + "\n"
