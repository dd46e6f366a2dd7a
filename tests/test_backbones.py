import pytest
import torch
from torch import nn

from transferlab.errors import ConfigError
from transferlab.models.backbones import build_classifier, head_name
from transferlab.models.stages import stage_map, stage_parameters

REQUIRED = [
    "alexnet", "vgg16", "vgg16_bn", "resnet18", "resnet50", "mobilenet_v3_large",
    "efficientnet_b0", "densenet121", "convnext_tiny",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_backbone_builds_with_new_head_and_full_stage_map(name):
    net = build_classifier(name, num_classes=3)
    head = net.get_submodule(head_name(net))
    assert isinstance(head, nn.Linear) and head.out_features == 3

    stages = stage_map(net)
    names = list(stages)
    assert names[-1] == "head" and head in stages["head"]
    assert len(names) >= 3
    staged = [p for mods in stages.values() for p in stage_parameters(mods)]
    assert len({id(p) for p in staged}) == len(staged), "a parameter sits in two stages"
    assert {id(p) for p in staged} == {id(p) for p in net.parameters()}

    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_resnet_stage_names():
    assert list(stage_map(build_classifier("resnet18", 2))) == [
        "stem", "layer1", "layer2", "layer3", "layer4", "head"
    ]


@pytest.mark.parametrize("name,blocks,convs", [("vgg16", 5, 13), ("alexnet", 3, 5)])
def test_vgg_alexnet_split_at_maxpools_and_keep_4096_layers(name, blocks, convs):
    net = build_classifier(name, 2)
    stages = stage_map(net)
    conv_blocks = [n for n in stages if n.startswith("block")]
    assert len(conv_blocks) == blocks
    for n in conv_blocks:
        assert isinstance(stages[n][-1], nn.MaxPool2d), f"{n} does not end at a max-pool"
    assert sum(isinstance(m, nn.Conv2d) for n in conv_blocks for m in stages[n]) == convs
    fcs = [m for m in stages["classifier"] if isinstance(m, nn.Linear)]
    assert [m.out_features for m in fcs] == [4096, 4096]
    assert net.classifier[-1].out_features == 2


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError, match="resnet18"):
        build_classifier("resnet181", 2)


def test_any_registry_model_gets_a_stage_map():
    stages = stage_map(build_classifier("regnet_y_400mf", 2))
    assert list(stages)[-1] == "head" and len(stages) >= 3
