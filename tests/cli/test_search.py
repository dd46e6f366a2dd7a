"""-m hparams_search=lr_wd: Hydra's Optuna sweeper runs ordinary jobs, keeps its study in the sweep
dir, continues it when the same command runs again, and optimises the val monitor."""

import json

import pytest

from tests.support.cli import TINY, console, run_cli
from transferlab.report import build_report

pytestmark = pytest.mark.cli  # runs the installed commands, as a user would
optuna = pytest.importorskip("optuna")


def test_a_search_keeps_its_study_and_continues_it(image_folder, tmp_path):
    args = ["-m", "hparams_search=lr_wd", "hydra.sweeper.n_trials=1", *TINY, "logger=none",
            f"data.root={image_folder}", "data.image_size=32"]
    for _ in range(2):
        result = run_cli("transferlab-train", *args, cwd=tmp_path)
        assert result.returncode == 0, console(result)[-3000:]
    sweep = tmp_path / "outputs" / "search" / "lr_wd"
    study = optuna.load_study(study_name="lr_wd", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert len(study.trials) == 2 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    jobs = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert len(jobs) == 2, "the second run overwrote the first's job"
    for trial, job in zip(study.trials, jobs):
        summary = json.loads((job / "summary.json").read_text())
        assert trial.value == summary["best"] and trial.params["optimizer.lr"] == float(
            summary["hparams"]["optimizer.lr"])
    report = build_report(sweep, plots=False)
    assert sum(len(r.ok_jobs) for r in report.rows) == 2
