"""`trainer=fast`: numeric and loader speed-ups that keep the result (see docs/performance.md)."""

import logging
import os

import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    # torch exposes the CPU feature probes only privately; missing probes mean "no".
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def fast_precision(accelerator: str = "auto") -> Precision:
    """bf16 autocast where the hardware computes in bf16, else fp32.

    A CPU without AVX512-BF16 or AMX emulates bf16: ResNet-18 trained ~10x slower than in fp32
    on an AVX2-only EPYC, so `bf16-mixed` there is a slow-down, not a speed-up.
    """
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if gpu and torch.cuda.is_bf16_supported():
        log.info("fast preset: bf16 autocast on the GPU")
        return MixedPrecision("bf16-mixed", "cuda")
    if not gpu and cpu_has_bf16():
        log.info("fast preset: bf16 autocast on the CPU (native bf16 instructions)")
        return MixedPrecision("bf16-mixed", "cpu")
    log.info("fast preset: fp32, this %s has no native bf16", "GPU" if gpu else "CPU")
    return Precision()


def spare_cores() -> int:
    """Loader processes that do not take a core from the model: one per core but one, 1 to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores - 1))


class FastTraining(Callback):
    """The fast preset's tweaks that a config value cannot express.

    - channels_last conv weights, optional torch.compile;
    - the linear LR scaling rule (Goyal et al. 2017): `optimizer.lr` is the LR at
      `lr_reference_batch_size`; the run uses lr x (batch size x devices x accumulation) / reference;
    - DataLoader: `num_workers="auto"` gives one worker per spare core, `pin_memory="auto"` pins
      when training on a GPU (pinned pages only speed up host-to-GPU copies). Applied to any
      datamodule with these attributes, before its loaders are made.
    """

    def __init__(
        self,
        channels_last: bool = True,
        compile: bool = False,
        lr_reference_batch_size: int | None = 4,
        num_workers: int | str | None = "auto",
        pin_memory: bool | str | None = "auto",
    ):
        self.channels_last = channels_last
        self.compile = compile
        self.lr_reference_batch_size = lr_reference_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def setup(self, trainer, pl_module, stage) -> None:
        datamodule = trainer.datamodule
        if self.num_workers is not None and hasattr(datamodule, "num_workers"):
            auto = self.num_workers == "auto"
            datamodule.num_workers = spare_cores() if auto else int(self.num_workers)
        if self.pin_memory is not None and hasattr(datamodule, "pin_memory"):
            on_gpu = isinstance(trainer.accelerator, CUDAAccelerator)
            datamodule.pin_memory = on_gpu if self.pin_memory == "auto" else bool(self.pin_memory)
        if self.channels_last:
            # Conv weights in NHWC make every conv pick the NHWC kernels (oneDNN, cuDNN); the
            # first conv converts the input. The state_dict keeps the same keys and values.
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            pl_module.net.compile()  # in place: parameter names, hence checkpoints, unchanged

    def on_fit_start(self, trainer, pl_module) -> None:
        # Here the optimizers exist and no checkpoint is restored yet: a resumed run gets its
        # already-scaled LRs back from the checkpoint.
        factor, batch = self.lr_factor(trainer)
        if factor == 1.0:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [lr * factor for lr in config.scheduler.base_lrs]
        log.info(
            "fast preset: linear LR scaling, effective batch %d / reference %d: every LR x%g",
            batch, self.lr_reference_batch_size, factor,
        )

    def lr_factor(self, trainer) -> tuple[float, int | None]:
        batch_size = getattr(trainer.datamodule, "batch_size", None)
        if not self.lr_reference_batch_size or batch_size is None:
            return 1.0, None
        effective = batch_size * trainer.world_size * trainer.accumulate_grad_batches
        return effective / self.lr_reference_batch_size, effective
