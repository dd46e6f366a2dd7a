import matplotlib

matplotlib.use("Agg")  # figures go to TensorBoard, never to a screen

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from transferlab.errors import ConfigError
from transferlab.modules.base import TransferModule


class ClassificationModule(TransferModule):
    """A classifier backbone with a new head, trained by a freeze strategy."""

    task = "classification"
    dense = False
    backbone_hint = "a classifier backbone such as backbone=resnet18"

    def __init__(self, *, class_weights: list[float] | None = None, label_smoothing: float = 0.0,
                 mixed_targets: bool = False, **common):
        """`class_weights`: one loss weight per class (`transferlab.class_weights` decides them),
        None for plain cross-entropy; `label_smoothing`: cross-entropy's (0: none). Train, val and
        test losses use the same weights and smoothing. `mixed_targets`: the training batches come
        mixed (`mixup=`), with soft targets; train accuracy is then against each image's dominant
        label, logged as `train/acc_dominant`."""
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"model.label_smoothing={label_smoothing}: use a value in [0, 1)")
        super().__init__(**common)
        num_classes = self.hparams.num_classes
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        # Not persistent: the weights are in the hparams already, and checkpoints keep the same
        # keys whichever weights a run used.
        self.register_buffer("class_weight", weight, persistent=False)
        self.train_loss = MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_balanced_acc = MulticlassAccuracy(num_classes, average="macro")  # mean recall
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.val_acc_best = MaxMetric()

    def criterion(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        smoothing = self.hparams.label_smoothing
        if y.ndim == 1:
            return F.cross_entropy(logits, y, weight=self.class_weight, label_smoothing=smoothing)
        return soft_cross_entropy(logits, y, self.class_weight, smoothing)

    @property
    def train_acc_name(self) -> str:
        return "train/acc_dominant" if self.hparams.mixed_targets else "train/acc"

    def monitorable(self) -> list[str]:
        return ["val/acc", "val/balanced_acc", "val/f1", "val/loss", "val/acc_best", "train/loss",
                self.train_acc_name]

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.logits(x)
        loss = self.criterion(logits, y)
        # update(), not __call__, and logged once per epoch: per-batch values are never shown,
        # and computing or logging them costs more than a whole step on cached features.
        # Losses average over images.
        self.train_loss.update(loss.detach(), weight=len(y))
        self.train_acc.update(logits, y if y.ndim == 1 else y.argmax(1))  # mixed: the dominant label
        if batch_idx == 0:
            # Logging a metric object hands Lightning the object; it computes the epoch's value
            # before any callback's on_train_epoch_end. Logged from the module's own
            # on_train_epoch_end, it would arrive after RunSummary recorded the epoch.
            self.log_dict({"train/loss": self.train_loss, self.train_acc_name: self.train_acc},
                          on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.logits(x)
        self.val_loss.update(self.criterion(logits, y), weight=len(y))
        self.val_acc.update(logits, y)
        self.val_balanced_acc.update(logits, y)
        self.val_f1.update(logits, y)
        self.val_confmat.update(logits, y)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        self.log("val/balanced_acc", self.val_balanced_acc, on_epoch=True)
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

    # Test: once, after fit, on the checkpoint chosen on val (transferlab.fit).
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
        x, y = batch
        logits = self.logits(x)
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



def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                       smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against soft targets (N, C), as `F.cross_entropy` treats hard labels: the
    smoothing mixes each target with the uniform distribution, each image's loss is
    -sum_c w_c y'_c log p_c, and the batch's is their sum over the sum of the images' weights w.y
    (the unsmoothed targets'). One-hot targets give exactly the hard-label loss, weights and
    smoothing included (tests/modules/test_classification.py)."""
    classes = logits.shape[1]
    weight = torch.ones(classes, device=logits.device) if weight is None else weight
    smoothed = target * (1 - smoothing) + smoothing / classes
    per_image = -(smoothed * weight * logits.log_softmax(dim=1)).sum(dim=1)
    return per_image.sum() / (target @ weight).sum()
