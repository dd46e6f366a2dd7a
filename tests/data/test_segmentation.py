"""The paired image/mask datamodule: pairing, masks, bad files, the split folders, its configs."""

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from tests.support.data import real_dataset
from transferlab.config import config_dir
from transferlab.data.segmentation import SegmentationFolderDataModule
from transferlab.errors import BadFilesError, ConfigError, DataError


@pytest.fixture
def covid_lung() -> Path:
    return real_dataset("covid_lung")


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
