"""The `freeze` group: which stages train, when, and at what learning rate.

Every stage sits in its own optimizer param group from the first step; a strategy only flips
`requires_grad` and module mode. Frozen stages run in eval mode, so their BatchNorm keeps its
running statistics and their Dropout is off. The frozen set is a function of the epoch alone,
so a resumed run needs no state of its own (nor Lightning's `BaseFinetuning`, whose frozen
BatchNorm keeps training on batch statistics).
"""

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transferlab.errors import ConfigError
from transferlab.models.backbones import HEAD, StageItem, Stages, stage_modules, stage_parameters

log = logging.getLogger(__name__)

BN_STATS = ("source", "target")  # freeze.bn_stats: whose statistics frozen BatchNorm layers keep
BN_MODES = ("frozen_only", "all")  # freeze.bn: which BatchNorm layers run in inference mode


def is_frozen(items: list[StageItem]) -> bool:
    params = stage_parameters(items)
    return bool(params) and not any(p.requires_grad for p in params)


def set_frozen(items: list[StageItem], frozen: bool, training: bool) -> None:
    for p in stage_parameters(items):
        p.requires_grad_(not frozen)
    for m in stage_modules(items):
        m.train(training and not frozen)


class FreezeStrategy(Callback):
    """`bn_stats`: `source` keeps the running statistics the weights came with; `target`
    re-estimates those of the BatchNorm layers frozen at the start on the target's train images,
    once before training (AdaBN, Li et al. 2016), and they stay frozen after: for a source whose
    statistics no longer fit (another resolution or domain). `bn`: `frozen_only` runs the frozen
    stages' BatchNorm in inference mode (frozen means frozen); `all` every BatchNorm, trainable or
    not (their weights train, their statistics stay put: the Keras guide's advice for small
    batches)."""

    def __init__(self, backbone_lr_mult: float = 1.0, bn_stats: str = "source", bn: str = "frozen_only"):
        if bn_stats not in BN_STATS or bn not in BN_MODES:
            raise ConfigError(f"freeze.bn_stats={bn_stats!r}, freeze.bn={bn!r}: choose "
                              f"bn_stats from {', '.join(BN_STATS)} and bn from {', '.join(BN_MODES)}")
        self.backbone_lr_mult = backbone_lr_mult
        self.bn_stats = bn_stats
        self.bn = bn

    def frozen_stages(self, names: list[str], epoch: int) -> set[str]:
        raise NotImplementedError

    def lr_multipliers(self, names: list[str]) -> dict[str, float]:
        return {n: 1.0 if n == HEAD else self.backbone_lr_mult for n in names}

    def validate(self, names: list[str]) -> None:
        """Raise before training if this strategy cannot work on this stage map."""
        if HEAD in self.frozen_stages(names, epoch=0):
            raise ConfigError(f"{type(self).__name__} freezes the head: nothing would train")

    def apply(self, stages: Stages, epoch: int, training: bool) -> list[str]:
        """Put every stage in the state this epoch wants; return the stages newly unfrozen."""
        frozen = self.frozen_stages(list(stages), epoch)
        thawed = [n for n, mods in stages.items() if n not in frozen and is_frozen(mods)]
        for name, modules in stages.items():
            set_frozen(modules, name in frozen, training)
        self.settle_modes(stages)
        return thawed

    def settle_modes(self, stages: Stages) -> None:
        """After anything set modes (Lightning's train() around validation, `apply`): frozen stages
        back in eval mode, and with `bn=all` every BatchNorm layer."""
        for items in stages.values():
            if is_frozen(items):
                for m in stage_modules(items):
                    m.eval()
            if self.bn == "all":
                for m in (sub for item in stage_modules(items) for sub in item.modules()):
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()

    def adapt_statistics(self, stages: Stages, net: nn.Module, images: Dataset, batch_size: int,
                         num_workers: int, device: torch.device) -> int:
        """`bn_stats=target`: one pass over `images` (the target's train images through the val
        transform) re-estimates the running mean and variance of every BatchNorm layer in the
        stages frozen at epoch 0, as the plain average over the batches; weights untouched.
        Returns how many layers it re-estimated (0 for `source`)."""
        if self.bn_stats == "source":
            return 0
        frozen = self.frozen_stages(list(stages), epoch=0)
        layers = [m for name in frozen for item in stage_modules(stages[name]) for m in item.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        momenta = {m: m.momentum for m in layers}
        modes = {m: m.training for m in net.modules()}
        net.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: every batch counts the same
            m.train()
        try:
            with torch.no_grad():
                for x, _ in DataLoader(images, batch_size=batch_size, num_workers=num_workers):
                    net(x.to(device))
        finally:
            for m, momentum in momenta.items():
                m.momentum = momentum
            for m, mode in modes.items():
                m.training = mode
        log.info("freeze.bn_stats=target: re-estimated %d frozen BatchNorm layer(s) on %d train "
                 "images", len(layers), len(images))
        return len(layers)

    # Freezing waits for on_fit_start, after the strategy has wrapped the model (DDP registers
    # gradient hooks only for parameters that require grad at wrap time).
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.apply(pl_module.stages, trainer.current_epoch, pl_module.training)
        if not trainer.is_global_zero:
            return
        table = pl_module.stage_table()
        log.info("stages (%s, epoch %d):\n%s", type(self).__name__, trainer.current_epoch, table)
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("stages", table.replace("\n", "  \n"), trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        thawed = self.apply(pl_module.stages, epoch, pl_module.training)
        if thawed and pl_module.trainer.is_global_zero:
            log.info("epoch %d: unfroze %s\n%s", epoch, ", ".join(thawed), pl_module.stage_table())


class FeatureExtraction(FreezeStrategy):
    """Only the new head trains."""

    def frozen_stages(self, names, epoch):
        return {n for n in names if n != HEAD}


class FullFineTune(FreezeStrategy):
    """Everything trains; the backbone at `backbone_lr_mult` times the head's LR."""

    def frozen_stages(self, names, epoch):
        return set()


class PartialFineTune(FreezeStrategy):
    """The stages named in `frozen_stages` stay frozen; a count k means the first k stages from
    the input, and a negative count -k all the stages below the head but the last k."""

    def __init__(self, frozen_stages: int | list[str] = -1, backbone_lr_mult: float = 1.0,
                 bn_stats: str = "source", bn: str = "frozen_only"):
        super().__init__(backbone_lr_mult, bn_stats, bn)
        self.frozen = frozen_stages

    def frozen_stages(self, names, epoch):
        if isinstance(self.frozen, int):
            body = [n for n in names if n != HEAD]
            return set(body[: self.frozen]) if self.frozen < 0 else set(names[: self.frozen])
        return set(self.frozen)

    def validate(self, names):
        body = [n for n in names if n != HEAD]
        if isinstance(self.frozen, int):
            if not -len(body) <= self.frozen <= len(body):
                raise ConfigError(
                    f"freeze.frozen_stages={self.frozen}: this backbone has {len(body)} stages below "
                    f"the head ({', '.join(body)}); use -{len(body)}..{len(body)}"
                )
        else:
            unknown = [n for n in self.frozen if n not in names]
            if unknown:
                raise ConfigError(
                    f"freeze.frozen_stages names unknown stage(s) {unknown}; stages are {names}"
                )
        super().validate(names)


class GradualUnfreezing(FreezeStrategy):
    """Head only for `head_epochs`, then one more stage, top-down, every `unfreeze_every` epochs.

    The stage right below the head trains at `backbone_lr_mult` x LR; each deeper stage at a
    further `stage_lr_decay` times that. The frozen set is a function of the epoch alone, so a
    run resumed mid-schedule lands in the same state.
    """

    def __init__(
        self,
        head_epochs: int = 3,
        unfreeze_every: int = 2,
        backbone_lr_mult: float = 0.1,
        stage_lr_decay: float = 0.5,
        bn_stats: str = "source",
        bn: str = "frozen_only",
    ):
        super().__init__(backbone_lr_mult, bn_stats, bn)
        if head_epochs < 0 or unfreeze_every < 1:
            raise ConfigError("freeze.head_epochs must be >= 0 and freeze.unfreeze_every >= 1")
        self.head_epochs = head_epochs
        self.unfreeze_every = unfreeze_every
        self.stage_lr_decay = stage_lr_decay

    def frozen_stages(self, names, epoch):
        body = [n for n in names if n != HEAD]
        if epoch < self.head_epochs:
            return set(body)
        thawed = 1 + (epoch - self.head_epochs) // self.unfreeze_every
        return set(body[: max(len(body) - thawed, 0)])

    def lr_multipliers(self, names):
        body = [n for n in names if n != HEAD]
        depth = {n: len(body) - i for i, n in enumerate(body)}  # 1 = right below the head
        mults = {n: self.backbone_lr_mult * self.stage_lr_decay ** (depth[n] - 1) for n in body}
        return mults | {HEAD: 1.0}
