"""A finished run used on new images: `transferlab.load` and `transferlab-predict`."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.segmentation import DiceScore

import transferlab
from tests.support.cli import console, run_cli
from tests.support.data import write_image
from transferlab.errors import BadFilesError, ConfigError, DataError
from transferlab.predict import input_root

pytestmark = pytest.mark.cli  # runs the installed commands, as a user would


def data_root(run):
    return next(line.split(": ", 1)[1] for line in (run / "config.yaml").read_text().splitlines()
                if line.startswith("  root: "))


@pytest.fixture
def moved_run(classification_run, tmp_path):
    """The run dir copied elsewhere, its config's data folder pointing nowhere."""
    run = shutil.copytree(classification_run, tmp_path / "elsewhere" / "run")
    config = (run / "config.yaml").read_text().replace(data_root(classification_run), "/nowhere")
    (run / "config.yaml").write_text(config)
    return run


def test_a_moved_run_predicts_its_val_set_as_validation_scored_it(moved_run, classification_run):
    val = f"{data_root(classification_run)}/val"
    predictions = transferlab.load(moved_run).predict(val)
    assert [p.source for p in predictions] == sorted(p.source for p in predictions)
    truth = [p.source.split("/")[-2] for p in predictions]
    accuracy = np.mean([p.label == t for p, t in zip(predictions, truth)])
    summary = json.loads((moved_run / "summary.json").read_text())
    assert accuracy == pytest.approx(summary["best"], abs=1e-6)
    assert all(sum(p.probabilities.values()) == pytest.approx(1, abs=1e-5) for p in predictions)


def test_predicted_masks_reproduce_the_validation_dice(segmentation_run):
    root = data_root(segmentation_run)
    predictions = transferlab.load(segmentation_run, checkpoint="best").predict(f"{root}/val/images")
    dice = DiceScore(2, average="none", input_format="index")
    for p in predictions:
        truth = np.asarray(Image.open(p.source.replace("/images/", "/masks/"))) >= 128
        dice.update(torch.from_numpy(p.mask).long()[None], torch.from_numpy(truth).long()[None])
    summary = json.loads((segmentation_run / "summary.json").read_text())
    assert float(dice.compute().nanmean()) == pytest.approx(summary["best"], abs=1e-5)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_masks_come_back_at_each_inputs_own_size_whatever_its_pixel_format(segmentation_run, tmp_path, mode):
    path = tmp_path / "odd.png"
    if mode == "I;16":
        Image.fromarray(np.full((24, 40), 40000, dtype=np.uint16)).save(path)
    else:
        write_image(path, size=(40, 24), mode=mode)
    (plain,) = transferlab.load(segmentation_run).predict(path)
    (flipped,) = transferlab.load(segmentation_run).predict(Image.open(path), tta="hflip")
    assert plain.mask.shape == flipped.mask.shape == (24, 40)


def test_predict_command_writes_every_image_in_a_stable_order(classification_run, tmp_path):
    images = tmp_path / "new"
    shutil.copytree(f"{data_root(classification_run)}/val", images)
    (images / "notes.txt").write_text("not an image")
    (images / "cats" / "broken.png").write_bytes(b"\x89PNG broken")
    result = run_cli("transferlab-predict", f"run={classification_run}", f"input={images}",
                     f"out={tmp_path / 'out'}", "num_workers=0", cwd=tmp_path)
    assert result.returncode == 0, console(result)[-3000:]
    with open(tmp_path / "out" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    expected = sorted(str(p) for p in images.rglob("*.png") if p.name != "broken.png")
    assert [r["path"] for r in rows] == expected
    assert set(rows[0]) == {"path", "pred", "prob_cats", "prob_dogs"}
    unusable = (tmp_path / "out" / "bad_files.txt").read_text()
    assert "notes.txt" in unusable and "broken.png" in unusable
    assert "unusable     2 file(s)" in console(result)


def test_predict_command_writes_masks_and_overlays(segmentation_run, tmp_path):
    images = f"{data_root(segmentation_run)}/val/images"
    result = run_cli("transferlab-predict", f"run={segmentation_run}", f"input={images}/*.png",
                     "tta=hflip", "num_workers=0", cwd=tmp_path)
    assert result.returncode == 0, console(result)[-3000:]
    (out,) = (segmentation_run / "predict").iterdir()
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.name for m in masks] == sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert len(masks) == 3 and set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}


def test_unusable_inputs_are_named(classification_run, tmp_path, monkeypatch):
    model = transferlab.load(classification_run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=str(empty)):
        model.predict(empty)
    with pytest.raises(DataError, match="does not exist"):
        model.predict(tmp_path / "missing.png")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.txt").write_text("not an image")
    (mixed / "broken.png").write_bytes(b"")
    with pytest.raises(BadFilesError) as err:  # one error names both kinds at once
        model.predict(mixed, on_bad_file="error")
    assert {p.name for p, _ in err.value.bad} == {"notes.txt", "broken.png"}
    with pytest.raises(ConfigError, match="on_bad_file='eror'"):
        model.predict(mixed, on_bad_file="eror")
    big = write_image(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is past twice the limit
    with pytest.raises(BadFilesError, match="big.png.*DecompressionBomb"):
        model.predict(big, on_bad_file="error")


@pytest.mark.parametrize("pattern,root", [
    ("scans/*.png", "scans"), ("scans/*/images/*.png", "scans"), ("*.png", "."),
    ("a/b/**/*.jpg", "a/b"),
])
def test_outputs_are_placed_relative_to_the_part_of_a_glob_before_its_first_wildcard(pattern, root):
    assert input_root(pattern) == Path(root)


def test_a_run_dir_without_checkpoints_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path / "checkpoints")):
        transferlab.load(tmp_path)
    result = run_cli("transferlab-predict", f"run={tmp_path}", f"input={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1 and f"run={tmp_path} has no checkpoints" in console(result)
    assert list(tmp_path.iterdir()) == [], "nothing is created for a wrong run dir"
