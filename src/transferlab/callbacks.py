import math

import lightning as L
from lightning.pytorch.callbacks import Callback


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
