"""timm models through the same protocol as torchvision's (the freeze strategies and the feature
cache on timm models are covered in test_strategies.py and test_feature_cache.py)."""

import subprocess
import sys

import pytest
import timm
import torch

from transferlab.errors import ConfigError
from transferlab.models.backbones import TimmBackbone, stage_parameters
from transferlab.models.init import HeInit, Pretrained


@pytest.mark.parametrize("name,stages", [
    ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
    ("convnext_atto", ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head.norm", "head"]),
    ("regnetx_002", ["stem", "s1", "s2", "s3", "s4", "head"]),
])
def test_stages_come_from_the_group_matcher_and_cover_every_parameter(name, stages):
    backbone = TimmBackbone(name, num_classes=3)
    found = backbone.stages()
    assert list(found) == stages
    staged = [id(p) for items in found.values() for p in stage_parameters(items)]
    assert sorted(staged) == sorted({id(p) for p in backbone.net.parameters()})
    assert backbone.head is backbone.net.get_classifier() and backbone.head.out_features == 3


def test_vit_tokens_belong_to_the_stem():
    backbone = TimmBackbone("deit_tiny_patch16_224", 2, img_size=32)
    stem = {id(p) for p in stage_parameters(backbone.stages()["stem"])}
    assert {id(backbone.net.cls_token), id(backbone.net.pos_embed)} <= stem


def test_weights_path_loads_a_timm_state_dict_all_but_the_head(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet18")  # 1000 classes, as hub weights are
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone = TimmBackbone("resnet18", 2)
    head_before = backbone.head.weight.clone()
    Pretrained(weights_path=str(tmp_path / "resnet18.pth"))(backbone)
    assert torch.equal(backbone.net.conv1.weight, source.conv1.weight)
    assert torch.equal(backbone.head.weight, head_before)


def test_normalisation_is_the_pretrained_config_of_the_named_weights():
    assert Pretrained().normalization(TimmBackbone, "vit_tiny_patch16_224") == ((0.5,) * 3, (0.5,) * 3)
    assert HeInit().normalization(TimmBackbone, "vit_tiny_patch16_224")[0] == (0.485, 0.456, 0.406)


def test_offline_hub_weights_are_a_clear_error(monkeypatch):
    backbone = TimmBackbone("resnet18", 2)
    before = backbone.net.conv1.weight.clone()

    def offline(*args, pretrained=False, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="init.weights_path") as err:
        Pretrained()(backbone)
    assert "resnet18" in str(err.value)
    assert torch.equal(backbone.net.conv1.weight, before), "no silent fallback"


def test_unknown_timm_model_suggests_close_names():
    with pytest.raises(ConfigError, match="convnext_atto"):
        TimmBackbone("convnext_ato", 2)


def test_the_listing_command_finds_both_libraries():
    out = subprocess.run([sys.executable, "-m", "transferlab.cli.backbones", "resnet1*"],
                         capture_output=True, text=True, check=True).stdout
    assert "torchvision (" in out and "resnet18" in out.splitlines()[0]
    assert "timm (" in out and "resnet18" in out.splitlines()[1]
