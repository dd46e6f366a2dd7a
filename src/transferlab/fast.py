"""`trainer=fast`, a speed-up outside the core: numeric and layout speed-ups that keep the result
(see docs/performance.md). The core imports nothing from here; its config attaches it."""

import logging

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from transferlab.devices import cpu_has_bf16

log = logging.getLogger(__name__)


def fast_precision(accelerator: str = "auto") -> Precision:
    """bf16 autocast where the hardware computes in bf16, else fp32: a CPU without AVX512-BF16
    or AMX emulates bf16, so `bf16-mixed` there is a slow-down, not a speed-up."""
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if gpu and torch.cuda.is_bf16_supported():
        log.info("fast preset: bf16 autocast on the GPU")
        return MixedPrecision("bf16-mixed", "cuda")
    if not gpu and cpu_has_bf16():
        log.info("fast preset: bf16 autocast on the CPU (native bf16 instructions)")
        return MixedPrecision("bf16-mixed", "cpu")
    log.info("fast preset: fp32, this %s has no native bf16", "GPU" if gpu else "CPU")
    return Precision()


class FastTraining(Callback):
    """The fast preset's model tweaks: channels_last conv weights, optional torch.compile. (Its
    loader settings are plain data values: `data.num_workers: auto`, `data.pin_memory: auto`.)"""

    def __init__(self, channels_last: bool = True, compile: bool = False):
        self.channels_last = channels_last
        self.compile = compile

    def setup(self, trainer, pl_module, stage) -> None:
        if self.channels_last:
            # Conv weights in NHWC make every conv pick the NHWC kernels (oneDNN, cuDNN); the
            # first conv converts the input. The state_dict keeps the same keys and values.
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            pl_module.net.compile()  # in place: parameter names, hence checkpoints, unchanged
