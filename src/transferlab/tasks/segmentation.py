"""Semantic segmentation: a class per pixel, scored by Dice and IoU per class and their mean over
classes, each mask at its image's own size."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.data import segmentation as data
from transferlab.errors import ConfigError, DataError
from transferlab.modules.segmentation import OVERLAY_COLORS, SegmentationModule, overlay, present
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

WORST = 6  # images in worst.png, at most
SHOWN_SIDE = 320  # figure thumbnails: longest side in pixels


@dataclass
class MaskPrediction:
    source: str
    mask: np.ndarray  # (H, W) uint8 class ids, at the input image's own size
    foreground_fraction: float  # pixels of any class but the first (background)


class Segmentation(Task):
    name = SegmentationModule.task
    module = SegmentationModule
    unit = "image-mask pairs"
    cam_target = 1  # the first class after the background: the mean over pixels favours the background

    def eval_transform(self, preprocess):
        return data.eval_transform(preprocess["image_size"], preprocess["mean"], preprocess["std"])

    def describe_resize(self, preprocess):
        size = int(preprocess["image_size"])
        return {"rule": f"resize the whole image to {size}x{size} (height x width), ignoring its "
                        "aspect ratio; no crop",
                "size": [size, size]}

    def cam_on_image(self, cam, size, preprocess):
        """The squashed image's map, stretched back to the image's own height and width."""
        full = torch.as_tensor(cam, dtype=torch.float32)[None, None]
        return F.interpolate(full, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()

    def raw_preprocess(self, preprocess):
        return raw.Squash(int(preprocess["image_size"]), preprocess["mean"], preprocess["std"])

    def image_folder(self, split_dir):
        return split_dir / "images"

    def prediction(self, source, probs, size, class_names):
        # Back to the image's own size: probabilities resized, then the most likely class.
        full = F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        mask = full.argmax(0).to(torch.uint8).numpy()
        return MaskPrediction(source, mask, float((mask > 0).mean()))

    def flip_back(self, probs):
        return probs.flip(-1)

    def prediction_header(self, class_names):
        return ["foreground_fraction", "mask"]

    def write_prediction(self, prediction, source, relative, out, class_names, overlays):
        from PIL import Image

        from transferlab.data.images import load_rgb

        relative = relative.with_suffix(".png")
        # Two classes: a viewable 0/255 mask; more: the class index per pixel.
        pixels = prediction.mask * 255 if len(class_names) == 2 else prediction.mask
        mask_file = out / "masks" / relative
        mask_file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(mask_file)
        if overlays:
            image = torch.from_numpy(np.array(load_rgb(source))).permute(2, 0, 1)
            (drawn,) = overlay(image[None].float(), torch.from_numpy(prediction.mask)[None].long(),
                               len(class_names))
            overlay_file = out / "overlays" / relative
            overlay_file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(overlay_file)
        return [f"{prediction.foreground_fraction:.6f}", str(mask_file.relative_to(out))]

    def prediction_files(self, out):
        return [("masks", out / "masks")]

    def evaluate(self, inputs: EvalInputs) -> Evaluation:
        predictor, folder, out, run_data = inputs.predictor, inputs.folder, inputs.out, inputs.data
        names = predictor.class_names
        if len(run_data.classes) != len(names):
            raise ConfigError(
                f"the run's config.yaml data settings give classes {run_data.classes}, its "
                f"checkpoint {predictor.checkpoint} {names}: is config.yaml from another run?"
            )
        found, unpaired = run_data.stem_pairs(folder.name)
        if unpaired:
            raise DataError(run_data.unpaired_message(unpaired))
        usable = usable_files(predictor, [f for pair in found for f in pair], inputs.on_bad_file, out)
        pairs = [(i, m) for i, m in found if i in usable and m in usable]
        if not pairs:
            raise DataError(f"{folder} has no usable image-mask pairs")
        data.check_sizes(pairs)
        rows, worst, split = score_pairs(predictor, pairs, run_data.encode_mask, inputs)
        metrics = {"task": self.name, "split": os.path.abspath(folder),
                   "checkpoint": os.path.abspath(predictor.checkpoint), "n_images": len(pairs),
                   "pairs_skipped": len(found) - len(pairs), **split}
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", metrics)
        sources = [i for i, _ in pairs]
        with open(out / "per_image.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "dice", "iou"])
            for i, d, u in rows:
                writer.writerow([os.path.abspath(sources[i]), f"{d:.6g}", f"{u:.6g}"])
        iou_of = {i: u for i, _, u in rows}
        plot_worst(out / "worst.png", [(sources[i], d, iou_of[i], t, m) for d, i, t, m in worst],
                   names, len(pairs))
        return Evaluation(self.name, out, folder, predictor.checkpoint, len(pairs),
                          len(found) - len(pairs), metrics)

    def evaluation_lines(self, metrics):
        lines = []
        for key in ("dice", "iou"):
            per_class = ", ".join(f"{name} {fmt(v[key])}" for name, v in metrics["per_class"].items())
            lines.append((key, f"{fmt(metrics[key])} mean over classes ({per_class})"))
        return lines

    def output_notes(self, class_names, size):
        return {
            "meaning": "per-pixel class probabilities: channel i is class_names[i], they sum to 1 "
                       "over the channels at each pixel",
            "postprocess": "to get a mask at the image's own size: resize the probabilities "
                           "bilinearly (align_corners=False) to the original height x width, then "
                           "take the argmax over the class channel; the class id indexes "
                           "class_names (0: background)",
        }


def score_pairs(predictor, pairs, encode, inputs: EvalInputs):
    """As SegmentationModule's validation: per image scores, averaged over the images in which a
    class appears (in the truth or the prediction); each image at its own size, one at a time.
    Returns the per-image (index, Dice, IoU), the lowest-Dice images, and the split's scores."""
    from torchmetrics.segmentation import DiceScore, MeanIoU

    names = predictor.class_names
    dice = DiceScore(len(names), average="none", input_format="index")
    iou = MeanIoU(len(names), per_class=True, input_format="index")
    sources = [i for i, _ in pairs]
    rows, worst = [], []
    for i, probs, size in predictor.predicted(sources, inputs.batch_size, inputs.num_workers):
        truth = encode(pairs[i][1])[None]
        mask = torch.from_numpy(predictor.result(str(sources[i]), probs, size).mask).long()[None]
        image_dice = dice(mask, truth)  # per class, this image's; also added to the split's
        image_iou = present(iou(mask, truth))
        rows.append((i, float(image_dice.nanmean()), float(image_iou.nanmean())))
        worst = keep_worst(worst, (rows[-1][1], i, truth[0], mask[0]))
    split_dice, split_iou = dice.compute(), present(iou.compute())
    split = {"dice": number(split_dice.nanmean()), "iou": number(split_iou.nanmean()),
             "per_class": {name: {"dice": number(split_dice[c]), "iou": number(split_iou[c])}
                           for c, name in enumerate(names)}}
    return rows, worst, split


def keep_worst(worst: list[tuple], item: tuple) -> list[tuple]:
    """The WORST lowest-Dice (dice, index, truth, prediction) so far, lowest first."""
    return sorted(worst + [item], key=lambda t: (-1.0 if math.isnan(t[0]) else t[0], t[1]))[:WORST]


def plot_worst(path: Path, worst: list[tuple], names: list[str], n_images: int) -> None:
    """The lowest-Dice images with the truth (top row) and the prediction (bottom row) drawn, as
    the TensorBoard overlays of training; `worst`: (file, dice, iou, truth, prediction)."""
    from matplotlib.patches import Patch

    from transferlab.data.images import load_rgb

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


TASK = register(Segmentation())
