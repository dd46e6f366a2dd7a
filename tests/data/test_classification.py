import functools
import hashlib
import http.server
import threading
import zipfile

import pytest
import torch

from tests.support.data import write_image
from transferlab.data.classification import ImageFolderDataModule
from transferlab.errors import BadFilesError, ConfigError, DataError


def datamodule(root, **kw):
    dm = ImageFolderDataModule(str(root), image_size=32, batch_size=4, num_workers=0, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_have_the_configured_size_and_class_map_from_train(image_folder):
    dm = datamodule(image_folder)
    assert dm.classes == ["cats", "dogs"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)
    assert len(dm.train_set) == 12 and len(dm.val_set) == 6


def test_val_uses_the_train_class_map_even_with_a_class_missing(image_folder):
    for f in (image_folder / "val" / "cats").iterdir():
        f.unlink()
    (image_folder / "val" / "cats").rmdir()
    dm = datamodule(image_folder)
    assert {label for _, label in dm.val_set.samples} == {1}  # dogs keep index 1


def test_class_only_in_val_is_an_error_naming_it(image_folder):
    write_image(image_folder / "val" / "birds" / "0.png")
    with pytest.raises(DataError, match="birds"):
        datamodule(image_folder)


def test_empty_class_folder_is_an_error_naming_it(image_folder):
    (image_folder / "train" / "birds").mkdir()
    with pytest.raises(DataError, match="birds"):
        datamodule(image_folder)


def test_non_image_extension_is_ignored_and_modes_become_rgb(image_folder):
    write_image(image_folder / "train" / "cats" / "placeholder.gif")
    write_image(image_folder / "train" / "cats" / "palette.png", mode="P")
    write_image(image_folder / "train" / "cats" / "gray.png", mode="L")
    dm = datamodule(image_folder)
    names = {p.name for p, _ in dm.train_set.samples}
    assert "placeholder.gif" not in names and {"palette.png", "gray.png"} <= names
    for i, (path, _) in enumerate(dm.train_set.samples):
        if path.name in ("palette.png", "gray.png"):
            assert dm.train_set[i][0].shape == (3, 32, 32)


@pytest.fixture
def corrupt(image_folder):
    bad = image_folder / "train" / "dogs" / "broken.jpg"
    write_image(bad.with_suffix(".tmp.jpg"), size=(64, 64))
    bad.write_bytes(bad.with_suffix(".tmp.jpg").read_bytes()[:200])  # truncated JPEG
    bad.with_suffix(".tmp.jpg").unlink()
    return bad


def test_undecodable_image_stops_before_training_naming_it(corrupt):
    with pytest.raises(BadFilesError, match="broken.jpg") as err:
        datamodule(corrupt.parents[2])
    assert [p for p, _ in err.value.bad] == [corrupt]


def test_skip_policy_drops_the_bad_file(corrupt, caplog):
    dm = datamodule(corrupt.parents[2], on_bad_file="warn")
    assert corrupt not in {p for p, _ in dm.train_set.samples}
    assert [p for p, _ in dm.bad_files] == [corrupt]
    assert "broken.jpg" in caplog.text


def test_missing_root_offline_says_where_to_put_the_data(tmp_path):
    root = tmp_path / "hymenoptera"
    with pytest.raises(DataError, match=f"{root}/train"):
        datamodule(root, download_url="http://127.0.0.1:9/hymenoptera_data.zip")


def _archive(tmp_path):
    src = tmp_path / "src" / "hymenoptera_data"
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            write_image(src / split / cls / "0.jpg")
    archive = tmp_path / "hymenoptera_data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in src.rglob("*"):
            z.write(f, f.relative_to(src.parent))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


@pytest.fixture
def local_server(tmp_path):
    """Serves tmp_path on loopback, standing in for the download host."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_the_checksum(tmp_path, local_server):
    archive, md5 = _archive(tmp_path)
    url = f"{local_server}/{archive.name}"
    root = tmp_path / "data" / "hymenoptera"
    with pytest.raises(DataError, match="hymenoptera_data.zip"):
        datamodule(root, download_url=url, download_md5="0" * 32)
    assert not (root / "train").exists()
    dm = datamodule(root, download_url=url, download_md5=md5)
    assert dm.classes == ["ants", "bees"]


def test_real_hymenoptera(hymenoptera):
    dm = datamodule(hymenoptera)
    assert dm.classes == ["ants", "bees"]
    names = {p.name for p, _ in dm.train_set.samples}
    assert "imageNotFound.gif" not in names and "formica.jpeg" in names
    assert len(dm.train_set) == 244 and len(dm.val_set) == 153
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("settings,workers,pinned", [
    ({"num_workers": 3, "pin_memory": True}, 3, True),
    ({"num_workers": "auto", "pin_memory": "auto"}, "spare", False),  # no trainer, no GPU: unpinned
])
def test_loader_settings_take_values_or_auto(image_folder, settings, workers, pinned):
    from transferlab.data.sampling import spare_cores

    dm = ImageFolderDataModule(str(image_folder), image_size=32, **settings)
    assert dm.num_workers == (spare_cores() if workers == "spare" else workers)
    assert dm.pins_memory is pinned


def test_bad_loader_settings_are_named_together(image_folder):
    with pytest.raises(ConfigError, match=r"data.num_workers='Auto'.*; data.pin_memory='False'"):
        ImageFolderDataModule(str(image_folder), image_size=32, num_workers="Auto", pin_memory="False")


def test_a_val_folder_can_be_the_test_split_with_val_carved_out_of_train(image_folder):
    """data.folders.val=null data.folders.test=val: ants/bees' val/ held out as test."""
    data = ImageFolderDataModule(str(image_folder), image_size=32, num_workers=0, val_fraction=0.5,
                                 folders={"val": None, "test": "val"})
    data.setup("fit")
    assert {p.parent.parent.name for p, _ in data.test_set.samples} == {"val"}
    assert len(data.test_set) == 6 and len(data.train_set) == len(data.val_set) == 6
    assert {p.parent.parent.name for p, _ in data.train_set.samples + data.val_set.samples} == {"train"}


@pytest.mark.parametrize("folders", [{"train": None}, {"valid": "val"}, {"val": "train"}])
def test_bad_split_folders_are_named(image_folder, folders):
    with pytest.raises(ConfigError, match="data.folders="):
        ImageFolderDataModule(str(image_folder), image_size=32, folders=folders)
