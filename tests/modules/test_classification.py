import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.support.modules import STRATEGY, classifier_module, quiet_trainer, random_loader
from transferlab.errors import ConfigError
from transferlab.modules.classification import ClassificationModule
from transferlab.freeze import is_frozen

GRADUAL = {"_target_": STRATEGY + "GradualUnfreezing", "head_epochs": 1, "unfreeze_every": 1,
           "backbone_lr_mult": 0.1, "stage_lr_decay": 0.5}


def test_every_stage_has_its_param_group_from_the_first_step():
    module = classifier_module("resnet18", GRADUAL, lr=0.01)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(module, random_loader(n=2, batch_size=2))
    groups = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert groups["head"] == pytest.approx(0.01)
    assert groups["layer4"] == pytest.approx(0.001)
    assert groups["layer3"] == pytest.approx(0.0005)
    assert groups["stem"] == pytest.approx(0.001 * 0.5**4)
    n_params = sum(len(g["params"]) for g in trainer.optimizers[0].param_groups)
    assert n_params == len(list(module.parameters()))


def test_gradual_unfreezing_survives_resume_mid_schedule(tmp_path):
    loader = random_loader(n=2, batch_size=2)
    module = classifier_module("resnet18", GRADUAL)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[ckpt], enable_checkpointing=True).fit(module, loader)
    stem_after_two = module.net.conv1.weight.clone()
    assert is_frozen(module.stages["layer3"]) and not is_frozen(module.stages["layer4"])

    resumed = classifier_module("resnet18", GRADUAL)
    trainer = quiet_trainer(max_epochs=4, limit_val_batches=0)
    trainer.fit(resumed, loader, ckpt_path=str(tmp_path / "last.ckpt"))
    stages = resumed.stages
    # epochs 2 and 3 thawed layer3 and layer2; stem and layer1 never trained
    assert [n for n, m in stages.items() if is_frozen(m)] == ["stem", "layer1"]
    assert torch.equal(resumed.net.conv1.weight, stem_after_two)
    assert len(trainer.optimizers[0].param_groups) == 6


def test_load_from_checkpoint_without_hydra_gives_identical_predictions(tmp_path):
    module = classifier_module("resnet18", {"_target_": STRATEGY + "FullFineTune"}, class_names=["a", "b"])
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(module, random_loader(n=2, batch_size=2))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = ClassificationModule.load_from_checkpoint(path)
    assert loaded.hparams.backbone["name"] == "resnet18"
    assert loaded.hparams.class_names == ["a", "b"]
    x = torch.randn(3, 3, 64, 64)
    module.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(module(x), loaded(x))


def test_validation_keeps_frozen_stages_in_eval_mode():
    module = classifier_module("resnet18", {"_target_": STRATEGY + "FeatureExtraction"})
    loader = random_loader(n=2, batch_size=2)
    quiet_trainer(max_epochs=1).fit(module, loader, loader)
    module.train()
    assert not module.net.layer1.training and module.net.fc.training


@pytest.mark.parametrize("freeze,match", [
    ({"_target_": STRATEGY + "PartialFineTune", "frozen_stages": 9}, "has 5 stages"),
    ({"_target_": STRATEGY + "PartialFineTune", "frozen_stages": ["stem", "layer9"]}, "layer9"),
    ({"_target_": STRATEGY + "PartialFineTune", "frozen_stages": ["head"]}, "nothing would train"),
])
def test_bad_freeze_settings_fail_at_construction(freeze, match):
    with pytest.raises(ConfigError, match=match):
        classifier_module("resnet18", freeze)
