import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.segmentation import DiceScore, MeanIoU
from torchvision.utils import draw_segmentation_masks, make_grid

from transferlab.errors import ConfigError
from transferlab.modules.base import TransferModule

LOSSES = ("auto", "cross_entropy", "bce_dice")
OVERLAY_TAG = "val/overlay_truth_top_prediction_bottom"
OVERLAY_COLORS = ["lime", "red", "blue", "yellow", "magenta", "cyan", "orange", "purple"]


class BCEDiceLoss(nn.Module):
    """Binary cross-entropy plus soft Dice (per image, then averaged) on one foreground logit.
    Dice keeps the small-structure pixels from being outvoted by the background."""

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits[:, 0], target.float()
        prob = logits.sigmoid().flatten(1)
        truth = target.flatten(1)
        overlap = (prob * truth).sum(1)
        dice = (2 * overlap + self.smooth) / (prob.sum(1) + truth.sum(1) + self.smooth)
        return self.bce(logits, target) + (1 - dice).mean()


class SegmentationModule(TransferModule):
    """A dense network (U-Net, FCN, DeepLabV3, LR-ASPP) trained by a freeze strategy, scored by
    Dice and IoU per class.

    `loss=bce_dice` (what `auto` picks for two classes) gives the network one foreground logit;
    `cross_entropy` gives it one logit per class. Either way predictions, metrics and
    `predict_step` probabilities cover all `num_classes` classes. A network with an aux
    classifier returns {'out', 'aux'} in training: the loss adds `aux_weight` x the aux output's
    loss (torchvision's recipe: 0.5); everything else reads 'out'. Every argument is a primitive
    or a plain dict (see `TransferModule`).
    """

    task = "segmentation"
    dense = True
    backbone_hint = ("a segmentation backbone: backbone=unet_vgg16_bn, backbone=unet "
                     "backbone.encoder=resnet34, or backbone=tv_segmentation backbone.name=fcn_resnet50")

    def __init__(self, *, loss: str = "auto", logged_images: int = 4, aux_weight: float = 0.5,
                 **common):
        super().__init__(**common)
        self.criterion = BCEDiceLoss() if self.binary else nn.CrossEntropyLoss()
        num_classes = self.hparams.num_classes
        self.train_loss = MeanMetric()
        self.train_dice = DiceScore(num_classes, average="macro", input_format="index")
        self.val_loss = MeanMetric()
        self.val_dice = DiceScore(num_classes, average="none", input_format="index")
        self.val_iou = MeanIoU(num_classes, per_class=True, input_format="index")
        self.val_dice_best = MaxMetric()
        self._shown: tuple[torch.Tensor, ...] | None = None

    @property
    def binary(self) -> bool:
        return binary_loss(self.hparams.loss, self.hparams.num_classes)

    def net_outputs(self, num_classes: int) -> int:
        return 1 if self.binary else num_classes

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.binary:
            foreground = logits.sigmoid()
            return torch.cat([1 - foreground, foreground], dim=1)
        return logits.softmax(dim=1)

    def labels(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 0] > 0).long() if self.binary else logits.argmax(dim=1)

    def on_train_start(self) -> None:
        self.val_dice_best.reset()  # forget the sanity check

    def training_step(self, batch, batch_idx):
        x, y = batch
        outputs = self.logits(x)
        logits = main_output(outputs)
        loss = self.criterion(logits, y)
        if isinstance(outputs, dict) and "aux" in outputs:
            loss = loss + self.hparams.aux_weight * self.criterion(outputs["aux"], y)
        self.train_loss(loss)
        self.train_dice(self.labels(logits.detach()), y)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/dice", self.train_dice, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def monitorable(self) -> list[str]:
        per_class = [f"val/{m}/{name}" for name in self.class_names for m in ("dice", "iou")]
        return ["val/dice", "val/iou", "val/loss", "val/dice_best", *per_class, "train/loss",
                "train/dice"]

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = main_output(self.logits(x))
        predicted = self.labels(logits)
        self.val_loss(self.criterion(logits, y))
        self.val_dice(predicted, y)
        self.val_iou(predicted, y)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        if batch_idx == 0:
            n = self.hparams.logged_images
            self._shown = (x[:n].cpu(), y[:n].cpu(), predicted[:n].cpu())

    def on_validation_epoch_end(self) -> None:
        scores = self.scores("val", self.val_dice, self.val_iou)
        mean_dice = scores.pop("val/dice")
        self.val_dice_best(mean_dice)
        self.log_dict({"val/dice": mean_dice, "val/dice_best": self.val_dice_best.compute()},
                      prog_bar=True, sync_dist=True)
        self.log_dict(scores, sync_dist=True)
        if not self.trainer.sanity_checking and self._shown is not None:
            self.log_overlays(*self._shown)
        self._shown = None

    def scores(self, prefix: str, dice_metric: DiceScore, iou_metric: MeanIoU) -> dict:
        """Mean Dice and IoU over classes and per class, as `<prefix>/dice`, `<prefix>/dice/<class>`
        and so on; resets the metrics."""
        dice = dice_metric.compute()
        iou = present(iou_metric.compute())
        dice_metric.reset()
        iou_metric.reset()
        # nanmean: classes absent from every image and prediction are NaN
        scores = {f"{prefix}/dice": dice.nanmean(), f"{prefix}/iou": iou.nanmean()}
        for name, class_dice, class_iou in zip(self.class_names, dice, iou):
            scores |= {f"{prefix}/dice/{name}": class_dice, f"{prefix}/iou/{name}": class_iou}
        return scores

    # Test: once, after fit, on the checkpoint chosen on val (transferlab.fit).
    def on_test_start(self) -> None:
        # Made here, not in __init__: only runs with a test split need them.
        n = self.hparams.num_classes
        self.test_loss = MeanMetric().to(self.device)
        self.test_dice = DiceScore(n, average="none", input_format="index").to(self.device)
        self.test_iou = MeanIoU(n, per_class=True, input_format="index").to(self.device)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = main_output(self.logits(x))
        predicted = self.labels(logits)
        self.test_loss(self.criterion(logits, y))
        self.test_dice(predicted, y)
        self.test_iou(predicted, y)
        self.log("test/loss", self.test_loss, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.scores("test", self.test_dice, self.test_iou), sync_dist=True)

    def log_overlays(self, images, truth, predicted) -> None:
        """One grid: the first val images with the ground truth (top row) and the prediction
        (bottom row) drawn over them."""
        rows = [overlay(images, labels, len(self.class_names)) for labels in (truth, predicted)]
        grid = make_grid(rows[0] + rows[1], nrow=len(images), padding=2)
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image(OVERLAY_TAG, grid, self.current_epoch)

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.probabilities(main_output(self(x)))


def main_output(outputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a network's output: itself, or 'out' of torchvision's {'out', 'aux'}."""
    return outputs["out"] if isinstance(outputs, dict) else outputs


def present(iou: torch.Tensor) -> torch.Tensor:
    """MeanIoU's per-class values with NaN for the classes seen in neither truth nor prediction
    (it marks them -1), so that means over classes skip them."""
    iou = iou.float().clone()
    iou[iou < 0] = float("nan")
    return iou


def binary_loss(loss: str, num_classes: int) -> bool:
    if loss not in LOSSES:
        raise ConfigError(f"model.loss={loss!r}; choose one of {LOSSES}")
    if loss == "bce_dice" and num_classes != 2:
        raise ConfigError(f"model.loss=bce_dice is for two classes, this data has {num_classes}")
    return loss == "bce_dice" or (loss == "auto" and num_classes == 2)


def overlay(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    drawn = []
    for image, label in zip(images, labels):
        # Each image stretched to 0..255 on its own: no need to know the normalisation.
        low, high = image.min(), image.max()
        pixels = ((image - low) / (high - low).clamp_min(1e-8) * 255).to(torch.uint8)
        masks = label[None] == torch.arange(1, num_classes)[:, None, None]  # background stays bare
        colors = [OVERLAY_COLORS[i % len(OVERLAY_COLORS)] for i in range(num_classes - 1)]
        drawn.append(draw_segmentation_masks(pixels, masks, alpha=0.4, colors=colors))
    return drawn
