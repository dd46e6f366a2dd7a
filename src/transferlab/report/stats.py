"""Paired statistics over replicates: the mean paired difference, its t-interval, the paired
t-test, and the verdict they allow."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from transferlab.report.jobs import Job

CONFIDENCE = 0.95


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


