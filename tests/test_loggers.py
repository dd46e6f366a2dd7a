"""The numbers go where people look: CSV and MLflow beside TensorBoard, read back with their own
tools (MLflow's client API), params the same group choices the hparams record."""

import csv

import pytest

from transferlab.config import compose
from transferlab.fit import fit

mlflow = pytest.importorskip("mlflow")


def test_a_run_reads_back_through_mlflow_and_csv(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_MLFLOW_DIR", str(tmp_path / "mlflow"))
    run = tmp_path / "run"
    cfg = compose(["logger=[tensorboard,mlflow,csv]", "init=he", "trainer=cpu", "trainer.max_epochs=2",
                   f"data.root={image_folder}", "data.image_size=32", "data.num_workers=0",
                   "freeze=feature_extraction", "callbacks.progress_bar.refresh_rate=0"], run)
    fit(cfg, run, hparams={"freeze": "feature_extraction", "init": "he", "seed": 0})

    client = mlflow.tracking.MlflowClient(tracking_uri=cfg.logger.mlflow.tracking_uri)
    (found,) = client.search_runs([client.get_experiment_by_name("transferlab").experiment_id])
    assert found.info.run_name == str(run)
    assert {"freeze": "feature_extraction", "init": "he", "seed": "0"}.items() <= found.data.params.items()
    history = client.get_metric_history(found.info.run_id, "val/acc")
    assert len(history) == 2 and all(0 <= m.value <= 1 for m in history)
    artifacts = [a.path for a in client.list_artifacts(found.info.run_id)]
    checkpoints = [f.path for d in artifacts for f in client.list_artifacts(found.info.run_id, d)]
    assert any(p.endswith(".ckpt") for p in checkpoints), checkpoints

    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc")]
    assert len(rows) == 2
    assert (run / "tensorboard").is_dir()
