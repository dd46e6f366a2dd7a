"""Messy folders: every bad case is built here and must give a named error or a logged skip."""

import logging

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from transferlab.data.classification import ImageFolderDataModule
from transferlab.data.images import load_rgb
from transferlab.errors import ConfigError, DataError


def setup(root, **kw):
    dm = ImageFolderDataModule(str(root), image_size=32, batch_size=2, num_workers=0, **kw)
    dm.setup("fit")
    return dm


def truncated_jpeg(path):
    write_image(path, size=(64, 64))
    path.write_bytes(path.read_bytes()[:300])


def zero_bytes(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def text_named_jpg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a picture")


@pytest.mark.parametrize("make", [truncated_jpeg, zero_bytes, text_named_jpg])
def test_bad_file_errors_name_it_and_skip_policies_drop_it(image_folder, make, caplog):
    bad = image_folder / "train" / "cats" / "bad.jpg"
    make(bad)
    caplog.set_level(logging.INFO)
    with pytest.raises(DataError, match="bad.jpg"):
        setup(image_folder)
    for policy in ("warn", "skip"):
        caplog.clear()
        dm = setup(image_folder, on_bad_file=policy)
        assert bad not in {p for p, _ in dm.train_set.samples}
        assert "skipped 1 bad image" in caplog.text
        assert ("bad.jpg" in caplog.text) == (policy == "warn")


def test_unknown_policy_is_a_config_error(image_folder):
    with pytest.raises(ConfigError, match="on_bad_file"):
        setup(image_folder, on_bad_file="ignore")


def test_gif_placeholder_is_ignored_and_counted(image_folder, caplog):
    caplog.set_level(logging.INFO)
    write_image(image_folder / "train" / "cats" / "imageNotFound.gif")
    dm = setup(image_folder)
    assert "imageNotFound.gif" not in {p.name for p, _ in dm.train_set.samples}
    assert "ignored 1 file(s) without an image extension" in caplog.text


@pytest.mark.parametrize("mode", ["P", "RGBA", "L", "CMYK", "I;16", "LA"])
def test_every_pixel_format_becomes_rgb(tmp_path, mode):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    if mode == "I;16":
        Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(path)
    else:
        write_image(path, size=(8, 8), mode=mode, color=(100, 150, 200))
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (8, 8)
    if mode == "I;16":
        assert img.getpixel((0, 0)) == (156, 156, 156)  # 40000/65535 of white, not clipped


def test_image_smaller_than_the_crop(image_folder):
    write_image(image_folder / "train" / "cats" / "tiny.png", size=(5, 3))
    dm = setup(image_folder)
    index = [p.name for p, _ in dm.train_set.samples].index("tiny.png")
    assert dm.train_set[index][0].shape == (3, 32, 32)


def test_split_without_images(image_folder):
    for f in (image_folder / "val").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="val has no usable images"):
        setup(image_folder)


def test_missing_split(image_folder):
    import shutil

    shutil.rmtree(image_folder / "val")
    with pytest.raises(DataError, match="val/<class>"):
        setup(image_folder)
