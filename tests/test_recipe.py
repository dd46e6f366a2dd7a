"""The small-data recipe's pieces: soft targets that keep the class weights' meaning, MixUp /
CutMix with label smoothing and an EMA of the weights that resume bit-identically, BatchNorm kept in
inference mode where asked, and each piece's interplay with the feature cache."""

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.support.data import make_image_folder
from transferlab.config import compose
from transferlab.data.mixing import Mixing
from transferlab.data.segmentation import SegmentationFolderDataModule
from transferlab.errors import ConfigError
from transferlab.fit import fit
from transferlab.modules.classification import soft_cross_entropy
from transferlab.summary import read_summary


@pytest.mark.parametrize("weight", [None, [1.0, 3.0, 0.5]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_one_hot_soft_targets_give_the_hard_label_loss(weight, smoothing):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    weight = None if weight is None else torch.tensor(weight)
    hard = F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)
    soft = soft_cross_entropy(logits, F.one_hot(labels, 3).float(), weight, smoothing)
    torch.testing.assert_close(soft, hard)


def config(run: Path, data: Path, *extra: str):
    run.mkdir(parents=True, exist_ok=True)
    return compose(["init=he", "trainer=cpu", "logger=none", "trainer.deterministic=true",
                    f"data.root={data}", "data.image_size=32", "data.num_workers=0",
                    "callbacks.progress_bar.refresh_rate=0", *extra], run)


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def test_a_mixed_smoothed_averaged_run_resumes_bit_identically(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", noise=40.0)
    settings = ["mixup=both", "model.label_smoothing=0.1", "ema=on", "model.class_weights=[1,2]",
                "freeze=partial"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with caplog.at_level(logging.INFO):
        fit(config(straight, data, *settings, "trainer.max_epochs=3"), straight)
    assert "mixup=both mixes images: the feature cache stays off" in caplog.text
    fit(config(resumed, data, *settings, "trainer.max_epochs=2"), resumed)  # "killed" after 2
    fit(config(resumed, data, *settings, "trainer.max_epochs=3"), resumed,
        ckpt_path=resumed / "checkpoints" / "last.ckpt")
    expected, got = read_summary(straight / "summary.json"), read_summary(resumed / "summary.json")
    for key in ("train/acc_dominant", "train/loss", "val/acc", "val/loss"):
        assert [h[key] for h in got["history"]] == [h[key] for h in expected["history"]], key
    a, b = last(straight), last(resumed)
    for part in ("state_dict", "current_model_state"):  # the average, and the weights as trained
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    averaged, trained = a["state_dict"], a["current_model_state"]
    assert not torch.equal(averaged["net.fc.weight"], trained["net.fc.weight"])


def test_ema_and_label_smoothing_train_on_the_cache(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", noise=40.0)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        fit(config(run, data, "ema=on", "model.label_smoothing=0.1", "freeze=feature_extraction",
                   "trainer.max_epochs=2"), run)
    assert "feature cache on: only the head trains" in caplog.text
    checkpoint = last(run)
    assert not torch.equal(checkpoint["state_dict"]["net.fc.weight"],
                           checkpoint["current_model_state"]["net.fc.weight"])


def test_bn_all_keeps_every_batchnorm_in_inference_mode_while_its_weights_train(tmp_path):
    data = make_image_folder(tmp_path / "data", noise=40.0)
    run = tmp_path / "run"
    fit(config(run, data, "freeze=full", "freeze.bn=all", "trainer.max_epochs=1", "cache=off",
               "data.batch_size=4", "optimizer.lr=0.01"), run)
    state = last(run)["state_dict"]
    assert torch.equal(state["net.layer4.1.bn2.running_mean"], torch.zeros(512)), "statistics moved"
    assert not torch.equal(state["net.layer4.1.bn2.weight"], torch.ones(512)), "weights did not train"


def test_segmentation_refuses_mixing_by_name(tmp_path):
    with pytest.raises(ConfigError, match="mixup=cutmix is for classification"):
        SegmentationFolderDataModule(str(tmp_path), mixing=Mixing("cutmix"))
