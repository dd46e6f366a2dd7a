"""What a task answers (`Task`), and the pieces its evaluation and prediction writers share."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Evaluation:
    """What `transferlab-eval` found: where it wrote, on what, and the metrics (metrics.json)."""

    task: str
    out: Path
    split_dir: Path
    checkpoint: Path
    n_images: int
    skipped: int  # images (pairs) left out: files that do not decode
    metrics: dict = field(default_factory=dict)


@dataclass
class EvalInputs:
    """One evaluation's inputs, as `transferlab.evaluate` resolved them for a task."""

    predictor: Any  # transferlab.inference.Predictor
    data: Any  # the run's own DataModule, pointed at the split's parent folder
    folder: Path  # the split's folder, in the run's training layout
    out: Path
    batch_size: int = 16
    num_workers: int = 2
    on_bad_file: str = "warn"
    cam: Any = None  # transferlab.explain.CamSettings: maps beside the worst images, if a method


class Task:
    """Everything that differs between tasks; one subclass per task module (see the package)."""

    name: str  # the LightningModule's `task`; what a checkpoint's preprocessing record names
    module: type  # the task's LightningModule (a TransferModule)
    unit = "images"  # what an evaluation counts
    cam_target: int | None = None  # the class a map is drawn for by default; None: the predicted one

    @property
    def dense(self) -> bool:
        """Per-pixel output at the input's height and width (dynamic axes in an export)."""
        return self.module.dense

    # -- preprocessing --------------------------------------------------------------------------
    def eval_transform(self, preprocess: dict):
        """The transform validation used, rebuilt from a checkpoint's `preprocess` record."""
        raise NotImplementedError

    def describe_resize(self, preprocess: dict) -> dict:
        """The eval transform's resize and crop, for preprocess.json: rule in words and numbers."""
        raise NotImplementedError

    def raw_preprocess(self, preprocess: dict):
        """The eval transform as a torch module on uint8 NHWC images (`transferlab.tasks.raw`),
        for an exported model that takes raw images."""
        raise NotImplementedError

    def cam_on_image(self, cam, size: list[int], preprocess: dict):
        """A class activation map of the model's input (its height x width) where it lies on the
        original image of `size` (height, width); zero where the input saw nothing of it."""
        raise NotImplementedError

    def image_folder(self, split_dir: Path) -> Path:
        """Where a split folder of this task's layout keeps its images."""
        return split_dir

    # -- predictions ----------------------------------------------------------------------------
    def prediction(self, source: str, probs, size: list[int], class_names: list[str]):
        """One image's prediction from its probabilities and (height, width)."""
        raise NotImplementedError

    def flip_back(self, probs):
        """Probabilities of a horizontally flipped input, as for the original (test-time flip)."""
        return probs

    def prediction_header(self, class_names: list[str]) -> list[str]:
        raise NotImplementedError

    def write_prediction(self, prediction, source: Path, relative: Path, out: Path,
                         class_names: list[str], overlays: bool) -> list[str]:
        """predictions.csv's cells after the path (writing any per-image files under `out`)."""
        raise NotImplementedError

    def prediction_files(self, out: Path) -> list[tuple[str, Path]]:
        """The folders of per-image files under `out` that the closing block names."""
        return []

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, inputs: EvalInputs) -> Evaluation:
        raise NotImplementedError

    def evaluation_lines(self, metrics: dict) -> list[tuple[str, str]]:
        """The headline metrics of the closing block."""
        raise NotImplementedError

    # -- export ---------------------------------------------------------------------------------
    def output_notes(self, class_names: list[str], size: int) -> dict:
        """preprocess.json's words on the exported model's output (and any postprocessing)."""
        raise NotImplementedError


# -- shared by the tasks' writers -------------------------------------------------------------


def number(value) -> float | None:
    """A metric for JSON: NaN (a class in no image and no prediction) becomes null."""
    value = float(value)
    return None if math.isnan(value) else value


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 11] + "..." + name[-8:]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a screen
    import matplotlib.pyplot as plt

    return plt


def usable_files(predictor, files: list[Path], on_bad_file: str, out: Path) -> set[Path]:
    """The `files` that decode, by the bad-file policy; the others are listed in
    `out`/bad_files.txt (and `error` stops, naming them)."""
    from transferlab.data.images import listed

    usable, _ = listed(out / "bad_files.txt", lambda: predictor.usable(files, on_bad_file))
    return set(usable)
