"""What every transferlab LightningModule shares: the backbone, its stages, the freeze strategy,
the learning rate of every param group, freeze-aware train()."""

import abc
import inspect
import logging
from functools import partial

import lightning as L
import torch
from hydra.utils import instantiate

from transferlab.errors import ConfigError
from transferlab.freeze import is_frozen
from transferlab.models.backbones import Backbone, Stages, stage_parameters

log = logging.getLogger(__name__)


class Precomputed(abc.ABC):
    """A batch's inputs that hold what part of the network computed already (the feature cache,
    `transferlab.cache`, serves them): `logits()` runs the rest. A module needs to know nothing
    more about where they came from."""

    @abc.abstractmethod
    def logits(self) -> torch.Tensor:
        """The network's output for these inputs."""


class TransferModule(L.LightningModule):
    """Every argument is a primitive or a plain dict of primitives (the group configs), so
    `load_from_checkpoint` rebuilds the module without Hydra's config composition.

    `lr_reference_batch_size`: when set, `optimizer.lr` is the LR at that batch size and the run
    uses lr x (batch size x devices x accumulation) / reference (the linear scaling rule).
    """

    task: str  # the task's name (`transferlab.tasks`)
    dense: bool  # per-pixel outputs (segmentation) or one per image: what the backbone must build
    backbone_hint: str  # a backbone that does, for the error when one does not

    def __init__(
        self,
        *,
        backbone: dict,
        num_classes: int,
        freeze: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        class_names: list[str] | None = None,
        preprocess: dict | None = None,
        lr_reference_batch_size: int | None = None,
    ):
        super().__init__()
        # Collects the subclass's own arguments too.
        self.save_hyperparameters(logger=False)
        self.backbone: Backbone = instantiate(backbone, num_classes=self.net_outputs(num_classes))
        if self.backbone.dense != self.dense:
            builds = "per-pixel outputs" if self.backbone.dense else "one output per image"
            raise ConfigError(
                f"backbone {backbone.get('name')!r} builds a network with {builds} "
                f"({type(self.backbone.net).__name__}), not what task={self.task} needs; use "
                f"{self.backbone_hint}"
            )
        self.net = self.backbone.net
        self.freeze_strategy = instantiate(freeze)
        self.freeze_strategy.validate(list(self.stages))
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])

    def monitorable(self) -> list[str]:
        """The metrics this module logs every epoch: what `monitor=` may name."""
        raise NotImplementedError

    def net_outputs(self, num_classes: int) -> int:
        return num_classes

    @property
    def stages(self) -> Stages:
        """Ordered stages from input to head; recomputed so wrapped or converted layers are seen."""
        return self.backbone.stages()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def logits(self, inputs) -> torch.Tensor:
        """The network's output for a batch's inputs: images, or `Precomputed` inputs."""
        return inputs.logits() if isinstance(inputs, Precomputed) else self(inputs)

    def configure_callbacks(self):
        return [self.freeze_strategy]

    def train(self, mode: bool = True):
        # Lightning toggles train/eval around validation; frozen stages must stay in eval.
        super().train(mode)
        if mode:
            self.freeze_strategy.settle_modes(self.stages)
        return self

    def lr_scale(self) -> float:
        reference = self.hparams.lr_reference_batch_size
        batch_size = getattr(self.trainer.datamodule, "batch_size", None)
        if not reference or batch_size is None:
            return 1.0
        effective = batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches
        if effective != reference:
            log.info("linear LR scaling: effective batch %d / reference %d: every LR x%g",
                     effective, reference, effective / reference)
        return effective / reference

    def configure_optimizers(self):
        stages = self.stages
        mults = self.freeze_strategy.lr_multipliers(list(stages))
        opt_cfg = dict(self.hparams.optimizer)
        base_lr = opt_cfg["lr"] * self.lr_scale()
        groups = [
            {"params": stage_parameters(items), "lr": base_lr * mults[name], "name": name}
            for name, items in stages.items()
            if stage_parameters(items)
        ]
        optimizer = instantiate(opt_cfg, _partial_=True)(groups)
        sched_cfg = self.hparams.get("scheduler")
        if not sched_cfg:
            return optimizer
        sched_cfg = dict(sched_cfg)
        interval = sched_cfg.pop("interval", "epoch")
        make = instantiate(sched_cfg, _partial_=True)
        if "total_steps" in inspect.signature(make.func).parameters and "total_steps" not in sched_cfg:
            # A schedule over the fit's optimizer steps (one cycle) learns their number here.
            make = partial(make, total_steps=int(self.trainer.estimated_stepping_batches))
        scheduler = make(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def parameter_counts(self) -> tuple[int, int]:
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def on_train_epoch_start(self) -> None:
        trainable, total = self.parameter_counts()
        self.log_dict({"params/trainable": float(trainable), "params/total": float(total)}, sync_dist=True)

    def stage_table(self) -> str:
        lrs = {}
        if self._trainer is not None and self.trainer.optimizers:
            lrs = {g.get("name"): g["lr"] for g in self.trainer.optimizers[0].param_groups}
        rows = [("stage", "params", "state", "lr")]
        for name, items in self.stages.items():
            n = sum(p.numel() for p in stage_parameters(items))
            state = "frozen" if is_frozen(items) else "trainable"
            lr = f"{lrs[name]:.3g}" if name in lrs else "-"
            rows.append((name, f"{n:,}", state, lr))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
