import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from transferlab.errors import ConfigError
from transferlab.freeze import FeatureExtraction
from transferlab.models.backbones import TorchvisionBackbone, stage_parameters
from transferlab.models.init import Pretrained

TORCHVISION_CLASSIFIERS = torchvision.models.list_models(module=torchvision.models)


def _params_to_meta(module, name, param):
    return None if param is None else nn.Parameter(param.to("meta"), param.requires_grad)


def build_on_meta(name: str, **kwargs) -> TorchvisionBackbone:
    """The architecture without weight memory or initialisation cost, for structural checks."""
    try:
        with torch.device("meta"):
            return TorchvisionBackbone(name, num_classes=3, **kwargs)
    except NotImplementedError:
        # RegNet derives its stage widths with tensor ops and .tolist(), which meta tensors
        # cannot answer. Build on the CPU instead and swap each parameter for a meta one as it
        # is registered: the CPU tensors are never initialised, torchvision's init runs on meta.
        handle = register_module_parameter_registration_hook(_params_to_meta)
        try:
            return TorchvisionBackbone(name, num_classes=3, **kwargs)
        finally:
            handle.remove()


def assert_full_stage_map(backbone):
    stages = backbone.stages()
    assert list(stages)[-1] == "head" and backbone.head in stages["head"]
    assert len(stages) >= 3
    staged = [id(p) for items in stages.values() for p in stage_parameters(items)]
    assert len(staged) == len(set(staged)), "a parameter sits in two stages"
    assert set(staged) == {id(p) for p in backbone.net.parameters()}
    return stages


@pytest.mark.parametrize("name", TORCHVISION_CLASSIFIERS)
def test_every_torchvision_classifier_builds_with_a_new_head_and_a_full_stage_map(name):
    backbone = build_on_meta(name)
    assert all(p.is_meta for p in backbone.net.parameters())
    head = backbone.head
    assert (head.out_channels if isinstance(head, nn.Conv2d) else head.out_features) == 3
    stages = assert_full_stage_map(backbone)

    FeatureExtraction().apply(stages, epoch=0, training=True)
    trainable = {id(p) for p in backbone.net.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in head.parameters()}

    # Training mode gives one logits tensor (GoogLeNet and Inception-v3: no auxiliary outputs).
    size = 299 if name == "inception_v3" else 224
    backbone.check_image_size(size)
    net = backbone.net.train()
    tensors = {k: t.to("meta") for k, t in [*net.named_parameters(), *net.named_buffers()]}
    out = torch.func.functional_call(net, tensors, torch.empty(2, 3, size, size, device="meta"))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_resnet_stage_names():
    assert list(TorchvisionBackbone("resnet18", 2).stages()) == [
        "stem", "layer1", "layer2", "layer3", "layer4", "head"
    ]


@pytest.mark.parametrize("name,blocks,convs", [("vgg16", 5, 13), ("alexnet", 3, 5)])
def test_vgg_alexnet_split_at_maxpools_and_keep_4096_layers(name, blocks, convs):
    backbone = build_on_meta(name)
    stages = backbone.stages()
    conv_blocks = [n for n in stages if n.startswith("block")]
    assert len(conv_blocks) == blocks
    for n in conv_blocks:
        assert isinstance(stages[n][-1], nn.MaxPool2d), f"{n} does not end at a max-pool"
    assert sum(isinstance(m, nn.Conv2d) for n in conv_blocks for m in stages[n]) == convs
    fcs = [m for m in stages["classifier"] if isinstance(m, nn.Linear)]
    assert [m.out_features for m in fcs] == [4096, 4096]
    assert backbone.net.classifier[-1].out_features == 3


@pytest.mark.parametrize("name,channels", [("vgg16_bn", 512), ("alexnet", 256)])
def test_pre_logits_drop_pools_the_conv_features_straight_into_the_head(name, channels):
    backbone = build_on_meta(name, pre_logits="drop")
    stages = assert_full_stage_map(backbone)
    assert "classifier" not in stages and not any(
        isinstance(m, nn.Linear) for n, items in stages.items() if n != "head" for m in items
    )
    assert (backbone.head.in_features, backbone.head.out_features) == (channels, 3)
    backbone.check_image_size(64)


def test_pre_logits_drop_loads_imagenet_weights_but_the_dropped_layers(tmp_path):
    imagenet = torchvision.models.alexnet(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "alexnet.pth")
    backbone = TorchvisionBackbone("alexnet", 2, pre_logits="drop")
    Pretrained(weights_path=str(tmp_path / "alexnet.pth"))(backbone)
    assert torch.equal(backbone.net.features[0].weight, imagenet.features[0].weight)


@pytest.mark.parametrize("name,value,message", [
    ("resnet18", "drop", "has no rule for it; VGG and AlexNet have one"),
    ("vgg16", "yes", "choose keep or drop"),
])
def test_pre_logits_refusals_name_the_key(name, value, message):
    with pytest.raises(ConfigError, match=f"backbone.pre_logits.*{message}"):
        TorchvisionBackbone(name, 2, pre_logits=value)


def test_vit_class_token_and_position_embedding_belong_to_the_stem():
    backbone = build_on_meta("vit_b_16")
    net, stages = backbone.net, backbone.stages()
    stem = {id(p) for p in stage_parameters(stages["stem"])}
    for p in (net.class_token, net.encoder.pos_embedding, *net.conv_proj.parameters()):
        assert id(p) in stem
    assert [n for n in stages if n.startswith("block")] == [f"block{i}" for i in range(1, 13)]
    assert net.encoder.ln in stages["classifier"]


def test_squeezenet_head_is_its_1x1_conv():
    backbone = TorchvisionBackbone("squeezenet1_1", 5)
    assert backbone.head_path == "classifier.1" and backbone.head.out_channels == 5


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError, match="resnet18"):
        TorchvisionBackbone("resnet181", 2)


@pytest.mark.parametrize("name,size,hint", [
    ("alexnet", 32, "cannot take 32x32"),
    ("inception_v3", 64, "cannot take 64x64"),
    ("vit_b_16", 64, r"\+backbone.image_size=N"),
    ("maxvit_t", 64, r"\+backbone.input_size"),
])
def test_an_image_size_the_network_cannot_take_is_refused_before_training(name, size, hint):
    with pytest.raises(ConfigError, match=hint):
        build_on_meta(name).check_image_size(size)


def test_small_images_pass_where_the_network_takes_them():
    build_on_meta("resnet18").check_image_size(32)
    build_on_meta("inception_v3").check_image_size(75)
    build_on_meta("vit_b_16", image_size=64).check_image_size(64)


def test_googlenet_loads_imagenet_weights_without_its_auxiliary_classifiers(tmp_path):
    torch.manual_seed(0)
    imagenet = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path / "googlenet.pth"
    torch.save(imagenet.state_dict(), path)
    backbone = TorchvisionBackbone("googlenet", 2)
    Pretrained(weights_path=str(path))(backbone)
    assert torch.equal(backbone.net.conv1.conv.weight, imagenet.conv1.conv.weight)
    assert backbone.net.transform_input, "the ImageNet weights expect their input transform"


def test_adding_a_family_is_one_table_entry(monkeypatch):
    """What the README's "Adding a family" says: an entry in FAMILIES for the network class, and
    the stage map, the head and the freeze strategies follow."""
    from torchvision.models import ShuffleNetV2

    from transferlab.models.backbones import FAMILIES
    from transferlab.models.backbones.torchvision import Family

    def two_halves(net):
        return {"front": [net.conv1, net.maxpool, net.stage2], "back": [net.stage3, net.stage4, net.conv5]}

    monkeypatch.setitem(FAMILIES, ShuffleNetV2, Family(body=two_halves))
    backbone = TorchvisionBackbone("shufflenet_v2_x0_5", 3)
    assert list(backbone.stages()) == ["front", "back", "head"]
    FeatureExtraction().apply(backbone.stages(), epoch=0, training=True)
    assert [n for n, p in backbone.net.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
