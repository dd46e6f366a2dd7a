"""`transferlab-eval` on the finished tiny runs of conftest: the numbers it writes agree with the
run's own validation (summary.json) and with its own tables."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.support.cli import console, run_cli
from tests.support.data import write_image
from transferlab.cli.common import closing
from transferlab.cli.eval import outcome
from transferlab.errors import ConfigError, DataError
from transferlab.evaluate import evaluate

pytestmark = pytest.mark.cli  # runs the installed commands, as a user would


def linked(run_dir: Path, tmp_path: Path) -> Path:
    """The run dir's files, linked into a dir of this test: eval/ goes there, and the session's
    run dir stays as training left it."""
    copy = tmp_path / "run"
    copy.mkdir()
    for item in run_dir.iterdir():
        if item.name != "eval":
            (copy / item.name).symlink_to(item.resolve())
    return copy


def evaluated(**settings):
    """`transferlab.evaluate.evaluate` in this process (no torch import and model load in a
    subprocess), with the command's defaults but on the CPU and without loader processes."""
    return evaluate(**{"device": "cpu", "num_workers": 0} | settings)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_png(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and min(image.size) > 100


def data_root(run_dir: Path) -> Path:
    return Path(OmegaConf.load(run_dir / "config.yaml").data.root)


def test_classification_val_reproduces_the_runs_best_accuracy(classification_run, tmp_path):
    run = linked(classification_run, tmp_path)
    result = run_cli("transferlab-eval", f"run={run}", "split=val", "checkpoint=best", "device=cpu",
                     "num_workers=0", cwd=tmp_path)
    assert result.returncode == 0, console(result)[-3000:]
    out = run / "eval" / "val-best"
    assert "evaluation finished" in result.stdout and "accuracy" in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["best"], abs=1e-6)
    assert Path(metrics["checkpoint"]).name == Path(summary["best_checkpoint"]).name

    n_val = len([p for p in (data_root(run) / "val").rglob("*") if p.is_file()])
    with open(out / "confusion_matrix.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header[1:] == ["cats", "dogs"] and [r[0] for r in rows] == ["cats", "dogs"]
    assert sum(int(v) for r in rows for v in r[1:]) == n_val == metrics["n_images"]
    assert [metrics["per_class"][c]["support"] for c in ("cats", "dogs")] == [
        sum(int(v) for v in r[1:]) for r in rows]

    predictions = read_csv(out / "predictions.csv")
    assert len(predictions) == n_val
    right = sum(p["true"] == p["pred"] for p in predictions)
    assert metrics["accuracy"] == pytest.approx(right / n_val, abs=1e-6)
    for p in predictions:
        probs = {c: float(p[f"prob_{c}"]) for c in ("cats", "dogs")}
        assert sum(probs.values()) == pytest.approx(1, abs=1e-4)
        assert p["pred"] == max(probs, key=probs.get)
        assert Path(p["path"]).is_file()
    assert all(is_png(out / name) for name in ("confusion_matrix.png", "top_losses.png"))


def test_segmentation_val_reproduces_the_runs_best_dice(segmentation_run, tmp_path):
    run = linked(segmentation_run, tmp_path)
    result = evaluated(run=str(run), split="val")
    out = run / "eval" / "val-best"
    assert result.out == out

    metrics = json.loads((out / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    best = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
    assert metrics["dice"] == pytest.approx(summary["best"], abs=1e-5)
    assert metrics["iou"] == pytest.approx(best["val/iou"], abs=1e-5)
    for name in ("background", "foreground"):
        assert metrics["per_class"][name]["dice"] == pytest.approx(best[f"val/dice/{name}"], abs=1e-5)

    per_image = read_csv(out / "per_image.csv")
    assert len(per_image) == metrics["n_images"] == 3
    # Both classes are in every truth mask, so the mean over images is the mean over classes.
    assert np.mean([float(r["dice"]) for r in per_image]) == pytest.approx(metrics["dice"], abs=1e-5)
    assert is_png(out / "worst.png")
    block = closing("evaluation finished", outcome(result, 1.0))
    assert f"dice        {metrics['dice']:.4f} mean over classes (background" in block


def test_classification_folder_split_by_the_training_bad_file_policy(classification_run, tmp_path):
    run = linked(classification_run, tmp_path)
    folder = tmp_path / "new_photos"
    for i in range(3):
        write_image(folder / "cats" / f"{i}.png", color=(220, 20, 20))
    (folder / "cats" / "broken.png").write_bytes(b"not a png")
    (folder / "cats" / "notes.txt").write_text("not an image")  # ignored, as in training

    result = evaluated(run=str(run), split=str(folder), checkpoint="last")
    out = run / "eval" / "new_photos-last"
    assert result.out == out and result.n_images == 3 and result.skipped == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 3 and Path(metrics["checkpoint"]).name == "last.ckpt"
    assert metrics["per_class"]["cats"]["support"] == 3 and metrics["per_class"]["dogs"]["support"] == 0
    assert sorted(Path(p["path"]).name for p in read_csv(out / "predictions.csv")) == [
        "0.png", "1.png", "2.png"]
    assert "broken.png" in (out / "bad_files.txt").read_text()

    with pytest.raises(DataError, match=r"(?s)1 image file\(s\) cannot be decoded.*broken\.png"):
        evaluated(run=str(run), split=str(folder), on_bad_file="error", out=str(tmp_path / "o"))


def test_segmentation_folder_split_scores_each_image_at_its_own_size(segmentation_run, tmp_path):
    run = linked(segmentation_run, tmp_path)
    folder = tmp_path / "scans"
    rng = np.random.default_rng(1)
    for i, (width, height) in enumerate([(48, 40), (30, 64)]):  # not the 32 px of training
        image = rng.integers(0, 60, (height, width), dtype=np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        image[5:20, 6:22] += 150
        mask[5:20, 6:22] = 255
        for sub, pixels in (("images", image), ("masks", mask)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / sub / f"s{i}.png")
    checkpoint = next((run / "checkpoints").glob("best-*.ckpt"))

    result = evaluated(run=str(run), split=str(folder), checkpoint=str(checkpoint))
    assert result.out == run / "eval" / f"scans-{checkpoint.stem}"
    metrics = json.loads((result.out / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and 0 <= metrics["dice"] <= 1 and 0 <= metrics["iou"] <= 1
    assert [Path(r["path"]).name for r in read_csv(result.out / "per_image.csv")] == ["s0.png", "s1.png"]
    assert is_png(result.out / "worst.png")


def test_an_unknown_class_folder_is_named(classification_run, tmp_path):
    folder = tmp_path / "zoo"
    write_image(folder / "cats" / "0.png")
    write_image(folder / "horses" / "0.png")
    with pytest.raises(DataError, match=r"\['horses'\] in .*zoo are not classes of this run.*"
                                        r"\['cats', 'dogs'\]"):
        evaluated(run=str(classification_run), split=str(folder), out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_a_run_dir_without_checkpoints_is_an_error_naming_the_path(classification_run, tmp_path):
    run = tmp_path / "not_trained"
    run.mkdir()
    (run / "config.yaml").write_text((classification_run / "config.yaml").read_text())
    result = run_cli("transferlab-eval", f"run={run}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"{run / 'checkpoints'} does not exist" in result.stdout
    assert "Traceback" not in console(result) and not (run / "eval").exists()

    (run / "checkpoints").mkdir()  # there, but empty: the checkpoint it looked for is named
    with pytest.raises(ConfigError, match=f"no checkpoint {run / 'checkpoints' / 'last.ckpt'}"):
        evaluated(run=str(run), checkpoint="last")


def test_split_test_names_the_folder_it_expected(classification_run):
    with pytest.raises(DataError, match=f"{data_root(classification_run) / 'test'} does not exist"):
        evaluated(run=str(classification_run), split="test")


def test_the_app_imports_no_torch_before_it_runs():
    code = "import sys, transferlab.cli.eval; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
