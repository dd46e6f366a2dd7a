"""The segmentation networks beyond the seed's U-Net: torchvision's FCN / DeepLabV3 / LR-ASPP
(`backbone=tv_segmentation`) and the U-Net on any feature pyramid (`backbone=unet`), each behind
the backbone protocol: stage maps, new heads, weights, every freeze strategy, the feature cache.
Structure is checked on the meta device; what trains, trains at 32 px for a few steps."""

import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.support.data import make_mask_folder
from tests.support.modules import STRATEGY, quiet_trainer
from tests.support.freezing import STRATEGIES, fit_and_check_frozen, no_stochastic_depth
from transferlab.errors import ConfigError
from transferlab.models.backbones import (
    TorchvisionSegmentationBackbone,
    UNetBackbone,
    eval_mode,
    segmentation_models,
    stage_parameters,
)
from transferlab.models.backbones.encoders import (
    build_pyramid,
    pyramid_levels,
    pyramid_problem,
    timm_names,
)
from transferlab.models.init import Pretrained
from transferlab.modules.segmentation import SegmentationModule
from transferlab.normalization import IMAGENET_MEAN, IMAGENET_STD

BACKBONES = "transferlab.models.backbones."
TV = BACKBONES + "TorchvisionSegmentationBackbone"
UNET = BACKBONES + "UNetBackbone"
# One member of each family, the smallest, as the configs build them.
FAMILIES = {
    "unet_resnet18": {"_target_": UNET, "encoder": "resnet18"},
    # timm zero-initialises each residual block's last BN scale: the block's other weights would
    # get an exactly zero gradient in the one step the gradual case trains them.
    "unet_timm_resnet18": {"_target_": UNET, "encoder": "timm:resnet18", "zero_init_last": False},
    "fcn_resnet50_aux": {"_target_": TV, "name": "fcn_resnet50", "aux_loss": True},
    "deeplabv3_mobilenet_v3_large": {"_target_": TV, "name": "deeplabv3_mobilenet_v3_large"},
    "lraspp_mobilenet_v3_large": {"_target_": TV, "name": "lraspp_mobilenet_v3_large"},
}


def module(family: str, freeze: dict | None = None) -> SegmentationModule:
    return SegmentationModule(
        backbone=FAMILIES[family], num_classes=2, class_names=["background", "lung"],
        freeze=freeze or {"_target_": STRATEGY + "FullFineTune"},
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 1e-2},
    )


# FCN's ResNet-50 keeps 1/8 of the side: 16 px leave 2x2 maps, a quarter of 32 px's arithmetic.
TRAIN_SIZE = {"fcn_resnet50_aux": 16}


def random_masks(n=2, size=32, seed=0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (torch.rand(n, size, size, generator=g) > 0.6).long()
    return DataLoader(TensorDataset(x, y), batch_size=2)


def meta_forward(net: nn.Module, *shape: int):
    tensors = {k: t.to("meta") for k, t in [*net.named_parameters(), *net.named_buffers()]}
    return torch.func.functional_call(net, tensors, torch.empty(*shape, device="meta"))


def assert_full_stage_map(backbone) -> dict:
    stages = backbone.stages()
    staged = [id(p) for items in stages.values() for p in stage_parameters(items)]
    assert len(staged) == len(set(staged)), "a parameter sits in two stages"
    assert set(staged) == {id(p) for p in backbone.net.parameters()}
    return stages


# -- torchvision's segmentation models -----------------------------------------------------------

RESNET = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
MOBILENET = [f"features.{i}" for i in range(17)] + ["head"]


@pytest.mark.parametrize("name", segmentation_models())
def test_every_torchvision_segmentation_model_gets_new_logit_layers_and_a_full_stage_map(name):
    aux = not name.startswith("lraspp")  # LR-ASPP has no aux classifier
    with torch.device("meta"):
        backbone = TorchvisionSegmentationBackbone(name, 3, aux_loss=aux)
    stages = assert_full_stage_map(backbone)
    assert list(stages) == (MOBILENET if "mobilenet" in name else RESNET)
    assert stages["head"] == [m for m in (backbone.net.classifier, backbone.net.aux_classifier) if m]
    for path in backbone.logit_layers:
        assert backbone.net.get_submodule(path).out_channels == 3, path
    assert backbone.head is backbone.net.get_submodule(backbone.logit_layers[0 if aux else -1])

    # Training with the aux classifier: both outputs at the input's size; otherwise one tensor.
    out = meta_forward(backbone.net.train(), 2, 3, 65, 77)
    outputs = out if aux else {"out": out}
    assert {k: tuple(v.shape) for k, v in outputs.items()} == dict.fromkeys(outputs, (2, 3, 65, 77))
    assert meta_forward(backbone.net.eval(), 1, 3, 33, 40).shape == (1, 3, 33, 40)


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_the_network_computes_what_torchvision_computes(name):
    torch.manual_seed(0)
    backbone = TorchvisionSegmentationBackbone(name, 2)
    reference = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=2)
    reference.load_state_dict(backbone.net.state_dict())  # the same names, every one
    x = torch.randn(2, 3, 45, 38)
    with torch.no_grad():
        assert torch.equal(backbone.net.eval()(x), reference.eval()(x)["out"])


def test_lraspp_refuses_an_aux_classifier_and_unknown_names_get_suggestions():
    with pytest.raises(ConfigError, match="no aux classifier"):
        TorchvisionSegmentationBackbone("lraspp_mobilenet_v3_large", 2, aux_loss=True)
    with pytest.raises(ConfigError, match="fcn_resnet50"):
        TorchvisionSegmentationBackbone("fcn_resnet5", 2)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # a step outside a Trainer
def test_the_aux_output_weighs_into_the_training_loss_only():
    torch.manual_seed(0)
    seg = SegmentationModule(
        backbone={"_target_": TV, "name": "deeplabv3_mobilenet_v3_large", "aux_loss": True},
        num_classes=2, aux_weight=0.25, freeze={"_target_": STRATEGY + "FullFineTune"},
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3})
    x, y = next(iter(random_masks()))
    seg.train()
    torch.manual_seed(1)  # the same dropout masks in both passes
    outputs = seg.net(x)
    main = seg.criterion(outputs["out"], y)
    expected = main + 0.25 * seg.criterion(outputs["aux"], y)
    torch.manual_seed(1)
    assert torch.allclose(seg.training_step((x, y), 0), expected)
    assert not torch.allclose(expected, main)
    seg.eval()
    with torch.no_grad():
        assert isinstance(seg.net(x), torch.Tensor)  # predict, eval and export see one tensor
        assert seg.predict_step(x, 0).shape == (2, 2, 32, 32)


# -- the U-Net on any pyramid -------------------------------------------------------------------

@pytest.mark.parametrize("encoder,reductions,stages,skips", [
    ("resnet34", (2, 4, 8, 16, 32), ["stem", "layer1", "layer2", "layer3", "layer4"], [3, 2, 1, 0, None]),
    ("vgg11_bn", (1, 2, 4, 8, 16), ["block1", "block2", "block3", "block4", "block5"], [3, 2, 1, 0]),
    # ConvNeXt's stem patchifies 4x4: two decoder blocks without a skip reach the input's side.
    ("convnext_tiny", (4, 8, 16, 32), [f"features.{i}" for i in range(8)], [2, 1, 0, None, None]),
    ("timm:resnet18", (2, 4, 8, 16, 32), ["act1", "layer1", "layer2", "layer3", "layer4"],
     [3, 2, 1, 0, None]),
    ("timm:efficientnet_b0", (2, 4, 8, 16, 32), [f"blocks.{i}" for i in (0, 1, 2, 4, 6)], [3, 2, 1, 0, None]),
])
def test_a_unet_on_any_pyramid_has_one_decoder_block_per_halving(encoder, reductions, stages, skips):
    with torch.device("meta"):
        backbone = UNetBackbone(2, encoder=encoder)
    assert backbone.net.reductions == reductions and backbone.pads_to == reductions[-1]
    assert list(assert_full_stage_map(backbone)) == [*stages, "head"]
    assert backbone.net.decoder.skips == skips
    for size in [(64, 64), (65, 77), (1, 1)]:
        assert meta_forward(backbone.net.eval(), 2, 3, *size).shape == (2, 2, *size)


def test_every_skip_and_stage_of_a_resnet_encoder_feeds_the_mask():
    torch.manual_seed(0)
    backbone = UNetBackbone(2, encoder="resnet18")
    net = backbone.net
    features = [f.detach().requires_grad_() for f in net.encoder(torch.randn(2, 3, 64, 64))]
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    net.segmentation_head(net.decoder(features)).sum().backward()
    assert all(f.grad.abs().sum() > 0 for f in features)
    # The encoder keeps the classifier's names and computes what the classifier computes.
    classifier = torchvision.models.resnet18()
    classifier.load_state_dict(net.encoder.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        body = nn.Sequential(*list(classifier.eval().children())[:-2])  # without avgpool and fc
        assert torch.equal(net.encoder.eval()(x)[-1], body(x))
    assert set(classifier.state_dict()) - set(net.encoder.state_dict()) == {"fc.weight", "fc.bias"}


def test_the_generic_pyramid_of_vgg16_bn_is_the_seeds_encoder():
    """backbone=unet_vgg16_bn builds the seed's encoder as it always did (fast, the same random
    init stream); the generic rule finds the same network in torchvision's vgg16_bn."""
    with torch.device("meta"):
        seed = UNetBackbone(2)  # backbone=unet_vgg16_bn
        generic = build_pyramid("vgg16_bn")
    assert sum(p.numel() for p in seed.net.parameters()) == 27_440_002
    assert list(UNetBackbone(2, encoder="vgg16_bn").stages()) == [*(f"block{i}" for i in range(1, 6)), "head"]
    assert (generic.channels, generic.reductions) == (seed.net.encoder.out_channels, seed.net.reductions)
    assert {k: v.shape for k, v in generic.module.state_dict().items()} == {
        k: v.shape for k, v in seed.net.encoder.state_dict().items()}
    assert [tuple(f.shape) for f in generic.module(torch.empty(1, 3, 32, 48, device="meta"))] == [
        tuple(f.shape) for f in seed.net.encoder(torch.empty(1, 3, 32, 48, device="meta"))]


def test_name_and_encoder_must_agree():
    with pytest.raises(ConfigError, match="set backbone.encoder= alone"):
        UNetBackbone(2, name="vgg16_bn", encoder="resnet34")


# The pyramid from (module, has parameters, output shape) at a 256x384 probe: pure logic.
@pytest.mark.parametrize("items,expected", [
    # ResNet: the stem's ReLU is the 1/2 map, the max-pool's 1/4 gives way to layer1's.
    ([("conv1", True, (1, 64, 128, 192)), ("relu", False, (1, 64, 128, 192)),
      ("maxpool", False, (1, 64, 64, 96)), ("layer1", True, (1, 64, 64, 96)),
      ("layer2", True, (1, 128, 32, 48))],
     [("relu", 64, 2), ("layer1", 64, 4), ("layer2", 128, 8)]),
    # VGG: a last max-pool after the last weights adds nothing.
    ([("f.0", True, (1, 64, 256, 384)), ("f.1", False, (1, 64, 128, 192)),
      ("f.2", True, (1, 128, 128, 192)), ("f.3", False, (1, 128, 64, 96))],
     [("f.0", 64, 1), ("f.2", 128, 2)]),
    # Modules that never ran and parameter-free reshapes are no maps.
    ([("a", True, (1, 8, 128, 192)), ("aux", True, None), ("b", True, (1, 16, 64, 96)),
      ("flatten", False, (1, 16 * 64 * 96))],
     [("a", 8, 2), ("b", 16, 4)]),
])
def test_pyramid_levels(items, expected):
    assert pyramid_levels("net", items) == expected


@pytest.mark.parametrize("items,message", [
    ([("patch", True, (1, 96, 64, 96)), ("blocks", True, (1, 64, 96, 96))], "no NCHW feature pyramid"),
    ([("a", True, (1, 8, 64, 96)), ("b", True, (1, 8, 128, 192))], "upsamples"),
    ([("a", True, (1, 8, 16, 24)), ("b", True, (1, 8, 16, 24))], "one resolution only"),
])
def test_pyramid_levels_refuse(items, message):
    with pytest.raises(ConfigError, match=message):
        pyramid_levels("net", items)


@pytest.mark.parametrize("name,reason", [
    ("resnet18", None), ("regnet_y_400mf", None),
    ("swin_t", "no NCHW feature pyramid"), ("squeezenet1_1", "no NCHW feature pyramid"),
])
def test_which_torchvision_classifiers_can_be_encoders(name, reason):
    problem = pyramid_problem(name)
    assert problem is None if reason is None else reason in problem


def test_timm_without_a_pyramid_is_refused():
    with pytest.raises(ConfigError, match="no feature pyramid"):
        UNetBackbone(2, encoder="timm:vit_tiny_patch16_224")


@pytest.mark.parametrize("key,state,found", [
    ("layer1.0.conv1.weight", {"layer1.0.conv1.weight"}, "layer1.0.conv1.weight"),
    ("stem_0.weight", {"stem.0.weight"}, "stem.0.weight"),  # timm FeatureListNet's flattening
    ("conv_stem.weight", {"conv_stem.weight"}, "conv_stem.weight"),
    ("stages_1.blocks.0.w", {"stages.1.blocks.0.w"}, "stages.1.blocks.0.w"),
    ("fc.weight", {"head.fc.weight"}, None),
])
def test_timm_names(key, state, found):
    assert timm_names(key, dict.fromkeys(state)) == found


# -- weights -------------------------------------------------------------------------------------

def test_a_saved_torchvision_fcn_resnet50_state_dict_loads_through_weights_path(tmp_path):
    torch.manual_seed(1)
    # As torchvision's COCO-with-VOC-labels weights are: 21 classes, with the aux classifier.
    source = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True).state_dict()
    torch.save(source, tmp_path / "fcn_resnet50.pth")
    backbone = TorchvisionSegmentationBackbone("fcn_resnet50", 2)
    head_before = backbone.head.weight.clone()
    Pretrained(weights_path=str(tmp_path / "fcn_resnet50.pth"))(backbone)
    own = backbone.net.state_dict()
    for key, value in own.items():
        if key.startswith("classifier.4."):
            continue
        assert torch.equal(value, source[key]), key
    assert torch.equal(backbone.head.weight, head_before) and backbone.head.out_channels == 2
    assert not any(k.startswith("aux_classifier.") for k in own)  # aux off: its tensors unused


def test_with_the_aux_classifier_on_it_loads_too_but_its_logit_layer(tmp_path):
    torch.manual_seed(1)
    name = "deeplabv3_mobilenet_v3_large"
    source = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21,
                                          aux_loss=True).state_dict()
    backbone = TorchvisionSegmentationBackbone(name, 2, aux_loss=True)
    _, fresh = backbone.map_pretrained(source)
    assert fresh == ("classifier.4", "aux_classifier.4")
    Pretrained(weights_path=_saved(tmp_path, source))(backbone)
    assert torch.equal(backbone.net.aux_classifier[0].weight, source["aux_classifier.0.weight"])
    assert backbone.net.aux_classifier[4].out_channels == 2  # fresh, for this data's classes


def _saved(tmp_path: Path, state: dict) -> str:
    path = tmp_path / "state.pth"
    torch.save(state, path)
    return str(path)


def test_init_weights_backbone_loads_the_imagenet_classifier_into_the_backbone_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name = "lraspp_mobilenet_v3_large"
    weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    classifier = torchvision.models.mobilenet_v3_large().state_dict()
    cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name  # as torch.hub caches it
    cached.parent.mkdir(parents=True)
    torch.save(classifier, cached)
    backbone = TorchvisionSegmentationBackbone(name, 2)
    head_before = {k: v.clone() for k, v in backbone.net.classifier.state_dict().items()}
    Pretrained(weights="backbone")(backbone)
    own = backbone.net.state_dict()
    assert torch.equal(own["backbone.16.0.weight"], classifier["features.16.0.weight"])
    assert all(torch.equal(own[f"backbone.{k.removeprefix('features.')}"], v)
               for k, v in classifier.items() if k.startswith("features."))
    assert all(torch.equal(backbone.net.classifier.state_dict()[k], v) for k, v in head_before.items())
    assert Pretrained(weights="backbone").normalization(type(backbone), name) == (IMAGENET_MEAN, IMAGENET_STD)


def test_offline_without_segmentation_weights_is_the_usual_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    backbone = TorchvisionSegmentationBackbone("lraspp_mobilenet_v3_large", 2)
    for weights in ("DEFAULT", "backbone"):
        with pytest.raises(ConfigError, match="init=he"):
            Pretrained(weights)(backbone)
    with pytest.raises(ConfigError, match="or backbone"):
        Pretrained("IMAGENET1K_V1")(backbone)


def test_a_torchvision_classifier_state_dict_loads_into_the_unet_encoder(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18().state_dict()
    backbone = UNetBackbone(2, encoder="resnet18")
    decoder_before = {k: v.clone() for k, v in backbone.net.decoder.state_dict().items()}
    Pretrained(weights_path=_saved(tmp_path, source))(backbone)
    for key, value in backbone.net.encoder.state_dict().items():
        assert torch.equal(value, source[key]), key
    assert all(torch.equal(v, decoder_before[k]) for k, v in backbone.net.decoder.state_dict().items())
    other = torchvision.models.mobilenet_v3_small().state_dict()
    with pytest.raises(ConfigError, match=r"missing keys \['encoder.conv1.weight'"):
        Pretrained(weights_path=_saved(tmp_path, other))(backbone)


def test_a_timm_classifier_state_dict_loads_into_its_features_only_encoder(tmp_path):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("convnext_atto").state_dict()  # stem.0.weight, stages.0...
    backbone = UNetBackbone(2, encoder="timm:convnext_atto")
    Pretrained(weights_path=_saved(tmp_path, source))(backbone)
    encoder = backbone.net.encoder.state_dict()
    assert torch.equal(encoder["stem_0.weight"], source["stem.0.weight"])
    assert all(torch.equal(v, source[timm_names(k, source)]) for k, v in encoder.items())
    mean, std = UNetBackbone.weights_normalization("timm:convnext_atto", "DEFAULT")
    assert (mean, std) == (IMAGENET_MEAN, IMAGENET_STD)


# -- every freeze strategy -----------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_frozen_means_frozen(family, strategy, seeded):
    """As tests/test_freeze.py checks every classifier family."""
    seg = module(family, STRATEGIES[strategy][0])
    no_stochastic_depth(seg.net)
    fit_and_check_frozen(seg, random_masks(size=TRAIN_SIZE.get(family, 32)), strategy)


# -- the feature cache ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_feature_cache_refuses_what_it_cannot_cut_and_says_why(family, tmp_path, caplog):
    from transferlab.cache import FeatureCache
    from transferlab.cache.callback import _cut_blocker
    from transferlab.cache.cut import forward_until, head_blocker
    from transferlab.cache.plan import plan
    from transferlab.data.segmentation import SegmentationFolderDataModule

    torch.manual_seed(0)
    seg = module(family, {"_target_": STRATEGY + "FeatureExtraction"})
    backbone, names = seg.backbone, list(seg.stages)
    # The plan a datamodule that serves cached inputs would get: every network reads something
    # computed before any cut (a skip, the input's size, LR-ASPP's 1/8 map), so none is cut.
    chosen = plan(names, seg.freeze_strategy.frozen_stages, 0, 2, head_blocker=head_blocker(backbone),
                  cut_blocker=_cut_blocker(backbone))
    assert chosen.cut is None and "cannot run from the output of" in chosen.why
    with torch.no_grad(), eval_mode(backbone.net):  # as the cache runs the frozen stages
        for cut in names[:-1]:  # every stage's output is one module's, reached once
            assert forward_until(backbone, cut, torch.randn(1, 3, 32, 32)).dim() == 4, cut

    # A fit with the cache: off, and the log says why.
    data = SegmentationFolderDataModule(str(make_mask_folder(tmp_path / "data")), image_size=32,
                                        batch_size=2, num_workers=0)
    cache = FeatureCache(dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="transferlab.cache"):
        quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                      callbacks=[cache]).fit(seg, datamodule=data)
    assert cache.cut is None and "feature cache off: " in caplog.text


# -- the listing command -------------------------------------------------------------------------

def test_the_listing_command_names_segmentation_models_and_checks_unet_encoders(capsys):
    from transferlab.cli.backbones import main

    assert main(["deeplab*"]) == 0
    out = capsys.readouterr().out
    assert ("backbone=tv_segmentation (3): deeplabv3_mobilenet_v3_large deeplabv3_resnet101 "
            "deeplabv3_resnet50") in out
    assert main(["--unet", "s*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "backbone.encoder= (4): shufflenet_v2_x0_5 " in next(line for line in lines if "U-Net" in line)
    assert any(line.startswith("  not swin_t: swin_t has no NCHW feature pyramid") for line in lines)
