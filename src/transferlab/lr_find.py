"""`optimizer.lr=auto`: an LR range test before the fit (Smith 2017), then the fit at its pick.

The test trains a copy of the module on the train split for `steps` optimizer steps while the LR
rises exponentially from `start` to `end`, every param group at its own ratio to the head's
(`freeze.backbone_lr_mult`, `stage_lr_decay`) and the frozen stages frozen, through the fit's own
speed-ups (the feature cache, where the fit would use it). Lightning's `Tuner.lr_find` sets every
group to one LR, which would erase those ratios, so the ramp is a callback on Lightning's loop.

The pick (`suggest`, fastai's "minimum / 10" rule): the loss is smoothed (an exponential moving
average, bias-corrected), and a tenth of the LR at the lowest smoothed loss is the head's LR of
the fit: the loss is lowest just before the LR makes it blow up, so a tenth of that is an order of
magnitude inside the stable range. (The LR of the steepest fall, Lightning's rule, lands where the
loss is still large, too low for a problem that converges fast.) The test stops early once the
smoothed loss exceeds 4x its lowest.
"""

import copy
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar

log = logging.getLogger("transferlab")

SMOOTHING = 0.9  # weight of the running average in the smoothed loss
DIVERGED = 4.0  # the test stops once the smoothed loss exceeds this multiple of its lowest


class LRRamp(Callback):
    """Before every step, each param group's LR is its ratio (its LR when the fit starts) times
    the ramp's value; after it, the smoothed loss is recorded."""

    def __init__(self, start: float, end: float, steps: int):
        self.start, self.end, self.steps = start, end, steps
        self.lrs: list[float] = []
        self.losses: list[float] = []  # smoothed
        self.group_lrs: list[list[float]] = []  # every group's LR at every step
        self._ratios: list[float] = []
        self._average, self._lowest = 0.0, math.inf

    def on_train_start(self, trainer, pl_module) -> None:
        self._ratios = [g["lr"] for g in trainer.optimizers[0].param_groups]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = len(self.lrs)
        lr = self.start * (self.end / self.start) ** (step / max(self.steps - 1, 1))
        groups = trainer.optimizers[0].param_groups
        for group, ratio in zip(groups, self._ratios):
            group["lr"] = ratio * lr
        self.lrs.append(lr)
        self.group_lrs.append([g["lr"] for g in groups])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        smoothed = self._average / (1 - SMOOTHING ** len(self.lrs))
        self.losses.append(smoothed)
        self._lowest = min(self._lowest, smoothed)
        if not math.isfinite(smoothed) or smoothed > DIVERGED * self._lowest or len(self.lrs) >= self.steps:
            trainer.should_stop = True


def suggest(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the LR at the lowest smoothed loss (see the module docstring)."""
    losses = np.asarray(losses, dtype=float)
    lowest = int(np.argmin(np.where(np.isfinite(losses), losses, np.inf)))
    return float(lrs[lowest]) / 10


def recording(callback) -> bool:
    """The fit's callbacks that record or stop the run stay out of the range test."""
    from transferlab.callbacks import NonFiniteLossGuard, RunSummary

    kinds = (ModelCheckpoint, EarlyStopping, LearningRateMonitor, ProgressBar, NonFiniteLossGuard,
             RunSummary)
    return isinstance(callback, kinds)


def range_test(model: L.LightningModule, datamodule, make_trainer: Callable[..., L.Trainer],
               callbacks: list, start: float = 1e-7, end: float = 10.0, steps: int = 100) -> LRRamp:
    """The ramp over a copy of `model` (its weights untouched), on one device, with the fit's
    `callbacks` that do not record the run. `make_trainer(**settings)`: the fit's Trainer with
    these settings changed (its precision and plugins kept)."""
    trial = copy.deepcopy(model)
    trial.hparams.optimizer = dict(trial.hparams.optimizer) | {"lr": 1.0}  # groups at their ratios
    trial.hparams.scheduler = None
    ramp = LRRamp(start, end, steps)
    trainer = make_trainer(
        max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_train_batches=None, limit_val_batches=0, devices=1, num_nodes=1, strategy="auto",
        callbacks=[ramp, *(c for c in callbacks if not recording(c))])
    trainer.fit(trial, datamodule=datamodule)
    return ramp


def plot(ramp: LRRamp, pick: float, path: Path):
    """lr_find.png: the smoothed loss against the LR, the pick marked. Returns the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(ramp.lrs[:len(ramp.losses)], ramp.losses)
    ax.axvline(pick, color="tab:red", linestyle="--", label=f"pick: {pick:.3g}")
    ax.set(xscale="log", xlabel="learning rate of the head (each stage at its ratio)",
           ylabel="training loss (smoothed)", title="LR range test")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return fig


def find_lr(model, datamodule, make_trainer: Callable[..., L.Trainer], callbacks: list,
            run_dir: Path) -> dict:
    """Run the range test, write lr_find.json and lr_find.png into `run_dir`, and return the
    record (the pick under `lr`, the figure under `figure`)."""
    ramp = range_test(model, datamodule, make_trainer, callbacks)
    pick = suggest(ramp.lrs[:len(ramp.losses)], ramp.losses)
    record = {"lr": pick, "rule": "a tenth of the LR at the lowest smoothed loss",
              "steps": len(ramp.losses), "lrs": ramp.lrs[:len(ramp.losses)], "losses": ramp.losses}
    (run_dir / "lr_find.json").write_text(json.dumps(record, indent=1))
    record["figure"] = plot(ramp, pick, run_dir / "lr_find.png")
    log.info("optimizer.lr=auto: the LR range test (%d steps) picks %.3g (lr_find.png, lr_find.json)",
             len(ramp.losses), pick)
    return record
