"""The GPU rows: ResNet-50 and U-Net training, the JPEG data path, the feature cache, predicting and
a one-device DDP run, each measured against a plain PyTorch loop in the same process, one table.

    python scripts/bench_gpu.py --out bench-gpu --budget-s 300      # H100/H200: 5-7 minutes
    python scripts/bench_gpu.py --device cpu --quick --out /tmp/b   # every row at tiny sizes

transferlab's side is its library: `ClassificationModule` / `SegmentationModule` in a Lightning
Trainer with trainer=fast's precision plugin and `FastTraining` callback (bf16 where native,
channels_last, optional torch.compile) and the default callbacks' NaN guard, `ImageFolderDataModule`
loaders, `FeatureCache`, `transferlab.load(...).predicted`, and `transferlab.config.compose` +
`transferlab.fit.fit` / `transferlab-train` for whole runs. The plain side is what a user writes by
hand: torchvision models, ImageFolder, DataLoader, autocast, SGD. Speed claims are ratios between
the two sides; the absolute targets are the issue's, for H100/H200. The table and a JSON of the raw
numbers are rewritten after every section, so a run stopped by a device timeout keeps what it did.
docs/performance.md ("GPU rows") explains the rows.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import lightning as L
import torch
import torchvision
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2

# The script's own folder: bench.py's machine line and child runner, bench_predict's image set.
from bench import TUTORIAL_MEAN, TUTORIAL_STD, machine, run_in_child
from bench_predict import PlainImages
from transferlab.cache import FeatureCache
from transferlab.callbacks import NonFiniteLossGuard
from transferlab.console import quiet_libraries
from transferlab.data.classification import ImageFolderDataModule, resize_side
from transferlab.data.sampling import spare_cores
from transferlab.devices import cpu_cores, native_bf16
from transferlab.fast import FastTraining, fast_precision
from transferlab.modules.classification import ClassificationModule
from transferlab.modules.segmentation import BCEDiceLoss, SegmentationModule

LR, MOMENTUM = 1e-3, 0.9  # small enough that no few-step run trips the NaN guard
# The targets on an H100/H200; judged only when the run is on a GPU.
TARGET_IMG_S, TARGET_JPEG_SHARE, TARGET_OVERHEAD, TARGET_PREDICT = 5000, 0.70, 0.05, 0.10
JPEG_SUFFIXES = (".jpg", ".jpeg")
# --quick: every path once, at sizes a 2-core CPU runs in well under a minute.
QUICK = {"arch": "resnet18", "image_size": 32, "batch": 4, "warmup": 1, "steps": 2, "jpeg_steps": 2,
         "repeats": 1, "unet_size": 32, "unet_batch": 2, "predict_images": 16, "run_steps": 2,
         "threads": 1}
# In this order: the cheap and most wanted first, compiling (minutes) last.
SECTION_NAMES = ("synthetic", "jpeg", "loaders", "decode", "cache", "predict", "unet", "ddp", "compile",
                 "compile_jpeg")


# ---- timing -------------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Seconds from the start of step `warmup` to the start of step `warmup + steps`, the device
    synchronised at both. Both ends sit at the same point of the loop, so the time is `steps` whole
    cycles of fetching and stepping, whatever the loader or Lightning prefetches."""

    def __init__(self, warmup: int, steps: int, device: str):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start = self.stop = None

    def tick(self, i: int) -> bool:
        """Call at the start of step i; True once the window is complete."""
        if i == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        elif i == self.warmup + self.steps:
            sync(self.device)
            self.stop = time.perf_counter()
            return True
        return False

    @property
    def seconds(self) -> float:
        if self.stop is None:
            raise RuntimeError(f"the loader ran out before {self.warmup + self.steps + 1} batches")
        return self.stop - self.start

    @property
    def batches(self) -> int:
        return self.warmup + self.steps + 1  # the one that ends the window is fetched, not timed


class Window(L.Callback):
    """The Clock in a Lightning fit: ticks at every training batch's start."""

    def __init__(self, clock: Clock):
        self.clock, self.seen = clock, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.clock.tick(self.seen)
        self.seen += 1


class Mark(L.Callback):
    """The time at fit start, at its place in the callback list: two around FeatureCache time its
    build (Lightning calls callbacks' hooks in list order)."""

    def __init__(self, device: str):
        self.device, self.time = device, None

    def on_fit_start(self, trainer, pl_module):
        sync(self.device)
        self.time = time.perf_counter()


class EpochTimes(L.Callback):
    def __init__(self, device: str):
        self.device, self.seconds = device, []

    def on_train_epoch_start(self, trainer, pl_module):
        sync(self.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync(self.device)
        self.seconds.append(time.perf_counter() - self.start)


def autocast(args):
    # trainer=fast's rule on both sides: bf16 where the hardware computes it, else fp32.
    return torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)


# ---- the two sides of a training step ------------------------------------------------------------

class Repeat(Dataset):
    """One batch, already on the device, n times: only the step is timed (the arithmetic limit)."""

    def __init__(self, batch: tuple, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.batch


def synthetic_loader(args, size: int, batch: int, clock: Clock, dense: bool = False) -> DataLoader:
    g = torch.Generator(device=args.device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=args.device, generator=g)
    if dense:
        y = (torch.rand(batch, size, size, device=args.device, generator=g) > 0.6).long()
    else:
        y = torch.randint(0, args.classes, (batch,), device=args.device, generator=g)
    return DataLoader(Repeat((x, y), clock.batches), batch_size=None)


def plain_train(args, net: torch.nn.Module, loader, clock: Clock, loss_fn=F.cross_entropy,
                compiled: bool = False) -> float:
    """The hand-written loop: autocast, channels_last weights, SGD; the time of the clock's window."""
    net = net.to(args.device, memory_format=torch.channels_last).train()
    if compiled:
        net.compile()  # in place, as FastTraining compiles transferlab's network
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    for i, (x, y) in enumerate(loader):
        if clock.tick(i):
            break
        x, y = x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True)
        with autocast(args):
            loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return clock.seconds


def trainer(args, callbacks: list, **kw) -> L.Trainer:
    """trainer=fast's precision and cuDNN autotuning; no logger, checkpoints, progress bar or val:
    none of them runs per training step."""
    return L.Trainer(
        accelerator=args.device, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, benchmark=args.device == "cuda",
        plugins=[fast_precision(args.device)], callbacks=callbacks, **kw,
    )


def lightning_train(args, module, clock: Clock, compiled: bool = False, guard: bool = True,
                    **fit) -> float:
    """transferlab's step: the module in Lightning with FastTraining and (by default) the NaN
    guard of callbacks=default, which reads the loss every step."""
    callbacks = [FastTraining(channels_last=True, compile=compiled), Window(clock)]
    callbacks += [NonFiniteLossGuard()] if guard else []
    trainer(args, callbacks, max_epochs=1, max_steps=clock.batches).fit(module, **fit)
    return clock.seconds


def resnet_module(args, freeze: str = "FullFineTune") -> ClassificationModule:
    return ClassificationModule(
        backbone={"_target_": "transferlab.models.backbones.TorchvisionBackbone", "name": args.arch},
        num_classes=args.classes, freeze={"_target_": f"transferlab.freeze.{freeze}"},
        optimizer={"_target_": "torch.optim.SGD", "lr": LR, "momentum": MOMENTUM},
    )


def plain_resnet(args) -> torch.nn.Module:
    return torchvision.models.get_model(args.arch, num_classes=args.classes)


def arch_name(arch: str) -> str:
    return "ResNet-" + arch.removeprefix("resnet")


def alternate(plain, lab, repeats: int) -> dict:
    """`repeats` timings of each side, in the order plain, lab, lab, plain, ...: a drift (clocks
    settling, another job) falls on both sides alike. The best of each side, and every run: how
    far they spread is the noise a difference between the sides must beat."""
    runs = {"plain": [], "lab": []}
    for i in range(repeats):
        for side in ("plain", "lab") if i % 2 == 0 else ("lab", "plain"):
            runs[side].append(plain() if side == "plain" else lab())
    return {"plain_s": min(runs["plain"]), "lab_s": min(runs["lab"]),
            "plain_runs": runs["plain"], "lab_runs": runs["lab"]}


def side_by_side(args, loaders, compiled: bool, window: tuple[int, int], fit, repeats: int = 1) -> dict:
    """ResNet windows of (warm-up, steps) on each side, fresh networks every time; `loaders`
    makes the plain side's loader for its clock, `fit` the Lightning side's fit arguments."""
    def plain() -> float:
        clock = Clock(*window, args.device)
        return plain_train(args, plain_resnet(args), loaders(clock), clock, compiled=compiled)

    def lab() -> float:
        clock = Clock(*window, args.device)
        return lightning_train(args, resnet_module(args), clock, compiled, **fit(clock))

    return alternate(plain, lab, repeats) | {"steps": window[1], "images": window[1] * args.batch}


# ---- the sections -------------------------------------------------------------------------------

def synthetic(args, compiled: bool = False) -> dict:
    """ResNet-50 steps on one batch held on the device; and without the NaN guard, which shows
    what its per-step read of the loss costs."""
    def loader(clock):
        return synthetic_loader(args, args.image_size, args.batch, clock)

    def unguarded() -> float:
        clock = Clock(args.warmup, args.steps, args.device)
        return lightning_train(args, resnet_module(args), clock, guard=False, train_dataloaders=loader(clock))

    # Compiled pairs run once: every fresh network compiles again.
    repeats = 1 if compiled else args.repeats
    result = side_by_side(args, loader, compiled, (args.warmup, args.steps),
                          lambda c: {"train_dataloaders": loader(c)}, repeats)
    if not compiled:
        result["lab_unguarded_s"] = min(unguarded() for _ in range(repeats))
    return result


def jpeg_window(args, workers: int) -> tuple[int, int]:
    """Warm-up and timed steps for a loader of `workers` processes. Each worker makes whole
    batches, so they arrive in rounds of `workers`, and while the first steps are slow (cuDNN
    autotuning, compiling) the workers fill their prefetch queue (2 batches each), which the next
    steps then drain at the model's speed. So the warm-up is at least those 2 rounds and the
    window starts and ends at round boundaries: it measures the loader's steady rate."""
    warmup = workers * max(2, math.ceil(args.warmup / workers))
    steps = workers * math.ceil(max(args.jpeg_steps, 2 * workers) / workers)
    return warmup, steps


def jpeg(args, compiled: bool = False) -> dict:
    """ResNet-50 training on the JPEG folder: the tutorial's ImageFolder loader against
    transferlab's datamodule, same workers and pinning."""
    def loader(clock):
        return plain_loader(args, args.workers, args.cuda, train=True)

    module_data = datamodule(args, args.workers, args.cuda)
    result = side_by_side(args, loader, compiled, jpeg_window(args, args.workers),
                          lambda c: {"datamodule": module_data})
    return result | {"workers": args.workers, "pinned": args.cuda}


def plain_loader(args, workers: int, pin: bool, train: bool, shuffle: bool = True) -> DataLoader:
    """The tutorial's data pipeline (bench.py's), at this run's size and batch."""
    size = args.image_size
    augment = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    fixed = [transforms.Resize(resize_side(size)), transforms.CenterCrop(size)]
    transform = transforms.Compose([*(augment if train else fixed), transforms.ToTensor(),
                                    transforms.Normalize(TUTORIAL_MEAN, TUTORIAL_STD)])
    images = datasets.ImageFolder(args.folder / "train", transform)
    return DataLoader(images, batch_size=args.batch, shuffle=shuffle, num_workers=workers,
                      pin_memory=pin, persistent_workers=workers > 0)


_DATAMODULES: dict = {}


def datamodule(args, workers: int, pin: bool) -> ImageFolderDataModule:
    """transferlab's datamodule on the JPEG folder, set up once per setting (setup decodes every
    file once to find bad ones: seconds for thousands of JPEGs, not part of any timing)."""
    key = (workers, pin)
    if key not in _DATAMODULES:
        module_data = ImageFolderDataModule(str(args.folder), image_size=args.image_size,
                                            batch_size=args.batch, num_workers=workers, pin_memory=pin)
        module_data.prepare_data()
        module_data.setup("fit")
        _DATAMODULES[key] = module_data
    return _DATAMODULES[key]


def loader_rate(args, loader, workers: int) -> float:
    """Images per second out of a loader alone, copied to the device."""
    clock = Clock(*jpeg_window(args, workers), args.device)
    for i, (x, _) in enumerate(loader):
        if clock.tick(i):
            break
        x.to(args.device, non_blocking=True)
    return clock.steps * args.batch / clock.seconds


class EncodedFiles(Dataset):
    """The files' bytes: workers only read, the device decodes."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        # A copy: read_file's own tensor failed to reach the main process (its storage's file
        # descriptor was gone when the worker shared it; torch 2.15) and the loader hung.
        return read_file(path).clone(), label


def as_lists(batch):
    return [data for data, _ in batch], torch.tensor([label for _, label in batch])


def decode(args) -> dict:
    """torchvision.io.decode_jpeg on the run's device (nvJPEG on a GPU, batched), then the train
    augmentation on the decoded tensors there; the workers only read the files."""
    return {"img_s": device_decode_rate(args, args.workers), "workers": args.workers}


def device_decode_rate(args, workers: int) -> float:
    samples = datasets.ImageFolder(args.folder / "train").samples
    loader = DataLoader(EncodedFiles(samples), batch_size=args.batch, shuffle=True,
                        num_workers=workers, collate_fn=as_lists, persistent_workers=workers > 0)
    augment = v2.Compose([v2.RandomResizedCrop(args.image_size, antialias=True), v2.RandomHorizontalFlip()])
    mean = torch.tensor(TUTORIAL_MEAN, device=args.device).view(1, 3, 1, 1)
    std = torch.tensor(TUTORIAL_STD, device=args.device).view(1, 3, 1, 1)
    clock = Clock(*jpeg_window(args, workers), args.device)
    for i, (data, _) in enumerate(loader):
        if clock.tick(i):
            break
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=args.device)
        x = torch.stack([augment(image) for image in images]).float().div_(255)
        x = (x - mean) / std  # what a training step would be handed
    return clock.steps * args.batch / clock.seconds


def loaders(args) -> dict:
    """The loaders alone (no model): what the JPEG path can feed, and what more workers or pinned
    memory change. Same workers and pinning on both sides per row."""
    cores = cpu_cores()
    settings = [(args.workers, args.cuda)]
    if cores != args.workers:
        settings.append((cores, args.cuda))  # every core, against auto's "all but one, at most 8"
    if args.cuda:
        settings.append((args.workers, False))  # what pinning buys
    rows = []
    for workers, pin in settings:
        module_data = datamodule(args, workers, pin)  # its setup reads every file: both sides warm
        plain = loader_rate(args, plain_loader(args, workers, pin, train=True), workers)
        lab = loader_rate(args, module_data.train_dataloader(), workers)
        rows.append({"workers": workers, "pinned": pin, "plain_img_s": plain, "lab_img_s": lab})
    return {"rows": rows}


def plain_feature_epoch(args) -> tuple[float, int]:
    """The tutorial's feature extraction epoch on images: frozen ResNet-50 (eval mode), a new
    head trained; the images through the val transform, as the cache encodes them."""
    net = plain_resnet(args)
    for name, param in net.named_parameters():
        param.requires_grad = name.startswith("fc.")
    net = net.to(args.device, memory_format=torch.channels_last).eval()
    optimizer = torch.optim.SGD(net.fc.parameters(), lr=LR, momentum=MOMENTUM)
    loader = plain_loader(args, args.workers, args.cuda, train=False)
    sync(args.device)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True)
        with autocast(args):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(args.device)
    return time.perf_counter() - start, len(loader.dataset)


def cache(args) -> dict:
    """FeatureCache building the head inputs of a frozen ResNet (train and val images) from an
    empty folder, then two epochs on them; against one plain feature extraction epoch."""
    module_data = datamodule(args, args.workers, args.cuda)
    shutil.rmtree(args.work / "cache", ignore_errors=True)  # an earlier run's entries would be read
    feature_cache = FeatureCache(dir=str(args.work / "cache"), batch_size=args.batch)
    before, after, epochs = Mark(args.device), Mark(args.device), EpochTimes(args.device)
    callbacks = [FastTraining(channels_last=True), before, feature_cache, after, epochs]
    trainer(args, callbacks, max_epochs=2).fit(resnet_module(args, "FeatureExtraction"),
                                               datamodule=module_data)
    if feature_cache.status != {"train": "built", "val": "built"}:
        raise RuntimeError(f"the cache was not built from scratch: {feature_cache.status}")
    plain_s, plain_images = plain_feature_epoch(args)
    return {
        "build_s": after.time - before.time,
        "build_images": len(module_data.train_set) + len(module_data.val_set),
        "cached_epoch_s": epochs.seconds[-1], "epoch_s": epochs.seconds,
        "plain_epoch_s": plain_s, "plain_images": plain_images, "precision": feature_cache.precision,
    }


def run_overrides(args) -> list[str]:
    """A short ResNet-50 run on the JPEG folder, as transferlab-train would be asked for it."""
    return [
        f"data.root={args.folder}", "backbone=torchvision", f"backbone.name={args.arch}", "init=he",
        "freeze=full", "logger=none",
        "trainer.max_epochs=1", f"trainer.limit_train_batches={args.run_steps}",
        "trainer.limit_val_batches=2", f"trainer.accelerator={args.device}",
        f"trainer.precision={'bf16-mixed' if args.bf16 else '32-true'}",
        f"data.image_size={args.image_size}", f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}", "callbacks.progress_bar.refresh_rate=0",
    ]


def reference_run(args) -> Path:
    """A finished run made in this process through the library (compose + fit), strategy auto:
    what the predict rows load and the DDP row compares with. Made once."""
    run_dir = args.work / "runs" / "auto"
    if not getattr(args, "reference_done", False):
        from transferlab.config import compose
        from transferlab.fit import fit

        shutil.rmtree(run_dir, ignore_errors=True)  # never an earlier run's, with other settings
        fit(compose(run_overrides(args), run_dir), run_dir)
        status = json.loads((run_dir / "summary.json").read_text())["status"]
        if status != "completed":
            raise RuntimeError(f"the reference run in {run_dir} ended {status}")
        args.reference_done = True
    return run_dir


def plain_predict(args, predictor, files: list[Path]) -> int:
    """bench_predict's plain loop on the run's device: the checkpoint's weights in torchvision's
    network, fp32 as Predictor runs, probabilities back on the CPU per batch."""
    net = plain_resnet(args)
    net.load_state_dict(predictor.module.net.state_dict())
    net = net.to(args.device).eval()
    pre = predictor.preprocess
    transform = transforms.Compose([
        transforms.Resize(resize_side(pre["image_size"])), transforms.CenterCrop(pre["image_size"]),
        transforms.ToTensor(), transforms.Normalize(pre["mean"], pre["std"]),
    ])
    loader = DataLoader(PlainImages(files, transform), batch_size=args.batch,
                        num_workers=args.workers, pin_memory=args.cuda)
    with torch.inference_mode():
        for x in loader:
            net(x.to(args.device, non_blocking=True)).softmax(1).float().cpu()
    return len(files)


def predict(args) -> dict:
    """Images per second: the plain loop, Predictor.predicted (loader and model, what
    transferlab-predict iterates) and transferlab.load(...).predict (with its bad-file scan and
    result objects); best of 2 passes each (1 with --quick)."""
    import transferlab

    predictor = transferlab.load(reference_run(args), device=args.device)
    found = sorted(p for p in (args.folder / "train").rglob("*") if p.is_file())
    files = [found[i % len(found)] for i in range(args.predict_images)]
    ways = {
        "plain_s": lambda: plain_predict(args, predictor, files),
        "predicted_s": lambda: sum(1 for _ in predictor.predicted(files, args.batch, args.workers)),
        "predict_s": lambda: len(predictor.predict(files, args.batch, args.workers)),
    }
    result = {"images": len(files), "workers": args.workers, "batch": args.batch}
    for key, way in ways.items():
        result[key] = min(timed(args, way) for _ in range(1 if args.quick else 2))
    return result


def timed(args, fn) -> float:
    sync(args.device)
    start = time.perf_counter()
    fn()
    sync(args.device)
    return time.perf_counter() - start


def unet(args) -> dict:
    """The VGG16-bn U-Net's training step: transferlab's network in the plain loop (bench_unet's
    comparison) against its SegmentationModule in Lightning, both bf16 where native and
    channels_last."""
    def module() -> SegmentationModule:
        return SegmentationModule(
            backbone={"_target_": "transferlab.models.backbones.UNetBackbone", "name": "vgg16_bn"},
            num_classes=2, freeze={"_target_": "transferlab.freeze.FullFineTune"},
            optimizer={"_target_": "torch.optim.SGD", "lr": LR, "momentum": MOMENTUM},
        )

    def data(clock: Clock) -> DataLoader:
        return synthetic_loader(args, args.unet_size, args.unet_batch, clock, dense=True)

    def plain() -> float:
        clock = Clock(args.warmup, args.steps, args.device)
        return plain_train(args, module().net, data(clock), clock, BCEDiceLoss())

    def lab() -> float:
        clock = Clock(args.warmup, args.steps, args.device)
        return lightning_train(args, module(), clock, train_dataloaders=data(clock))

    return alternate(plain, lab, args.repeats) | {"steps": args.steps, "batch": args.unet_batch,
                                                  "size": args.unet_size}


def ddp(args) -> dict:
    """`transferlab-train trainer=ddp trainer.devices=1` in a fresh process, as a user starts it:
    it must finish with one process group of one rank and write one run dir. Its epoch time is
    compared with the same run under strategy=auto (the reference run)."""
    auto = json.loads((reference_run(args) / "summary.json").read_text())
    parent = args.work / "runs" / "ddp"
    shutil.rmtree(parent, ignore_errors=True)
    overrides = [*run_overrides(args), "trainer=ddp", "trainer.devices=1", f"hydra.run.dir={parent / 'run'}"]
    argv = ["--variant", "ddp", "--overrides", json.dumps(overrides), "--threads", str(args.threads)]
    child = run_in_child(__file__, "ddp", argv, args.work)
    summary = json.loads((parent / "run" / "summary.json").read_text())
    return child | {
        "run_dirs": len(list(parent.rglob("summary.json"))), "status": summary["status"],
        "epoch_s": summary["history"][0]["time_s"], "auto_epoch_s": auto["history"][0]["time_s"],
    }


def run_ddp_child(args) -> None:
    """In the child: transferlab-train's own main with the overrides, then what torch.distributed
    holds (Lightning destroys the process group only at exit)."""
    import torch.distributed as dist

    from transferlab.cli.train import main as transferlab_train

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.argv = ["transferlab-train", *json.loads(args.overrides)]
    transferlab_train()
    up = dist.is_available() and dist.is_initialized()
    args.result.write_text(json.dumps({
        "process_group": up, "world_size": dist.get_world_size() if up else None,
        "backend": str(dist.get_backend()) if up else None,
    }))


SECTIONS = {
    "synthetic": synthetic, "jpeg": jpeg, "loaders": loaders, "decode": decode, "cache": cache,
    "predict": predict, "unet": unet, "ddp": ddp,
    # torch.compile on both sides; each network compiles on its first step, inside the warm-up.
    "compile": lambda args: synthetic(args, compiled=True),
    "compile_jpeg": lambda args: jpeg(args, compiled=True),
}


# ---- the JPEG folder ----------------------------------------------------------------------------

def class_files(split: Path) -> dict[str, list[Path]]:
    return {c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in JPEG_SUFFIXES)
            for c in sorted(split.iterdir()) if c.is_dir() and not c.name.startswith(".")}


def jpeg_folder(source: Path, folder: Path, train_count: int) -> Path:
    """`source`'s train JPEGs linked under folder/train, cycled to `train_count` files (more
    images than the set has, at no disk cost); val/ (or test/) linked as val. A train file stays
    out of val: transferlab refuses one file in two splits."""
    train = class_files(source / "train")
    held = next((source / s for s in ("val", "test") if (source / s).is_dir()), None)
    val = class_files(held) if held else {c: files[-1:] for c, files in train.items()}
    if not held:
        train = {c: files[:-1] for c, files in train.items()}
    # Class by class in turn, so that fewer links than files (CIFAR-10's 50,000) cover every class.
    longest = max((len(files) for files in train.values()), default=0)
    pool = [(c, files[j]) for j in range(longest) for c, files in train.items() if j < len(files)]
    if not pool or not any(val.values()):
        raise SystemExit(f"no JPEGs in {source}/train/<class>/ (and val/ or test/)")
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(train_count):
        cls, path = pool[i % len(pool)]
        link(path, folder / "train" / cls / f"{i:06d}{path.suffix}")
    for cls, files in val.items():
        for i, path in enumerate(files[:64]):  # val is never timed: a few per class
            link(path, folder / "val" / cls / f"{i:06d}{path.suffix}")
    return folder


def link(target: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target.resolve())


# ---- the report ---------------------------------------------------------------------------------

def device_line(args) -> str:
    if not args.cuda:
        return f"device: cpu (the CPU above); torch {torch.__version__}"
    props = torch.cuda.get_device_properties(0)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
        driver = smi.stdout.strip().split("\n")[0] or "unknown (nvidia-smi said nothing)"
    except (OSError, subprocess.SubprocessError):
        driver = "unknown (no nvidia-smi)"
    return (f"device: {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB), "
            f"driver {driver}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}")


def header(args) -> list[str]:
    precision = "bf16-mixed" if args.bf16 else "fp32 (no native bf16)"
    settings = (
        f"{arch_name(args.arch)} at {args.image_size} px, batch {args.batch}, {precision}, channels_last; "
        f"{args.warmup} warm-up + {args.steps} timed steps; JPEGs: {args.data} linked to "
        f"{args.train_count} train files, {plural(args.workers, 'loader worker')}{auto_note(args)}, "
        f"pinned {'yes' if args.cuda else 'no (cpu)'}; "
        f"U-Net at {args.unet_size} px, batch {args.unet_batch}"
    )
    lines = [f"machine: {machine()}", device_line(args), settings]
    if args.quick:
        lines.append("--quick: a few steps at tiny sizes, to show the script works; the numbers "
                     "measure nothing")
    return lines


def auto_note(args) -> str:
    return " (data.num_workers=auto)" if args.workers == spare_cores() else ""


def num(x: float) -> str:
    """Thousands as 5,120; the small rates of a quick CPU run as 3.91."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def plural(n: int, thing: str) -> str:
    return f"{n} {thing}{'s' * (n != 1)}"


def row(measure: str, plain: str, lab: str, ratio: str = "", target: str = "",
        met: bool | None = None) -> str:
    judged = "" if met is None else ("yes" if met else "no")
    return f"| {measure} | {plain} | {lab} | {ratio} | {target} | {judged} |"


def on_gpu(args, met: bool) -> bool | None:
    """The issue's targets are for an H100/H200: judged on a GPU run only."""
    return met if args.cuda else None


def training_rows(args, r: dict, label: str, jpeg: bool, synthetic_img_s: float | None) -> list[str]:
    """Throughput and per-step overhead of one ResNet pair; a JPEG pair is set against
    transferlab's synthetic rate in the same mode."""
    plain, lab = r["images"] / r["plain_s"], r["images"] / r["lab_s"]
    if not jpeg:
        target, met = f">= {TARGET_IMG_S:,} img/s", lab >= TARGET_IMG_S
    elif synthetic_img_s is None:
        target, met = f">= {TARGET_JPEG_SHARE:.0%} of synthetic (not run)", None
    else:
        share = lab / synthetic_img_s
        target, met = f">= {TARGET_JPEG_SHARE:.0%} of synthetic: {share:.0%}", share >= TARGET_JPEG_SHARE
    overhead = r["lab_s"] / r["plain_s"] - 1
    ms = 1000 / r["steps"]
    return [
        row(f"{arch_name(args.arch)} training, {label} (img/s)", num(plain), num(lab), f"{lab / plain:.2f}x",
            target, on_gpu(args, met)),
        row(f"Lightning overhead per step, {label} (ms/step)", f"{r['plain_s'] * ms:.1f}",
            f"{r['lab_s'] * ms:.1f}", f"{overhead:+.1%}{spread(r)}", f"<= {TARGET_OVERHEAD:.0%}",
            on_gpu(args, overhead <= TARGET_OVERHEAD)),
    ]


def spread(r: dict) -> str:
    """How far the repeated runs of either side lie apart: a smaller overhead is noise."""
    sides = [runs for runs in (r.get("plain_runs", []), r.get("lab_runs", [])) if len(runs) > 1]
    if not sides:
        return ""
    return f" (runs within {max(max(runs) / min(runs) - 1 for runs in sides):.1%})"


def synthetic_rate(results: dict, compiled: bool) -> float | None:
    """transferlab's synthetic img/s: what a loader has to feed."""
    r = results.get("compile" if compiled else "synthetic")
    return r["images"] / r["lab_s"] if r and "lab_s" in r else None


def step_rows(args, results: dict) -> list[str]:
    rows = []
    pairs = [(results.get("synthetic"), "synthetic, eager", False),
             (results.get("jpeg"), "JPEGs through the loader, eager", True),
             (results.get("compile"), "synthetic, torch.compile", False),
             (results.get("compile_jpeg"), "JPEGs through the loader, torch.compile", True)]
    for r, label, jpeg in pairs:
        if not r or "lab_s" not in r:
            continue
        rows += training_rows(args, r, label, jpeg, synthetic_rate(results, "compile" in label))
        if "lab_unguarded_s" in r:
            ms = 1000 / r["steps"]
            rows.append(row("... the same without the NaN guard's per-step read of the loss (ms/step)",
                            f"{r['plain_s'] * ms:.1f}", f"{r['lab_unguarded_s'] * ms:.1f}",
                            f"{r['lab_unguarded_s'] / r['plain_s'] - 1:+.1%}"))
    return rows


def fed(rate: float, synthetic_img_s: float | None) -> str:
    return f"{rate / synthetic_img_s:.2f}x synthetic training's rate" if synthetic_img_s else ""


def loader_setting(x: dict) -> str:
    return f"{plural(x['workers'], 'worker')}, {'pinned' if x['pinned'] else 'not pinned'}"


def loader_rows(args, results: dict) -> list[str]:
    r, d = results.get("loaders") or {}, results.get("decode") or {}
    synthetic_img_s, rows = synthetic_rate(results, False), []
    for x in r.get("rows", []):
        rows.append(row(f"JPEG loader alone, {loader_setting(x)} (img/s)",
                        num(x["plain_img_s"]), num(x["lab_img_s"]),
                        f"{x['lab_img_s'] / x['plain_img_s']:.2f}x", fed(x["lab_img_s"], synthetic_img_s)))
    if "img_s" in d:
        ratio = f"{d['img_s'] / r['rows'][0]['lab_img_s']:.2f}x" if r.get("rows") else ""
        measure = (f"decode_jpeg(device={args.device}) and the augmentation there, "
                   f"{plural(d['workers'], 'worker')} reading bytes "
                   "(img/s; ratio: against transferlab's loader)")
        rows.append(row(measure, num(d["img_s"]), "", ratio, fed(d["img_s"], synthetic_img_s)))
    return rows


def cache_rows(c: dict | None) -> list[str]:
    if not c or "build_s" not in c:
        return []
    plain, build = c["plain_images"] / c["plain_epoch_s"], c["build_images"] / c["build_s"]
    return [
        row(f"feature cache build, {c['precision']} (img/s; plain: a feature extraction epoch)",
            num(plain), num(build), f"{build / plain:.2f}x"),
        row("cached epoch (s; plain: a feature extraction epoch on images)",
            f"{c['plain_epoch_s']:.2f}", f"{c['cached_epoch_s']:.3f}",
            f"{c['plain_epoch_s'] / c['cached_epoch_s']:.0f}x faster"),
    ]


def other_rows(args, results: dict) -> list[str]:
    rows = cache_rows(results.get("cache"))
    p = results.get("predict")
    if p and "plain_s" in p:
        ways = (("predicted_s", "Predictor.predicted"), ("predict_s", "transferlab.load(...).predict"))
        for key, what in ways:
            ratio = p["plain_s"] / p[key]
            rows.append(row(f"predict, {what}, fp32 (img/s)", num(p["images"] / p["plain_s"]),
                            num(p["images"] / p[key]), f"{ratio:.2f}x", f"within {TARGET_PREDICT:.0%}",
                            on_gpu(args, ratio >= 1 - TARGET_PREDICT)))
    u = results.get("unet")
    if u and "lab_s" in u:
        ms, overhead = 1000 / u["steps"], u["lab_s"] / u["plain_s"] - 1
        rows.append(row(f"U-Net VGG16-bn training step, {u['size']} px, batch {u['batch']} (ms/step)",
                        f"{u['plain_s'] * ms:.1f}", f"{u['lab_s'] * ms:.1f}", f"{overhead:+.1%}{spread(u)}",
                        f"<= {TARGET_OVERHEAD:.0%}", on_gpu(args, overhead <= TARGET_OVERHEAD)))
    return rows + ddp_rows(results.get("ddp"))


def ddp_rows(d: dict | None) -> list[str]:
    if not d or "status" not in d:
        return []
    sane = d["status"] == "completed" and d["process_group"] and d["world_size"] == 1 and d["run_dirs"] == 1
    return [row("trainer=ddp trainer.devices=1, epoch s (plain: the same run, strategy=auto)",
                f"{d['auto_epoch_s']:.2f}", f"{d['epoch_s']:.2f}", f"{d['epoch_s'] / d['auto_epoch_s']:.2f}x",
                f"1 process group: {d['backend']}, world {d['world_size']}; "
                f"{plural(d['run_dirs'], 'run dir')}", sane)]  # a sanity check: judged on every device


def verdict(args, results: dict) -> list[str]:
    """Whether the JPEG loader keeps up with synthetic training, by how much not, and the best
    of what was tried."""
    r, d = results.get("loaders") or {}, results.get("decode") or {}
    synthetic_img_s = synthetic_rate(results, False)
    if not r.get("rows") or not synthetic_img_s:
        return []
    auto = r["rows"][0]["lab_img_s"] / synthetic_img_s
    tried = {loader_setting(x): x["lab_img_s"] for x in r["rows"]}
    if "img_s" in d:
        tried[f"decode_jpeg on the device, {plural(d['workers'], 'worker')}"] = d["img_s"]
    best = max(tried, key=tried.get)
    feeds = "keeps up with" if auto >= 1 else f"is short by {1 - auto:.0%} of"
    line = (f"transferlab's JPEG loader{auto_note(args)} {feeds} synthetic training "
            f"({auto:.2f}x its rate); the best tried: {best}, {tried[best] / synthetic_img_s:.2f}x.")
    return ["", line]


def report(args, results: dict) -> str:
    columns = ["measurement", "plain PyTorch", "transferlab", "transferlab vs plain",
               "target (H100/H200)", "met"]
    lines = [*header(args), "", "| " + " | ".join(columns) + " |", "|---|---:|---:|---:|---|---|"]
    lines += step_rows(args, results) + loader_rows(args, results) + other_rows(args, results)
    for name, r in results.items():
        if "error" in r or "skipped" in r:
            lines.append(f"| {name}: {r.get('error') or r['skipped']} | | | | | |")
    lines += verdict(args, results)
    took = ", ".join(f"{name} {r['section_s']:.0f} s" for name, r in results.items())
    total = sum(r["section_s"] for r in results.values())
    lines += ["", f"sections: {took}; total {total:.0f} s"]
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------

def run_sections(args) -> dict:
    """Every chosen section in turn; one that fails is recorded and the rest still run, and the
    table and JSON are rewritten after each, so a device timeout keeps what was done."""
    results, start = {}, time.perf_counter()
    for name in args.sections:
        began = time.perf_counter()
        if args.budget_s and began - start > args.budget_s:
            results[name] = {"skipped": f"skipped: the {args.budget_s} s budget was spent"}
        else:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                results[name] = SECTIONS[name](args)
            # Any failure, so the other sections still run (run_in_child exits on a failed child).
            except (Exception, SystemExit) as err:  # noqa: BLE001
                traceback.print_exc()
                results[name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:300]}
        results[name]["section_s"] = time.perf_counter() - began
        write_outputs(args, results)
        _DATAMODULES.clear()  # their workers and pinned batches go with them
        if args.cuda:
            torch.cuda.empty_cache()
    return results


def write_outputs(args, results: dict) -> None:
    if not args.out:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(report(args, results) + "\n")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k not in ("result", "overrides", "variant")}
    (args.out / "results.json").write_text(json.dumps(
        {"machine": machine(), "device": device_line(args), "settings": settings, "results": results},
        indent=2, default=str))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(os.environ.get("TRANSFERLAB_DATA_DIR", "data")) / "hymenoptera"
    add = parser.add_argument
    add("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    add("--quick", action="store_true", help="tiny sizes and steps (the CPU smoke run; no compile)")
    add("--out", type=Path, help="write table.md and results.json here (rewritten after each section)")
    add("--data", type=Path, default=default_data,
        help=f"an ImageFolder of JPEGs, train/ and val/ or test/ ({default_data}; or .../cifar10)")
    add("--work", type=Path, help="JPEG links, runs, cache, logs (default: a new temporary folder)")
    add("--arch", choices=[f"resnet{n}" for n in (18, 34, 50, 101)], default="resnet50",
        help="the classifier of every classification row (--quick: resnet18)")
    add("--image-size", type=int, default=224)
    add("--batch", type=int, default=128)
    add("--warmup", type=int, default=10, help="untimed steps first (compilation, cuDNN autotuning)")
    add("--steps", type=int, default=50, help="timed steps on synthetic batches")
    add("--repeats", type=int, default=2, help="timings per side of the synthetic and U-Net pairs, "
        "alternating sides; best kept")
    add("--jpeg-steps", type=int, default=24, help="timed steps on JPEGs (at least 2 loader rounds)")
    add("--workers", type=int, default=spare_cores(), help="loader processes (default: what "
        "data.num_workers=auto picks here)")
    add("--unet-size", type=int, default=256)
    add("--unet-batch", type=int, default=16)
    add("--predict-images", type=int, default=2048)
    add("--run-steps", type=int, default=10, help="training batches of the whole runs (DDP, predict)")
    add("--only", help=f"comma-separated sections, in this order: {','.join(SECTION_NAMES)}")
    add("--skip", help="comma-separated sections to leave out (--quick: compile,compile_jpeg)")
    add("--threads", type=int, default=0, help="torch threads (0: torch's default; --quick: 1, "
        "steadier on a shared CPU)")
    add("--budget-s", type=float, default=0,
        help="start no section once the sections have taken this many seconds (0: no limit)")
    add("--variant", choices=["ddp"], help=argparse.SUPPRESS)
    add("--overrides", help=argparse.SUPPRESS)
    add("--result", type=Path, help=argparse.SUPPRESS)
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)  # defaults only: options given with --quick still count
    return parser.parse_args()


def settle(args) -> None:
    """The chosen sections, the device's precision and threads, the JPEG folder."""
    # --quick leaves compile out (minutes on a small CPU) unless the sections are named.
    default_skip = "compile,compile_jpeg" if args.quick and not args.only else ""
    skip = set((default_skip if args.skip is None else args.skip).split(",")) - {""}
    chosen = set(args.only.split(",")) if args.only else set(SECTION_NAMES)
    unknown = (chosen | skip) - set(SECTION_NAMES)
    if unknown:
        sys.exit(f"unknown section(s) {sorted(unknown)}; sections: {', '.join(SECTION_NAMES)}")
    args.sections = [s for s in SECTION_NAMES if s in chosen - skip]
    args.cuda = args.device == "cuda"
    if args.threads:
        # On a few cores shared with other work, OpenMP threads wait for each other at every
        # barrier: one thread ran a tiny bf16 step 4-10x faster than two here.
        torch.set_num_threads(args.threads)
    if args.cuda and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch sees no CUDA GPU; use --device cpu")
    args.bf16 = native_bf16(args.device)
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="transferlab-bench-gpu-"))).resolve()
    args.out = args.out.resolve() if args.out else None
    args.data = args.data.expanduser().resolve()
    # Enough files for the longest JPEG window (every core's workers) in one epoch.
    cores = cpu_cores()
    args.train_count = max(sum(jpeg_window(args, w)) + 1 for w in (args.workers, cores)) * args.batch
    args.folder = jpeg_folder(args.data, args.work / "jpegs", args.train_count)
    args.classes = len(class_files(args.folder / "train"))


def main() -> None:
    args = parse_args()
    if args.variant:
        run_ddp_child(args)
        return
    settle(args)
    # Lightning's advice for real runs; here the synthetic loaders hold device tensors and the
    # timed fits validate nothing on purpose.
    for message in (".*does not have many workers.*", ".*`validation_step` but have no `val_dataloader`.*"):
        warnings.filterwarnings("ignore", message=message)
    quiet_libraries()
    if args.cuda:
        torch.backends.cudnn.benchmark = True  # the plain side autotunes as Trainer(benchmark) does
    results = run_sections(args)
    print(report(args, results))
    print(f"\nwork folder (JPEG links, runs, logs): {args.work}", file=sys.stderr)
    if any("error" in r for r in results.values()):
        sys.exit("some sections failed; see their rows and the traceback above")


if __name__ == "__main__":
    main()
