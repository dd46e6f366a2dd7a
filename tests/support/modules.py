"""Modules, loaders and trainers the tests build without the CLI."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferlab.modules.classification import ClassificationModule

STRATEGY = "transferlab.freeze."


def backbone_config(name: str, **kwargs) -> dict:
    """`resnet18`: torchvision's; `timm/resnet18`: timm's."""
    family, _, timm_name = name.rpartition("/")
    target = "TimmBackbone" if family == "timm" else "TorchvisionBackbone"
    return {"_target_": f"transferlab.models.backbones.{target}", "name": timm_name, **kwargs}


def classifier_module(backbone="resnet18", freeze=None, lr=0.05, num_classes=2, backbone_args=None, **kw):
    return ClassificationModule(
        backbone=backbone_config(backbone, **(backbone_args or {})),
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


def fit_head_on_cache(root: str, cache_dir: str, start, statuses) -> None:
    """One feature-extraction fit through a FeatureCache; run in its own process by the test of
    concurrent sweep jobs, which releases every process at once through `start`."""
    from transferlab.cache import FeatureCache
    from transferlab.data.classification import ImageFolderDataModule

    torch.manual_seed(0)  # the same weights in every job, as pretrained ones would be
    module = classifier_module("resnet18", {"_target_": STRATEGY + "FeatureExtraction"})
    cache = FeatureCache(dir=cache_dir)
    datamodule = ImageFolderDataModule(root, image_size=32, batch_size=4, num_workers=0, augment=False)
    start.wait()
    quiet_trainer(max_epochs=1, callbacks=[cache]).fit(module, datamodule=datamodule)
    statuses.put(cache.status)
