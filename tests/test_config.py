from pathlib import Path

import pytest
from hydra.utils import instantiate

from transferlab.models.backbones import torchvision_models
from helpers import composed
from transferlab.freeze import FreezeStrategy
from transferlab.train import swept_hparams
from transferlab.train import config_dir

CONF = Path(config_dir())
GROUPS = ["task", "data", "backbone", "init", "freeze", "optimizer", "scheduler", "trainer",
          "logger", "callbacks", "cache", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_the_public_groups_and_options_exist():
    assert set(GROUPS) <= {p.name for p in CONF.iterdir() if p.is_dir()}
    assert {"pretrained", "he", "default"} <= set(options("init"))
    assert {"feature_extraction", "full", "partial", "gradual"} <= set(options("freeze"))
    assert {"default", "cpu", "gpu", "ddp", "fast"} <= set(options("trainer"))


@pytest.mark.parametrize(
    "override", [f"{g}={o}" for g in GROUPS for o in options(g)], ids=lambda s: s
)
def test_every_option_composes_and_instantiates(tmp_path, override, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_DATA_DIR", str(tmp_path / "datasets"))
    needs_root = override in ("data=image_folder", "data=segmentation_folder")
    extra = ["data.root=/my/images"] if needs_root else []
    cfg = composed(tmp_path, [override, *extra])
    assert cfg.backbone.name in torchvision_models()
    assert isinstance(instantiate(cfg.freeze), FreezeStrategy)
    instantiate(cfg.init)
    instantiate(cfg.data)
    assert cfg.optimizer.lr > 0
    if override.startswith("trainer=") and override not in ("trainer=gpu", "trainer=ddp"):
        instantiate(cfg.trainer)
    for part in ("callbacks", "logger"):
        for c in (cfg.get(part) or {}).values():
            instantiate(c)


def test_data_root_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_DATA_DIR", "/somewhere/datasets")
    assert composed(tmp_path, []).data.root == "/somewhere/datasets/hymenoptera"


def test_any_trainer_flag_can_be_overridden(tmp_path):
    cfg = composed(tmp_path, ["trainer.devices=4", "trainer.limit_train_batches=3",
                              "trainer.precision=bf16-mixed"])
    assert (cfg.trainer.devices, cfg.trainer.limit_train_batches) == (4, 3)


def test_experiment_reproduces_seed_settings(tmp_path):
    cfg = composed(tmp_path, ["experiment=ants_bees_vgg16_feature_extraction"])
    assert cfg.backbone.name == "vgg16" and cfg.freeze.frozen_stages == 5
    assert cfg.trainer.max_epochs == 12 and cfg.optimizer.momentum == 0.9


def test_parallel_launcher_config_composes(tmp_path):
    cfg = composed(tmp_path, ["hydra/launcher=parallel"])
    assert "joblib" in cfg.hydra.launcher._target_.lower() and cfg.hydra.launcher.n_jobs == 2


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = composed(tmp_path, ["hydra/launcher=slurm", "trainer=ddp"])
    assert cfg.hydra.launcher.tasks_per_node == 2


def test_hparams_name_the_backbone_actually_used(tmp_path):
    hparams = swept_hparams(composed(tmp_path, ["backbone.name=efficientnet_b0", "freeze=partial"]))
    assert hparams["backbone"] == "efficientnet_b0" and hparams["backbone.name"] == "efficientnet_b0"
    assert hparams["freeze"] == "partial" and hparams["init"] == "pretrained"
    assert not [k for k in hparams if k.startswith("choice/")]


@pytest.mark.parametrize("overrides,optimizer,lr,scheduler", [
    ([], "SGD", 1e-3, "StepLR"),                            # the tutorial's, for classification
    (["task=segmentation"], "AdamW", 1e-3, "CosineAnnealingLR"),
    (["task=segmentation", "optimizer=sgd"], "SGD", 1e-3, "CosineAnnealingLR"),
    (["task=segmentation", "scheduler=step", "optimizer.lr=3e-4"], "AdamW", 3e-4, "StepLR"),
    (["experiment=covid_lung_strategies"], "AdamW", 1e-3, "CosineAnnealingLR"),
])
def test_each_task_has_its_own_optimizer_defaults(tmp_path, overrides, optimizer, lr, scheduler):
    cfg = composed(tmp_path, overrides)
    assert cfg.optimizer._target_ == f"torch.optim.{optimizer}" and cfg.optimizer.lr == lr
    assert cfg.scheduler._target_ == f"torch.optim.lr_scheduler.{scheduler}"
