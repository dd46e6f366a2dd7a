"""transferlab's Lightning callbacks: the run summary, the NaN guard, per-epoch seeding."""

import logging
import math
import resource
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import TensorBoardLogger

from transferlab.summary import update_summary

log = logging.getLogger("transferlab")


class NonFiniteLossGuard(Callback):
    """Stops the run at the first NaN/inf loss, before it reaches the weights.

    Raising before backward means no optimizer step sees the bad loss and no checkpoint is written
    after it: the last checkpoint on disk is the last good one.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"train loss is {value} at global step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}); stopping. The last good checkpoint is kept in "
                f"{trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else 'none'}."
                " Lower optimizer.lr, or check the data."
            )


class EpochSeed(Callback):
    """Reseeds the global random streams (dropout, anything not seeded per sample) at every epoch
    from (seed, epoch), so a run resumed at epoch k continues exactly like an uninterrupted one."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed * 1000 + trainer.current_epoch, verbose=False)


def peak_memory_mb() -> dict[str, float]:
    peak = {"cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def _floats(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def stopped_epoch(trainer: L.Trainer) -> int | None:
    """The epoch after which early stopping ended the run; None when it has not (or there is no
    early stopping). Lightning keeps this in the callback's checkpointed state, so a resumed run
    reports it too."""
    for callback in trainer.early_stopping_callbacks:
        if callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            return callback.stopped_epoch
    return None


class RunSummary(Callback):
    """Writes summary.json after every epoch (status `running`), at the end (`completed`) and
    on an exception (`failed`); logs the swept settings and the real best metric as hparams."""

    def __init__(self, path: str | Path, monitor: str, mode: str = "max", hparams: dict | None = None):
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        self.hparams = hparams or {}
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict] = []
        self._epoch_start = 0.0

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "history": self.history,
                "hparams": self.hparams}

    def load_state_dict(self, state: dict) -> None:
        # A resumed run keeps the settings the run was started with.
        self.best, self.best_epoch, self.history = state["best"], state["best_epoch"], state["history"]
        self.hparams = state["hparams"]

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, **extra) -> None:
        if not trainer.is_global_zero:
            return
        trainable, total = pl_module.parameter_counts()
        epoch_times = [h["time_s"] for h in self.history]
        update_summary(
            self.path,
            monitor=self.monitor,
            monitor_mode=self.mode,
            best=self.best,
            best_epoch=self.best_epoch,
            epochs_completed=len(self.history),
            status=status,
            metrics=_floats(trainer.callback_metrics),
            time_per_epoch_s=sum(epoch_times) / len(epoch_times) if epoch_times else None,
            time_total_s=sum(epoch_times),
            params_trainable=trainable,
            params_total=total,
            peak_memory=peak_memory_mb(),
            history=self.history,
            best_checkpoint=self.best_checkpoint(trainer),
            stopped_epoch=stopped_epoch(trainer),
            **extra,
        )

    def best_checkpoint(self, trainer: L.Trainer) -> str | None:
        """The file of the checkpoint callback that follows this run's monitor, once it saved."""
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "monitor", None) == self.monitor and callback.best_model_path:
                return callback.best_model_path
        return None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, "running", hparams=self.hparams)
        for logger in trainer.loggers:
            # TensorBoard gets them at the end, with the real best value (its hparams tab).
            if not isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                logger.log_hyperparams(self.hparams)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Validation has already run for this epoch when this hook fires.
        metrics = _floats(trainer.callback_metrics)
        value = metrics.get(self.monitor)
        better = value is not None and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        )
        if better:
            self.best, self.best_epoch = value, trainer.current_epoch
        elapsed = time.perf_counter() - self._epoch_start
        self.history.append({"epoch": trainer.current_epoch, "time_s": elapsed, **metrics})
        self._write(trainer, pl_module, "running")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, "completed", error=None)
        final = {"hp/best": self.best if self.best is not None else float("nan")}
        if "train/loss" in trainer.callback_metrics:
            final["hp/final_train_loss"] = float(trainer.callback_metrics["train/loss"])
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.hparams, final)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        try:
            self._write(trainer, pl_module, "failed", error=f"{type(exception).__name__}: {exception}")
        except OSError as err:  # the failure may be the disk itself: say so, do not add another
            log.warning("summary.json not updated (%s); the run's failure: %s", err, exception)
