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
