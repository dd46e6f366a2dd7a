import copy
import logging
import multiprocessing
import os
import types

import numpy as np
import pytest
import torch
from torch import nn
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from PIL import Image

from tests.support.modules import STRATEGY, classifier_module, fit_head_on_cache, quiet_trainer
from transferlab.config import compose
from transferlab.data.classification import ImageFolderDataModule
from transferlab.data.sampling import spare_cores
from transferlab.devices import cpu_has_bf16
from transferlab.fast import FastTraining
from transferlab.cache import FeatureCache
from transferlab.cache.store import CachedInputs
from transferlab.models.init import HeInit

FEATURE_EXTRACTION = {"_target_": STRATEGY + "FeatureExtraction"}


def noise_image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def noisy_folder(tmp_path):
    """Two classes of distinct noise images: a feature paired with the wrong label shows."""
    root = tmp_path / "noise"
    for split, n in (("train", 6), ("val", 3)):
        for c, cls in enumerate(("cats", "dogs")):
            for i in range(n):
                noise_image(root / split / cls / f"{i}.png", seed=100 * (split == "val") + 10 * c + i)
    return root


def datamodule(root, size=32, batch_size=4, augment=False):
    dm = ImageFolderDataModule(
        str(root), image_size=size, batch_size=batch_size, num_workers=0, augment=augment
    )
    dm.setup("fit")
    return dm


class HeadGradients(Callback):
    def __init__(self):
        self.steps: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        head = pl_module.backbone.head
        self.steps.append([p.grad.clone() for p in head.parameters()])


def record_modes_below_head(module) -> set[bool]:
    """The training flags every layer below the head runs with, filled in as they run."""
    modes: set[bool] = set()
    for name, stage in module.stages.items():
        for layer in (sub for m in stage if isinstance(m, nn.Module) for sub in m.modules()) if name != "head" else ():
            layer.register_forward_pre_hook(lambda m, args: modes.add(m.training))
    return modes


@pytest.mark.parametrize("backbone,size,args", [
    ("resnet18", 32, {}),
    ("alexnet", 64, {}),        # the frozen part includes the classifier stage (FC layers, Dropout)
    ("mobilenet_v2", 32, {}),   # Dropout in the head stage: replayed on the cached inputs
    ("squeezenet1_1", 64, {}),  # a conv head: the cache holds feature maps, the head pools them
    ("vit_b_16", 32, {"image_size": 32}),  # class token and position embedding in the stem
    ("timm/convnext_atto", 32, {}),        # timm: a norm between the body and the classifier
    ("timm/vit_tiny_patch16_224", 32, {"img_size": 32, "drop_rate": 0.5}),  # head dropout frozen
])
def test_cached_head_gets_the_same_gradients_and_predictions(tmp_path, noisy_folder, backbone, size, args):
    torch.manual_seed(0)
    on_images = classifier_module(backbone, FEATURE_EXTRACTION, lr=0.1, backbone_args=args)
    HeInit()(on_images.backbone)
    on_cache = copy.deepcopy(on_images)
    modes = record_modes_below_head(on_images)

    grads = {}
    for module, enabled in ((on_images, False), (on_cache, True)):
        # fp32 entries: this is the exact-parity check (bf16 builds have their own test).
        recorder = HeadGradients()
        cache = FeatureCache(enabled=enabled, dir=tmp_path / "cache", bf16_tolerance=0)
        torch.manual_seed(1)  # same shuffles, same Dropout masks
        trainer = quiet_trainer(max_epochs=2, callbacks=[cache, recorder])
        trainer.fit(module, datamodule=datamodule(noisy_folder, size))
        grads[enabled] = recorder.steps
    assert cache.status == {"train": "built", "val": "built"}
    assert modes == {False}, "a frozen layer ran in training mode: caching would be invalid"

    assert len(grads[True]) == len(grads[False]) == 6
    for cached, uncached in zip(grads[True], grads[False]):
        for a, b in zip(cached, uncached):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    images = torch.stack([image for image, _ in datamodule(noisy_folder, size).val_set])
    on_images.eval()
    on_cache.eval()
    with torch.no_grad():
        torch.testing.assert_close(on_cache(images), on_images(images), rtol=1e-4, atol=1e-5)


def test_cache_is_reused_until_weights_image_size_or_a_file_change(tmp_path, noisy_folder):
    module = classifier_module("resnet18", FEATURE_EXTRACTION)
    cache = FeatureCache(dir=tmp_path / "cache")

    def fit(size=32):
        quiet_trainer(max_epochs=1, callbacks=[cache]).fit(module, datamodule=datamodule(noisy_folder, size))
        return cache.status

    built, reused = {"train": "built", "val": "built"}, {"train": "reused", "val": "reused"}
    assert fit() == built
    assert fit() == reused  # the head trained in between: not part of the key
    with torch.no_grad():
        module.net.layer1[0].conv1.weight.mul_(1.5)
    assert fit() == built
    assert fit(size=40) == built
    changed = noisy_folder / "train" / "cats" / "0.png"
    noise_image(changed, seed=12345)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert fit() == {"train": "built", "val": "reused"}
    assert cache.builds == 7


def test_a_damaged_entry_is_built_again(tmp_path, noisy_folder):
    module = classifier_module("resnet18", FEATURE_EXTRACTION)
    cache = FeatureCache(dir=tmp_path / "cache")
    quiet_trainer(max_epochs=1, callbacks=[cache]).fit(module, datamodule=datamodule(noisy_folder))
    (entry,) = (tmp_path / "cache").glob("train-*.pt")
    entry.write_bytes(entry.read_bytes()[:1000])  # cut short, as by a full disk
    quiet_trainer(max_epochs=1, callbacks=[cache]).fit(module, datamodule=datamodule(noisy_folder))
    assert cache.status == {"train": "built", "val": "reused"}


@pytest.mark.parametrize("backbone,freeze,reason", [
    ("resnet18", {"_target_": STRATEGY + "FullFineTune"},
     "stem trains from epoch 0 under FullFineTune: no stage stays frozen for the whole fit"),
    ("resnet18", {"_target_": STRATEGY + "GradualUnfreezing", "head_epochs": 0,  # no head-only epoch
                  "unfreeze_every": 1}, "stem trains from epoch 4 under GradualUnfreezing"),
])
def test_off_with_a_reason_when_no_stage_stays_frozen(
    tmp_path, image_folder, caplog, backbone, freeze, reason
):
    cache = FeatureCache(dir=tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="transferlab"):
        # The decision is taken at fit start, before any batch.
        quiet_trainer(max_epochs=6, limit_train_batches=0, limit_val_batches=0, callbacks=[cache]).fit(
            classifier_module(backbone, freeze), datamodule=datamodule(image_folder, 64)
        )
    assert f"feature cache off: {reason}" in caplog.text
    assert cache.status == {} and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("backbone,frozen_stages,cut", [
    ("alexnet", 4, "head"),       # 3 conv blocks + the FC classifier: only the head trains
    ("alexnet", 3, "block3"),     # the FC classifier trains on the conv blocks' cached output
    ("resnet18", 3, "layer2"),
])
def test_the_cache_ends_where_the_frozen_stages_end(tmp_path, image_folder, caplog, backbone,
                                                     frozen_stages, cut):
    cache = FeatureCache(dir=tmp_path / "cache")
    freeze = {"_target_": STRATEGY + "PartialFineTune", "frozen_stages": frozen_stages}
    dm = datamodule(image_folder, 64)
    with caplog.at_level(logging.INFO, logger="transferlab"):
        quiet_trainer(max_epochs=1, callbacks=[cache]).fit(classifier_module(backbone, freeze), datamodule=dm)
    assert cache.status == {"train": "built", "val": "built"} and cache.cut == cut
    assert "feature cache on:" in caplog.text
    assert dm.served is None  # images again after fit


def test_an_entry_over_max_gb_is_not_built(tmp_path, image_folder, caplog):
    cache = FeatureCache(dir=tmp_path / "cache", max_gb=1e-6)
    freeze = {"_target_": STRATEGY + "PartialFineTune", "frozen_stages": 1}  # the stem's 64 maps
    with caplog.at_level(logging.INFO, logger="transferlab"):
        quiet_trainer(max_epochs=1, callbacks=[cache]).fit(
            classifier_module("resnet18", freeze), datamodule=datamodule(image_folder, 64))
    assert "would take 0.0 GB > callbacks.feature_cache.max_gb=1e-06" in caplog.text
    assert cache.cut is None and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("max_epochs,cut,until", [
    (5, "layer3", None),   # only layer4 thaws: layer3's output serves all 5 epochs
    (10, "head", 3),       # the stem stays frozen, but its output saves less than 3 head-only epochs
    (25, "head", 3),       # every stage thaws: the head-only epochs are all there is to cache
    (-1, "head", 3),       # no epoch limit: the schedule is read over a long horizon
])
def test_a_short_gradual_fit_caches_where_more_arithmetic_is_skipped(image_folder, max_epochs, cut, until):
    """Gradual (3 head-only epochs, a stage thawed every 2): cached head inputs for the head-only
    epochs, or the output of the stages that never thaw, whichever skips more FLOPs."""
    freeze = {"_target_": STRATEGY + "GradualUnfreezing", "head_epochs": 3, "unfreeze_every": 2}
    trainer = types.SimpleNamespace(current_epoch=0, max_epochs=max_epochs, reload_dataloaders_every_n_epochs=0,
                                    datamodule=datamodule(image_folder, 64))
    planned = FeatureCache().plan(trainer, classifier_module("resnet18", freeze))
    assert (planned.cut, planned.until) == (cut, until)


class TrainableGradients(Callback):
    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append({n: p.grad.clone() for n, p in pl_module.named_parameters()
                           if p.requires_grad and p.grad is not None})


@pytest.mark.parametrize("backbone,size,frozen,args", [
    ("resnet18", 32, 3, {}),                     # cut after layer2: layer3, layer4, head train
    ("mobilenet_v2", 32, 10, {}),                # features.10..18 and a Dropout head train
    ("timm/deit_tiny_patch16_224", 32, 4, {"img_size": 32}),  # cut after blocks.2, tokens in the stem
])
def test_a_frozen_prefix_cache_gives_the_same_gradients_and_predictions(
    tmp_path, noisy_folder, backbone, size, frozen, args
):
    torch.manual_seed(0)
    freeze = {"_target_": STRATEGY + "PartialFineTune", "frozen_stages": frozen}
    on_images = classifier_module(backbone, freeze, lr=0.01, backbone_args=args)
    HeInit()(on_images.backbone)
    on_cache = copy.deepcopy(on_images)
    grads = {}
    for module, enabled in ((on_images, False), (on_cache, True)):
        recorder, cache = TrainableGradients(), FeatureCache(enabled=enabled, dir=tmp_path / "cache")
        torch.manual_seed(1)  # same shuffles, same Dropout masks
        trainer = quiet_trainer(max_epochs=2, callbacks=[cache, recorder])
        trainer.fit(module, datamodule=datamodule(noisy_folder, size))
        grads[enabled] = recorder.steps
    assert cache.cut == list(on_cache.stages)[frozen - 1]
    assert len(grads[True]) == len(grads[False]) == 6
    for cached, uncached in zip(grads[True], grads[False]):
        assert cached.keys() == uncached.keys() and len(cached) > 2
        for name in cached:
            torch.testing.assert_close(cached[name], uncached[name], rtol=1e-4, atol=1e-5)
    images = torch.stack([image for image, _ in datamodule(noisy_folder, size).val_set])
    on_images.eval()
    on_cache.eval()
    with torch.no_grad():
        torch.testing.assert_close(on_cache(images), on_images(images), rtol=1e-4, atol=1e-5)


def test_augmented_views_are_cached_once_and_drawn_per_epoch(tmp_path, noisy_folder):
    cache = FeatureCache(views=3, dir=tmp_path / "cache")
    module = classifier_module("resnet18", FEATURE_EXTRACTION)
    dm = datamodule(noisy_folder, augment=True)
    quiet_trainer(max_epochs=1, callbacks=[cache]).fit(module, datamodule=dm)
    stored = torch.load(next((tmp_path / "cache").glob("train-*.pt")), weights_only=True)
    assert stored["features"].shape == (3, 12, 512)
    assert not torch.equal(stored["features"][0], stored["features"][1])


def test_cache_switch_and_fast_preset_compose(tmp_path):
    default = compose([], tmp_path)
    assert default.callbacks.feature_cache.enabled is True
    assert compose(["cache=off"], tmp_path).callbacks.feature_cache.enabled is False

    cfg = compose(["trainer=fast", "trainer.accelerator=cpu"], tmp_path)
    assert cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 25
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert trainer.precision == ("bf16-mixed" if cpu_has_bf16() else "32-true")
    assert any(isinstance(c, FastTraining) for c in trainer.callbacks)
    assert instantiate(cfg.data).num_workers == spare_cores()
    # the preset's loader settings are data values: the command line wins over them
    assert compose(["trainer=fast", "data.num_workers=0"], tmp_path).data.num_workers == 0


def test_lrs_scale_linearly_with_the_batch_and_the_fast_preset_tunes_model_and_loaders(image_folder):
    module = classifier_module("resnet18", FEATURE_EXTRACTION, lr=0.01, lr_reference_batch_size=4,
                               scheduler={"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 7})
    dm = ImageFolderDataModule(str(image_folder), image_size=32, batch_size=8, augment=False,
                               num_workers="auto", pin_memory="auto")  # as trainer=fast sets them
    fast = FastTraining()
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0, callbacks=[fast])
    trainer.fit(module, datamodule=dm)
    # Decided once, where the param groups are built: the scheduler starts from the scaled LRs.
    head_lr = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}["head"]
    assert head_lr == pytest.approx(0.02)
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs[-1] == pytest.approx(0.02)
    assert module.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert dm.num_workers == spare_cores() and dm.pins_memory is False  # CPU: nothing to pin for


def test_parallel_jobs_build_a_shared_entry_once_and_read_it_whole(tmp_path, noisy_folder):
    """Two processes (the jobs of a parallel sweep) that need the same entries at the same time:
    one builds each entry under its lock, the other waits and reads the finished file."""
    context = multiprocessing.get_context("spawn")
    start, statuses = context.Barrier(2), context.Queue()
    jobs = [context.Process(target=fit_head_on_cache,
                            args=(str(noisy_folder), str(tmp_path / "cache"), start, statuses))
            for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
    assert [job.exitcode for job in jobs] == [0, 0]
    results = [statuses.get(timeout=5) for _ in jobs]
    for split in ("train", "val"):
        assert sorted(r[split] for r in results) == ["built", "reused"], results
    assert not list((tmp_path / "cache").glob("*.tmp"))


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU computes bf16 by emulation: fp32 builds only")
def test_native_bf16_builds_stay_within_their_tolerance_of_fp32(tmp_path, noisy_folder, caplog):
    torch.manual_seed(0)
    module = classifier_module("resnet18", FEATURE_EXTRACTION)
    entries = {}
    for tolerance in (0.0, 0.05):
        cache = FeatureCache(dir=tmp_path / str(tolerance), bf16_tolerance=tolerance)
        with caplog.at_level(logging.INFO, logger="transferlab"):
            quiet_trainer(max_epochs=1, callbacks=[cache]).fit(module, datamodule=datamodule(noisy_folder))
        entries[tolerance] = torch.load(next((tmp_path / str(tolerance)).glob("val-*.pt")), weights_only=True)
        assert cache.precision == ("32-true" if tolerance == 0 else "bf16-autocast")
    assert "feature cache: building in bf16" in caplog.text
    exact, fast = entries[0.0]["features"], entries[0.05]["features"]
    assert float((fast - exact).norm() / exact.norm()) <= 0.05
    assert not torch.equal(fast, exact)


def test_bf16_is_refused_when_its_features_differ_beyond_the_tolerance(tmp_path, noisy_folder, caplog):
    cache = FeatureCache(dir=tmp_path / "cache", bf16_tolerance=1e-9)
    with caplog.at_level(logging.INFO, logger="transferlab"):
        quiet_trainer(max_epochs=1, callbacks=[cache]).fit(
            classifier_module("resnet18", FEATURE_EXTRACTION), datamodule=datamodule(noisy_folder))
    assert cache.precision == "32-true"
    if cpu_has_bf16():
        assert "feature cache: building in fp32: bf16 features differ by" in caplog.text


class BatchKinds(Callback):
    """Per epoch: whether the training batches were cached inputs, and the head's gradients."""

    def __init__(self):
        self.kinds: dict[int, set[bool]] = {}
        self.grads: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.kinds.setdefault(trainer.current_epoch, set()).add(isinstance(batch[0], CachedInputs))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append(pl_module.backbone.head.weight.grad.clone())


def test_gradual_trains_its_head_only_epochs_on_the_cache_then_images(tmp_path, noisy_folder, caplog):
    torch.manual_seed(0)
    # Head only in epoch 0; layer4 thaws in epoch 1, ..., the stem in epoch 5.
    freeze = {"_target_": STRATEGY + "GradualUnfreezing", "head_epochs": 1, "unfreeze_every": 1}
    on_images = classifier_module("resnet18", freeze, lr=0.01)
    on_cache = copy.deepcopy(on_images)
    runs = {}
    for module, enabled in ((on_images, False), (on_cache, True)):
        kinds = BatchKinds()
        cache = FeatureCache(enabled=enabled, dir=tmp_path / "cache", bf16_tolerance=0)
        dm = datamodule(noisy_folder)
        torch.manual_seed(1)
        trainer = quiet_trainer(max_epochs=6, callbacks=[cache, kinds])
        with caplog.at_level(logging.INFO, logger="transferlab"):
            trainer.fit(module, datamodule=dm)  # the cache asks for the loaders again itself
        runs[enabled] = kinds
        assert trainer.reload_dataloaders_every_n_epochs == 0  # and puts the setting back
    assert runs[True].kinds == {0: {True}} | {epoch: {False} for epoch in range(1, 6)}
    assert cache.until == 1 and dm.served is None
    assert "feature cache: epoch 1 thaws a stage below the head; images from now on" in caplog.text
    head_only = 3  # one epoch of three batches
    for cached, uncached in zip(runs[True].grads[:head_only], runs[False].grads[:head_only]):
        torch.testing.assert_close(cached, uncached, rtol=1e-4, atol=1e-5)
