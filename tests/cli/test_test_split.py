"""Held-out test data end to end: one-folder layouts split by the data.* keys, split.json, and the
test split scored once, at the checkpoint validation chose, without ever steering that choice."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support.cli import TINY, console, run_cli, the_run_dir
from transferlab.data.classification import ImageFolderDataModule
from transferlab.data.segmentation import SegmentationFolderDataModule
from transferlab.errors import ConfigError, DataError

pytestmark = pytest.mark.cli  # runs the installed commands, as a user would


def noisy_class_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """root/<class>/*.png: red cats and blue dogs under heavy pixel noise, every image distinct."""
    rng = np.random.default_rng(seed)
    for cls, color in (("cats", (220, 20, 20)), ("dogs", (20, 20, 220))):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.asarray(color) + rng.normal(0, 60, (30, 40, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / cls / f"{i}.png")
    return root


def split_of(dm) -> dict[str, list[str]]:
    return dm.split_record["files"]


def setup(root, **kw):
    dm = ImageFolderDataModule(str(root), image_size=32, num_workers=0, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_one_folder_is_split_by_split_seed_never_by_the_training_seed(tmp_path):
    root = noisy_class_folder(tmp_path / "flowers", per_class=10)
    first = setup(root, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert {n: len(f) for n, f in split_of(first).items()} == {"train": 12, "val": 4, "test": 4}
    assert first.split_record["counts"]["test"] == {"cats": 2, "dogs": 2}
    assert len(first.test_set) == 4 and first.test_dataloader() is not None
    assert split_of(setup(root, val_fraction=0.2, test_fraction=0.2, seed=7)) == split_of(first)
    assert split_of(setup(root, val_fraction=0.2, test_fraction=0.2, split_seed=1)) != split_of(first)


def test_one_folder_with_a_test_folder_keeps_it_as_the_test_split(tmp_path):
    root = noisy_class_folder(tmp_path / "flowers", per_class=10)
    noisy_class_folder(root / "test", per_class=2, seed=1)
    dm = setup(root, val_fraction=0.2)
    assert split_of(dm)["test"] == ["test/cats/0.png", "test/cats/1.png", "test/dogs/0.png",
                                    "test/dogs/1.png"]
    assert not any(f.startswith("test/") for f in split_of(dm)["train"] + split_of(dm)["val"])
    with pytest.raises(ConfigError, match="data.test_fraction=0.2 but a test folder exists"):
        setup(root, test_fraction=0.2)


def test_a_linked_file_in_two_split_folders_is_an_error_naming_it(tmp_path):
    root = noisy_class_folder(tmp_path / "set" / "train", per_class=4).parent
    noisy_class_folder(root / "val", per_class=2, seed=1)
    (root / "val" / "cats" / "leak.png").symlink_to(root / "train" / "cats" / "3.png")
    with pytest.raises(DataError, match=r"(?s)1 file\(s\) are in more than one split folder.*leak.png"):
        setup(root)


def test_segmentation_single_folder_keeps_every_patient_in_one_fold(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["id,patientid"]
    for i in range(20):
        stem = f"p{i // 2}_{i % 2}"  # two images per patient
        rows.append(f"{stem},{i // 2}")
        for folder in ("images", "masks"):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(
                tmp_path / folder / f"{stem}.png")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    vals = []
    for fold in range(5):
        dm = SegmentationFolderDataModule(str(tmp_path), image_size=16, num_workers=0,
                                          group_by="patientid", folds=5, fold=fold)
        dm.setup("fit")
        files = split_of(dm)
        patients = [{Path(f).stem.split("_")[0] for f in files[s]} for s in ("train", "val")]
        assert patients[0].isdisjoint(patients[1]) and len(files["val"]) == 4
        vals += files["val"]
    assert sorted(vals) == sorted(f"images/p{i // 2}_{i % 2}.png" for i in range(20))


def test_selection_never_reads_the_test_split(tmp_path):
    """Two runs alike but for the test labels (the class folders swapped after the first): the
    same checkpoint is chosen at the same epoch, and the test score flips to 1 - itself."""
    data = noisy_class_folder(tmp_path / "data", per_class=12)
    noisy_class_folder(data / "test", per_class=4, seed=1)
    args = [*TINY, f"data.root={data}", "data.image_size=32", "trainer.max_epochs=3",
            "trainer.deterministic=true", "data.val_fraction=0.25"]
    runs = []
    for name in ("a", "b"):
        result = run_cli("transferlab-train", *args, cwd=tmp_path / name)
        assert result.returncode == 0, console(result)[-3000:]
        runs.append(the_run_dir(tmp_path / name))
        if name == "a":  # swap the test labels
            (data / "test" / "cats").rename(data / "test" / "tmp")
            (data / "test" / "dogs").rename(data / "test" / "cats")
            (data / "test" / "tmp").rename(data / "test" / "dogs")
    a, b = (json.loads((r / "summary.json").read_text()) for r in runs)
    for s, run in zip((a, b), runs):
        assert s["test"]["checkpoint"] == s["best_checkpoint"]  # the selected one, not last.ckpt
        assert Path(s["best_checkpoint"]).name.startswith("best-") and s["test"]["n_images"] == 8
        assert s["test"]["epoch"] == s["best_epoch"]
    assert a["best_epoch"] == b["best_epoch"] and a["best"] == b["best"]
    assert [h["val/acc"] for h in a["history"]] == [h["val/acc"] for h in b["history"]]
    assert a["test"]["metrics"]["test/acc"] != 0.5  # else the flip below would prove nothing
    assert b["test"]["metrics"]["test/acc"] == pytest.approx(1 - a["test"]["metrics"]["test/acc"])

    split = json.loads((runs[0] / "split.json").read_text())
    assert split["counts"]["val"] == {"cats": 3, "dogs": 3} and len(split["files"]["test"]) == 8
    assert split["files"]["train"] == json.loads((runs[1] / "split.json").read_text())["files"]["train"]
    events = EventAccumulator(str(runs[0] / "tensorboard")).Reload()
    assert {"test/acc", "test/balanced_acc", "test/loss"} <= set(events.Tags()["scalars"])
    closing = console(result)[console(result).index("run finished:"):]
    assert f"test/acc {b['test']['metrics']['test/acc']:.4f} at that checkpoint" in closing
