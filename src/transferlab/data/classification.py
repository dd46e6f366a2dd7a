"""ImageFolder-layout data as a LightningDataModule: `root/train/<class>/*` with `val/` and
`test/` when present, or one folder `root/<class>/*` (with `root/test/<class>/*` when present);
what has no folder is split off by `transferlab.data.splits`."""

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from transferlab.data.augment import Basic
from transferlab.data.download import ensure_dataset
from transferlab.data.images import files_under, find_bad_files, is_image_name, load_rgb
from transferlab.data.sampling import ClassBalanced, EpochSampler, SeededLoaders
from transferlab.data.splits import Item, identical_files
from transferlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def train_transform(size: int, mean, std, augmentation: Basic | None = None) -> v2.Compose:
    return v2.Compose([
        *(augmentation or Basic()).classification(size),
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


SAMPLERS = ("shuffle", "balanced")  # data.sampler


class ImageFolderDataModule(SeededLoaders):
    """Train/val(/test) ImageFolder splits sharing one class map, taken from train (or from the
    single folder's class folders).

    Files are checked once at setup, before any training step (see `transferlab.data.images`
    for the bad-file policy).
    """

    task = "classification"

    def __init__(
        self,
        root: str,
        *,
        image_size: int = 224,
        download_url: str | None = None,
        download_md5: str | None = None,
        sampler: str = "shuffle",
        **common,
    ):
        if sampler not in SAMPLERS:
            raise ConfigError(f"data.sampler={sampler}: choose one of {', '.join(SAMPLERS)}")
        super().__init__(root, image_size=image_size, **common)
        self.sampler = sampler
        self.download_url = download_url
        self.download_md5 = download_md5
        self.classes: list[str] = []
        self.class_dir = self.root / "train"  # where the class map comes from: train/ or root

    def prepare_data(self) -> None:
        if not self.root.exists():  # only a missing root is downloaded; a single folder is fine
            ensure_dataset(self.root, self.download_url, self.download_md5, splits=("train", "val"))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not self.root.exists():
            ensure_dataset(self.root, None, None, splits=("train", "val"))
        found = self.find_files()
        # One decoding pass over every split, so one run reports every bad file.
        every_file = [p for by_class in found.values() for files in by_class.values() for p in files]
        with self.scanning() as scan:
            self.bad_files = find_bad_files(every_file, self.on_bad_file, scan=scan)
            bad = {p for p, _ in self.bad_files}
            found = {split: {cls: [p for p in files if p not in bad] for cls, files in by_class.items()}
                     for split, by_class in found.items()}
            for cls, files in found["train"].items():
                if not files:
                    raise DataError(f"class folder {self.class_dir / cls} has no usable images")
            if len(found) > 1:
                identical_files({split: [p for files in by_class.values() for p in files]
                                 for split, by_class in found.items()}, scan)
        split = self.make_split({
            name: [Item(p.relative_to(self.root).as_posix(), cls) for cls, files in by_class.items()
                   for p in files]
            for name, by_class in found.items()
        }, "split folders" if self.class_dir != self.root else "one folder")
        samples = {name: self._samples(name, items) for name, items in split.items()}
        fixed = eval_transform(self.image_size, self.mean, self.std)
        train = train_transform(self.image_size, self.mean, self.std, self.augmentation) if self.augment else fixed
        self.train_set = LabelledImages(samples["train"], train)
        self.val_set = LabelledImages(samples["val"], fixed)
        if "test" in samples:
            self.test_set = LabelledImages(samples["test"], fixed)
        log.info(
            "data %s: %d classes %s, %s images",
            self.root, len(self.classes), self.classes,
            " / ".join(f"{len(s)} {name}" for name, s in samples.items()),
        )

    def find_files(self) -> dict[str, dict[str, list[Path]]]:
        """Split -> class -> image files (one folder: all of it is `train`); sets the class map.
        Which folder holds which split is `data.folders` (train/, val/, test/ by default)."""
        folder = {split: name for split, name in self.folders.items() if name}
        self.class_dir = self.root / folder["train"]
        if not self.class_dir.is_dir():
            self.class_dir = self.root
        # Split folders are never class names: in one folder, test/ is the test split.
        self.classes = [c for c in class_folders(self.class_dir) if c not in folder.values()]
        if not self.classes:
            raise DataError(
                f"dataset not found: {self.root} has no class folders; expected "
                f"{self.root}/<class>/<image> (one folder, split by data.val_fraction) or "
                f"{self.root}/{folder['train']}/<class>/<image> with val/ (and test/) beside it"
            )
        val = folder.get("val")
        if self.class_dir == self.root:
            found = {"train": self.files_in(self.root, skip=tuple(folder.values()))}
            if val and (self.root / val).is_dir():
                raise DataError(f"{self.root} holds class folders and a {val}/ folder but no "
                                f"{folder['train']}/: put the training classes under "
                                f"{folder['train']}/, or drop {val}/ and let data.val_fraction split them")
        else:
            found = {"train": self.image_files(folder["train"])}
            if val and (self.root / val).is_dir():
                found["val"] = self.image_files(val)
        if folder.get("test") and (self.root / folder["test"]).is_dir():
            found["test"] = self.image_files(folder["test"])
        return found

    def image_files(self, split: str) -> dict[str, list[Path]]:
        """Class -> the files with an image extension in `split`; other files are ignored."""
        return self.files_in(self.root / split)

    def files_in(self, split_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, list[Path]]:
        extra = [c for c in class_folders(split_dir) if c not in self.classes and c not in skip]
        if extra:
            raise DataError(
                f"class folder(s) {extra} in {split_dir} do not exist in {self.class_dir}; "
                f"the class map comes from there: {self.classes}"
            )
        by_class, ignored = {}, []
        for cls in class_folders(split_dir):
            if cls in skip:
                continue
            files = files_under(split_dir / cls)
            by_class[cls] = [p for p in files if is_image_name(p)]
            ignored += [p for p in files if not is_image_name(p) and not p.name.startswith(".")]
        if ignored:
            log.info(
                "%s: ignored %d file(s) without an image extension: %s",
                split_dir, len(ignored),
                ", ".join(str(p.relative_to(self.root)) for p in ignored[:10]),
            )
        return by_class

    def _samples(self, split: str, items: list[Item]) -> list[tuple[Path, int]]:
        samples = [(self.root / i.key, self.classes.index(i.label)) for i in items]
        if not samples:
            folder = self.root / split
            raise DataError(f"{folder if folder.is_dir() else f'the {split} split of {self.root}'} "
                            "has no usable images")
        return samples

    def fixed_view(self, split: str) -> LabelledImages:
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        return LabelledImages(dataset.samples, eval_transform(self.image_size, self.mean, self.std))

    def images_to_encode(self, augmented: bool) -> dict[str, LabelledImages] | None:
        if self.mixing.active:
            log.info("mixup=%s mixes images: the feature cache stays off (mixing its cached "
                     "features would be feature-level mixing, another experiment)", self.mixing.name)
            return None
        return {"train": self.train_set if augmented else self.fixed_view("train"), "val": self.val_set}

    def train_class_counts(self) -> list[int]:
        """Training images per class, in class order."""
        labels = [label for _, label in self.train_set.samples]
        return [labels.count(c) for c in range(len(self.classes))]

    def train_sampler(self, size: int) -> EpochSampler:
        if self.sampler == "balanced":
            # A served train set keeps the order of train_set.samples, so these labels fit both.
            return ClassBalanced([label for _, label in self.train_set.samples], self.seed,
                                 self._current_epoch)
        return super().train_sampler(size)

