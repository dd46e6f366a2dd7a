"""`trainer=fast`: numeric and loader speed-ups that keep the result (see docs/performance.md)."""

import logging

import torch
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


class FastTraining(Callback):
    """The fast preset's model tweaks: channels_last conv weights, optional torch.compile. (Its
    loader settings are plain data values: `data.num_workers: auto`, `data.pin_memory: auto`.)"""

    def __init__(self, channels_last: bool = True, compile: bool = False, num_workers=None, pin_memory=None):
        # num_workers / pin_memory: only so that runs saved before they became data.* values
        # still resume; the datamodule decides now, and these are ignored.
        self.channels_last = channels_last
        self.compile = compile

    def setup(self, trainer, pl_module, stage) -> None:
        if self.channels_last:
            # Conv weights in NHWC make every conv pick the NHWC kernels (oneDNN, cuDNN); the
            # first conv converts the input. The state_dict keeps the same keys and values.
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            pl_module.net.compile()  # in place: parameter names, hence checkpoints, unchanged
