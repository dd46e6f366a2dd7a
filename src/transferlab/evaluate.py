"""`transferlab-eval`: score a finished run's checkpoint on labelled images.

`transferlab-eval run=<run dir> split=val|test|<folder> checkpoint=best|last|<file.ckpt>` reads
the images the way validation did (the checkpoint's own preprocessing, through
`transferlab.load`) and writes its metrics, tables and figures to `<run>/eval/<split>-<checkpoint>/`:

- classification: metrics.json, confusion_matrix.csv/.png, top_losses.png, predictions.csv
- segmentation: metrics.json, per_image.csv, worst.png

Every metric is torchmetrics', accumulated as the training modules do, so the run's own val split
at its training image size gives back the val numbers of summary.json. Like `transferlab-train` it
imports only Hydra at start; torch loads once the evaluation starts.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from transferlab.errors import ConfigError, DataError
from transferlab.train import USER_ERRORS, config_dir, finished_run, shown, stop

log = logging.getLogger("transferlab")

NAMED_SPLITS = ("val", "test")  # <data.root>/<split>; any other value is a folder
TOP_LOSSES = 9  # images in top_losses.png, at most
WORST = 6  # images in worst.png, at most
SHOWN_SIDE = 320  # figure thumbnails: longest side in pixels


@dataclass
class Evaluation:
    task: str
    out: Path
    split_dir: Path
    checkpoint: Path
    n_images: int
    skipped: int  # images (pairs) left out: files that do not decode
    metrics: dict = field(default_factory=dict)


# -- where things are ----------------------------------------------------------------------------


def split_name(split: str) -> str:
    return split if split in NAMED_SPLITS else Path(os.path.abspath(split)).name


def checkpoint_name(checkpoint: str) -> str:
    return checkpoint if checkpoint in ("best", "last") else Path(checkpoint).stem


def out_dir(cfg: DictConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    return Path(cfg.run) / "eval" / f"{split_name(str(cfg.split))}-{checkpoint_name(str(cfg.checkpoint))}"


def run_config(run_dir: Path) -> DictConfig:
    """The run's saved config (as trained: resolved): eval reads the data layout from it."""
    path = run_dir / "config.yaml"
    run_cfg = OmegaConf.load(path) if path.is_file() else None
    if run_cfg is None or "data" not in run_cfg:
        raise ConfigError(f"{path} is missing or has no data settings: eval reads the layout of "
                          "the run's data (and data.root) from it")
    return run_cfg


def split_dir(run_dir: Path, split: str, run_cfg: DictConfig) -> Path:
    if split not in NAMED_SPLITS:
        folder = Path(split)
        if not folder.is_dir():
            raise DataError(f"split={split}: folder {folder} does not exist")
        return folder
    config = run_dir / "config.yaml"
    root = OmegaConf.select(run_cfg, "data.root")
    if not root:
        raise ConfigError(f"split={split} means <data.root>/{split}, but {config} sets no "
                          "data.root; pass the folder itself: split=<folder>")
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(
            f"split={split}: {folder} does not exist (data.root={root} in {config}). Pass a folder "
            "in the same layout instead: split=<folder>"
        )
    return folder


# -- which files ---------------------------------------------------------------------------------


def split_data(run_cfg: DictConfig, folder: Path):
    """The run's own DataModule (its layout, pairing and mask settings) pointed at `folder`, so a
    split is read exactly as training read its val folder."""
    from hydra.utils import instantiate

    return instantiate(run_cfg.data, root=str(folder.parent))


def labelled_images(data, folder: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
    """`folder/<class>/*` as training lists it, every class folder one of the run's classes."""
    from transferlab.data.classification import class_folders

    found = class_folders(folder)
    if not found:
        raise DataError(
            f"{folder} has no class folders: expected {folder}/<class>/* with classes among "
            f"the run's {class_names}"
        )
    unknown = [c for c in found if c not in class_names]
    if unknown:
        raise DataError(
            f"class folder(s) {unknown} in {folder} are not classes of this run; its classes "
            f"(from its training data) are {class_names}"
        )
    data.classes = class_names
    by_class = data.image_files(folder.name)
    files = [p for files in by_class.values() for p in files]
    labels = [class_names.index(c) for c, files in by_class.items() for _ in files]
    return files, labels


def usable_files(predictor, files: list[Path], on_bad_file: str, out: Path) -> set[Path]:
    """The `files` that decode, by the training data's bad-file policy; the others are listed in
    `out`/bad_files.txt (and `error` stops, naming them)."""
    from transferlab.data.images import write_bad_files
    from transferlab.errors import BadFilesError

    (out / "bad_files.txt").unlink(missing_ok=True)  # from an earlier evaluation
    try:
        usable, bad = predictor.usable(files, on_bad_file)
    except BadFilesError as err:
        write_bad_files(out / "bad_files.txt", err.bad)
        raise
    if bad:
        write_bad_files(out / "bad_files.txt", bad)
    return set(usable)


# -- the evaluation ------------------------------------------------------------------------------


def evaluate(cfg: DictConfig) -> Evaluation:
    """Everything but the closing block: check the inputs, predict, write the results."""
    run_dir = finished_run(cfg)
    from transferlab.console import quiet_libraries
    from transferlab.inference import checkpoint_path, load

    checkpoint_path(run_dir, str(cfg.checkpoint))  # a missing one stops before anything loads
    run_cfg = run_config(run_dir)
    folder = split_dir(run_dir, str(cfg.split), run_cfg)
    out = out_dir(cfg)
    predictor = load(run_dir, str(cfg.checkpoint), cfg.device)
    quiet_libraries()
    log.info("evaluating %s on %s (%s)", shown(predictor.checkpoint), shown(folder), predictor.device)
    data = split_data(run_cfg, folder)
    if predictor.task == "classification":
        return evaluate_classification(cfg, predictor, data, folder, out)
    return evaluate_segmentation(cfg, predictor, data, folder, out)


def predicted(predictor, sources: list[Path], cfg: DictConfig):
    """(index into `sources`, class probabilities on the CPU, (height, width)) per image."""
    for x, index, sizes in predictor.batches(sources, cfg.batch_size, cfg.num_workers):
        probs = predictor.probabilities(x).float().cpu()
        yield from zip(index.tolist(), probs, sizes.tolist())


def evaluate_classification(cfg: DictConfig, predictor, data, folder: Path, out: Path) -> Evaluation:
    import torch
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
        MulticlassStatScores,
    )

    names = predictor.class_names
    files, labels = labelled_images(data, folder, names)
    usable = usable_files(predictor, files, cfg.on_bad_file, out)
    samples = [(f, y) for f, y in zip(files, labels) if f in usable]
    if not samples:
        raise DataError(f"{folder} has no usable images")
    sources = [f for f, _ in samples]
    target = torch.tensor([y for _, y in samples])
    probs = torch.zeros(len(samples), len(names))
    for i, p, _ in predicted(predictor, sources, cfg):
        probs[i] = p

    n = len(names)
    confmat = MulticlassConfusionMatrix(n)
    scores = {
        "accuracy": MulticlassAccuracy(n, average="micro"),
        "balanced_accuracy": MulticlassAccuracy(n, average="macro"),  # the mean recall
        "precision": MulticlassPrecision(n, average=None),
        "recall": MulticlassRecall(n, average=None),
        "f1": MulticlassF1Score(n, average=None),
        "stats": MulticlassStatScores(n, average=None),  # per class: tp, fp, tn, fn, support
    }
    values = {k: m(probs, target) for k, m in scores.items()}
    matrix = confmat(probs, target)
    metrics = {
        "task": "classification",
        "split": os.path.abspath(folder),
        "checkpoint": os.path.abspath(predictor.checkpoint),
        "n_images": len(samples),
        "images_skipped": len(files) - len(samples),  # do not decode
        "accuracy": number(values["accuracy"]),
        "balanced_accuracy": number(values["balanced_accuracy"]),
        "per_class": {
            name: {
                "precision": number(values["precision"][c]),
                "recall": number(values["recall"][c]),
                "f1": number(values["f1"][c]),
                "support": int(values["stats"][c, 4]),
            }
            for c, name in enumerate(names)
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    write_confusion_matrix(out, confmat, matrix, names,
                           f"{shown(folder)}: {len(samples)} images, {predictor.checkpoint.name}")
    pred = probs.argmax(1)
    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "pred"] + [f"prob_{name}" for name in names])
        for path, y, p, row in zip(sources, target.tolist(), pred.tolist(), probs.tolist()):
            writer.writerow([os.path.abspath(path), names[y], names[p]] + [f"{v:.6g}" for v in row])
    # Most confidently wrong: the largest loss, -log p(true class), among the wrong predictions.
    wrong = (pred != target).nonzero().flatten()
    true_prob = probs[torch.arange(len(target)), target]
    worst = wrong[true_prob[wrong].argsort(stable=True)][:TOP_LOSSES].tolist()
    shown_wrong = [
        (sources[i].relative_to(folder), sources[i], names[target[i]], float(true_prob[i]),
         names[pred[i]], float(probs[i, pred[i]]))
        for i in worst
    ]
    plot_top_losses(out / "top_losses.png", shown_wrong, len(wrong), len(samples))
    return Evaluation("classification", out, folder, predictor.checkpoint, len(samples),
                      len(files) - len(samples), metrics)


def evaluate_segmentation(cfg: DictConfig, predictor, data, folder: Path, out: Path) -> Evaluation:
    import torch
    from torchmetrics.segmentation import DiceScore, MeanIoU

    from transferlab.data.segmentation import check_sizes

    names = predictor.class_names
    if len(data.classes) != len(names):
        raise ConfigError(
            f"the run's config.yaml data settings give classes {data.classes}, its checkpoint "
            f"{predictor.checkpoint} {names}: is config.yaml from another run?"
        )
    encode = data.encode_mask
    found, unpaired = data.stem_pairs(folder.name)
    if unpaired:
        raise DataError(data.unpaired_message(unpaired))
    usable = usable_files(predictor, [f for pair in found for f in pair], cfg.on_bad_file, out)
    pairs = [(i, m) for i, m in found if i in usable and m in usable]
    if not pairs:
        raise DataError(f"{folder} has no usable image-mask pairs")
    check_sizes(pairs)

    # As SegmentationModule's validation: per image scores, averaged over the images in which a
    # class appears (in the truth or the prediction); each image at its own size, one at a time.
    n = len(names)
    dice = DiceScore(n, average="none", input_format="index")
    iou = MeanIoU(n, per_class=True, input_format="index")
    sources = [i for i, _ in pairs]
    rows, worst = [], []
    for i, probs, size in predicted(predictor, sources, cfg):
        truth = encode(pairs[i][1])[None]
        mask = torch.from_numpy(predictor.result(str(sources[i]), probs, size).mask).long()[None]
        image_dice = dice(mask, truth)  # per class, this image's; also added to the split's
        image_iou = iou(mask, truth).float()
        image_iou[image_iou < 0] = float("nan")  # -1: a class in neither truth nor prediction
        rows.append((i, float(image_dice.nanmean()), float(image_iou.nanmean())))
        worst = keep_worst(worst, (rows[-1][1], i, truth[0], mask[0]))
    split_dice = dice.compute()
    split_iou = iou.compute().float()
    split_iou[split_iou < 0] = float("nan")
    metrics = {
        "task": "segmentation",
        "split": os.path.abspath(folder),
        "checkpoint": os.path.abspath(predictor.checkpoint),
        "n_images": len(pairs),
        "pairs_skipped": len(found) - len(pairs),  # image or mask does not decode
        "dice": number(split_dice.nanmean()),
        "iou": number(split_iou.nanmean()),
        "per_class": {
            name: {"dice": number(split_dice[c]), "iou": number(split_iou[c])}
            for c, name in enumerate(names)
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    with open(out / "per_image.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "dice", "iou"])
        for i, d, u in rows:
            writer.writerow([os.path.abspath(sources[i]), f"{d:.6g}", f"{u:.6g}"])
    by_index = {i: u for i, _, u in rows}
    plot_worst(out / "worst.png", [(sources[i], d, by_index[i], t, m) for d, i, t, m in worst],
               names, len(pairs))
    return Evaluation("segmentation", out, folder, predictor.checkpoint, len(pairs),
                      len(found) - len(pairs), metrics)


# -- the files -----------------------------------------------------------------------------------


def number(value) -> float | None:
    """A metric for JSON: NaN (a class in no image and no prediction) becomes null."""
    value = float(value)
    return None if math.isnan(value) else value


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 11] + "..." + name[-8:]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a screen
    import matplotlib.pyplot as plt

    return plt


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


def plot_top_losses(path: Path, wrong: list[tuple], n_wrong: int, n_images: int) -> None:
    """The most confidently wrong images, each titled with its true and predicted class and their
    probabilities; `wrong`: (name, file, true, p(true), predicted, p(predicted)), worst first."""
    from transferlab.data.images import load_rgb

    plt = pyplot()
    if not wrong:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"No wrong predictions:\nall {n_images} images are classified right.",
                ha="center", va="center", fontsize=14)
        fig.tight_layout()
    else:
        cols = min(3, len(wrong))
        rows = math.ceil(len(wrong) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.9 * rows + 0.5), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (name, file, true, p_true, pred, p_pred) in zip(axes.flat, wrong):
            image = load_rgb(file)
            image.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
            ax.imshow(image)
            ax.set_title(f"{short(str(name))}\ntrue {true} ({p_true:.2f})\npred {pred} ({p_pred:.2f})",
                         fontsize=10)
        fig.suptitle(f"Most confidently wrong: {len(wrong)} of {n_wrong} wrong, {n_images} images\n"
                     "(class and its probability)", fontsize=11)
        fig.tight_layout(h_pad=1.5)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def keep_worst(worst: list[tuple], item: tuple) -> list[tuple]:
    """The WORST lowest-Dice (dice, index, truth, prediction) so far, lowest first."""
    return sorted(worst + [item], key=lambda t: (-1.0 if math.isnan(t[0]) else t[0], t[1]))[:WORST]


def plot_worst(path: Path, worst: list[tuple], names: list[str], n_images: int) -> None:
    """The lowest-Dice images with the truth (top row) and the prediction (bottom row) drawn, as
    the TensorBoard overlays of training; `worst`: (file, dice, iou, truth, prediction)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from matplotlib.patches import Patch

    from transferlab.data.images import load_rgb
    from transferlab.modules.segmentation import OVERLAY_COLORS, overlay

    plt = pyplot()
    k = len(worst)
    fig, axes = plt.subplots(2, k, figsize=(3.0 * k + 0.6, 7.8), squeeze=False)
    for col, (file, dice, iou, truth, mask) in enumerate(worst):
        image = load_rgb(file)
        scale = SHOWN_SIDE / max(image.size)
        if scale < 1:
            size = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
            image = image.resize(size[::-1])
            truth, mask = (F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0].long()
                           for m in (truth, mask))
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()
        drawn = overlay(torch.stack([pixels, pixels]), torch.stack([truth, mask]), len(names))
        for row, picture in enumerate(drawn):
            axes[row, col].imshow(picture.permute(1, 2, 0).numpy())
        axes[0, col].set_title(f"{short(file.name)}\nDice {dice:.3f}  IoU {iou:.3f}", fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("truth", fontsize=11)
    axes[1, 0].set_ylabel("prediction", fontsize=11)
    legend = [Patch(color=OVERLAY_COLORS[(c - 1) % len(OVERLAY_COLORS)], alpha=0.6, label=names[c])
              for c in range(1, len(names))]
    fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), 6), frameon=False,
               title=f"{names[0]}: not drawn")
    fig.suptitle(f"The {k} lowest-Dice of {n_images} images (Dice and IoU: mean over the classes "
                 "in truth or prediction)", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1), h_pad=0.6)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the app -------------------------------------------------------------------------------------


def outcome(result: Evaluation, seconds: float) -> str:
    """The closing block: where the files went and the headline numbers."""
    m = result.metrics

    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    what = "images" if result.task == "classification" else "image-mask pairs"
    images = f"{result.n_images} {what}"
    if result.skipped:
        images += f", {result.skipped} skipped: files that do not decode (bad_files.txt)"
    lines = [("eval dir", shown(result.out)), ("split", f"{shown(result.split_dir)}, {images}"),
             ("checkpoint", shown(result.checkpoint))]
    if result.task == "classification":
        lines += [("accuracy", fmt(m["accuracy"])),
                  ("balanced", f"{fmt(m['balanced_accuracy'])} accuracy (mean recall over classes)")]
    else:
        for key in ("dice", "iou"):
            per_class = ", ".join(f"{name} {fmt(v[key])}" for name, v in m["per_class"].items())
            lines.append((key, f"{fmt(m[key])} mean over classes ({per_class})"))
    lines.append(("time", f"{seconds:.0f} s"))
    return "\n".join(f"  {k:<10}  {v}" for k, v in lines)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    try:
        result = evaluate(cfg)
    except USER_ERRORS as err:
        log.error("%s", err)
        stop(err, HydraConfig.get().mode)
    log.info("evaluation finished:\n%s", outcome(result, time.perf_counter() - start))


if __name__ == "__main__":
    main()
