import matplotlib

matplotlib.use("Agg")  # figures go to TensorBoard, never to a screen

import matplotlib.pyplot as plt
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from transferlab.modules.base import TransferModule


class ClassificationModule(TransferModule):
    """A classifier backbone with a new head, trained by a freeze strategy."""

    task = "classification"

    def __init__(self, **common):
        super().__init__(**common)
        num_classes = self.hparams.num_classes
        self.criterion = nn.CrossEntropyLoss()
        self.train_loss = MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.val_acc_best = MaxMetric()

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check

    def training_step(self, batch, batch_idx):
        logits, y = self.logits(batch), batch[1]
        loss = self.criterion(logits, y)
        # update(), not __call__, and handed to the logger once, at the epoch's last step (it
        # computes them over the whole epoch then): per-batch values are never shown, and
        # computing or logging them costs more than a whole step on cached features. Not in
        # on_train_epoch_end: that runs after the callbacks' (the run summary's) hook.
        # Losses average over images.
        self.train_loss.update(loss.detach(), weight=len(y))
        self.train_acc.update(logits, y)
        if batch_idx + 1 == self.trainer.num_training_batches:
            self.log_dict({"train/loss": self.train_loss, "train/acc": self.train_acc},
                          on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        logits, y = self.logits(batch), batch[1]
        self.val_loss.update(self.criterion(logits, y), weight=len(y))
        self.val_acc.update(logits, y)
        self.val_f1.update(logits, y)
        self.val_confmat.update(logits, y)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        self.log("val/f1", self.val_f1, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        confmat = self.val_confmat.compute()
        self.val_confmat.reset()
        if self.trainer.sanity_checking:
            return
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_figure"):
                fig, _ = self.val_confmat.plot(val=confmat.cpu(), labels=self.class_names)
                logger.experiment.add_figure("val/confusion_matrix", fig, self.current_epoch)
                plt.close(fig)

    # Test: once, after fit, on the checkpoint chosen on val (transferlab.fit.test_selected).
    def on_test_start(self) -> None:
        # Made here, not in __init__: only runs with a test split need them, and metrics hold no
        # persistent state, so checkpoints keep their keys either way.
        n = self.hparams.num_classes
        self.test_loss = MeanMetric().to(self.device)
        self.test_scores = nn.ModuleDict({
            "acc": MulticlassAccuracy(n, average="micro"),
            "balanced_acc": MulticlassAccuracy(n, average="macro"),  # mean recall over classes
            "f1": MulticlassF1Score(n, average="macro"),
        }).to(self.device)

    def test_step(self, batch, batch_idx):
        logits, y = self.logits(batch), batch[1]
        self.test_loss.update(self.criterion(logits, y), weight=len(y))
        self.log("test/loss", self.test_loss, on_epoch=True)
        for name, metric in self.test_scores.items():
            metric.update(logits, y)
            self.log(f"test/{name}", metric, on_epoch=True)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.probabilities(self(x))

