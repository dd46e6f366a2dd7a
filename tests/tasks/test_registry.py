"""Adding a task is one module and its config: a toy task trains, predicts and evaluates through
transferlab's own library, found by the name its checkpoints record."""

import csv
import sys
from pathlib import Path

import pytest

from transferlab import tasks
from transferlab.config import compose
from transferlab.errors import ConfigError
from transferlab.evaluate import evaluate
from transferlab.fit import fit
from transferlab.inference import load
from transferlab.predict import predict_files

SUPPORT = Path(__file__).parents[1] / "support"
TOY = "tests.support.toy_task"


def test_built_in_tasks_are_found_by_name():
    assert {"classification", "segmentation"} <= set(tasks.names())
    assert tasks.get("segmentation").dense and not tasks.get("classification").dense
    with pytest.raises(ConfigError, match="unknown task 'multilabel'; known tasks: classification"):
        tasks.get("multilabel")


def test_a_task_of_ones_own_trains_predicts_and_evaluates(image_folder, tmp_path):
    sys.modules.pop(TOY, None)  # found again from the name its checkpoint records
    tasks._REGISTRY.pop(TOY, None)
    cfg = compose([f"hydra.searchpath=[file://{SUPPORT / 'conf'}]", "task=toy", "init=he",
                   "trainer=cpu", "trainer.max_epochs=1", "logger=none", f"data.root={image_folder}",
                   "data.image_size=32", "data.num_workers=0", "callbacks.progress_bar.refresh_rate=0"],
                  tmp_path / "run")
    fit(cfg, tmp_path / "run")
    sys.modules.pop(TOY, None)
    tasks._REGISTRY.pop(TOY, None)

    predictor = load(tmp_path / "run", device="cpu")
    assert predictor.task.name == TOY and type(predictor.module).__name__ == "ToyModule"
    done = predict_files(tmp_path / "run", str(image_folder / "val"), tmp_path / "predicted",
                         device="cpu", num_workers=0)
    with open(tmp_path / "predicted" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert done["images"] == len(rows) == 6 and list(rows[0]) == ["path", "top", "margin"]
    assert all(float(r["margin"]) >= 0 and r["top"] in ("cats", "dogs") for r in rows)
    result = evaluate(tmp_path / "run", "val", device="cpu", num_workers=0)
    assert result.task == TOY and result.n_images == 6
    assert predictor.task.evaluation_lines(result.metrics)[0][0] == "toy"
