import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

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


# Every torchvision classifier either gets a stage map or is refused with a ConfigError; these
# are the ones refused today (the README lists them). Adding support, or a torchvision release
# that adds a model without it, fails test_every_torchvision_classifier_maps_or_is_refused.
UNSUPPORTED = {
    # SqueezeNet's classifier is a 1x1 Conv2d: build_classifier finds no Linear head to replace.
    "squeezenet1_0", "squeezenet1_1",
    # VisionTransformer keeps class_token as a parameter of its own, outside every child module.
    "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32",
    # Training mode returns the auxiliary classifiers' outputs too; refused by build_classifier.
    "googlenet", "inception_v3",
}
TORCHVISION_CLASSIFIERS = torchvision.models.list_models(module=torchvision.models)


def _params_to_meta(module, name, param):
    return None if param is None else nn.Parameter(param.to("meta"), param.requires_grad)


def build_on_meta(name: str) -> nn.Module:
    """The architecture without weight memory or initialisation cost, for structural checks."""
    try:
        with torch.device("meta"):
            return build_classifier(name, num_classes=3)
    except NotImplementedError:
        # RegNet derives its stage widths with tensor ops and .tolist(), which meta tensors
        # cannot answer. Build on the CPU instead and swap each parameter for a meta one as it
        # is registered: the CPU tensors are never initialised, torchvision's init runs on meta.
        handle = register_module_parameter_registration_hook(_params_to_meta)
        try:
            return build_classifier(name, num_classes=3)
        finally:
            handle.remove()


def test_unsupported_list_names_real_models():
    assert UNSUPPORTED <= set(TORCHVISION_CLASSIFIERS)


@pytest.mark.parametrize("name", TORCHVISION_CLASSIFIERS)
def test_every_torchvision_classifier_maps_or_is_refused(name):
    if name in UNSUPPORTED:
        with pytest.raises(ConfigError):
            stage_map(build_on_meta(name))
        return
    net = build_on_meta(name)
    assert all(p.is_meta for p in net.parameters())
    stages = stage_map(net)
    assert list(stages)[-1] == "head"
    head = net.get_submodule(head_name(net))
    assert head in stages["head"] and isinstance(head, nn.Linear) and head.out_features == 3
    staged = [id(p) for mods in stages.values() for p in stage_parameters(mods)]
    assert len(staged) == len(set(staged)), "a parameter sits in two stages"
    assert set(staged) == {id(p) for p in net.parameters()}
