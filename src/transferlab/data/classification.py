"""ImageFolder-layout data (`root/{train,val}/<class>/*`) as a LightningDataModule."""

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from transferlab.data.download import ensure_dataset
from transferlab.data.images import find_bad_files, is_image_name, load_rgb
from transferlab.data.sampling import EpochShuffle, SeededLoaders
from transferlab.errors import DataError

log = logging.getLogger(__name__)


def train_transform(size: int, mean, std) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(size, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def resize_side(size: int) -> int:
    """The shorter side val images are resized to before the centre crop: ImageNet's 256 / 224."""
    return round(size * 256 / 224)


def eval_transform(size: int, mean, std) -> v2.Compose:
    return v2.Compose([
        v2.Resize(resize_side(size), antialias=True),
        v2.CenterCrop(size),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


class LabelledImages(Dataset):
    def __init__(self, samples: list[tuple[Path, int]], transform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(load_rgb(path)), label


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolderDataModule(SeededLoaders):
    """Train/val ImageFolder splits sharing one class map, taken from train.

    Files are checked once at setup, before any training step (see `transferlab.data.images`
    for the bad-file policy).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        batch_size: int = 4,
        num_workers: int = 2,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        augment: bool = True,
        on_bad_file: str = "error",
        download_url: str | None = None,
        download_md5: str | None = None,
        pin_memory: bool = False,
        seed: int = 0,
    ):
        super().__init__(
            root, image_size, batch_size, num_workers, mean, std, augment, on_bad_file,
            pin_memory, seed,
        )
        self.task = "classification"
        self.download_url = download_url
        self.download_md5 = download_md5
        self.classes: list[str] = []
        self.cached: dict[str, Dataset] | None = None

    def prepare_data(self) -> None:
        ensure_dataset(self.root, self.download_url, self.download_md5, splits=("train", "val"))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        ensure_dataset(self.root, None, None, splits=("train", "val"))
        self.classes = class_folders(self.root / "train")
        if not self.classes:
            raise DataError(f"{self.root / 'train'} has no class folders (expected train/<class>/*)")
        found = {split: self.image_files(split) for split in ("train", "val")}
        # One decoding pass over both splits, so one run reports every bad file.
        every_file = [p for by_class in found.values() for files in by_class.values() for p in files]
        self.bad_files = find_bad_files(every_file, self.on_bad_file)
        bad = {p for p, _ in self.bad_files}
        train = self._samples("train", found["train"], bad)
        val = self._samples("val", found["val"], bad)
        make_train = train_transform if self.augment else eval_transform
        self.train_set = LabelledImages(train, make_train(self.image_size, self.mean, self.std))
        self.val_set = LabelledImages(val, eval_transform(self.image_size, self.mean, self.std))
        log.info(
            "data %s: %d classes %s, %d train / %d val images",
            self.root, len(self.classes), self.classes, len(train), len(val),
        )

    def image_files(self, split: str) -> dict[str, list[Path]]:
        """Class -> the files with an image extension in `split`; other files are ignored."""
        split_dir = self.root / split
        extra = [c for c in class_folders(split_dir) if c not in self.classes]
        if extra:
            raise DataError(
                f"class folder(s) {extra} in {split_dir} do not exist in {self.root / 'train'}; "
                f"the class map comes from train: {self.classes}"
            )
        by_class, ignored = {}, []
        for cls in class_folders(split_dir):
            files = sorted(p for p in (split_dir / cls).rglob("*") if p.is_file())
            by_class[cls] = [p for p in files if is_image_name(p)]
            ignored += [p for p in files if not is_image_name(p) and not p.name.startswith(".")]
        if ignored:
            log.info(
                "%s: ignored %d file(s) without an image extension: %s",
                split, len(ignored), ", ".join(str(p.relative_to(self.root)) for p in ignored[:10]),
            )
        return by_class

    def _samples(
        self, split: str, by_class: dict[str, list[Path]], bad: set[Path]
    ) -> list[tuple[Path, int]]:
        samples = []
        for cls, files in by_class.items():
            images = [p for p in files if p not in bad]
            if not images and split == "train":
                raise DataError(f"class folder {self.root / split / cls} has no usable images")
            label = self.classes.index(cls)
            samples += [(p, label) for p in images]
        if not samples:
            raise DataError(f"{self.root / split} has no usable images")
        return samples

    def feature_sources(self, augmented: bool) -> dict[str, LabelledImages]:
        """The image sets a feature cache encodes: val as always; train through the train
        transform when `augmented`, else through the val transform (fixed centre crops)."""
        if augmented:
            return {"train": self.train_set, "val": self.val_set}
        fixed = eval_transform(self.image_size, self.mean, self.std)
        return {"train": LabelledImages(self.train_set.samples, fixed), "val": self.val_set}

    def use_cached(self, sets: dict[str, Dataset] | None) -> None:
        """Serve these in-memory datasets (split -> dataset) instead of the images; None: images."""
        self.cached = sets

    def train_dataloader(self) -> DataLoader:
        if self.cached:
            # In-memory tensors that draw their own views: no per-sample seeding, no worker
            # process (it would only copy them), whole batches at a time.
            cached = self.cached["train"]
            sampler = EpochShuffle(len(cached), self.seed, self._current_epoch)
            return DataLoader(cached, self.batch_size, sampler=sampler, collate_fn=cached.collate)
        return self._seeded_loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        if self.cached:
            # Validation of a head on cached inputs is one matrix product per batch: large
            # batches only save per-step overhead (metrics average over images, not batches).
            cached = self.cached["val"]
            return DataLoader(cached, max(self.batch_size, 1024), collate_fn=cached.collate)
        return self._loader(self.val_set)
