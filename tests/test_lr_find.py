"""optimizer.lr=auto: the range test's pick on a problem whose good LR is known, every stage kept
at its ratio to the head, and the pick recorded where a run is read (and reused on resume)."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tests.support.modules import STRATEGY, classifier_module, random_loader
from transferlab.config import compose
from transferlab.fit import fit
from transferlab.lr_find import range_test, suggest

CURVATURE = 100.0  # of the toy's quadratic loss: gradient descent diverges above 2 / CURVATURE


class Quadratic(L.LightningModule):
    """Loss 0.5 * CURVATURE * |w - t|^2 for a noisy target t per batch, over two param groups,
    the second at 0.1 x the first's LR: gradient descent shrinks the error by
    |1 - lr * CURVATURE| per step, fastest at lr = 1 / CURVATURE, and diverges above
    2 / CURVATURE."""

    def __init__(self):
        super().__init__()
        self.save_hyperparameters({"optimizer": {"_target_": "torch.optim.SGD", "lr": 1.0}, "scheduler": None})
        self.w = nn.Parameter(torch.full((8,), -3.0))
        self.v = nn.Parameter(torch.full((8,), -3.0))

    def training_step(self, batch, batch_idx):
        (target,) = batch
        return 0.5 * CURVATURE * (((self.w - target) ** 2).sum() + ((self.v - target) ** 2).sum())

    def configure_optimizers(self):
        lr = self.hparams.optimizer["lr"]
        return torch.optim.SGD([{"params": [self.w], "lr": lr}, {"params": [self.v], "lr": 0.1 * lr}])


def cpu_trainer(**settings):
    return L.Trainer(accelerator="cpu", **settings)


def test_the_pick_lies_where_the_toys_loss_falls_fastest_and_below_divergence():
    targets = 1 + 0.1 * torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    data = L.LightningDataModule.from_datasets(train_dataset=TensorDataset(targets), batch_size=1)
    ramp = range_test(Quadratic(), data, cpu_trainer, [], start=1e-5, end=1.0, steps=120)
    pick = suggest(ramp.lrs[:len(ramp.losses)], ramp.losses)
    assert 0.2 / CURVATURE <= pick <= 2 / CURVATURE, pick
    ratios = {round(v / w, 6) for w, v in ramp.group_lrs}
    assert ratios == {0.1}, "the second group lost its ratio to the first"
    assert len(ramp.losses) < 120, "a diverging loss stops the test"


@pytest.mark.parametrize("blows_up", [1e-3, 1e-1, 3.0])
def test_the_pick_is_a_tenth_of_where_the_loss_is_lowest(blows_up):
    lrs = np.logspace(-7, 1, 100)
    losses = 2 - np.tanh(np.log10(lrs / blows_up)) + np.where(lrs > blows_up, 50 * np.log(lrs / blows_up), 0)
    assert suggest(list(lrs), list(losses)) == pytest.approx(blows_up / 10, rel=0.25)


def test_every_stage_keeps_its_ratio_and_the_frozen_ones_stay_frozen():
    freeze = {"_target_": STRATEGY + "GradualUnfreezing", "head_epochs": 5}
    module = classifier_module("resnet18", freeze, lr=0.01)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    data = L.LightningDataModule.from_datasets(train_dataset=random_loader(n=16, size=32).dataset, batch_size=4)
    ramp = range_test(module, data, cpu_trainer, [], steps=12)
    first = np.asarray(ramp.group_lrs[0])
    assert np.allclose(np.asarray(ramp.group_lrs) / first, np.asarray(ramp.lrs)[:, None] / ramp.lrs[0])
    assert first[-2] / first[-1] == pytest.approx(0.1)  # layer4 at backbone_lr_mult x the head
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters()), "the test trained the model"


def test_an_auto_lr_run_records_its_pick_and_resumes_with_it(image_folder, tmp_path):
    run = tmp_path / "run"
    cfg = compose(["optimizer.lr=auto", "init=he", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
                   f"data.root={image_folder}", "data.image_size=32", "data.num_workers=0",
                   "freeze=feature_extraction", "callbacks.progress_bar.refresh_rate=0"], run)
    fit(cfg, run, hparams={"lr": "auto"})
    record = json.loads((run / "lr_find.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert (run / "lr_find.png").stat().st_size > 10_000
    assert summary["lr_find"]["lr"] == record["lr"] == summary["hparams"]["lr"] > 0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["optimizer"]["lr"] == record["lr"]
    (run / "lr_find.png").unlink()  # a resumed run must not test again
    resumed = compose(["optimizer.lr=auto", "init=he", "trainer=cpu", "trainer.max_epochs=2", "logger=none",
                       f"data.root={image_folder}", "data.image_size=32", "data.num_workers=0",
                       "freeze=feature_extraction", "callbacks.progress_bar.refresh_rate=0"], run)
    fit(resumed, run, ckpt_path=run / "checkpoints" / "last.ckpt")
    assert not (run / "lr_find.png").exists()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["hyper_parameters"]["optimizer"]["lr"] == record["lr"] and last["epoch"] == 1
