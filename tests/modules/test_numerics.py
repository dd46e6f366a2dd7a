import math

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from tests.support.modules import classifier_module, quiet_trainer, random_loader
from transferlab.callbacks import NonFiniteLossGuard
from transferlab.modules.classification import ClassificationModule


class NanAfter(nn.Module):
    """Cross-entropy that turns NaN from the `after`-th call on."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, logits, y):
        self.calls += 1
        loss = nn.functional.cross_entropy(logits, y)
        return loss * math.nan if self.calls > self.after else loss


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    module = classifier_module("resnet18")
    nan_after = NanAfter(after=3)  # steps 0-2 fine (epochs 0-2), step 3 NaN
    module.criterion = nan_after.forward  # an instance attribute: it shadows the module's method
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=5, limit_val_batches=0, enable_checkpointing=True,
                            callbacks=[ckpt, NonFiniteLossGuard()])
    with pytest.raises(FloatingPointError, match="at global step 3"):
        trainer.fit(module, random_loader(n=2, batch_size=2))
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3
    restored = ClassificationModule.load_from_checkpoint(tmp_path / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in restored.parameters())
    assert all(torch.isfinite(p).all() for p in module.parameters()), "a NaN step reached the weights"
