"""Image classification: one class per image, scored by accuracy, balanced accuracy, per-class
precision / recall / F1, with a confusion matrix and the most confidently wrong images."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from transferlab.console import shown
from transferlab.data import classification as data
from transferlab.errors import DataError
from transferlab.modules.classification import ClassificationModule
from transferlab.tasks import raw, register
from transferlab.tasks.base import (
    EvalInputs,
    Evaluation,
    Task,
    fmt,
    number,
    pyplot,
    short,
    usable_files,
    write_json,
)

TOP_LOSSES = 9  # images in top_losses.png, at most
SHOWN_SIDE = 320  # figure thumbnails: longest side in pixels


@dataclass
class ClassPrediction:
    source: str
    label: str
    probabilities: dict[str, float]


class Classification(Task):
    name = ClassificationModule.task
    module = ClassificationModule

    def eval_transform(self, preprocess):
        return data.eval_transform(preprocess["image_size"], preprocess["mean"], preprocess["std"])

    def describe_resize(self, preprocess):
        size = int(preprocess["image_size"])
        shorter = data.resize_side(size)
        return {
            "rule": f"resize so that the shorter side is {shorter} px (round({size} * 256 / 224)), "
                    f"keeping the aspect ratio; then crop the central {size}x{size}",
            "shorter_side": shorter,
            "longer_side": f"floor({shorter} * longer / shorter) of the image's own sides: the "
                           "integer part, not rounded",
            "center_crop": [size, size],
            "crop_offsets": f"top = round((resized height - {size}) / 2), left = round((resized "
                            f"width - {size}) / 2), halves rounded to the even integer",
        }

    def cam_on_image(self, cam, size, preprocess):
        """The crop's map pasted where the crop lies on the image, resized to the image's size."""
        height, width = size
        crop = int(preprocess["image_size"])
        new_h, new_w, top, left = raw.centre_crop_geometry(height, width, data.resize_side(crop), crop)
        canvas = torch.zeros(1, 1, new_h, new_w)
        canvas[0, 0, top:top + crop, left:left + crop] = torch.as_tensor(cam, dtype=torch.float32)
        return torch.nn.functional.interpolate(canvas, size=(height, width), mode="bilinear",
                                               align_corners=False)[0, 0].numpy()

    def raw_preprocess(self, preprocess):
        size = int(preprocess["image_size"])
        return raw.ShorterSideThenCentre(data.resize_side(size), size, preprocess["mean"], preprocess["std"])

    def prediction(self, source, probs, size, class_names):
        return ClassPrediction(source, class_names[int(probs.argmax())],
                               dict(zip(class_names, probs.tolist())))

    def prediction_header(self, class_names):
        return ["pred", *(f"prob_{c}" for c in class_names)]

    def write_prediction(self, prediction, source, relative, out, class_names, overlays):
        return [prediction.label, *(f"{v:.6f}" for v in prediction.probabilities.values())]

    def evaluate(self, inputs: EvalInputs) -> Evaluation:
        predictor, folder, out = inputs.predictor, inputs.folder, inputs.out
        names = predictor.class_names
        files, labels = labelled_images(inputs.data, folder, names)
        usable = usable_files(predictor, files, inputs.on_bad_file, out)
        samples = [(f, y) for f, y in zip(files, labels) if f in usable]
        if not samples:
            raise DataError(f"{folder} has no usable images")
        sources = [f for f, _ in samples]
        target = torch.tensor([y for _, y in samples])
        probs = torch.zeros(len(samples), len(names))
        for i, p, _ in predictor.predicted(sources, inputs.batch_size, inputs.num_workers):
            probs[i] = p
        metrics, confmat, matrix = scores(probs, target, names)
        metrics = {"task": self.name, "split": os.path.abspath(folder),
                   "checkpoint": os.path.abspath(predictor.checkpoint), "n_images": len(samples),
                   "images_skipped": len(files) - len(samples), **metrics}
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", metrics)
        write_confusion_matrix(out, confmat, matrix, names,
                               f"{shown(folder)}: {len(samples)} images, {predictor.checkpoint.name}")
        write_predictions(out / "predictions.csv", sources, target, probs, names)
        wrong = top_losses(sources, folder, target, probs, names)
        plot_top_losses(out / "top_losses.png", wrong, int((probs.argmax(1) != target).sum()),
                        len(samples), wrong_class_maps(predictor, wrong, inputs.cam))
        return Evaluation(self.name, out, folder, predictor.checkpoint, len(samples),
                          len(files) - len(samples), metrics)

    def evaluation_lines(self, metrics):
        return [("accuracy", fmt(metrics["accuracy"])),
                ("balanced", f"{fmt(metrics['balanced_accuracy'])} accuracy (mean recall over classes)")]

    def output_notes(self, class_names, size):
        return {
            "meaning": "class probabilities: column i is class_names[i], each row sums to 1",
            "postprocess": "the predicted class is the argmax of each row",
        }


def labelled_images(data_module, folder: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
    """`folder/<class>/*` as training lists it, every class folder one of the run's classes."""
    found = data.class_folders(folder)
    if not found:
        raise DataError(f"{folder} has no class folders: expected {folder}/<class>/* with classes "
                        f"among the run's {class_names}")
    unknown = [c for c in found if c not in class_names]
    if unknown:
        raise DataError(f"class folder(s) {unknown} in {folder} are not classes of this run; its "
                        f"classes (from its training data) are {class_names}")
    data_module.classes = class_names
    by_class = data_module.image_files(folder.name)
    files = [p for files in by_class.values() for p in files]
    labels = [class_names.index(c) for c, files in by_class.items() for _ in files]
    return files, labels


def scores(probs: torch.Tensor, target: torch.Tensor, names: list[str]):
    """metrics.json's numbers (torchmetrics', as in validation), the confusion matrix metric and
    its values."""
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
        MulticlassStatScores,
    )

    n = len(names)
    confmat = MulticlassConfusionMatrix(n)
    metrics = {
        "accuracy": MulticlassAccuracy(n, average="micro"),
        "balanced_accuracy": MulticlassAccuracy(n, average="macro"),  # the mean recall
        "precision": MulticlassPrecision(n, average=None),
        "recall": MulticlassRecall(n, average=None),
        "f1": MulticlassF1Score(n, average=None),
        "stats": MulticlassStatScores(n, average=None),  # per class: tp, fp, tn, fn, support
    }
    values = {k: m(probs, target) for k, m in metrics.items()}
    per_class = {
        name: {"precision": number(values["precision"][c]), "recall": number(values["recall"][c]),
               "f1": number(values["f1"][c]), "support": int(values["stats"][c, 4])}
        for c, name in enumerate(names)
    }
    return ({"accuracy": number(values["accuracy"]),
             "balanced_accuracy": number(values["balanced_accuracy"]), "per_class": per_class},
            confmat, confmat(probs, target))


def write_predictions(path: Path, sources: list[Path], target, probs, names: list[str]) -> None:
    pred = probs.argmax(1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "pred"] + [f"prob_{name}" for name in names])
        for file, y, p, row in zip(sources, target.tolist(), pred.tolist(), probs.tolist()):
            writer.writerow([os.path.abspath(file), names[y], names[p]] + [f"{v:.6g}" for v in row])


def top_losses(sources: list[Path], folder: Path, target, probs, names: list[str]) -> list[tuple]:
    """The most confidently wrong: the largest loss, -log p(true class), among the wrong ones, as
    (name, file, true, p(true), predicted, p(predicted)), worst first."""
    pred = probs.argmax(1)
    wrong = (pred != target).nonzero().flatten()
    true_prob = probs[torch.arange(len(target)), target]
    worst = wrong[true_prob[wrong].argsort(stable=True)][:TOP_LOSSES].tolist()
    return [(sources[i].relative_to(folder), sources[i], names[target[i]], float(true_prob[i]),
             names[pred[i]], float(probs[i, pred[i]])) for i in worst]


def write_confusion_matrix(out: Path, confmat, matrix, names: list[str], title: str) -> None:
    """confusion_matrix.csv (rows: true class, columns: predicted) and its torchmetrics plot."""
    with open(out / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ pred"] + names)
        for name, row in zip(names, matrix.tolist()):
            writer.writerow([name] + row)
    plt = pyplot()
    side = max(5.0, 0.5 * len(names) + 3)
    fig, ax = plt.subplots(figsize=(side, side))
    confmat.plot(val=matrix, ax=ax, labels=names, add_text=len(names) <= 20)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)


def wrong_class_maps(predictor, wrong: list[tuple], cam) -> list | None:
    """Where the model looked for the class it wrongly predicted, per top loss; None without a
    cam method."""
    if cam is None or cam.method is None or not wrong:
        return None
    names = predictor.class_names
    files = [file for _, file, *_ in wrong]
    targets = [names.index(pred) for *_, pred, _ in wrong]
    return [m for _, m in predictor.explained(files, cam.method, cam.stage, targets)]


def plot_top_losses(path: Path, wrong: list[tuple], n_wrong: int, n_images: int,
                    cams: list | None = None) -> None:
    """The most confidently wrong images, each titled with its true and predicted class and their
    probabilities; `wrong` as `top_losses` gives it. With `cams`, each image's map for the
    predicted class is drawn beside it."""
    from transferlab.data.images import load_rgb

    plt = pyplot()
    if not wrong:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"No wrong predictions:\nall {n_images} images are classified right.",
                ha="center", va="center", fontsize=14)
        fig.tight_layout()
    else:
        per = 1 if cams is None else 2  # panels per image: the image, then its map
        cols = min(3, len(wrong))
        rows = math.ceil(len(wrong) / cols)
        fig, axes = plt.subplots(rows, cols * per, figsize=(3.4 * cols * per, 3.9 * rows + 0.5),
                                 squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for k, (name, file, true, p_true, pred, p_pred) in enumerate(wrong):
            image, row, col = load_rgb(file), k // cols, (k % cols) * per
            if cams is not None:
                from transferlab.explain import overlay

                drawn = overlay(image, cams[k])
                drawn.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
                axes[row, col + 1].imshow(drawn)
                axes[row, col + 1].set_title(f"where it saw {pred}", fontsize=10)
            image.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
            axes[row, col].imshow(image)
            axes[row, col].set_title(f"{short(str(name))}\ntrue {true} ({p_true:.2f})\n"
                                     f"pred {pred} ({p_pred:.2f})", fontsize=10)
        fig.suptitle(f"Most confidently wrong: {len(wrong)} of {n_wrong} wrong, {n_images} images\n"
                     "(class and its probability)", fontsize=11)
        fig.tight_layout(h_pad=1.5)
    fig.savefig(path, dpi=100)
    plt.close(fig)


TASK = register(Classification())
