import matplotlib

matplotlib.use("Agg")  # figures go to TensorBoard, never to a screen

import matplotlib.pyplot as plt
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from transferlab.features import head_layers
from transferlab.models.stages import stage_map
from transferlab.modules.base import TransferModule


class ClassificationModule(TransferModule):
    """A torchvision classifier with a new head, trained by a freeze strategy.

    Every argument is a primitive or a plain dict of primitives, so `load_from_checkpoint`
    rebuilds the module without Hydra's config composition.
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        freeze: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        class_names: list[str] | None = None,
        preprocess: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = instantiate(backbone, num_classes=num_classes)
        self.freeze_strategy = self.build_freeze_strategy(freeze)
        self.criterion = nn.CrossEntropyLoss()
        self.train_loss = MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.val_acc_best = MaxMetric()
        # Set while a FeatureCache feeds this fit: batches then hold the head's inputs. A plain
        # list, so the layers are not registered twice and checkpoints keep their keys.
        self._cached_input_layers: list[nn.Module] | None = None

    @property
    def stages(self):
        return stage_map(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def use_cached_features(self, on: bool) -> None:
        self._cached_input_layers = head_layers(self.net) if on else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """From images, or from cached head inputs while a FeatureCache is on."""
        if self._cached_input_layers is None:
            return self(x)
        for layer in self._cached_input_layers:
            x = layer(x)
        return x

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.logits(x)
        loss = self.criterion(logits, y)
        # update(), not __call__: the per-batch values are never logged, and computing them
        # costs more than a whole step on cached features. Losses average over images.
        self.train_loss.update(loss.detach(), weight=len(y))
        self.train_acc.update(logits, y)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.logits(x)
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
                fig, _ = self.val_confmat.plot(val=confmat.cpu(), labels=self.hparams.class_names)
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

