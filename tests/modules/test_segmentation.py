import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchmetrics.segmentation import DiceScore

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.support.data import real_dataset
from tests.support.modules import STRATEGY, quiet_trainer
from transferlab.data.segmentation import SegmentationFolderDataModule
from transferlab.errors import BadFilesError, ConfigError, DataError
from transferlab.config import config_dir
from transferlab.models.init import HeInit, Pretrained
from transferlab.models.backbones import UNetBackbone
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


# -- data ----------------------------------------------------------------------------------------

def write_pair(root: Path, split: str, stem: str, size=(40, 40), mask_size=None, box=(6, 10, 22, 30),
               mask_suffix=""):
    image = Image.new("L", size, 20)
    mask = Image.new("L", mask_size or size, 0)
    image.paste(230, box)
    mask.paste(255, box)
    for folder, img, name in (("images", image, stem), ("masks", mask, stem + mask_suffix)):
        (root / split / folder).mkdir(parents=True, exist_ok=True)
        img.save(root / split / folder / f"{name}.png")


@pytest.fixture
def pairs(tmp_path) -> Path:
    root = tmp_path / "pairs"
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            write_pair(root, split, f"x{i}")
    return root


def datamodule(root, **kw) -> SegmentationFolderDataModule:
    return SegmentationFolderDataModule(str(root), **{"image_size": 32, "num_workers": 0} | kw)


def test_real_lung_pairs(covid_lung):
    dm = datamodule(covid_lung, classes=["background", "lung"], batch_size=4)
    dm.setup("fit")
    assert dm.classes == ["background", "lung"]
    assert (len(dm.train_set), len(dm.val_set)) == (76, 22)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32) and y.dtype == torch.long
    assert set(y.unique().tolist()) == {0, 1}
    pixels = x * torch.tensor(dm.std)[:, None, None] + torch.tensor(dm.mean)[:, None, None]
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)  # grey X-rays as three channels
    assert 0.1 < y.float().mean() < 0.7  # SOURCE.md: lungs cover 17-58% of each image


def test_train_transform_moves_image_and_mask_together(pairs):
    dm = datamodule(pairs)
    dm.setup("fit")
    torch.manual_seed(0)
    samples = [dm.train_set[0] for _ in range(10)]
    # The bright off-centre box is the mask: after a shared random crop / flip / rotation they
    # still agree but for the interpolated rim (~6% of pixels); the crops differ between draws.
    for x, y in samples:
        assert ((x[0] > 0) == y.bool()).float().mean() > 0.9
    assert len({y.sum().item() for _, y in samples}) > 1


def test_binary_masks_threshold_and_multiclass_masks_map_values(tmp_path):
    write_pair(tmp_path, "train", "a")
    mask_path = tmp_path / "train" / "masks" / "a.png"
    binary = datamodule(tmp_path).encode_mask(mask_path)
    assert binary.unique().tolist() == [0, 1] and binary.sum() == 16 * 20
    multi = datamodule(tmp_path, mask_mode="multiclass", mask_values=[0, 255], classes=["bg", "box"])
    assert torch.equal(multi.encode_mask(mask_path), binary)
    with pytest.raises(DataError, match=r"a.png holds pixel values \[255\]"):
        datamodule(tmp_path, mask_mode="multiclass", classes=["bg", "box"]).encode_mask(mask_path)
    with pytest.raises(ConfigError, match="mask_mode"):
        datamodule(tmp_path, mask_mode="rgb")


@pytest.mark.parametrize("problem", ["image without a mask", "mask without an image", "size"])
def test_unusable_pairs_are_named(pairs, problem):
    if problem == "image without a mask":
        culprit = pairs / "train" / "images" / "x1.png"
        (pairs / "train" / "masks" / "x1.png").unlink()
    elif problem == "mask without an image":
        culprit = pairs / "val" / "masks" / "x0.png"
        (pairs / "val" / "images" / "x0.png").unlink()
    else:
        write_pair(pairs, "train", "x2", mask_size=(40, 41))
        culprit = pairs / "train" / "masks" / "x2.png"
    with pytest.raises(DataError, match=problem) as err:
        datamodule(pairs).setup("fit")
    assert str(culprit) in str(err.value)


def test_unpaired_files_of_both_splits_are_one_error_stating_the_rule(pairs):
    (pairs / "train" / "masks" / "x1.png").unlink()
    (pairs / "val" / "images" / "x0.png").unlink()
    with pytest.raises(DataError, match=r"2 unpaired file\(s\)") as err:
        datamodule(pairs).setup("fit")
    message = str(err.value)
    assert str(pairs / "train" / "images" / "x1.png") in message
    assert str(pairs / "val" / "masks" / "x0.png") in message
    assert "images/<id>.<ext> pairs with masks/<id>.<ext> (data.mask_suffix='')" in message
    assert "set data.mask_suffix" in message


@pytest.mark.parametrize("suffix", ["_mask", "_label"])
def test_masks_named_with_a_suffix_pair_when_mask_suffix_says_so(tmp_path, suffix):
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            write_pair(tmp_path, split, f"p{i}", mask_suffix=suffix)
    with pytest.raises(DataError, match="data.mask_suffix") as err:
        datamodule(tmp_path).setup("fit")
    assert "10 unpaired file(s)" in str(err.value)
    dm = datamodule(tmp_path, mask_suffix=suffix)
    dm.setup("fit")
    assert [(i.name, m.name) for i, m in dm.val_set.pairs] == [
        ("p0.png", f"p0{suffix}.png"), ("p1.png", f"p1{suffix}.png")]
    assert len(dm.train_set) == 3 and dm.train_set[0][1].dtype == torch.long
    (tmp_path / "train" / "masks" / f"p2{suffix}.png").rename(tmp_path / "train" / "masks" / "p2.png")
    with pytest.raises(DataError, match=f"masks/<id>{suffix}.<ext>") as err:
        datamodule(tmp_path, mask_suffix=suffix).setup("fit")
    assert "image without a mask" in str(err.value) and "mask without an image" in str(err.value)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def test_bad_images_and_masks_of_both_splits_are_one_error(pairs, caplog):
    bad = [pairs / "train" / "images" / "x0.png", pairs / "train" / "masks" / "x1.png",
           pairs / "val" / "images" / "x1.png"]
    for path in bad:
        truncate(path)
    with pytest.raises(BadFilesError, match=r"3 image file\(s\)") as err:
        datamodule(pairs).setup("fit")
    assert sorted(p for p, _ in err.value.bad) == sorted(bad)
    assert all(str(path) in str(err.value) for path in bad)
    caplog.set_level(logging.INFO)
    dm = datamodule(pairs, on_bad_file="skip")
    dm.setup("fit")
    assert sorted(p for p, _ in dm.bad_files) == sorted(bad)
    assert [i.stem for i, _ in dm.train_set.pairs] == ["x2"]
    assert [i.stem for i, _ in dm.val_set.pairs] == ["x0"]
    assert caplog.text.count("skipped 3 bad image file(s)") == 1


@pytest.mark.parametrize("mode, classes, values, expected", [
    ("binary", None, None, ["background", "foreground"]),
    ("binary", ["background", "lung"], None, ["background", "lung"]),
    ("multiclass", None, [0, 128, 255], ["class_0", "class_128", "class_255"]),
    ("multiclass", ["sky", "road"], None, ["sky", "road"]),
])
def test_class_names(pairs, mode, classes, values, expected):
    dm = datamodule(pairs, mask_mode=mode, classes=classes, mask_values=values)
    assert dm.classes == expected


def composed_data(overrides: list[str]):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", ["task=segmentation", *overrides]).data


def test_covid_lung_is_the_generic_folder_config_with_its_root_and_classes(monkeypatch, pairs):
    monkeypatch.setenv("TRANSFERLAB_DATA_DIR", "/datasets")
    lung = composed_data([])
    assert lung.root == "/datasets/covid_lung" and list(lung.classes) == ["background", "lung"]
    generic = composed_data(["data=segmentation_folder", f"data.root={pairs}"])
    assert generic.classes is None and generic.mask_suffix == ""
    assert {k: v for k, v in lung.items() if k not in ("root", "classes")} == {
        k: v for k, v in generic.items() if k not in ("root", "classes")}
    dm = instantiate(generic, seed=0)
    assert dm.classes == ["background", "foreground"] and dm.mask_suffix == ""
    suffixed = composed_data(["data=segmentation_folder", "data.root=/r", "data.mask_suffix=_mask"])
    assert instantiate(suffixed, seed=0).mask_suffix == "_mask"


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
