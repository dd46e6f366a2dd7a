"""CIFAR-10's 60,000 files end to end, as a user runs them: the listing, the bad-file scan, the
split and split.json in a (two-batch) training run, then transferlab-eval and transferlab-predict
on the whole test/ folder. The long fits on it are the README's measured runs, not tests."""

import json

from tests.support.cli import console, run_cli, the_run_dir
from tests.support.data import real_dataset


def test_cifar10_at_full_scale_trains_evaluates_and_predicts(tmp_path):
    root = real_dataset("cifar10")
    work = tmp_path / "work"
    result = run_cli(
        "transferlab-train", "data=cifar10", f"data.root={root}", "init=he", "trainer=cpu",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "data.batch_size=64", "data.num_workers=0",
        f"data.scan_cache={tmp_path / 'scan'}", "callbacks.progress_bar.refresh_rate=0", cwd=work,
    )
    assert result.returncode == 0, console(result)[-3000:]
    assert "inspected 60000 of 60000 file(s)" in result.stdout  # a cold scan of every file
    run = the_run_dir(work)
    split = json.loads((run / "split.json").read_text())
    assert {name: len(files) for name, files in split["files"].items()} == {
        "train": 47_500, "val": 2_500, "test": 10_000}
    assert set(split["counts"]["val"].values()) == {250}  # stratified: 250 of each class

    result = run_cli("transferlab-eval", f"run={run}", "split=test", cwd=work)
    assert result.returncode == 0, console(result)[-3000:]
    metrics = json.loads((run / "eval" / "test-best" / "metrics.json").read_text())
    assert (metrics["n_images"], metrics["images_skipped"]) == (10_000, 0)
    assert sum(c["support"] for c in metrics["per_class"].values()) == 10_000

    out = tmp_path / "predicted"
    result = run_cli("transferlab-predict", f"run={run}", f"input={root / 'test'}", f"out={out}", cwd=work)
    assert result.returncode == 0, console(result)[-3000:]
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 10_001 and rows[1].startswith(f"{root / 'test' / 'airplane'}/")
