"""The `cache` group. Speed: cached outputs of the frozen part of a network.

When only the head trains, everything below it is a fixed function of the image: frozen
weights, BatchNorm on running statistics, Dropout off (frozen stages run in eval mode). So its
output, the head's input, is computed once per image, stored on disk, and the head trains on
those tensors: an epoch costs a few matrix products instead of a pass through the backbone.
"""

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import lightning as L
import torch
import torchvision
from filelock import FileLock
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from transferlab.data.sampling import _mix
from transferlab.errors import ConfigError
from transferlab.fast import cpu_has_bf16
from transferlab.models.backbones import HEAD, Backbone, CachedInputs, Stages, eval_mode

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the stored layout changes: old entries are then never read
SPLITS = ("train", "val")


def frozen_leading(strategy, names: list[str], epochs: Iterable[int]) -> dict[int, int]:
    """Per epoch, how many stages from the input on are frozen (all of them below the head:
    only the head trains)."""
    body = [n for n in names if n != HEAD]
    counts = {}
    for epoch in epochs:
        frozen = strategy.frozen_stages(names, epoch)
        counts[epoch] = next((i for i, n in enumerate(body) if n not in frozen), len(body))
    return counts


def forward_flops(backbone: Backbone, cut: str, image: torch.Tensor) -> int:
    """Multiply-adds x 2 of the forward pass from one image to the output of `cut`."""
    device = next(backbone.net.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), eval_mode(backbone.net):
        backbone.forward_until(cut, image[None].to(device))
    return counter.get_total_flops()


def weights_digest(stages: Stages, upto: str) -> str:
    """Identity of every tensor of the stages up to and including `upto` (weights and BatchNorm
    statistics): what the cached output is a function of."""
    h = hashlib.blake2b(digest_size=16)
    for name, items in stages.items():
        if name == HEAD:
            break
        for i, item in enumerate(items):
            tensors = item.state_dict().items() if isinstance(item, nn.Module) else [("", item)]
            for key, tensor in tensors:
                t = tensor.detach().cpu().contiguous()  # channels_last or not: the same digest
                h.update(f"{name}.{i}.{key}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy())
        if name == upto:
            break
    return h.hexdigest()


def files_digest(samples: list[tuple[Path, int]]) -> str:
    """Each file's path, label, size and modification time: an edited, added or removed image
    changes it, and a stat is cheap enough for any dataset (no content hashing)."""
    h = hashlib.blake2b(digest_size=16)
    for path, label in samples:
        st = os.stat(path)
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@torch.inference_mode()
def encode(
    backbone: Backbone, cut: str, dataset: Dataset, passes: int, batch_size: int,
    num_workers: int, device: torch.device, autocast=nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of stage `cut` for every image, `passes` times: (passes, N, ...) float32 and
    (N,) labels. The caller puts the network in eval mode."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        persistent_workers=num_workers > 0 and passes > 1,
    )
    # NHWC input makes every conv take oneDNN's/cuDNN's NHWC kernels: ~1.3x on a CPU, the same
    # values up to float rounding. Fine for a head's input; stages that train after a cut, with
    # BatchNorm on small batches, amplify rounding, so there the layout is the one training on
    # images would use (NHWC under trainer=fast), and the cached run computes what it computes.
    first_conv = next((m for m in backbone.net.modules() if isinstance(m, nn.Conv2d)), None)
    nhwc = cut == HEAD or (
        first_conv is not None and first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    )
    layout = torch.channels_last if nhwc else torch.contiguous_format
    views, labels = [], []
    for _ in range(passes):
        features, labels = [], []
        for x, y in loader:
            with autocast():
                f = backbone.forward_until(cut, x.to(device, memory_format=layout))
            # Stored in the standard layout: a channels_last feature map (SqueezeNet's) would
            # send the head's convs down other kernels than in training on images.
            features.append(f.float().cpu().contiguous())
            labels.append(torch.as_tensor(y))
        views.append(torch.cat(features))
    return torch.stack(views), torch.cat(labels)


def readable(path: Path) -> bool:
    """Whether a cache entry loads. Entries are written whole (temporary file, then rename), so a
    damaged one comes from elsewhere (a full disk, a copy cut short): it is rebuilt, not trusted."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return {"features", "labels"} <= set(stored)
    except Exception as err:  # truncated zip, unpickling errors: torch raises several types
        log.warning("feature cache: %s is damaged (%s: %s); building it again", path.name,
                    type(err).__name__, err)
        return False


class CachedViews(Dataset):
    """K cached views per image (K=1: the val transform's) of the output of stage `cut`. Each
    epoch draws one view per image, as augmentation would, from (seed, epoch) alone, so a
    resumed run draws the same.

    Batches are cut straight from the stored tensors (`__getitems__`, which DataLoader calls with
    a batch of keys): per-image indexing and collating cost more than the head's whole step.
    Keys are `(index, epoch)` from `EpochShuffle`, or plain indices. A batch is `CachedInputs`,
    so the module runs only what comes after `cut` on it.
    """

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, seed: int = 0, cut: str = HEAD):
        self.views = views
        self.labels = labels
        self.seed = seed
        self.cut = cut
        # A head on cached inputs validates in one product; deeper stages in the usual batches.
        self.eval_batch_size = 1024 if cut == HEAD else None
        self._draws: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def draws(self, epoch: int) -> torch.Tensor:
        if self._draws is None or self._draws[0] != epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._draws = epoch, torch.randint(len(self.views), (len(self),), generator=g)
        return self._draws[1]

    def __getitems__(self, keys: list) -> CachedInputs:
        epoch = keys[0][1] if isinstance(keys[0], tuple) else 0
        index = torch.tensor([k[0] if isinstance(k, tuple) else k for k in keys])
        view = self.draws(epoch)[index] if len(self.views) > 1 else 0
        return CachedInputs(self.views[view, index], self.labels[index], self.cut)

    def __getitem__(self, key) -> CachedInputs:
        features, label, cut = self.__getitems__([key])
        return CachedInputs(features[0], label[0], cut)

    @staticmethod
    def collate(batch: CachedInputs) -> CachedInputs:
        """A batch from `__getitems__` is whole already."""
        return batch


class FeatureCache(Callback):
    """Train on the cached output of the stages that stay frozen for the whole fit.

    When only the head trains (feature extraction), that is the head's input: an epoch costs a
    few matrix products. When the first k stages stay frozen (`freeze=partial`), it is the
    output of stage k, and the stages after it train on that (the network is cut there by
    `Backbone.tail`). A strategy that thaws every stage at some epoch (`gradual`) trains on
    images. `max_gb` bounds an entry's size; a larger one is not built and the run says so.

    `views`: 0 caches one pass of the val transform (fixed centre crops) over the train images:
    one backbone pass per image in all, which is where the speed comes from, at the price of no
    augmentation. K > 0 caches K augmented views per train image (K backbone passes) and every
    epoch draws one per image. Val is always one un-augmented pass.

    Entries live in `dir`, named by a digest of everything that shapes the features (network,
    cut, weights up to the cut, precision, transform, file list with sizes and mtimes, views), so
    runs of a sweep share them and any change builds a new one.
    """

    def __init__(
        self, enabled: bool = True, views: int = 0, dir: str = "outputs/cache", batch_size: int = 32,
        max_gb: float = 4.0, bf16_tolerance: float = 0.01,
    ):
        if views < 0:
            raise ValueError(f"feature cache views={views}: use 0 (no augmentation) or K > 0")
        self.enabled = enabled
        self.views = views
        self.dir = Path(dir)
        self.batch_size = batch_size
        self.max_gb = max_gb
        self.bf16_tolerance = bf16_tolerance
        self.precision: str | None = None  # what the last fit's entries were built in
        self.cut: str | None = None  # the stage whose output the last fit trained on
        self.until: int | None = None  # the epoch the last fit went back to images, if it did
        self.builds = 0  # entries computed rather than read, over this callback's life
        self.status: dict[str, str] = {}  # split -> "built" | "reused", for the last fit
        self._datamodule = None  # the datamodule serving cached tensors, while one does

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.status, self.cut = {}, None
        cut, why, self.until = self.plan(trainer, pl_module)
        if cut is None:
            log.info("feature cache off: %s", why)
            return
        sources, passes = self.sources(trainer.datamodule)
        too_big = self.too_big(pl_module.backbone, cut, sources, passes)
        if too_big:
            log.info("feature cache off: %s", too_big)
            return
        sets = self.load_or_build(trainer, pl_module, cut, sources, passes)
        trainer.datamodule.use_cached(sets)
        self._datamodule, self.cut = trainer.datamodule, cut
        self._threads = torch.get_num_threads()
        if cut == HEAD:
            # A head on cached inputs is a few tiny matrix products: extra OpenMP threads only
            # add barriers, and on a busy machine each barrier waits for a descheduled thread
            # (measured here: 17 ms instead of 0.4 ms per step with 2 threads on 2 shared cores).
            torch.set_num_threads(1)
        log.info("feature cache on: %s (%s; in %s)", why,
                 ", ".join(f"{s} {self.status[s]}" for s in SPLITS), self.dir)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.until is not None and trainer.current_epoch + 1 == self.until:
            log.info("feature cache: epoch %d thaws a stage below the head; images from now on",
                     self.until)
            self.release()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.release()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.release()

    def release(self) -> None:
        """Images again: later validate/predict calls and the next fit see the real data."""
        if self._datamodule is not None:
            self._datamodule.use_cached(None)
            torch.set_num_threads(self._threads)
        self._datamodule = None

    def plan(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[str | None, str, int | None]:
        """(cut, what trains on it, the epoch to go back to images or None), or (None, why the
        cache stays off, None)."""
        if not self.enabled:
            return None, "disabled (cache=off)", None
        backbone, strategy = getattr(pl_module, "backbone", None), getattr(pl_module, "freeze_strategy", None)
        if not isinstance(backbone, Backbone) or strategy is None:
            return None, f"{type(pl_module).__name__} is no transferlab module with a backbone", None
        if not hasattr(trainer.datamodule, "use_cached"):
            return None, "the images do not come from a transferlab classification datamodule", None
        names = list(pl_module.stages)
        body = names[:-1]
        # Strategies decide from the epoch alone; a run without an epoch limit is checked over
        # every epoch of a horizon far beyond any schedule (a few ms of set arithmetic).
        start, end = trainer.current_epoch, trainer.max_epochs
        epochs = range(start, end if end and end > 0 else start + 10_000)
        leading = frozen_leading(strategy, names, epochs)
        count = min(leading.values())
        thaws = min((e for e, n in leading.items() if n < len(body)), default=None)
        head_first = None
        if thaws is not None and thaws > start:
            # Head-only epochs first, then stages thaw (gradual unfreezing): cached until the
            # first thaw, when the trainer asks for the loaders again (a public Trainer setting,
            # conf/trainer/default.yaml sets it for gradual).
            every = trainer.reload_dataloaders_every_n_epochs
            if every and (thaws - start) % every == 0 and backbone.cache_blocker() is None:
                head_first = HEAD, (f"only the head trains until epoch {thaws}, on cached head "
                                    "inputs; images from then on"), thaws
            else:
                log.info("feature cache: the head-only epochs before epoch %d could train on cached "
                         "inputs with trainer.reload_dataloaders_every_n_epochs dividing %d",
                         thaws, thaws - start)
        if count == len(body) and backbone.cache_blocker() is None:
            return HEAD, "only the head trains, on cached head inputs", None
        if count == len(body):  # stateful layers in the head stage: cut below them instead
            log.info("feature cache: %s, so the cache ends at %s", backbone.cache_blocker(), body[-1])
        if count == 0:
            if head_first:
                return head_first
            epoch = min(e for e, n in leading.items() if n == 0)
            return None, (
                f"{body[0]} trains from epoch {epoch} under {type(strategy).__name__}: no stage "
                "stays frozen for the whole fit, so there is no fixed output to cache"
            ), None
        cut = body[count - 1]
        try:
            backbone.tail(cut)
        except ConfigError as err:
            return head_first or (None, str(err), None)
        prefix = cut, (f"{', '.join(body[:count])} stay frozen; {', '.join(names[count:])} "
                       f"train on the cached output of {cut}"), None
        if head_first is None:
            return prefix
        # Both would do (a gradual fit too short to thaw its first stages): take the one that
        # skips more backbone arithmetic. Each skips the forward pass up to its cut on the epochs
        # it serves, less the one pass that builds it.
        image = trainer.datamodule.feature_sources(augmented=False)["val"][0][0]
        builds = self.views if self.views > 0 and trainer.datamodule.augment else 1  # train passes
        epochs_served = {HEAD: thaws - start - builds, cut: len(leading) - builds}
        saved = {c: n * forward_flops(backbone, c, image) for c, n in epochs_served.items()}
        log.info("feature cache: per image, cached head inputs for the %d head-only epochs skip "
                 "%.3g GFLOP, %s's output for all %d epochs %.3g (each net of its build)",
                 thaws - start, saved[HEAD] / 1e9, cut, len(leading), saved[cut] / 1e9)
        return head_first if saved[HEAD] > saved[cut] else prefix

    def sources(self, datamodule) -> tuple[dict[str, Dataset], dict[str, int]]:
        """The image sets to encode per split, and how many passes over each."""
        augmented = self.views > 0 and datamodule.augment
        if self.views > 0 and not datamodule.augment:
            log.info("feature cache: views=%d ignored, data.augment=false makes all views equal", self.views)
        elif not augmented and datamodule.augment:
            log.info(
                "feature cache: train features come from the val transform, so data.augment is not "
                "applied (callbacks.feature_cache.views=K caches K augmented views per image)"
            )
        passes = {"train": self.views if augmented else 1, "val": 1}
        return datamodule.feature_sources(augmented=augmented), passes

    def too_big(self, backbone: Backbone, cut: str, sources: dict[str, Dataset],
                passes: dict[str, int]) -> str | None:
        """Why the entries would exceed `max_gb`, from the output of one image; else None."""
        with torch.inference_mode(), eval_mode(backbone.net):
            device = next(backbone.net.parameters()).device
            numel = backbone.forward_until(cut, sources["val"][0][0][None].to(device)).numel()
        images = sum(len(sources[split]) * passes[split] for split in SPLITS)
        size_gb = numel * 4 * images / 1e9
        if size_gb <= self.max_gb:
            return None
        return (f"the output of {cut} ({numel:,} floats per image) for {images} image passes "
                f"would take {size_gb:.1f} GB > callbacks.feature_cache.max_gb={self.max_gb}")

    def load_or_build(self, trainer: L.Trainer, pl_module: L.LightningModule, cut: str,
                      sources: dict[str, Dataset], passes: dict[str, int]) -> dict[str, Dataset]:
        datamodule = trainer.datamodule
        self.precision, autocast = self.build_precision(trainer, pl_module, cut, sources["val"])
        common = {
            "format": CACHE_FORMAT,
            "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}",
            "network": digest(repr(pl_module.net)),
            "cut": cut,
            "weights": weights_digest(pl_module.stages, upto=cut),
            "precision": self.precision,
        }
        entries = {}
        for split in SPLITS:
            dataset = sources[split]
            key = common | {
                "split": split,
                "transform": repr(dataset.transform),
                "files": files_digest(dataset.samples),
                "passes": passes[split],
            }
            path = self.dir / f"{split}-{digest(json.dumps(key, sort_keys=True))}.pt"
            if trainer.is_global_zero:
                self.dir.mkdir(parents=True, exist_ok=True)
                # The jobs of a parallel sweep that need the same entry: one builds, the others
                # wait for it and read it whole.
                with FileLock(path.with_suffix(".lock")):
                    if not path.is_file() or not readable(path):
                        self.build(trainer, pl_module, cut, dataset, passes[split], key, path, autocast)
                        self.status[split] = "built"
            entries[split] = path
        trainer.strategy.barrier("feature_cache")
        sets = {}
        for split, path in entries.items():
            self.status.setdefault(split, "reused")
            stored = torch.load(path, map_location="cpu", weights_only=True)
            sets[split] = CachedViews(stored["features"], stored["labels"], datamodule.seed, cut)
        return sets

    def build_precision(self, trainer, pl_module, cut: str, dataset) -> tuple[str, Callable]:
        """The precision entries are built in, and its autocast: bf16 where the hardware computes
        in bf16 natively, the run trains in fp32, the cache holds the head's input, and one
        batch's features in bf16 are within `bf16_tolerance` (relative L2 norm) of fp32's.
        Otherwise the run's own. (Stages that train after a deeper cut get fp32 inputs: their
        BatchNorm would amplify the difference.)"""
        own = str(trainer.precision), trainer.precision_plugin.forward_context
        device, backbone = pl_module.device, pl_module.backbone
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
        if self.bf16_tolerance <= 0 or cut != HEAD or own[0] != "32-true" or not native:
            return own
        images = [dataset[i][0] for i in range(min(len(dataset), self.batch_size))]
        x = torch.stack(images).to(device, memory_format=torch.channels_last)
        bf16 = partial(torch.autocast, device.type, dtype=torch.bfloat16)
        with torch.inference_mode(), eval_mode(backbone.net):
            exact = backbone.forward_features(x).float()
            with bf16():
                fast = backbone.forward_features(x).float()
        difference = float((fast - exact).norm() / exact.norm().clamp_min(1e-12))
        if difference > self.bf16_tolerance:
            log.info("feature cache: building in fp32: bf16 features differ by %.2g (relative) "
                     "> bf16_tolerance=%g", difference, self.bf16_tolerance)
            return own
        log.info("feature cache: building in bf16 (native here; features within %.2g of fp32's "
                 "on %d images, tolerance %g)", difference, len(x), self.bf16_tolerance)
        return "bf16-autocast", bf16

    def build(self, trainer, pl_module, cut: str, dataset, passes: int, key: dict, path: Path,
              autocast: Callable) -> None:
        start = time.perf_counter()
        # Fixed seed, forked RNG: augmented views are a function of the key alone, and building
        # (or not) leaves the training run's random stream untouched.
        with torch.random.fork_rng(devices=[]), eval_mode(pl_module.net):
            torch.manual_seed(0)
            features, labels = encode(
                pl_module.backbone, cut, dataset, passes, self.batch_size, trainer.datamodule.num_workers,
                pl_module.device, autocast,
            )
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"features": features, "labels": labels, "key": key}, tmp)
        tmp.replace(path)  # a reader without the lock (another machine's job) never sees half a file
        self.builds += 1
        log.info(
            "feature cache: built %s (%d x %s) in %.1f s", path.name, passes,
            tuple(features.shape[1:]), time.perf_counter() - start,
        )
