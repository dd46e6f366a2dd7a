import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferlab.modules.classification import ClassificationModule

STRATEGY = "transferlab.strategies."


def classifier_module(backbone="resnet18", freeze=None, lr=0.05, num_classes=2, **kw):
    return ClassificationModule(
        backbone={"_target_": "transferlab.models.backbones.build_classifier", "name": backbone},
        num_classes=num_classes,
        freeze=freeze or {"_target_": STRATEGY + "FullFineTune"},
        optimizer={"_target_": "torch.optim.SGD", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4},
        scheduler=kw.pop("scheduler", None),
        **kw,
    )


def random_loader(n=8, size=64, batch_size=4, num_classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def quiet_trainer(**kw):
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    return L.Trainer(**(defaults | kw))
