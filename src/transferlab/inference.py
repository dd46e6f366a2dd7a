"""Use a finished run: `transferlab.load(run_dir).predict(images)`.

A run dir is self-describing: its checkpoints hold the network, the class names and the eval
preprocessing (`preprocess` hyperparameter, which names the task), so inference needs neither the
training data nor the configs, and the run dir can move to another machine.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from transferlab import tasks
from transferlab.data.images import as_rgb, find_bad_files, is_image_name, load_rgb
from transferlab.devices import resolve
from transferlab.errors import ConfigError, DataError
from transferlab.summary import best_checkpoint

TTA = (None, "hflip")
Source = Path | Image.Image


def checkpoint_path(run_dir: Path, checkpoint: str = "best") -> Path:
    """`best` (the checkpoint of the run's best monitor value), `last`, or a file."""
    folder = run_dir / "checkpoints"
    if checkpoint == "last":
        path = folder / "last.ckpt"
    elif checkpoint == "best":
        path = best_checkpoint(run_dir) or folder / "best-*.ckpt"
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
    `device`: auto (None: the GPU if there is one), cpu, cuda, cuda:N."""
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ConfigError(f"run dir {run_dir} does not exist")
    path = checkpoint_path(run_dir, checkpoint)
    hparams = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
    preprocess = hparams.get("preprocess")
    if not preprocess:
        raise ConfigError(f"{path} has no preprocessing record: it comes from an older transferlab")
    device = torch.device(resolve(None if device is None else str(device)) or
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    task = tasks.get(preprocess["task"])
    module = task.module.load_from_checkpoint(path, map_location=device, weights_only=True)
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
    def task(self) -> tasks.Task:
        return tasks.get(self.preprocess["task"])

    @property
    def class_names(self) -> list[str]:
        return list(self.module.hparams.class_names)

    def transform(self):
        """The eval transform the run validated with, from its checkpoint's record."""
        return self.task.eval_transform(self.preprocess)

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
        """Class probabilities: (N, C), or (N, C, H, W) for a dense task."""
        if tta not in TTA:
            raise ConfigError(f"tta={tta!r}; choose one of {TTA}")
        x = x.to(self.device)
        probs = self.module.predict_step(x, 0)
        if tta == "hflip":
            probs = (probs + self.task.flip_back(self.module.predict_step(x.flip(-1), 0))) / 2
        return probs

    def predicted(self, sources: list[Source], batch_size: int = 8, num_workers: int = 0,
                  tta: str | None = None) -> Iterator[tuple[int, torch.Tensor, list[int]]]:
        """(index into `sources`, probabilities on the CPU, (height, width)) per image, in order."""
        loader = DataLoader(
            Images(sources, self.transform()), batch_size=batch_size, num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, index, sizes in loader:
            probs = self.probabilities(x, tta).float().cpu()
            yield from zip(index.tolist(), probs, sizes.tolist())

    def predict(self, inputs, batch_size: int = 8, num_workers: int = 0, tta: str | None = None,
                on_bad_file: str = "warn") -> list:
        """One prediction per usable image (paths, folders, globs or PIL images), in order: the
        task's (a class and its probabilities; a mask at the image's own size)."""
        sources, _ = self.usable(inputs, on_bad_file)
        if not sources:
            raise DataError(f"no usable image in {inputs}")
        return [self.result(str(sources[i]) if isinstance(sources[i], Path) else f"<image {i}>", p, size)
                for i, p, size in self.predicted(sources, batch_size, num_workers, tta)]

    def explain(self, inputs, method: str = "gradcam", stage: str | None = None,
                targets: list[int] | None = None, batch_size: int = 8, on_bad_file: str = "warn"):
        """Class activation maps (`transferlab.explain`), one per usable image, each at the
        image's own size in [0, 1]: for `targets` (a class index per image; None: the task's
        default, the predicted class for classification, the first foreground class for
        segmentation). Returns (source, map) pairs in input order."""
        sources, _ = self.usable(inputs, on_bad_file)
        return [(str(sources[i]) if isinstance(sources[i], Path) else f"<image {i}>", cam)
                for i, cam in self.explained(sources, method, stage, targets, batch_size)]

    def explained(self, sources: list[Source], method: str = "gradcam", stage: str | None = None,
                  targets: list[int] | None = None, batch_size: int = 8, num_workers: int = 0):
        """(index into `sources`, map at the image's own size) per image, in order."""
        from transferlab.explain import cams

        loader = DataLoader(Images(sources, self.transform()), batch_size=batch_size,
                            num_workers=num_workers)
        default = self.task.cam_target
        for x, index, sizes in loader:
            if targets is not None:
                chosen = [targets[i] for i in index.tolist()]
            else:
                chosen = None if default is None else [default] * len(index)
            maps = cams(self.module, x.to(self.device), method, chosen, stage)
            for i, cam, size in zip(index.tolist(), maps, sizes.tolist()):
                yield i, self.task.cam_on_image(cam, size, self.preprocess)

    def result(self, source: str, probs: torch.Tensor, size: list[int]):
        return self.task.prediction(source, probs, size, self.class_names)
