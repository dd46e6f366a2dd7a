from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from transferlab.config import compose
from transferlab.models.backbones import segmentation_models, torchvision_models
from transferlab.freeze import FreezeStrategy
from transferlab.cli.train import swept_hparams
from transferlab.config import config_dir

CONF = Path(config_dir())
GROUPS = ["task", "data", "augment", "backbone", "init", "freeze", "optimizer", "scheduler", "trainer",
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
    cfg = compose([override, *extra], tmp_path)
    assert cfg.backbone.name in torchvision_models() + segmentation_models()
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
    assert compose([], tmp_path).data.root == "/somewhere/datasets/hymenoptera"


def test_any_trainer_flag_can_be_overridden(tmp_path):
    cfg = compose(["trainer.devices=4", "trainer.limit_train_batches=3",
                              "trainer.precision=bf16-mixed"], tmp_path)
    assert (cfg.trainer.devices, cfg.trainer.limit_train_batches) == (4, 3)


def test_experiment_reproduces_seed_settings(tmp_path):
    cfg = compose(["experiment=ants_bees_vgg16_feature_extraction"], tmp_path)
    assert cfg.backbone.name == "vgg16" and cfg.freeze.frozen_stages == 5
    assert cfg.trainer.max_epochs == 12 and cfg.optimizer.momentum == 0.9


def test_parallel_launcher_config_composes(tmp_path):
    cfg = compose(["hydra/launcher=parallel"], tmp_path)
    assert "joblib" in cfg.hydra.launcher._target_.lower() and cfg.hydra.launcher.n_jobs == 2


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose(["hydra/launcher=slurm", "trainer=ddp"], tmp_path)
    assert cfg.hydra.launcher.tasks_per_node == 2


def test_hparams_name_the_backbone_actually_used(tmp_path):
    hparams = swept_hparams(compose(["backbone.name=efficientnet_b0", "freeze=partial"], tmp_path))
    assert hparams["backbone"] == "efficientnet_b0" and hparams["backbone.name"] == "efficientnet_b0"
    assert hparams["freeze"] == "partial" and hparams["init"] == "pretrained"
    assert not [k for k in hparams if k.startswith("choice/")]


@pytest.mark.parametrize("overrides,optimizer,lr,scheduler", [
    ([], "SGD", 1e-3, "torch.optim.lr_scheduler.StepLR"),                            # the tutorial's, for classification
    (["task=segmentation"], "AdamW", 1e-3, "transferlab.schedules.cosine"),
    (["task=segmentation", "optimizer=sgd"], "SGD", 1e-3, "transferlab.schedules.cosine"),
    (["task=segmentation", "scheduler=step", "optimizer.lr=3e-4"], "AdamW", 3e-4,
     "torch.optim.lr_scheduler.StepLR"),
    (["experiment=covid_lung_strategies"], "AdamW", 1e-3, "transferlab.schedules.cosine"),
])
def test_each_task_has_its_own_optimizer_defaults(tmp_path, overrides, optimizer, lr, scheduler):
    cfg = compose(overrides, tmp_path)
    assert cfg.optimizer._target_ == f"torch.optim.{optimizer}" and cfg.optimizer.lr == lr
    assert cfg.scheduler._target_ == scheduler


@pytest.mark.parametrize("overrides,classes", [
    ([], ["background", "lung"]),  # the lung set: its own names
    (["data.root=/my/membranes"], None),  # someone else's masks: the binary default, not "lung"
    (["data.root=/my/membranes", "data.classes=[background,membrane]"], ["background", "membrane"]),
    (["data=segmentation_folder", "data.root=/my/membranes"], None),
])
def test_a_data_root_of_ones_own_does_not_inherit_the_lung_names(tmp_path, monkeypatch, overrides, classes):
    monkeypatch.setenv("TRANSFERLAB_DATA_DIR", "/datasets")
    cfg = compose(["task=segmentation", *overrides], tmp_path)
    assert (None if cfg.data.classes is None else list(cfg.data.classes)) == classes
    names = instantiate(cfg.data, seed=0).classes
    assert names == (classes or ["background", "foreground"])


def test_a_run_saved_with_retired_settings_still_resumes(tmp_path):
    """Runs saved before FastTraining's loader arguments became data.* values name them."""
    from omegaconf import OmegaConf

    from transferlab.cli.train import restore_run

    saved = compose(["trainer=fast", "trainer.accelerator=cpu"], tmp_path)
    saved = OmegaConf.masked_copy(saved, [k for k in saved if k != "hydra"])
    saved.callbacks.fast_training.num_workers = "auto"
    saved.callbacks.fast_training.pin_memory = "auto"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))
    (tmp_path / "checkpoints").mkdir()
    torch.save({"epoch": 0}, tmp_path / "checkpoints" / "last.ckpt")
    cfg, last = restore_run(tmp_path, [f"resume={tmp_path}"])
    instantiate(cfg.callbacks.fast_training)
    assert last == tmp_path / "checkpoints" / "last.ckpt"
