import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support.cli import TINY, console, run_cli, the_run_dir
from tests.support.data import real_dataset
from transferlab.modules.segmentation import SegmentationModule
from transferlab.config import config_dir

pytestmark = pytest.mark.cli  # runs the installed commands, as a user would

SEGMENTATION = ["task=segmentation", "data=covid_lung", "backbone=unet_vgg16_bn"]


@pytest.fixture
def covid_lung() -> Path:
    return real_dataset("covid_lung")


def test_train_a_unet_on_real_lung_masks(covid_lung, tmp_path):
    result = run_cli(
        "transferlab-train", *SEGMENTATION, *TINY, "data.batch_size=2", "freeze=partial",
        f"data.root={covid_lung}", cwd=tmp_path,
    )
    assert result.returncode == 0, console(result)[-3000:]
    run_dir = the_run_dir(tmp_path)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["monitor"] == "val/dice"
    assert summary["epochs_completed"] == 2
    dices = [h["val/dice"] for h in summary["history"]]
    assert 0.0 <= summary["best"] <= 1.0 and summary["best"] == max(dices)
    assert 0 < summary["params_trainable"] < summary["params_total"]  # block1-4 frozen

    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts)
    model = SegmentationModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.hparams.class_names == ["background", "lung"]

    log = (run_dir / "train.log").read_text()
    assert "U-Net (vgg16_bn encoder, 1 output channels): 27,439,937 parameters" in log

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/dice", "val/loss", "val/dice", "val/dice_best", "val/iou",
            "val/dice/lung", "val/iou/background", "lr-AdamW/block4", "lr-AdamW/head"} <= scalars
    overlays = events.Images("val/overlay_truth_top_prediction_bottom")
    assert [e.step for e in overlays] == [0, 1]  # one per epoch, none for the sanity check


def test_strategy_comparison_sweeps_init_freeze_and_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_DATA_DIR", "/datasets")
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", ["experiment=covid_lung_strategies"], return_hydra_config=True)
    assert cfg.model._target_.endswith("SegmentationModule") and cfg.monitor == "val/dice"
    assert cfg.data.root == "/datasets/covid_lung" and cfg.backbone.name == "vgg16_bn"
    assert dict(cfg.hydra.sweeper.params) == {
        "init": "he,pretrained", "freeze": "feature_extraction,full", "seed": "0,1,2"}
