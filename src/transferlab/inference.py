"""Use a finished run: `transferlab.load(run_dir).predict(images)`.

A run dir is self-describing: its checkpoints hold the network, the class names and the eval
preprocessing (`preprocess` hyperparameter), so inference needs neither the training data nor the
configs, and the run dir can move to another machine.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from transferlab.data.images import as_rgb, find_bad_files, is_image_name, load_rgb
from transferlab.data.preprocess import eval_transform
from transferlab.errors import ConfigError, DataError
from transferlab.summary import read_summary

MODULES = {
    "classification": "transferlab.modules.classification.ClassificationModule",
    "segmentation": "transferlab.modules.segmentation.SegmentationModule",
}
TTA = (None, "hflip")
Source = Path | Image.Image


@dataclass
class ClassPrediction:
    source: str
    label: str
    probabilities: dict[str, float]


@dataclass
class MaskPrediction:
    source: str
    mask: np.ndarray  # (H, W) uint8 class ids, at the input image's own size
    foreground_fraction: float  # pixels of any class but the first (background)


def checkpoint_path(run_dir: Path, checkpoint: str = "best") -> Path:
    """`best` (the checkpoint of the run's best monitor value), `last`, or a file."""
    folder = run_dir / "checkpoints"
    if checkpoint == "last":
        path = folder / "last.ckpt"
    elif checkpoint == "best":
        # summary.json names it; by file name, so a moved run dir still finds it.
        named = read_summary(run_dir / "summary.json").get("best_checkpoint")
        found = [folder / Path(named).name] if named else sorted(folder.glob("best-*.ckpt"))
        path = found[-1] if found else folder / "best-*.ckpt"
    else:
        path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(
            f"no checkpoint {path}: checkpoint={checkpoint} needs a run dir with checkpoints/ "
            "(best-epochNNN.ckpt, last.ckpt) or a .ckpt file"
        )
    return path


def load(run: str | Path, checkpoint: str = "best", device: str | torch.device | None = None) -> Predictor:
    """A finished run's model, ready to predict. `checkpoint`: best | last | a .ckpt path;
    `device`: e.g. "cpu", "cuda"; default: the GPU if there is one."""
    from hydra.utils import get_class

    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ConfigError(f"run dir {run_dir} does not exist")
    path = checkpoint_path(run_dir, checkpoint)
    hparams = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
    preprocess = hparams.get("preprocess")
    if not preprocess:
        raise ConfigError(f"{path} has no preprocessing record: it comes from an older transferlab")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = get_class(MODULES[preprocess["task"]]).load_from_checkpoint(
        path, map_location=device, weights_only=True
    )
    return Predictor(module.eval(), preprocess, device, path)


def image_sources(inputs) -> list[Source]:
    """Files, folders (walked recursively), glob patterns and PIL images, in a stable order."""
    if isinstance(inputs, (str, Path, Image.Image)):
        inputs = [inputs]
    sources: list[Source] = []
    for item in inputs:
        if isinstance(item, Image.Image):
            sources.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            # Every file, so the ones that are no images get listed rather than passed over.
            sources += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            sources.append(path)
        elif glob.has_magic(str(item)):
            sources += sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
        else:
            raise DataError(f"input {item} does not exist")
    return sources


class Images(Dataset):
    """Decoded in DataLoader workers: (tensor, index, (height, width) of the original)."""

    def __init__(self, sources: list[Source], transform):
        self.sources = sources
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i):
        source = self.sources[i]
        image = as_rgb(source) if isinstance(source, Image.Image) else load_rgb(source)
        return self.transform(image), i, torch.tensor([image.height, image.width])


@dataclass
class Predictor:
    module: torch.nn.Module
    preprocess: dict
    device: torch.device
    checkpoint: Path

    @property
    def task(self) -> str:
        return self.preprocess["task"]

    @property
    def class_names(self) -> list[str]:
        return list(self.module.hparams.class_names)

    def usable(self, inputs, on_bad_file: str = "warn") -> tuple[list[Source], list[tuple[Path, str]]]:
        """The inputs that decode, and the (file, reason) of those that do not, by the training
        data's policy: `error` raises naming every one, `warn` and `skip` leave them out."""
        sources = image_sources(inputs)
        files = [s for s in sources if isinstance(s, Path)]
        not_images = [(f, "not an image file name") for f in files if not is_image_name(f)]
        images = [f for f in files if is_image_name(f)]
        bad = find_bad_files(images, on_bad_file, known=not_images)
        dropped = {f for f, _ in bad}
        return [s for s in sources if not isinstance(s, Path) or s not in dropped], bad

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        """Class probabilities: (N, C) for classification, (N, C, H, W) for segmentation."""
        if tta not in TTA:
            raise ConfigError(f"tta={tta!r}; choose one of {TTA}")
        x = x.to(self.device)
        probs = self.module.predict_step(x, 0)
        if tta == "hflip":
            flipped = self.module.predict_step(x.flip(-1), 0)
            probs = (probs + (flipped.flip(-1) if self.task == "segmentation" else flipped)) / 2
        return probs

    def batches(self, sources: list[Source], batch_size: int = 8, num_workers: int = 0):
        loader = DataLoader(
            Images(sources, eval_transform(self.preprocess)), batch_size=batch_size,
            num_workers=num_workers, pin_memory=self.device.type == "cuda",
        )
        yield from loader

    def predict(self, inputs, batch_size: int = 8, num_workers: int = 0, tta: str | None = None,
                on_bad_file: str = "warn") -> list[ClassPrediction | MaskPrediction]:
        """One prediction per usable image (paths, folders, globs or PIL images), in order."""
        sources, _ = self.usable(inputs, on_bad_file)
        if not sources:
            raise DataError(f"no usable image in {inputs}")
        results = []
        for x, index, sizes in self.batches(sources, batch_size, num_workers):
            probs = self.probabilities(x, tta).float().cpu()
            for i, p, size in zip(index.tolist(), probs, sizes.tolist()):
                name = str(sources[i]) if isinstance(sources[i], Path) else f"<image {i}>"
                results.append(self.result(name, p, size))
        return results

    def result(self, source: str, probs: torch.Tensor, size: list[int]):
        if self.task == "classification":
            names = self.class_names
            return ClassPrediction(source, names[int(probs.argmax())], dict(zip(names, probs.tolist())))
        # Back to the image's own size: probabilities resized, then the most likely class.
        full = F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        mask = full.argmax(0).to(torch.uint8).numpy()
        return MaskPrediction(source, mask, float((mask > 0).mean()))
