"""The jobs of a sweep, each read from its `summary.json` alone: how the run was asked for, from
its first moment, and how it went. Jobs that differ only in `seed` and `data.fold` (the
replicate) form one configuration."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.summary import test_metric

SWEEPS_ROOT = Path("outputs/multirun")
REPLICATE_KEYS = ("seed", "data.fold")  # jobs differing only in these repeat one configuration


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
        key = key.lstrip("+")  # `+piece=x` (a key the config lacks) is compared as piece=x
        if key.lstrip("~") in REPLICATE_KEYS:
            replicate[key.lstrip("~")] = value
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


