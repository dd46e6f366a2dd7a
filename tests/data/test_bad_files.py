"""Messy folders: every bad case is built here and must give a named error or a logged skip."""

import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from tests.support.data import write_image
from transferlab.data.classification import ImageFolderDataModule
from transferlab.data.images import load_rgb, write_bad_files
from transferlab.errors import BadFilesError, ConfigError, DataError


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
    with pytest.raises(BadFilesError, match="bad.jpg"):
        setup(image_folder)
    for policy in ("warn", "skip"):
        caplog.clear()
        dm = setup(image_folder, on_bad_file=policy)
        assert bad not in {p for p, _ in dm.train_set.samples}
        assert [p for p, _ in dm.bad_files] == [bad]
        assert caplog.text.count("skipped 1 bad image") == 1 and "bad.jpg" in caplog.text
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == (policy == "warn")


# A bad file in each split and each class: one run must report all of them.
BAD_EVERYWHERE = [
    ("train", "cats", truncated_jpeg),
    ("train", "dogs", zero_bytes),
    ("val", "cats", text_named_jpg),
    ("val", "dogs", truncated_jpeg),
]


@pytest.fixture
def bad_everywhere(image_folder):
    bad = []
    for split, cls, make in BAD_EVERYWHERE:
        path = image_folder / split / cls / f"{make.__name__}.jpg"
        make(path)
        bad.append(path)
    return bad


def test_every_bad_file_is_in_one_error(image_folder, bad_everywhere):
    with pytest.raises(BadFilesError, match=r"4 image file\(s\) cannot be decoded") as err:
        setup(image_folder)
    assert sorted(p for p, _ in err.value.bad) == sorted(bad_everywhere)
    assert all(why for _, why in err.value.bad)
    for path in bad_everywhere:
        assert str(path) in str(err.value)
    assert "on_bad_file=skip" in str(err.value)
    assert isinstance(err.value, DataError)
    copy = pickle.loads(pickle.dumps(err.value))  # a sweep job's error travels pickled
    assert copy.bad == err.value.bad and str(copy) == str(err.value)


def test_skip_names_every_bad_file_and_counts_them_once(image_folder, bad_everywhere, caplog):
    caplog.set_level(logging.INFO)
    dm = setup(image_folder, on_bad_file="skip")
    assert sorted(p for p, _ in dm.bad_files) == sorted(bad_everywhere)
    used = {p for p, _ in dm.train_set.samples} | {p for p, _ in dm.val_set.samples}
    assert not used & set(bad_everywhere) and len(used) == 18
    counts = [r.getMessage() for r in caplog.records if "bad image file(s)" in r.getMessage()]
    assert len(counts) == 1 and counts[0].startswith("skipped 4 bad image file(s)")
    assert all(str(path) in counts[0] for path in bad_everywhere)


def test_a_clean_folder_has_no_bad_files(image_folder):
    assert setup(image_folder, on_bad_file="skip").bad_files == []


def test_many_bad_files_are_counted_beyond_the_first_twenty(image_folder, caplog):
    bad = [image_folder / "train" / "cats" / f"empty{i:02}.jpg" for i in range(25)]
    for path in bad:
        zero_bytes(path)
    with pytest.raises(BadFilesError, match="25 image file") as err:
        setup(image_folder)
    assert len(err.value.bad) == 25 and "... and 5 more" in str(err.value)
    assert str(bad[0]) in str(err.value) and str(bad[24]) not in str(err.value)
    caplog.set_level(logging.INFO)
    setup(image_folder, on_bad_file="skip")
    assert "and 5 more" in caplog.text and str(bad[24]) not in caplog.text


def test_write_bad_files_lists_one_file_and_reason_a_line(tmp_path):
    bad = [(tmp_path / "a.jpg", "empty file"), (tmp_path / "b c.png", "OSError: truncated")]
    write_bad_files(tmp_path / "bad_files.txt", bad)
    lines = (tmp_path / "bad_files.txt").read_text().splitlines()
    assert [line.split("\t") for line in lines] == [[str(p), why] for p, why in bad]


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


def test_missing_val_folder_is_carved_out_of_train(image_folder):
    import shutil

    shutil.rmtree(image_folder / "val")
    dm = setup(image_folder, val_fraction=0.5)
    assert sorted(label for _, label in dm.val_set.samples) == [0, 0, 0, 1, 1, 1]
    assert {p for p, _ in dm.val_set.samples}.isdisjoint(p for p, _ in dm.train_set.samples)
