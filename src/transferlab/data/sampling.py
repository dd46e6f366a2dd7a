"""Training randomness as a function of (seed, epoch, sample).

Shuffling order and every augmentation draw depend only on these three numbers, never on how
much of a global random stream came before: a run resumed at epoch k sees exactly the batches an
uninterrupted run sees, whatever the number of DataLoader workers.
"""

import logging
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from transferlab.data.augment import Basic
from transferlab.data.mixing import NoMixing
from transferlab.data.scan import ScanCache
from transferlab.data.images import check_policy, inspect_file
from transferlab.data.splits import SPLITS, Item, SplitSettings, describe, record, split_files
from transferlab.devices import cpu_cores
from transferlab.errors import ConfigError
from transferlab.normalization import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


def mix_seeds(*numbers: int) -> int:
    """One seed from several (seed, epoch, sample, ...), the same on every machine."""
    g = torch.Generator().manual_seed(0)
    for n in numbers:
        g.manual_seed(int(torch.randint(2**62, (1,), generator=g)) ^ (n & (2**62 - 1)))
    return int(torch.randint(2**62, (1,), generator=g))


class EpochSampler(Sampler):
    """Yields (index, epoch) so the dataset can seed the sample; the order is a function of
    (seed, epoch) alone.

    The epoch is read when iteration starts (`current_epoch`, e.g. the trainer's), so it is right
    on the first epoch after a resume and under Lightning's distributed sampler wrapper alike.
    """

    def __init__(self, size: int, seed: int, current_epoch: Callable[[], int]):
        self.size = size
        self.seed = seed
        self.current_epoch = current_epoch

    def __len__(self) -> int:
        return self.size

    def order(self, g: torch.Generator) -> list[int]:
        raise NotImplementedError

    def __iter__(self):
        epoch = self.current_epoch()
        g = torch.Generator().manual_seed(mix_seeds(self.seed, epoch))
        return iter([(i, epoch) for i in self.order(g)])


class EpochShuffle(EpochSampler):
    """A new permutation every epoch (`data.sampler=shuffle`)."""

    def order(self, g: torch.Generator) -> list[int]:
        return torch.randperm(self.size, generator=g).tolist()


class ClassBalanced(EpochSampler):
    """`data.sampler=balanced`: every class drawn equally often, as many draws as training
    samples per epoch, with replacement (a rare class's images repeat, a common class's are
    subsampled).

    Each class gets `size // classes` draws and a random `size % classes` of them one more, so the
    counts differ by one at most rather than by the luck of a weighted draw.
    """

    def __init__(self, labels: list[int], seed: int, current_epoch: Callable[[], int]):
        super().__init__(len(labels), seed, current_epoch)
        by_class: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            by_class.setdefault(label, []).append(i)
        self.members = [torch.tensor(by_class[c]) for c in sorted(by_class)]

    def order(self, g: torch.Generator) -> list[int]:
        n_classes = len(self.members)
        quota = torch.full((n_classes,), self.size // n_classes)
        quota[torch.randperm(n_classes, generator=g)[: self.size % n_classes]] += 1
        draws = torch.cat([members[torch.randint(len(members), (int(k),), generator=g)]
                           for members, k in zip(self.members, quota)])
        return draws[torch.randperm(self.size, generator=g)].tolist()


class SeededSamples(Dataset):
    """Runs the wrapped dataset's random transforms under a seed made from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
            torch.manual_seed(mix_seeds(self.seed, epoch, index))
            return self.dataset[index]


def split_folders(folders: dict | None) -> dict[str, str | None]:
    """`data.folders`: the folder under `data.root` that holds each split (default its own name;
    null: no folder, the split is carved out of the training images), e.g. `data.folders.val=null
    data.folders.test=val` makes a train/ + val/ set's val/ the test split."""
    chosen = {name: name for name in SPLITS} | dict(folders or {})
    unknown = sorted(set(chosen) - set(SPLITS))
    named = [f for f in chosen.values() if f]
    if unknown or not chosen["train"] or len(named) != len(set(named)):
        raise ConfigError(f"data.folders={dict(folders or {})}: keys are {', '.join(SPLITS)}, each a "
                          "folder name of its own (null: carve that split out of train); train "
                          "needs one")
    return chosen


def spare_cores() -> int:
    """Loader processes that do not take a core from the model: one per core but one, 1 to 8."""
    return max(1, min(8, cpu_cores() - 1))


class SeededLoaders(L.LightningDataModule):
    """The settings every transferlab DataModule shares, its split (`transferlab.data.splits`)
    and its DataLoaders: training shuffled and augmented as a function of (seed, epoch, sample),
    validation and test in order.

    `num_workers="auto"`: one loader process per spare core (`spare_cores`). `pin_memory="auto"`:
    pinned when the trainer runs on a GPU (pinned pages only speed up host-to-GPU copies).
    """

    def __init__(
        self,
        root: str,
        *,
        image_size: int,
        batch_size: int = 4,
        num_workers: int | str = 2,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        augment: bool = True,
        augmentation: Basic | None = None,
        mixing: NoMixing | None = None,
        on_bad_file: str = "error",
        pin_memory: bool | str = False,
        seed: int = 0,
        val_fraction: float | None = 0.2,
        test_fraction: float | None = None,
        split_seed: int = 0,
        folds: int | None = None,
        fold: int | None = None,
        group_by: str | None = None,
        manifest: str | None = None,
        folders: dict[str, str | None] | None = None,
        scan_cache: str | None = None,
    ):
        super().__init__()
        check_policy(on_bad_file)
        self.split_settings = SplitSettings(val_fraction, test_fraction, split_seed, folds, fold, group_by)
        self.split_settings.check()  # before any file is read
        self.root = Path(root).expanduser()
        self.folders = split_folders(folders)
        self.scan_cache = Path(scan_cache).expanduser() if scan_cache else None
        self.image_size = image_size
        self.batch_size = batch_size
        bad = []
        if not (num_workers == "auto" or (isinstance(num_workers, int) and num_workers >= 0)):
            bad.append(f"data.num_workers={num_workers!r} (an int >= 0 or auto)")
        if not (pin_memory == "auto" or isinstance(pin_memory, bool)):
            bad.append(f"data.pin_memory={pin_memory!r} (true, false or auto)")
        if bad:
            raise ConfigError("; ".join(bad))
        self.num_workers = spare_cores() if num_workers == "auto" else num_workers
        self.mean = tuple(mean or IMAGENET_MEAN)
        self.std = tuple(std or IMAGENET_STD)
        # the `augment` group's policy; data.augment=false (or augment=none) turns it off
        self.augmentation = augmentation or Basic()
        self.augment = bool(augment) and self.augmentation.augments
        self.mixing = mixing or NoMixing()  # the `mixup` group's batch mixing
        self._mix = None
        self._mixed = (-1, 0)  # (epoch, batches mixed in it): each batch's draws are its own
        self.on_bad_file = on_bad_file
        self.pin_memory = pin_memory
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None  # only when there is a test split
        # group_by's manifest: <root>/manifest.csv unless data.manifest names another file
        self.manifest = Path(manifest).expanduser() if manifest else self.root / "manifest.csv"
        self.layout = ""  # which folder layout setup found, as split.json records it
        self.split: dict[str, list[Item]] = {}  # train / val / test items, set by setup
        self.bad_files: list[tuple[Path, str]] = []  # (file, reason) skipped at setup: bad_files.txt
        self.served: dict[str, Dataset] | None = None  # what the loaders serve instead of images
        self.served_val_batch_size: int | None = None

    task: str  # the task whose module this data feeds (the module's `task`)

    @property
    def preprocess(self) -> dict:
        """Everything inference needs to see an image as validation does; stored in checkpoints
        and read back by the task's eval transform (`transferlab.tasks`)."""
        return {"task": self.task, "image_size": self.image_size, "mean": list(self.mean),
                "std": list(self.std)}

    def fixed_view(self, split: str) -> Dataset:
        """A split's images (and targets) through the val transform: fixed, un-augmented."""
        raise NotImplementedError

    # -- the feature cache's contact (transferlab.cache): these two methods, nothing else ---------

    def images_to_encode(self, augmented: bool) -> dict[str, Dataset] | None:
        """The train and val images as the loaders would serve them, for precomputing what the
        network's frozen part makes of them: train through the train transform when `augmented`,
        else through the val transform (fixed crops). None: this data cannot be served that way."""
        return None

    def serve(self, datasets: dict[str, Dataset] | None, val_batch_size: int | None = None) -> None:
        """From the next loader on, serve these in-memory datasets (split -> a Dataset whose
        `__getitems__` returns a whole batch) instead of the images, validating in batches of
        `val_batch_size` (None: the training batch size); None: the images again."""
        self.served = datasets
        self.served_val_batch_size = val_batch_size

    @contextmanager
    def scanning(self):
        """The record of earlier runs' decode checks and digests (`data.scan_cache`; None when
        off), saved when the block ends, also when it raises (what was scanned stays known)."""
        scan = ScanCache(self.root, self.scan_cache, inspect_file) if self.scan_cache else None
        try:
            yield scan
        finally:
            if scan is not None:
                scan.save()

    def make_split(self, found: dict[str, list[Item]], layout: str) -> dict[str, list[Item]]:
        """Split the `found` items (split folder -> items) and log the class counts per split."""
        self.layout = layout
        self.split = split_files(found, self.split_settings, self.manifest)
        log.info("split of %s (%s layout):\n%s", self.root, layout, describe(self.split))
        return self.split

    @property
    def split_record(self) -> dict:
        """What `<run dir>/split.json` holds: the settings and the files of every split."""
        return record(self.split, self.split_settings, self.root, self.layout)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _loader(
        self, dataset: Dataset, sampler: Sampler | None = None, batch_size: int | None = None,
        num_workers: int | None = None, drop_last: bool = False,
    ) -> DataLoader:
        workers = self.num_workers if num_workers is None else num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pins_memory,
            drop_last=drop_last,
        )

    @property
    def pins_memory(self) -> bool:
        if self.pin_memory != "auto":
            return bool(self.pin_memory)
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches mixed (`mixup=`) on the device, after sampling; nothing else is. The
        mixing weight and boxes are drawn under a seed of (seed, epoch, batch), so they do not
        depend on what else drew from the global stream before (a resumed run mixes alike)."""
        if not self.mixing.active or self.trainer is None or not self.trainer.training:
            return batch
        if self._mix is None:
            self._mix = self.mixing.transform(len(self.classes))
        epoch = self.trainer.current_epoch
        index = self._mixed[1] if self._mixed[0] == epoch else 0
        self._mixed = (epoch, index + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seeds(self.seed, epoch, index, 1))
            return self._mix(*batch)

    def train_sampler(self, size: int) -> EpochSampler:
        """The order of the training samples; `size`: the training set's length."""
        return EpochShuffle(size, self.seed, self._current_epoch)

    def _seeded_loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        sampler = self.train_sampler(len(dataset))
        # A last batch of one image would put BatchNorm in training mode on one value per channel
        # (torch refuses it where the maps are 1x1, as in DeepLabV3's pooling branch): leave it out.
        lone = len(dataset) % self.batch_size == 1 and len(dataset) > 1
        if lone:
            log.info("the last training batch of each epoch (1 image) is left out: BatchNorm "
                     "cannot train on one image")
        return self._loader(SeededSamples(dataset, self.seed), sampler, drop_last=lone, **kwargs)

    def train_dataloader(self) -> DataLoader:
        if self.served:
            # In-memory tensors that draw their own views: no per-sample seeding, no worker
            # process (it would only copy them), whole batches at a time.
            served = self.served["train"]
            sampler = self.train_sampler(len(served))
            return DataLoader(served, self.batch_size, sampler=sampler, collate_fn=_whole_batch)
        return self._seeded_loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        if self.served:
            batch_size = self.served_val_batch_size or self.batch_size
            return DataLoader(self.served["val"], batch_size, collate_fn=_whole_batch)
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)


def _whole_batch(batch):
    """A served dataset's `__getitems__` returns the batch whole: nothing to collate."""
    return batch
