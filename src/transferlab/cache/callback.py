"""The `cache` group's callback: train on cached outputs of the frozen part of a network."""

import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning as L
import torch
import torchvision
from filelock import FileLock
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from transferlab.cache import plan as planning
from transferlab.cache.cut import cut_module, forward_until, head_blocker, runner, tail
from transferlab.cache.store import FORMAT, CachedViews, digest, encode, files_digest, readable
from transferlab.cache.store import weights_digest, write_entry
from transferlab.data.sampling import SeededLoaders
from transferlab.devices import native_bf16
from transferlab.errors import ConfigError
from transferlab.models.backbones import HEAD, Backbone, eval_mode
from transferlab.modules.base import TransferModule

log = logging.getLogger("transferlab.cache")

SPLITS = ("train", "val")  # the splits a fit reads; test is scored once, on images


def forward_flops(backbone: Backbone, cut: str, image: torch.Tensor) -> int:
    """Multiply-adds x 2 of the forward pass from one image to the output of `cut`."""
    device = next(backbone.net.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), eval_mode(backbone.net):
        forward_until(backbone, cut, image[None].to(device))
    return counter.get_total_flops()


def _cut_blocker(backbone: Backbone) -> Callable[[str], str | None]:
    def blocked(cut: str) -> str | None:
        try:
            tail(backbone, cut_module(backbone, cut), cut)
        except ConfigError as err:
            return str(err)
        return None

    return blocked


class FeatureCache(Callback):
    """Train on the cached output of the stages that stay frozen for the whole fit.

    When only the head trains (feature extraction), that is the head's input: an epoch costs a
    few matrix products. When the first k stages stay frozen (`freeze=partial`), it is the
    output of stage k, and the stages after it train on that (the network is cut there with
    torch.fx). A strategy that thaws every stage at some epoch (`gradual`) caches its head-only
    epochs and trains on images from the first thaw, asking the trainer to reload its loaders
    then. `max_gb` bounds an entry's size; a larger one is not built and the run says so.

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
            raise ConfigError(f"feature cache views={views}: use 0 (no augmentation) or K > 0")
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
        self._serving: SeededLoaders | None = None  # the datamodule serving cached tensors
        self._restore: dict = {}  # the trainer's and torch's settings to put back

    # -- the fit's hooks ------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.status, self.cut, self.until = {}, None, None
        chosen = self.plan(trainer, pl_module)
        for note in chosen.notes:
            log.info("feature cache: %s", note)
        if chosen.cut is None:
            log.info("feature cache off: %s", chosen.why)
            return
        data, backbone = trainer.datamodule, pl_module.backbone
        sources, passes = self.sources(data)
        too_big = self.too_big(backbone, chosen.cut, sources, passes)
        if too_big:
            log.info("feature cache off: %s", too_big)
            return
        rest = runner(backbone, chosen.cut, sources["val"][0][0])
        sets = self.load_or_build(trainer, pl_module, chosen.cut, sources, passes, rest)
        # A head on cached inputs validates in one product; deeper stages in the usual batches.
        data.serve(sets, val_batch_size=1024 if chosen.cut == HEAD else None)
        self._serving, self.cut, self.until = data, chosen.cut, chosen.until
        self._restore = {"threads": torch.get_num_threads()}
        if chosen.until is not None and not trainer.reload_dataloaders_every_n_epochs:
            # The loaders must be asked for again when the fit goes back to images.
            self._restore["reload"] = trainer.reload_dataloaders_every_n_epochs
            trainer.reload_dataloaders_every_n_epochs = chosen.until - trainer.current_epoch
        if chosen.cut == HEAD:
            # A head on cached inputs is a few tiny matrix products: extra OpenMP threads only
            # add barriers, and on a busy machine each barrier waits for a descheduled thread
            # (measured here: 17 ms instead of 0.4 ms per step with 2 threads on 2 shared cores).
            torch.set_num_threads(1)
        log.info("feature cache on: %s (%s; in %s)", chosen.why,
                 ", ".join(f"{s} {self.status[s]}" for s in SPLITS), self.dir)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.until is None:
            return
        if trainer.current_epoch + 1 == self.until:
            log.info("feature cache: epoch %d thaws a stage below the head; images from now on",
                     self.until)
            self.release()
        if trainer.current_epoch == self.until and "reload" in self._restore:
            # Both loaders were asked for again at the switch: back to the trainer's own setting.
            trainer.reload_dataloaders_every_n_epochs = self._restore.pop("reload")

    def on_fit_end(self, trainer, pl_module) -> None:
        self.release(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.release(trainer)

    def release(self, trainer: L.Trainer | None = None) -> None:
        """Images again: later validate/predict calls and the next fit see the real data."""
        if self._serving is not None:
            self._serving.serve(None)
            torch.set_num_threads(self._restore["threads"])
        self._serving = None
        if trainer is not None and "reload" in self._restore:
            trainer.reload_dataloaders_every_n_epochs = self._restore.pop("reload")

    # -- the decision ---------------------------------------------------------------------------

    def plan(self, trainer: L.Trainer, pl_module: L.LightningModule) -> planning.Plan:
        """What this fit caches (`transferlab.cache.plan`), from the module, data and trainer."""
        if not self.enabled:
            return planning.Plan(None, "disabled (cache=off)")
        if not isinstance(pl_module, TransferModule):
            return planning.Plan(None, f"{type(pl_module).__name__} is no transferlab module")
        data = trainer.datamodule
        if not isinstance(data, SeededLoaders) or data.images_to_encode(augmented=False) is None:
            return planning.Plan(None, "the images do not come from a transferlab datamodule that "
                                       "serves precomputed inputs")
        backbone, strategy = pl_module.backbone, pl_module.freeze_strategy
        image = data.images_to_encode(augmented=False)["val"][0][0]
        return planning.plan(
            list(pl_module.stages), strategy.frozen_stages, trainer.current_epoch, trainer.max_epochs,
            strategy=type(strategy).__name__,
            reload_every=trainer.reload_dataloaders_every_n_epochs,
            head_blocker=head_blocker(backbone), cut_blocker=_cut_blocker(backbone),
            cost=lambda cut: forward_flops(backbone, cut, image),
            builds=self.views if self.views > 0 and data.augment else 1,
        )

    def sources(self, data: SeededLoaders) -> tuple[dict[str, Dataset], dict[str, int]]:
        """The image sets to encode per split, and how many passes over each."""
        augmented = self.views > 0 and data.augment
        if self.views > 0 and not data.augment:
            log.info("feature cache: views=%d ignored, data.augment=false makes all views equal", self.views)
        elif not augmented and data.augment:
            log.info(
                "feature cache: train features come from the val transform, so data.augment is not "
                "applied (callbacks.feature_cache.views=K caches K augmented views per image)"
            )
        passes = {"train": self.views if augmented else 1, "val": 1}
        return data.images_to_encode(augmented=augmented), passes

    def too_big(self, backbone: Backbone, cut: str, sources: dict[str, Dataset],
                passes: dict[str, int]) -> str | None:
        """Why the entries would exceed `max_gb`, from the output of one image; else None."""
        with torch.inference_mode(), eval_mode(backbone.net):
            device = next(backbone.net.parameters()).device
            numel = forward_until(backbone, cut, sources["val"][0][0][None].to(device)).numel()
        images = sum(len(sources[split]) * passes[split] for split in SPLITS)
        size_gb = numel * 4 * images / 1e9
        if size_gb <= self.max_gb:
            return None
        return (f"the output of {cut} ({numel:,} floats per image) for {images} image passes "
                f"would take {size_gb:.1f} GB > callbacks.feature_cache.max_gb={self.max_gb}")

    # -- the entries ----------------------------------------------------------------------------

    def load_or_build(self, trainer: L.Trainer, pl_module, cut: str, sources: dict[str, Dataset],
                      passes: dict[str, int], rest: nn.Module) -> dict[str, Dataset]:
        self.precision, autocast = self.build_precision(trainer, pl_module, cut, sources["val"])
        common = {
            "format": FORMAT,
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
            sets[split] = CachedViews(stored["features"], stored["labels"], rest, trainer.datamodule.seed)
        return sets

    def build_precision(self, trainer, pl_module, cut: str, dataset) -> tuple[str, Callable]:
        """The precision entries are built in, and its autocast: bf16 where the hardware computes
        in bf16 natively, the run trains in fp32, the cache holds the head's input, and one
        batch's features in bf16 are within `bf16_tolerance` (relative L2 norm) of fp32's.
        Otherwise the run's own. (Stages that train after a deeper cut get fp32 inputs: their
        BatchNorm would amplify the difference.)"""
        own = str(trainer.precision), trainer.precision_plugin.forward_context
        device, backbone = pl_module.device, pl_module.backbone
        if self.bf16_tolerance <= 0 or cut != HEAD or own[0] != "32-true" or not native_bf16(device.type):
            return own
        images = [dataset[i][0] for i in range(min(len(dataset), self.batch_size))]
        x = torch.stack(images).to(device, memory_format=torch.channels_last)
        bf16 = partial(torch.autocast, device.type, dtype=torch.bfloat16)
        with torch.inference_mode(), eval_mode(backbone.net):
            exact = forward_until(backbone, HEAD, x).float()
            with bf16():
                fast = forward_until(backbone, HEAD, x).float()
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
        write_entry(path, {"features": features, "labels": labels, "key": key})
        self.builds += 1
        log.info("feature cache: built %s (%d x %s) in %.1f s", path.name, passes,
                 tuple(features.shape[1:]), time.perf_counter() - start)
