"""Paired image/mask folders as a LightningDataModule.

`root/{train,val,test}/images/<id>.<ext>` pairs with `root/<split>/masks/<id><mask_suffix>.<ext>`
(by file stem; the extensions may differ); `val/` and `test/` are optional, and one folder
`root/{images,masks}` works too: what has no folder is split off by `transferlab.data.splits`
(`data.group_by` keeps the images of one patient together). Masks become class-id maps: `binary` masks are
foreground where the pixel value is >= `mask_threshold` (128 suits 0/255 masks, 1 suits 0/1
masks); `multiclass` masks hold class ids, or the values that `mask_values` lists in class order.
"""

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from transferlab.data.augment import Basic
from transferlab.data.images import find_bad_files, is_image_name, load_rgb
from transferlab.data.sampling import SeededLoaders
from transferlab.data.splits import Item, identical_files
from transferlab.errors import ConfigError, DataError, first_few

log = logging.getLogger(__name__)

MASK_MODES = ("binary", "multiclass")
Pair = tuple[Path, Path]


def train_transform(size: int, mean, std, augmentation: Basic | None = None) -> v2.Compose:
    # v2 applies the geometric transforms to image and tv_tensors.Mask alike (masks nearest);
    # the photometric ones, ToDtype and Normalize leave masks alone (transferlab.data.augment).
    return v2.Compose([
        v2.ToImage(),
        *(augmentation or Basic()).segmentation(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def eval_transform(size: int, mean, std) -> v2.Compose:
    # The whole image, squashed to a square: a centre crop would cut off part of the mask.
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((size, size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


class MaskEncoding:
    """Reads a mask file into an (H, W) int64 map of class ids."""

    def __init__(self, mode: str, num_classes: int, threshold: int = 128, values: list | None = None):
        self.mode = mode
        self.num_classes = num_classes
        self.threshold = threshold
        self.values = values

    def __call__(self, path: Path) -> torch.Tensor:
        with Image.open(path) as mask:
            if self.mode == "binary":
                return torch.from_numpy(np.asarray(mask.convert("L")) >= self.threshold).long()
            pixels = torch.from_numpy(np.array(mask)).long()  # P mode gives palette indices
        if pixels.ndim != 2:
            raise DataError(f"mask {path} has {pixels.shape[-1]} channels; class masks must have one")
        if self.values is None:
            ids = pixels
        else:
            ids = torch.full_like(pixels, -1)
            for class_id, value in enumerate(self.values):
                ids[pixels == value] = class_id
        outside = (ids < 0) | (ids >= self.num_classes)
        if outside.any():
            found = pixels[outside].unique()[:10].tolist()
            expected = self.values if self.values is not None else f"0..{self.num_classes - 1}"
            raise DataError(f"mask {path} holds pixel values {found} outside the classes ({expected})")
        return ids


class SegmentationPairs(Dataset):
    def __init__(self, pairs: list[Pair], encode_mask: MaskEncoding, transform):
        self.pairs = pairs
        self.encode_mask = encode_mask
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        image_path, mask_path = self.pairs[i]
        mask = tv_tensors.Mask(self.encode_mask(mask_path)[None])
        image, mask = self.transform(load_rgb(image_path), mask)
        return image, mask[0].as_subclass(torch.Tensor)


def files_by_stem(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p))
    clashes = [s for s, n in Counter(p.stem for p in files).items() if n > 1]
    if clashes:
        same = [str(p) for p in files if p.stem in clashes][:10]
        raise DataError(f"{folder} has several files per id, so pairing is ambiguous: {same}")
    return {p.stem: p for p in files}


class SegmentationFolderDataModule(SeededLoaders):
    """Train/val image-mask pairs, checked once at setup before any training step, both splits
    together: unpaired files and size mismatches are errors naming every one; undecodable files
    follow `on_bad_file`."""

    task = "segmentation"

    def __init__(
        self,
        root: str,
        *,
        image_size: int = 256,
        mask_mode: str = "binary",
        mask_threshold: int = 128,
        mask_values: list[int] | None = None,
        classes: list[str] | None = None,
        mask_suffix: str = "",
        **common,
    ):
        super().__init__(root, image_size=image_size, **common)
        if self.mixing.active:
            raise ConfigError(f"mixup={self.mixing.name} is for classification: segmentation "
                              "masks have no soft targets here; use mixup=none")
        self.classes = class_names(mask_mode, classes, mask_values)
        self.mask_suffix = mask_suffix or ""
        self.encode_mask = MaskEncoding(
            mask_mode, len(self.classes), mask_threshold, list(mask_values) if mask_values else None
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        # Split folders (data.folders) when the train folder has images/, else one images/ +
        # masks/ folder (the pool).
        named = {split: name for split, name in self.folders.items() if name}
        layout = named if (self.root / named["train"] / "images").is_dir() else {"train": ""}
        if not (self.root / layout["train"] / "images").is_dir():
            raise DataError(
                f"dataset not found: expected {self.root}/{named['train']}/images/<id>.png and "
                f"{self.root}/{named['train']}/masks/<id>{self.mask_suffix}.png (with val/ and test/ "
                f"beside it if you have them), or one folder {self.root}/images + {self.root}/masks. "
                "Put the data there, or point data.root (or TRANSFERLAB_DATA_DIR) at it."
            )
        found = {split: self.stem_pairs(name) for split, name in layout.items()
                 if split == "train" or (self.root / name / "images").is_dir()}
        unpaired = [line for _, lines in found.values() for line in lines]
        if unpaired:
            raise DataError(self.unpaired_message(unpaired))
        # One decoding pass over the images and masks of every split, so one run reports them all.
        every_file = [f for pairs, _ in found.values() for pair in pairs for f in pair]
        with self.scanning() as scan:
            self.bad_files = find_bad_files(every_file, self.on_bad_file, scan=scan)
            bad = {f for f, _ in self.bad_files}
            usable = {
                split: [(i, m) for i, m in pairs if i not in bad and m not in bad]
                for split, (pairs, _) in found.items()
            }
            check_sizes([pair for pairs in usable.values() for pair in pairs])
            if len(usable) > 1:
                identical_files({split: [i for i, _ in pairs] for split, pairs in usable.items()}, scan)
        mask_of = {i: m for pairs in usable.values() for i, m in pairs}
        split = self.make_split(
            {name: [Item(i.relative_to(self.root).as_posix()) for i, _ in pairs]
             for name, pairs in usable.items()},
            "split folders" if layout is named else "one folder",
        )
        pairs = {}
        for name, items in split.items():
            pairs[name] = [(self.root / i.key, mask_of[self.root / i.key]) for i in items]
            if not pairs[name]:
                folder = self.root / name
                raise DataError(f"{folder if folder.is_dir() else f'the {name} split of {self.root}'}"
                                " has no usable image-mask pairs")
        size, mean, std = self.image_size, self.mean, self.std
        fixed = eval_transform(size, mean, std)
        train = train_transform(size, mean, std, self.augmentation) if self.augment else fixed
        self.train_set = SegmentationPairs(pairs["train"], self.encode_mask, train)
        self.val_set = SegmentationPairs(pairs["val"], self.encode_mask, fixed)
        if "test" in pairs:
            self.test_set = SegmentationPairs(pairs["test"], self.encode_mask, fixed)
        log.info(
            "data %s: classes %s, %s image-mask pairs", self.root, self.classes,
            " / ".join(f"{len(p)} {name}" for name, p in pairs.items()),
        )

    def fixed_view(self, split: str) -> SegmentationPairs:
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        fixed = eval_transform(self.image_size, self.mean, self.std)
        return SegmentationPairs(dataset.pairs, self.encode_mask, fixed)

    def stem_pairs(self, split: str) -> tuple[list[Pair], list[str]]:
        """The (image, mask) pairs of `split` and a line for each file without its partner."""
        image_dir, mask_dir = self.root / split / "images", self.root / split / "masks"
        if not (image_dir.is_dir() and mask_dir.is_dir()):
            raise DataError(
                f"dataset not found: expected {image_dir}/<id>.png and "
                f"{mask_dir}/<id>{self.mask_suffix}.png. Put the data there, or point data.root "
                "(or TRANSFERLAB_DATA_DIR) at it."
            )
        images, masks = files_by_stem(image_dir), files_by_stem(mask_dir)
        mask_of = {s: s + self.mask_suffix for s in images}
        pairs = [(images[s], masks[m]) for s, m in mask_of.items() if m in masks]
        unpaired = [f"image without a mask: {images[s]}" for s, m in mask_of.items()
                    if m not in masks]
        wanted = set(mask_of.values())
        unpaired += [f"mask without an image: {masks[m]}" for m in masks if m not in wanted]
        return pairs, unpaired

    def unpaired_message(self, unpaired: list[str]) -> str:
        return (
            f"{len(unpaired)} unpaired file(s) in {self.root}: images/<id>.<ext> pairs with "
            f"masks/<id>{self.mask_suffix}.<ext> (data.mask_suffix={self.mask_suffix!r}); set "
            "data.mask_suffix if your masks carry a suffix such as _mask or _label:\n  "
            + first_few(unpaired)
        )


def class_names(mask_mode: str, classes: list[str] | None, mask_values: list[int] | None) -> list[str]:
    if mask_mode not in MASK_MODES:
        raise ConfigError(f"data.mask_mode={mask_mode!r}; choose one of {MASK_MODES}")
    if mask_mode == "binary":
        classes = list(classes or ["background", "foreground"])
        if len(classes) != 2:
            raise ConfigError(f"data.mask_mode=binary needs two class names, got {classes}")
        return classes
    if classes is None and mask_values is None:
        raise ConfigError(
            "data.mask_mode=multiclass needs data.classes (one name per class id) or data.mask_values"
        )
    classes = list(classes or [f"class_{v}" for v in mask_values])
    if mask_values is not None and len(mask_values) != len(classes):
        raise ConfigError(
            f"data.mask_values {list(mask_values)} and data.classes {classes} differ in length"
        )
    return classes


def check_sizes(pairs: list[Pair]) -> None:
    mismatched = []
    for image_path, mask_path in pairs:
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            if image.size != mask.size:
                mismatched.append(f"{mask_path} is {mask.size[0]}x{mask.size[1]}, "
                                  f"its image {image.size[0]}x{image.size[1]}")
    if mismatched:
        raise DataError(f"{len(mismatched)} mask(s) differ in size from their image:\n  "
                        + first_few(mismatched))
