"""The one way a device is named (`device=` of the commands, `trainer.accelerator` of training),
the CPU cores a process may use, and what this machine's devices compute natively. torch loads only when a device is resolved."""

import os

from transferlab.errors import ConfigError

CHOICES = "auto, cpu, cuda (or gpu), cuda:N"


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one: a container's or
    a SLURM job's share, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve(name: str | None, key: str = "device", fix: str | None = None) -> str | None:
    """The torch device for what the user typed at `key`: None for auto (the GPU when there is
    one), else `cpu`, `cuda`, `cuda:N` (`gpu` is `cuda`). CUDA asked for on a machine without it
    is refused, naming the key and `fix` (default: the key's other values), before anything loads."""
    import torch

    typed = "auto" if name is None else str(name)
    if typed == "auto":
        return None
    name = "cuda" + typed[3:] if typed.startswith("gpu") else typed
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={typed} is not a device; choose one of {CHOICES}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{key}={typed} but torch sees no CUDA GPU on this machine (torch {torch.__version__}). "
            + (fix or f"Use {key}=cpu, or {key}=auto, which picks the GPU when there is one")
        )
    return name


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere it is emulated,
    ~10x slower than fp32 (measured on an AVX2-only EPYC)."""
    import torch

    # torch exposes the CPU feature probes only privately; missing probes mean "no".
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def native_bf16(device_type: str) -> bool:
    import torch

    return torch.cuda.is_bf16_supported() if device_type == "cuda" else cpu_has_bf16()
