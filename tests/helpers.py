from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch.utils.data import DataLoader, TensorDataset

from transferlab.modules.classification import ClassificationModule
from transferlab.train import config_dir

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


def composed(tmp_path, overrides: list[str]):
    """The train config as a run with these overrides composes it, with Hydra's runtime set."""
    with initialize_config_dir(str(Path(config_dir())), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


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
