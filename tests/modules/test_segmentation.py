import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchmetrics.segmentation import DiceScore


from tests.support.data import real_dataset
from tests.support.modules import STRATEGY, quiet_trainer
from transferlab.data.segmentation import SegmentationFolderDataModule
from transferlab.errors import ConfigError
from transferlab.models.init import HeInit, Pretrained
from transferlab.models.backbones import TorchvisionBackbone, UNetBackbone
from transferlab.models.unet import UNet
from transferlab.modules.segmentation import SegmentationModule
from transferlab.freeze import is_frozen

UNET = {"_target_": "transferlab.models.backbones.UNetBackbone", "name": "vgg16_bn"}
BLOCKS = ["block1", "block2", "block3", "block4", "block5"]


@pytest.fixture
def covid_lung() -> Path:
    return real_dataset("covid_lung")


def segmentation_module(freeze="FullFineTune", lr=1e-3, **kw) -> SegmentationModule:
    return SegmentationModule(
        backbone=UNET, num_classes=2, freeze={"_target_": STRATEGY + freeze},
        optimizer={"_target_": "torch.optim.Adam", "lr": lr}, class_names=["background", "lung"], **kw,
    )


def random_masks(n=4, size=32, seed=0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (torch.rand(n, size, size, generator=g) > 0.6).long()
    return DataLoader(TensorDataset(x, y), batch_size=2)


# -- the network ---------------------------------------------------------------------------------

def test_logits_have_the_input_size():
    net = UNet(num_classes=3).eval()
    for size in [(32, 32), (48, 80), (50, 70), (17, 33), (1, 1)]:  # the last three are padded
        with torch.no_grad():
            assert net(torch.randn(1, 3, *size)).shape == (1, 3, *size), size


def test_parameter_count():
    net = UNet(num_classes=2)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net.encoder) == 14_723_136  # vgg16_bn.features: 13 conv + 13 BN layers
    assert count(net.segmentation_head) == 64 * 2 + 2
    assert count(net) == 27_440_002


def test_stages_are_the_five_encoder_blocks_then_the_head():
    backbone = UNetBackbone(num_classes=2)
    net, stages = backbone.net, backbone.stages()
    assert list(stages) == [*BLOCKS, "head"]
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in stages[b]) for b in BLOCKS]
    assert convs == [2, 2, 3, 3, 3]
    staged = [p for modules in stages.values() for m in modules for p in m.parameters()]
    assert len(staged) == len({id(p) for p in staged}) == len(list(net.parameters()))


def test_every_skip_feeds_the_decoder():
    net = UNet(num_classes=2)
    features = [f.detach().requires_grad_() for f in net.encoder(torch.randn(2, 3, 32, 32))]
    assert [f.shape[1:] for f in features] == [
        (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    net.segmentation_head(net.decoder(features)).sum().backward()
    for level, f in enumerate(features, 1):
        assert f.grad is not None and f.grad.abs().sum() > 0, f"block{level} output unused"


@pytest.mark.parametrize("freeze", ["FullFineTune", "FeatureExtraction"])
def test_gradient_reaches_the_encoder_blocks_only_when_unfrozen(freeze):
    module = segmentation_module(freeze)
    module.freeze_strategy.apply(module.stages, epoch=0, training=True)
    x, y = next(iter(random_masks()))
    module.criterion(module(x), y).backward()
    for name, modules in module.stages.items():
        grads = [p.grad for m in modules for p in m.parameters()]
        if name == "head" or freeze == "FullFineTune":
            assert all(g is not None and g.abs().sum() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads), name


def test_frozen_encoder_keeps_its_batchnorm_statistics():
    module = segmentation_module("FeatureExtraction")
    encoder_before = {k: v.clone() for k, v in module.net.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in module.net.decoder.state_dict().items()}
    loader = random_masks()
    quiet_trainer(max_epochs=1).fit(module, loader, loader)
    assert all(is_frozen(module.stages[b]) for b in BLOCKS)
    for key, value in module.net.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    decoder = module.net.decoder.state_dict()
    moved = [k for k, v in decoder.items() if not torch.equal(v, decoder_before[k])]
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("weight") for k in moved)


# -- initialisation ------------------------------------------------------------------------------

def test_he_init_covers_the_decoder():
    net = UNetBackbone(num_classes=2)
    HeInit()(net)
    net = net.net
    up = net.decoder.blocks[0].up
    assert torch.all(up.bias == 0)
    assert all(torch.all(m.weight == 1) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_pretrained_loads_a_torchvision_vgg16_bn_state_dict_into_the_encoder(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.vgg16_bn(weights=None).state_dict()
    # The classifier's 120M weights go unused; stand-ins under the same names keep the file small.
    state |= {k: torch.zeros(1) for k in state if k.startswith("classifier.")}
    torch.save(state, tmp_path / "vgg16_bn.pth")
    backbone = UNetBackbone(num_classes=2)
    net = backbone.net
    decoder_before = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    Pretrained(weights_path=str(tmp_path / "vgg16_bn.pth"))(backbone)
    own = net.state_dict()
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    assert len(features) == len([k for k in own if k.startswith("encoder.")])
    for key, value in features.items():
        assert torch.equal(own[f"encoder.{key}"], value), key  # features.<i> -> encoder.features.<i>
    for key, value in net.decoder.state_dict().items():
        assert torch.equal(value, decoder_before[key]), key


def test_weights_path_accepts_a_transferlab_unet_checkpoint(tmp_path):
    trained = UNetBackbone(num_classes=3).net
    path = tmp_path / "unet.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in trained.state_dict().items()}}, path)
    backbone = UNetBackbone(num_classes=2)
    Pretrained(weights_path=str(path))(backbone)
    for key, value in backbone.net.state_dict().items():
        if not key.startswith("segmentation_head."):  # a new head: the class count may differ
            assert torch.equal(value, trained.state_dict()[key]), key


def test_a_vgg16_bn_classifier_without_its_4096_wide_layers_loads_into_the_encoder(tmp_path):
    """experiment=cifar10_source_vgg16_bn's run (backbone.pre_logits=drop: its classifier is one
    512-wide head) is a source for the lung U-Net: every conv and BatchNorm tensor lands."""
    source = TorchvisionBackbone("vgg16_bn", 10, pre_logits="drop").net
    path = tmp_path / "source.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, path)
    backbone = UNetBackbone(num_classes=2)
    Pretrained(weights_path=str(path))(backbone)
    own = backbone.net.state_dict()
    features = {k: v for k, v in source.state_dict().items() if k.startswith("features.")}
    assert len(features) == len([k for k in own if k.startswith("encoder.")])
    for key, value in features.items():
        assert torch.equal(own[f"encoder.{key}"], value), key


def test_weights_of_another_architecture_say_which_keys(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ConfigError, match=r"missing keys \['encoder.features.0.weight'"):
        Pretrained(weights_path=str(tmp_path / "resnet18.pth"))(UNetBackbone(num_classes=2))


def test_offline_without_weights_is_the_usual_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError, match="init=he"):
        Pretrained("DEFAULT")(UNetBackbone(num_classes=2))


def test_a_classifier_backbone_is_refused_for_segmentation():
    with pytest.raises(ConfigError, match="backbone=unet_vgg16_bn"):
        SegmentationModule(
            backbone={"_target_": "transferlab.models.backbones.TorchvisionBackbone", "name": "resnet18"},
            num_classes=2, freeze={"_target_": STRATEGY + "FullFineTune"},
            optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3},
        )


def datamodule(root, **kw) -> SegmentationFolderDataModule:
    return SegmentationFolderDataModule(str(root), **{"image_size": 32, "num_workers": 0} | kw)


# -- learning ------------------------------------------------------------------------------------

def test_sixteen_steps_learn_the_lungs(covid_lung):
    torch.manual_seed(0)
    dm = datamodule(covid_lung, classes=["background", "lung"], image_size=64, augment=False)
    dm.setup("fit")
    subset = Subset(dm.train_set, range(8))
    masks = torch.stack([subset[i][1] for i in range(8)])
    # A constant prediction scores what it scores on these very masks: all-background gets the
    # background's Dice (~0.8) and 0 for lung, all-lung the reverse, so their mean is ~0.4 at best.
    dice = DiceScore(2, average="macro", input_format="index")
    constant = max(dice(torch.full_like(masks, c), masks).item() for c in (0, 1))

    module = segmentation_module("FullFineTune", lr=1e-3)
    HeInit()(module.backbone)
    trainer = quiet_trainer(max_epochs=4, limit_val_batches=0)
    trainer.fit(module, DataLoader(subset, batch_size=2, shuffle=True))  # 16 steps
    learned = trainer.callback_metrics["train/dice"].item()  # the mean over the last 4 steps
    # From He init these images reach ~0.85-0.9 within a dozen steps. 0.3 above the best constant
    # (~0.7 in all) is beyond what noise or an image-independent prediction could give.
    assert learned > constant + 0.3, (learned, constant)
