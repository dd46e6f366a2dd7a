import csv
import json
import statistics

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.support.cli import TINY, run_cli

# One worker runs the module: its module-scoped runs are made once.
pytestmark = [pytest.mark.cli, pytest.mark.xdist_group("sweep")]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real multirun on ants/bees: 2 strategies x 2 seeds, plus lr=-1 jobs that must fail."""
    from tests.support.data import real_dataset

    root = real_dataset("hymenoptera")
    tmp = tmp_path_factory.mktemp("sweep")
    result = run_cli(
        "transferlab-train", "-m", *TINY, f"data.root={root}", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2", "data.image_size=32", "freeze=feature_extraction,full",
        "seed=0,1", "optimizer.lr=0.001,-1", cwd=tmp, timeout=600,
    )
    sweeps = list((tmp / "outputs" / "multirun").glob("*/*"))  # Hydra's default layout
    assert len(sweeps) == 1, sweeps
    # Hydra runs every job, then reports the failed ones with a non-zero exit.
    assert result.returncode != 0 and "Invalid learning rate" in result.stderr
    return sweeps[0]


def summaries(sweep_dir):
    out = {}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        out[job.name] = (overrides, json.loads((job / "summary.json").read_text()))
    return out


def test_every_job_has_its_own_run_dir_and_summary(sweep):
    jobs = summaries(sweep)
    assert len(jobs) == 8
    failed = [s for o, s in jobs.values() if "optimizer.lr=-1" in o]
    assert len(failed) == 4 and all(s["status"] == "failed" for s in failed)
    assert all("Invalid learning rate" in s["error"] for s in failed)


def test_report_numbers_equal_the_jobs_own_summaries(sweep):
    # No argument: the latest sweep under ./outputs/multirun, from where the sweep ran.
    result = run_cli("transferlab-report", cwd=sweep.parents[3])
    assert result.returncode == 0, result.stderr
    assert "|" in result.stdout  # the table is printed

    jobs = summaries(sweep).values()
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    for strategy in ("feature_extraction", "full"):
        bests = [s["best"] for o, s in jobs
                 if f"freeze={strategy}" in o and "optimizer.lr=0.001" in o]
        row = next(r for r in rows if f"freeze={strategy}" in r["configuration"]
                   and "lr=0.001" in r["configuration"])
        assert int(row["n_seeds"]) == 2
        assert float(row["best_mean"]) == pytest.approx(statistics.mean(bests), abs=1e-6)
        assert float(row["best_std"]) == pytest.approx(statistics.stdev(bests), abs=1e-6)
    broken = [r for r in rows if "lr=-1" in r["configuration"]]
    assert len(broken) == 2 and all(int(r["n_failed"]) == 2 for r in broken)

    report = (sweep / "report.md").read_text()
    assert "failed" in report and "Invalid learning rate" in report
    for name in ("curves.png", "best.png", "tradeoff.png"):
        data = (sweep / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000


def test_hparams_tab_gets_swept_values_and_the_real_best_metric(sweep):
    overrides, summary = summaries(sweep)["0"]
    events = EventAccumulator(str(sweep / "0" / "tensorboard")).Reload()
    starts = [
        plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        for tag, content in events.PluginTagToContent("hparams").items()
        if tag == "_hparams_/session_start_info"
    ]
    assert len(starts) == 1
    hparams = starts[0].hparams
    assert {"freeze", "init", "backbone", "seed", "optimizer.lr"} <= set(hparams)
    assert hparams["backbone"].string_value == "resnet18"
    assert events.Scalars("hp/best")[-1].value == pytest.approx(summary["best"])
